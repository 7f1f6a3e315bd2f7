"""Studies side by side (`sde_lab.studies.parallel`): the same results, in the same order, as one at a time."""

from dataclasses import asdict

import pytest

from sde_lab.__main__ import main
from sde_lab.studies import verify
from sde_lab.studies.parallel import available_cores, resolve_jobs, run_all


def test_results_come_back_in_the_order_of_the_items_whoever_starts_first():
    items = [-3, 2, -7, 5, -1]
    assert run_all(abs, items, jobs=2, progress=False, first=[3, 4]) == [3, 2, 7, 5, 1]
    assert run_all(abs, items, jobs=1, progress=False) == [3, 2, 7, 5, 1]


def test_an_error_in_a_worker_is_raised_to_the_caller():
    with pytest.raises(ValueError, match="invalid literal"):
        run_all(int, ["1", "two", "3"], jobs=2, progress=False)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_jobs_must_be_a_whole_number_of_workers(bad):
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        resolve_jobs(bad)


def test_no_jobs_given_means_every_core():
    assert resolve_jobs(None) == available_cores() >= 1
    assert resolve_jobs(3) == 3


def test_verify_rows_measured_in_workers_equal_the_rows_measured_in_process():
    """Two Monte Carlo rows: each seeds its own generators, so a worker with one torch thread prints the same."""
    label = "quadratic PGPO-"  # the RMSprop and Adam placements that plateau, about a second each
    alone = verify.run(quick=True, progress=False, only=label, jobs=1)
    side_by_side = verify.run(quick=True, progress=False, only=label, jobs=2)
    assert len(alone) == 2
    strip = lambda rows: [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(side_by_side) == strip(alone)


@pytest.mark.parametrize("command", ["verify", "figures"])
@pytest.mark.parametrize("jobs", ["0", "two"])
def test_the_cli_refuses_a_jobs_count_that_is_not_a_positive_whole_number(command, jobs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--jobs", jobs])
    assert exit_.value.code == 2
    assert f"--jobs: expected a whole number >= 1, got '{jobs}'" in capsys.readouterr().err

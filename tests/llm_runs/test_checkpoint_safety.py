"""A checkpoint is data: a pickle planted in a run folder stays inert on `--resume`, and `checkpoints/latest`
never leads out of the run folder."""

import os
import pickle

import numpy as np
import pytest
import torch

from llm_runs import checkpoint
from llm_runs.config import ConfigError
from tests.llm_runs.test_trainer import _cli, finished_run, two_step_run  # noqa: F401  (fixtures)


class _Payload:
    """Unpickled, it would create `marker`: what a planted checkpoint would do with a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_the_state_file_stays_inert_on_resume(two_step_run, tmp_path):
    marker = tmp_path / "it-ran"
    state_file = two_step_run / "checkpoints" / "step-000002" / checkpoint.STATE
    state = checkpoint.read_state(state_file)
    state["run"]["payload"] = _Payload(marker)  # beside the real state: a resumed run would load it
    torch.save(state, state_file)
    with pytest.raises(pickle.UnpicklingError):  # the restricted unpickler refuses it (weights_only=False ran it)
        torch.load(state_file, weights_only=True)
    code, err = _cli("train", "--resume", str(two_step_run), "--no-progress", "train.steps=3")
    assert code == 2, err[-2000:]
    assert not marker.exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "holds more than data" in last and "Traceback" not in err


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/tmp", "..", "step-000002/../../..", ""])
def test_the_latest_pointer_never_leads_out_of_the_run_folder(two_step_run, pointer):
    (two_step_run / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(ConfigError, match="never leads out of its run folder"):
        checkpoint.latest(two_step_run)


def test_a_checkpoint_folder_that_is_a_link_out_of_the_run_is_refused(two_step_run, tmp_path):
    outside = tmp_path / "outside"
    (two_step_run / "checkpoints" / "step-000002").rename(outside)
    os.symlink(outside / "nested-does-not-matter", two_step_run / "checkpoints" / "step-000002")
    with pytest.raises(ConfigError, match="never leads out of its run folder"):
        checkpoint.latest(two_step_run)


def test_the_generators_states_are_data_and_restore_exactly(tmp_path):
    torch.manual_seed(3), np.random.seed(4)
    import random

    random.seed(5)
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(7), random.random()
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))  # no allowlist needed
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_a_state_file_from_before_still_resumes(tmp_path):
    """Checkpoints written before this change kept numpy's state as an ndarray: read, as data, and restored."""
    import random

    np.random.seed(9)
    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"rng": old}, tmp_path / checkpoint.STATE)
    expected = np.random.rand(4)
    checkpoint.set_rng_state(checkpoint.read_state(tmp_path / checkpoint.STATE)["rng"])
    assert np.array_equal(np.random.rand(4), expected)

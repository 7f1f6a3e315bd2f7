"""`python -m sde_lab figures`: every figure regenerates in quick mode, as a real image, and replots from its JSON."""

import json

import pytest
from matplotlib import image

from sde_lab.studies.figures import FIGURES, run


@pytest.mark.slow
def test_every_figure_regenerates_and_replots(tmp_path):
    written = run(tmp_path, quick=True, progress=False, jobs=2)  # side by side, as the command runs them
    assert len(written) == 3 * len(FIGURES) and len(FIGURES) >= 4
    for figure in FIGURES:
        png = image.imread(tmp_path / f"{figure.name}.png")
        height, width = png.shape[:2]
        assert 300 < width < 3000 and 200 < height < 2000, (figure.name, png.shape)
        assert png.std() > 0.05  # not a blank canvas
        assert (tmp_path / f"{figure.name}.pdf").read_bytes().startswith(b"%PDF")
        data = json.loads((tmp_path / f"{figure.name}.json").read_text())
        assert data["_meta"]["quick"] is True
    before = (tmp_path / "multiplier.json").read_text()
    run(tmp_path, replot=True, progress=False)  # redraws from the JSON alone
    assert (tmp_path / "multiplier.json").read_text() == before


def test_replot_without_data_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="exact_orders.json"):
        run(tmp_path, replot=True, only="exact_orders", progress=False)
    with pytest.raises(ValueError, match="unknown figure"):
        run(tmp_path, only="nope", progress=False)

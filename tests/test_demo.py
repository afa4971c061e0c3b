"""`vaekit demo` on a small photo: the streamed round trip matches the whole image, two tiles do not."""

import pytest

from conftest import REL_TOL, relative_error
from vaekit.tools.demo import main, run_demo


def test_demo_streamed_matches_whole_and_tiles_do_not(tmp_path, capsys):
    whole, streamed, tiles = run_demo(size=192, out_dir=tmp_path, budget="4MiB")
    assert relative_error(streamed["image"], whole["image"]) <= REL_TOL
    assert relative_error(tiles["image"], whole["image"]) > 100 * REL_TOL
    assert tiles["pixels_changed"] > 100 * max(streamed["pixels_changed"], 1)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "192x192 photograph" in out and "two tiles" in out and "8-bit px changed" in out


def test_demo_refuses_a_size_the_tiles_cannot_split(tmp_path):
    with pytest.raises(SystemExit):
        main(["--size", "200", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_sd_panel_streams_exactly(tmp_path):
    from vaekit.tools.demo import run_sd_demo

    untiled, streamed, _tiled = run_sd_demo(size=64, out_dir=tmp_path, budget="24MiB")
    assert relative_error(streamed["image"], untiled["image"]) <= REL_TOL
    assert (tmp_path / "demo-sd.png").is_file()

"""python -m echostream.training.curves: the training-curves PNG of runs' CSV logs."""

import csv

import pytest

from echostream.training.curves import LOSSES, main


def write_run(folder, scale):
    folder.mkdir()
    keys = ["step", *LOSSES]
    with open(folder / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for step in range(1, 301):
            w.writerow(
                {
                    "step": step,
                    **{k: scale * (300 if step < 50 else 10 - step / 100) for k in LOSSES},
                }
            )
    with open(folder / "dev_log.csv", "w", newline="") as f:
        dev = ["step", *("dev_" + k.removeprefix("loss_") for k in LOSSES)]
        w = csv.DictWriter(f, fieldnames=dev)
        w.writeheader()
        w.writerow({"step": 200, **dict.fromkeys(dev[1:], scale * 8.0)})
    return folder


def test_curves_png_with_a_marked_update(tmp_path, capsys):
    runs = [str(write_run(tmp_path / name, s)) for name, s in (("a", 1.0), ("b", 1.1))]
    out = tmp_path / "curves.png"
    assert main([*runs, "--out", str(out), "--zoom-after", "100", "--mark", "150:continued"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main([*runs, "--out", str(out), "--mark", "later:continued"])
    assert "expected UPDATE:LABEL" in capsys.readouterr().err

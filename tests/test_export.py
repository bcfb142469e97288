"""`echostream export`: one checkpoint -> fp16 bundle; several -> their parameter average."""

from __future__ import annotations

import torch
from helpers_models import tiny_config

from echostream.cli import main
from echostream.models import build_model
from echostream.models.checkpoint import load_checkpoint, save_checkpoint


def _run_checkpoints(tmp_path, n: int, name: str = "ckpt", **config) -> list:
    paths = []
    for step in range(n):
        torch.manual_seed(step)
        model = build_model(tiny_config(**config))
        path = tmp_path / f"{name}_{step:08d}.pt"
        save_checkpoint(path, model, extra={"training": {"step": 100 * (step + 1)}})
        paths.append(path)
    return paths


def test_export_averages_checkpoints(tmp_path):
    paths = _run_checkpoints(tmp_path, 3)
    out = tmp_path / "bundle"
    args = ["export", "--checkpoint", *map(str, paths), "--out", str(out), "--float32"]
    assert main(args) == 0
    averaged, info = load_checkpoint(out / "model.pt")
    models = [load_checkpoint(p)[0].state_dict() for p in paths]
    for name, value in averaged.state_dict().items():
        expected = sum(m[name].double() for m in models) / 3
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6, msg=name)
    assert info.extra["step"] == [100, 200, 300]
    first, second = (m["mt_decoder.embed_tokens.weight"] for m in models[:2])
    assert not torch.equal(first, second)  # the average is over different weights


def test_export_one_checkpoint_in_float16(tmp_path):
    [path] = _run_checkpoints(tmp_path, 1)
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(path), "--out", str(out)]) == 0
    exported, info = load_checkpoint(out / "model.pt")
    original = load_checkpoint(path)[0].state_dict()
    assert info.extra["parameters_dtype"] == "float16" and info.extra["step"] == 100
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, original[name], rtol=1e-3, atol=1e-3, msg=name)


def test_export_refuses_to_average_other_architectures(tmp_path, capsys):
    [small] = _run_checkpoints(tmp_path, 1, name="small")
    [wide] = _run_checkpoints(tmp_path, 1, name="wide", d_model=48)
    args = ["export", "--checkpoint", str(small), str(wide), "--out", str(tmp_path / "x")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "architecture differs" in err and "d_model" in err and str(wide) in err
    assert not (tmp_path / "x" / "model.pt").exists()

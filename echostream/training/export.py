"""Export a trained run as a bundled model folder (what ``from_pretrained`` loads).

    echostream export --checkpoint work/runs/echostream_tiny/best.pt \\
        --vocoder echostream/pretrained/vocoder-tiny/vocoder.pt \\
        --out echostream/pretrained/echostream-tiny-fr-en

writes ``model.pt`` (config, weights, tokenizers, CMVN; no optimiser state) and copies
``vocoder.pt``. Several ``--checkpoint`` files (e.g. a run's last ``ckpt_*.pt``) are
averaged parameter by parameter first (as fairseq's ``average_checkpoints.py``); they must
share the architecture, and the tokenizers and CMVN of the first one are kept. Parameters are
stored in float16 by default so that the file stays well under the repository's 25 MB limit;
they are loaded back into float32 modules (buffers such as the CMVN statistics stay float32).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..models.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    save_checkpoint,
)
from ..models.echostream import EchoStreamModel
from ..models.unit_vocoder import UnitVocoder
from .checkpoints import config_differences


def average_checkpoints(paths: Sequence[Path]) -> tuple[EchoStreamModel, list[int | None]]:
    """(model holding the mean of the checkpoints' parameters, their training steps)."""
    model, info = load_checkpoint(paths[0])
    sums = {k: v.double() for k, v in model.state_dict().items()}
    steps = [_step(info)]
    for path in paths[1:]:
        other, other_info = load_checkpoint(path)
        arch, _ = config_differences(asdict(info.config), asdict(other_info.config))
        if arch:  # dropout or loss weights may differ along a run; the architecture may not
            raise CheckpointError(
                f"{path}: architecture differs from {paths[0]}'s, cannot average: "
                + "; ".join(arch)
            )
        for k, v in other.state_dict().items():
            sums[k] += v.double()
        steps.append(_step(other_info))
    model.load_state_dict(
        {k: (v / len(paths)).to(model.state_dict()[k].dtype) for k, v in sums.items()}
    )
    return model, steps


def _step(info: CheckpointInfo) -> int | None:
    return (info.extra or {}).get("training", {}).get("step")


def export_bundle(
    checkpoint: Path | Sequence[Path],
    out_dir: Path,
    vocoder: Path | None = None,
    half: bool = True,
    note: dict | None = None,
) -> Path:
    paths = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint)
    model, steps = average_checkpoints(paths)
    if half:
        for param in model.parameters():
            param.data = param.data.half()
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "exported_from": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths],
        "step": steps[0] if len(steps) == 1 else steps,
        "parameters_dtype": "float16" if half else "float32",
        **(note or {}),
    }
    save_checkpoint(out_dir / "model.pt", model, extra=extra)
    if vocoder is not None:
        voc = UnitVocoder.load(vocoder)
        if voc.cfg.num_units != model.cfg.vocab.num_units:
            raise ValueError(
                f"{vocoder}: vocoder has {voc.cfg.num_units} units, the model "
                f"{model.cfg.vocab.num_units}"
            )
        shutil.copyfile(vocoder, out_dir / "vocoder.pt")
    return out_dir / "model.pt"


def main_export(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="echostream export", description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        nargs="+",
        help="one checkpoint, or several to average (same architecture)",
    )
    p.add_argument("--vocoder", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--float32", action="store_true", help="keep float32 parameters")
    args = p.parse_args(argv)
    try:
        path = export_bundle(args.checkpoint, args.out, args.vocoder, half=not args.float32)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main_export())

"""Export a trained run as a bundled model folder (what ``from_pretrained`` loads).

    echostream export --checkpoint work/runs/echostream_tiny/best.pt \\
        --vocoder echostream/pretrained/vocoder-tiny/vocoder.pt \\
        --out echostream/pretrained/echostream-tiny-fr-en

writes ``model.pt`` (config, weights, tokenizers, CMVN; no optimiser state) and copies
``vocoder.pt``. Parameters are stored in float16 by default so that the file stays well under
the repository's 25 MB limit; they are loaded back into float32 modules (buffers such as the
CMVN statistics stay float32).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.unit_vocoder import UnitVocoder


def export_bundle(
    checkpoint: Path,
    out_dir: Path,
    vocoder: Path | None = None,
    half: bool = True,
    note: dict | None = None,
) -> Path:
    model, info = load_checkpoint(checkpoint)
    if half:
        for param in model.parameters():
            param.data = param.data.half()
    out_dir.mkdir(parents=True, exist_ok=True)
    training = (info.extra or {}).get("training", {})
    extra = {
        "exported_from": str(checkpoint),
        "step": training.get("step"),
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
    p.add_argument("--checkpoint", required=True, type=Path)
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

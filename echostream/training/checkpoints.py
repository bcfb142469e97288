"""Checkpoints and the run folder of ``echostream train``.

The output directory ``O`` is self-contained::

    config.yaml          the model config as trained (vocab sizes from the data, paths below)
    train_config.yaml    the training config of the latest (re)start
    spm/, cmvn.json      copies of the tokenizers and CMVN statistics
    last.pt              latest checkpoint (every ``save_every`` steps and at the end)
    best.pt              lowest dev loss so far
    ckpt_{step:08d}.pt   the ``keep_last`` most recent numbered checkpoints
    train_log.csv        one row per step; dev_log.csv: one row per evaluation
    train.log            messages; tb/ TensorBoard events when tensorboard is installed

Every checkpoint is an EchoStream checkpoint (:mod:`echostream.models.checkpoint`: config,
weights, CMVN, tokenizers; ``echostream.models.load_checkpoint`` loads it for inference) whose
``extra["training"]`` holds what a resume needs — optimiser, schedule, AMP scaler, sampler epoch
and position, step, best dev loss, and the RNG states of every rank (torch, CUDA, numpy, Python,
and the generator that draws SpecAugment masks and chunk sizes) — so a run killed at any moment
continues from its last checkpoint on the same loss curve. Files are written to a temp name and
renamed; ``last.pt``, ``best.pt`` and the numbered file of one step are hard links to one write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from echostream.training.errors import TrainingError

TRAINING_STATE_FORMAT = "echostream-training-state"
TRAINING_STATE_VERSION = 1
_PATH_KEYS = ("features.cmvn_path", "vocab.src_spm", "vocab.tgt_spm")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_architecture_key(key: str, cfg: dict) -> bool:
    """Keys that change the parameters' meaning (not loss weights, dropout, schedules)."""
    if key.startswith("loss.") or key.endswith("dropout"):
        return False
    if key in ("features.dither", "encoder.conformer.train_chunk_sizes"):
        return False
    unused = "conformer" if cfg.get("encoder", {}).get("type") == "emformer" else "emformer"
    return not key.startswith(f"encoder.{unused}.")


def config_differences(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(architecture differences, other differences) between two model-config dicts, each
    ``"key: old → new"``. File paths (tokenizers, CMVN) are not compared."""
    a, b = _flatten(old), _flatten(new)
    arch, other = [], []
    for key in sorted(set(a) | set(b)):
        if key not in _PATH_KEYS and a.get(key) != b.get(key):
            line = f"{key}: {a.get(key, '<absent>')!r} → {b.get(key, '<absent>')!r}"
            (arch if _is_architecture_key(key, new) else other).append(line)
    return arch, other


def copy_if_other(src: Path, dst: Path) -> None:
    if src.is_file() and src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)


def atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else a copy), atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw contents of an EchoStream checkpoint (``weights_only``: tensors and plain data):
    ``config``, ``state_dict``, ``src_spm``/``tgt_spm``, ``extra`` (``extra["training"]``: see
    :meth:`~echostream.training.trainer.Trainer.training_state`)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: checkpoint not found") from None
    except Exception as err:
        raise TrainingError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "echostream" or "state_dict" not in ckpt:
        raise TrainingError(f"{path}: not an EchoStream checkpoint")
    return ckpt


def training_state(ckpt: dict) -> dict:
    """``extra["training"]`` of a checkpoint read by :func:`read_checkpoint`."""
    state = (ckpt.get("extra") or {}).get("training")
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise TrainingError(
            "the checkpoint holds a model but no training state: it cannot be "
            "resumed (use --init-from to start a run from its weights)"
        )
    if state.get("version", 0) > TRAINING_STATE_VERSION:
        raise TrainingError(
            f"training state version {state['version']} is newer than this "
            f"trainer's ({TRAINING_STATE_VERSION}): upgrade echostream"
        )
    return state

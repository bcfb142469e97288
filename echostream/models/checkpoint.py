"""EchoStream checkpoints: save and load.

EchoStream format
-----------------
:func:`save_checkpoint` writes, with ``torch.save`` to a temporary file renamed into place (a
crash never leaves a half-written checkpoint), a dict of plain containers, tensors and bytes::

    {"format": "echostream", "version": 1,
     "config": dataclasses.asdict(cfg),            # the architecture
     "state_dict": {name: tensor},                 # CMVN mean/std are buffers of encoder.cmvn
     "cmvn": {"mean": tensor, "std": tensor, "count": int},
     "src_spm": bytes | None, "tgt_spm": bytes | None,   # sentencepiece .model files
     "extra": {...}}                               # caller's data (trainer state, ...)

so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)`` (no code runs while
loading). Errors say what is wrong: not a file, not an EchoStream checkpoint (with a hint for
fairseq files), a newer format version, an invalid config, or an architecture mismatch (the
missing, unexpected and shape-mismatched parameter names).

StreamSpeech (fairseq) checkpoints are imported by :mod:`echostream.models.streamspeech_import`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from echostream.config import ConfigError, EchoStreamConfig, config_from_dict
from echostream.files import atomic_torch_save
from echostream.models.echostream import EchoStreamModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "CheckpointInfo",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "echostream"
CHECKPOINT_VERSION = 1
_MAX_LISTED = 20  # names listed per category in error messages


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is of another kind/version, or does not fit the model."""


# =========================================================================== EchoStream format


@dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` read besides the weights."""

    path: Path
    version: int
    config: EchoStreamConfig
    extra: dict
    src_spm: bytes | None = None
    tgt_spm: bytes | None = None
    cmvn_count: int = 0


def _spm_bytes(tok: Any) -> bytes | None:
    """A tokenizer (``.path``), a path to a ``.model`` file, raw bytes, or None -> bytes."""
    if tok is None or isinstance(tok, bytes):
        return tok
    path = Path(getattr(tok, "path", tok))
    try:
        return path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read sentencepiece model: {err}") from None


def _check_plain(value: Any, where: str) -> None:
    """``extra`` must survive ``torch.load(weights_only=True)``: plain containers only."""
    if isinstance(value, (str, bytes, int, float, bool, type(None), Tensor, torch.dtype)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict keys must be str or int, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored (weights_only checkpoints hold "
        "dicts, lists, tuples, str, bytes, numbers, bool, None and tensors)"
    )


def save_checkpoint(
    path: str | os.PathLike,
    model: EchoStreamModel,
    extra: dict | None = None,
    tokenizers: tuple[Any, Any] | None = None,
) -> Path:
    """Write ``model`` (config + weights + CMVN + tokenizers) to ``path`` atomically.

    ``tokenizers``: (source, target), each a :class:`~echostream.text.tokenizer.Tokenizer`,
    a path to a ``.model`` file, bytes or None; default: the tokenizers attached to the model.
    ``extra``: plain data (dicts, lists, numbers, strings, tensors) stored as is.
    """
    path = Path(path)
    model = getattr(model, "module", model)  # DDP / compiled wrappers
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, EchoStreamModel):
        raise TypeError(f"save_checkpoint expects an EchoStreamModel, got {type(model).__name__}")
    extra = {} if extra is None else extra
    _check_plain(extra, "extra")
    if tokenizers is None:
        tokenizers = (model.src_tokenizer, model.tgt_tokenizer)
    cmvn = model.encoder.cmvn
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dataclasses.asdict(model.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "cmvn": {"mean": cmvn.mean.cpu(), "std": cmvn.std.cpu(), "count": int(cmvn.count)},
        "src_spm": _spm_bytes(tokenizers[0]),
        "tgt_spm": _spm_bytes(tokenizers[1]),
        "extra": extra,
    }
    atomic_torch_save(payload, path)
    return path


def _list_names(title: str, names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"\n  {title} ({len(names)}): {shown}{more}"


def _read_torch_file(path: Path, map_location: Any) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path}: not an EchoStream checkpoint: it holds objects other than plain data "
            f"({first[:160]}). A StreamSpeech/fairseq checkpoint is imported with "
            "`echostream.models.import_streamspeech`."
        ) from None
    except Exception as err:  # zip/pickle corruption, truncated file, another format
        raise CheckpointError(
            f"{path}: not an EchoStream checkpoint (cannot be read by torch.load: "
            f"{type(err).__name__}: {str(err)[:160]})"
        ) from None


def load_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    tokenizer_dir: str | os.PathLike | None = None,
) -> tuple[EchoStreamModel, CheckpointInfo]:
    """Read an EchoStream checkpoint -> (model in eval mode, :class:`CheckpointInfo`).

    ``info.config`` is the config as saved; the model's own ``cfg`` has
    ``features.cmvn_path = None`` (its CMVN statistics come with the weights).

    When the checkpoint carries sentencepiece models they are written to ``tokenizer_dir``
    (default: a new temporary directory) and attached to the model (``translate`` then returns
    texts). Raises :class:`CheckpointError` with the reason.
    """
    path = Path(path)
    data = _read_torch_file(path, map_location)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(data, dict) and "model" in data and ("args" in data or "cfg" in data):
            hint = " (it looks like a fairseq checkpoint: use import_streamspeech)"
        raise CheckpointError(f"{path}: not an EchoStream checkpoint{hint}")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer EchoStream (checkpoint format version {version}; this "
            f"version reads up to {CHECKPOINT_VERSION}): upgrade echostream to load it"
        )
    missing = [k for k in ("config", "state_dict") if not isinstance(data.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint: no {' or '.join(missing)}")
    try:
        cfg = config_from_dict(data["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: invalid config in checkpoint: {err}") from None
    build_cfg = copy.deepcopy(cfg)
    build_cfg.features.cmvn_path = None  # statistics come from the state dict
    model = EchoStreamModel(build_cfg)
    _load_state_dict_strict(model, data["state_dict"], path)
    cmvn = data.get("cmvn") or {}
    model.encoder.cmvn.count = int(cmvn.get("count", 0))
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    info = CheckpointInfo(
        path=path,
        version=version,
        config=cfg,
        extra=data.get("extra") or {},
        src_spm=data.get("src_spm"),
        tgt_spm=data.get("tgt_spm"),
        cmvn_count=model.encoder.cmvn.count,
    )
    if info.src_spm is not None or info.tgt_spm is not None:
        try:
            _attach_tokenizers(model, info, tokenizer_dir)
        except ValueError as err:  # TokenizerError, or a vocabulary size that does not fit
            raise CheckpointError(f"{path}: tokenizer stored in the checkpoint: {err}") from None
    return model.eval(), info


def _load_state_dict_strict(model: torch.nn.Module, state: dict, path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and (not isinstance(state[k], Tensor) or state[k].shape != own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path}: architecture mismatch between the checkpoint's weights and the model its "
            "config builds"
            + (_list_names("missing in checkpoint", missing) if missing else "")
            + (_list_names("unexpected in checkpoint", unexpected) if unexpected else "")
            + (_list_names("shape mismatch", mismatched) if mismatched else "")
        )
    model.load_state_dict(state, strict=True)


def _attach_tokenizers(model: EchoStreamModel, info: CheckpointInfo, where: Any) -> None:
    from echostream.text.tokenizer import Tokenizer

    folder = Path(where) if where is not None else Path(tempfile.mkdtemp(prefix="echostream-spm-"))
    folder.mkdir(parents=True, exist_ok=True)
    toks = []
    for name, blob in (("src", info.src_spm), ("tgt", info.tgt_spm)):
        if blob is None:
            toks.append(None)
            continue
        file = folder / f"spm_{name}.model"
        file.write_bytes(blob)
        toks.append(Tokenizer(file))
    model.attach_tokenizers(*toks)

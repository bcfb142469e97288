"""Training configuration: a dataclass loaded from YAML with ``echostream.config``'s validation.

Defaults are StreamSpeech's simultaneous S2ST recipe (``train.simul-s2st.sh``): Adam (0.9, 0.98),
lr 1e-3, inverse-sqrt schedule with 10k warm-up steps from 1e-7, clip-norm 1.0, 22,000 padded
fbank frames per batch, gradient accumulation ×2 (``--update-freq 2``), SpecAugment F=27, T=100,
one mask each (``config_gcmvn.yaml``), seed 1, validation and checkpoints every 1000 updates.
Label smoothing and loss weights belong to the model (``EchoStreamConfig.loss``).

A *step* is one optimiser update (``update_freq`` micro-batches on every rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from echostream.config import ConfigError, config_from_dict, config_to_dict
from echostream.files import atomic_write_text


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class SpecAugmentConfig:
    """Frequency and time masking on the raw fbank (no time warping, as StreamSpeech).

    A mask's width is uniform in ``[0, F]`` (``[0, min(T, p · frames)]`` in time) and its start
    uniform over the positions where it fits. Masked values are set to the CMVN mean of the bin
    (i.e. 0 after normalisation, as fairseq masks the normalised features with their mean).
    """

    enabled: bool = True
    freq_mask_F: int = 27
    freq_mask_N: int = 1
    time_mask_T: int = 100
    time_mask_N: int = 1
    time_mask_p: float = 1.0

    def validate(self) -> None:
        for name in ("freq_mask_F", "freq_mask_N", "time_mask_T", "time_mask_N"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _check(0.0 <= self.time_mask_p <= 1.0, "time_mask_p", "must be in [0, 1]")


@dataclass
class TrainingConfig:
    """Everything about *how* to train (what to train is the model config)."""

    seed: int = 1
    max_steps: int = 100_000  # optimiser updates; the run stops at whichever limit comes first
    max_epochs: int | None = None
    # ---- batching (per rank)
    max_frames: int = 22_000  # padded source fbank frames per micro-batch (fairseq max_tokens)
    max_batch_size: int | None = None
    update_freq: int = 2  # micro-batches accumulated per update
    num_workers: int = 0  # DataLoader worker processes
    train_split: str = "train"
    dev_split: str = "dev"
    # ---- optimiser and schedule
    lr: float = 1e-3
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 10_000
    warmup_init_lr: float = 1e-7
    clip_norm: float = 1.0  # 0 disables clipping (the norm is still logged)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    # ---- hardware
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"  # GPU only; CPU always trains in fp32
    compile: bool = False  # torch.compile the training forward
    threads: int | None = None  # torch.set_num_threads per process (None: torch's default)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    find_unused_parameters: bool = False  # DDP: needed when a loss weight is 0
    # ---- checkpoints, evaluation, logs
    save_every: int = 1000  # last.pt + a numbered checkpoint every N steps (and at the end)
    keep_last: int = 5  # numbered checkpoints kept (0: none, only last.pt/best.pt)
    eval_every: int = 1000  # dev evaluation (and best.pt) every N steps (0: only at the end)
    dev_max_utterances: int | None = None  # dev loss on at most this many (None: all)
    dev_decode_utterances: int = 100  # greedy ASR WER and ST BLEU on this many dev utterances
    dev_max_frames: int | None = None  # dev batching (None: max_frames)
    vocab_from_data: bool = True  # fresh runs take vocab sizes from the data's tokenizers
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # also write TensorBoard events when `tensorboard` is importable

    def validate(self) -> None:
        for name in ("max_steps", "max_frames", "update_freq"):
            value = getattr(self, name)
            _check(value >= 1, name, f"must be >= 1, got {value}")
        for name in (
            "num_workers",
            "warmup_steps",
            "save_every",
            "keep_last",
            "eval_every",
            "dev_decode_utterances",
        ):
            value = getattr(self, name)
            _check(value >= 0, name, f"must be >= 0, got {value}")
        for name in (
            "max_epochs",
            "max_batch_size",
            "dev_max_utterances",
            "dev_max_frames",
            "threads",
        ):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, f"must be >= 1 or null, got {value}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.warmup_init_lr <= self.lr, "warmup_init_lr", "must be in [0, lr]")
        _check(
            len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
            "adam_betas",
            f"must be two numbers in [0, 1), got {self.adam_betas}",
        )
        _check(self.adam_eps > 0, "adam_eps", "must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.clip_norm >= 0, "clip_norm", "must be >= 0")
        _check(self.train_split != self.dev_split, "dev_split", "must differ from train_split")


def load_training_config(path: str | Path | None = None, **overrides) -> TrainingConfig:
    """Read a YAML file (None: the defaults); ``overrides`` replace top-level keys (not None)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return config_from_dict(data, TrainingConfig)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def save_training_config(cfg: TrainingConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

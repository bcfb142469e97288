"""Configuration: one dataclass per pipeline component, YAML load/save with validation.

Lengths in the encoder configs are counted in *encoder frames* of 40 ms (10 ms fbank hop × 4
subsampling): ``segment_length: 4`` is 160 ms, ``left_context_length: 30`` is 1.2 s.

Errors name the file and the dotted key (``configs/x.yaml: encoder.emformer.segment_length:
must be >= 1, got 0``). Config is data only: this module imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or impossible. The message names file and key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        lowest = 0 if allow_zero else 1
        _check(value >= lowest, name, f"must be >= {lowest}, got {value}")


# --------------------------------------------------------------------------- front end


@dataclass
class FeatureConfig:
    """80-d log-mel fbank (kaldi-native-fbank), 25 ms window, 10 ms hop, then global CMVN."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    cmvn_path: str | None = None  # JSON stats from `echostream.audio.features.GlobalCMVN`

    def validate(self) -> None:
        _positive(self, "sample_rate", "num_mel_bins")
        _check(self.frame_length_ms > 0, "frame_length_ms", "must be > 0")
        _check(
            0 < self.frame_shift_ms <= self.frame_length_ms,
            "frame_shift_ms",
            "must be in (0, frame_length_ms]",
        )
        _check(self.dither >= 0, "dither", "must be >= 0")


@dataclass
class SubsamplingConfig:
    """Causal 2-D convolutional subsampling ×4: two stride-2 conv layers, 10 ms → 40 ms frames."""

    channels: int = 256
    kernel_size: int = 3

    def validate(self) -> None:
        _positive(self, "channels")
        _check(self.kernel_size >= 2, "kernel_size", f"must be >= 2, got {self.kernel_size}")


# --------------------------------------------------------------------------- encoders


@dataclass
class EmformerConfig:
    """Emformer (Shi et al., ICASSP 2021). Lengths in 40 ms encoder frames."""

    d_model: int = 256
    num_layers: int = 16
    num_heads: int = 4
    ffn_dim: int = 2048
    segment_length: int = 4  # L: frames per segment (160 ms)
    left_context_length: int = 30  # C: cached left-context frames per layer (1.2 s)
    right_context_length: int = 0  # R: look-ahead frames (hard-copied right context)
    memory_size: int = 8  # M: summary vectors in the memory bank (0 disables it)
    dropout: float = 0.1
    activation: Literal["relu", "gelu", "silu"] = "gelu"
    conv_kernel_size: int = 0  # > 0 adds a causal depthwise-conv module per layer
    memory_clamp: float = 10.0  # memory vectors are clamped to ±this, as in the paper's code

    def validate(self) -> None:
        _positive(self, "d_model", "num_layers", "num_heads", "ffn_dim", "segment_length")
        _positive(
            self,
            "left_context_length",
            "right_context_length",
            "memory_size",
            "conv_kernel_size",
            allow_zero=True,
        )
        _check(
            self.d_model % self.num_heads == 0,
            "num_heads",
            f"must divide d_model={self.d_model}, got {self.num_heads}",
        )
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.memory_clamp > 0, "memory_clamp", "must be > 0")


@dataclass
class ConformerConfig:
    """StreamSpeech's chunk-based Conformer. ``chunk_size`` in 40 ms encoder frames."""

    d_model: int = 256
    num_layers: int = 12
    num_heads: int = 4
    ffn_dim: int = 2048
    conv_kernel_size: int = 31
    chunk_size: int = 8  # frames per attention chunk (320 ms); each frame sees its chunk + past
    # Multi-chunk training (StreamSpeech): per batch, sample the chunk size from this list;
    # empty means always `chunk_size`. A value of 0 stands for full (offline) attention.
    train_chunk_sizes: list[int] = field(default_factory=list)
    max_relative_position: int = 512  # relative positions are clipped to ±this
    dropout: float = 0.1

    def validate(self) -> None:
        _positive(
            self,
            "d_model",
            "num_layers",
            "num_heads",
            "ffn_dim",
            "chunk_size",
            "max_relative_position",
        )
        _check(
            self.conv_kernel_size >= 1 and self.conv_kernel_size % 2 == 1,
            "conv_kernel_size",
            f"must be an odd number >= 1, got {self.conv_kernel_size}",
        )
        _check(
            self.d_model % self.num_heads == 0,
            "num_heads",
            f"must divide d_model={self.d_model}, got {self.num_heads}",
        )
        _check(
            all(c >= 0 for c in self.train_chunk_sizes),
            "train_chunk_sizes",
            "entries must be >= 0 (0 = full attention)",
        )
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class EncoderConfig:
    """Front end + subsampling + body. ``type`` picks the body."""

    type: Literal["emformer", "conformer"] = "emformer"
    emformer: EmformerConfig = field(default_factory=EmformerConfig)
    conformer: ConformerConfig = field(default_factory=ConformerConfig)

    @property
    def d_model(self) -> int:
        return self.emformer.d_model if self.type == "emformer" else self.conformer.d_model


# --------------------------------------------------------------------------- decoders


@dataclass
class VocabConfig:
    """SentencePiece unigram vocabularies (StreamSpeech: 6000, lower-cased, no punctuation)."""

    src_vocab_size: int = 6000
    tgt_vocab_size: int = 6000
    num_units: int = 1000  # discrete target units (k-means clusters)
    src_spm: str | None = None  # path to the source .model (relative to the config's folder)
    tgt_spm: str | None = None

    def validate(self) -> None:
        _positive(self, "src_vocab_size", "tgt_vocab_size", "num_units")


@dataclass
class CTCDecoderConfig:
    """ST CTC decoder: a few segment-causal transformer layers over the encoder + linear."""

    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    # Frames before its block that a frame may attend to (40 ms frames; 0 = own block only).
    # Bounded so the streaming state is fixed size; runs at the encoder's width, block = its
    # segment/chunk.
    left_context_length: int = 32

    def validate(self) -> None:
        _positive(self, "num_heads", "ffn_dim")
        _positive(self, "num_layers", "left_context_length", allow_zero=True)


@dataclass
class TransformerDecoderConfig:
    """A pre-norm transformer stack (MT decoder, T2U encoder, unit decoder)."""

    num_layers: int = 4
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1  # residual and FFN activations
    # Dropout of the attention weights. On CPU any value > 0 sends attention to PyTorch's math
    # path (a (B, H, Tq, Tk) Bernoulli mask): for the unit decoder's ×25-upsampled frames that
    # is ~20% of a tiny model's training step (measured; see configs/fr-en/*_tiny.yaml).
    attention_dropout: float = 0.1

    def validate(self) -> None:
        _positive(self, "d_model", "num_heads", "ffn_dim")
        _positive(self, "num_layers", allow_zero=True)
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, name, f"must be in [0, 1), got {value}")
        _check(
            self.d_model % self.num_heads == 0,
            "num_heads",
            f"must divide d_model={self.d_model}, got {self.num_heads}",
        )


@dataclass
class UnitDecoderConfig(TransformerDecoderConfig):
    """Non-autoregressive unit decoder: each T2U position upsampled ×rate, CTC over units."""

    num_layers: int = 2
    upsample_rate: int = 25

    def validate(self) -> None:
        super().validate()
        _positive(self, "upsample_rate")


@dataclass
class LossConfig:
    """StreamSpeech: unit CTC + 8·MT CE (label smoothing 0.1) + 4·ASR CTC + 4·ST CTC."""

    unit_ctc_weight: float = 1.0
    mt_ce_weight: float = 8.0
    asr_ctc_weight: float = 4.0
    st_ctc_weight: float = 4.0
    label_smoothing: float = 0.1

    def validate(self) -> None:
        for name in ("unit_ctc_weight", "mt_ce_weight", "asr_ctc_weight", "st_ctc_weight"):
            _check(getattr(self, name) >= 0, name, "must be >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")


# --------------------------------------------------------------------------- whole system


@dataclass
class EchoStreamConfig:
    """The whole system. ``model`` names the architecture: ``echostream`` (Emformer) or
    ``streamspeech`` (chunk Conformer baseline); decoders are identical in both."""

    model: Literal["echostream", "streamspeech"] = "echostream"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    subsampling: SubsamplingConfig = field(default_factory=SubsamplingConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    st_ctc_decoder: CTCDecoderConfig = field(default_factory=CTCDecoderConfig)
    mt_decoder: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)
    t2u_encoder: TransformerDecoderConfig = field(
        default_factory=lambda: TransformerDecoderConfig(num_layers=2)
    )
    unit_decoder: UnitDecoderConfig = field(default_factory=UnitDecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self) -> None:
        expected = "emformer" if self.model == "echostream" else "conformer"
        _check(
            self.encoder.type == expected,
            "encoder.type",
            f"model '{self.model}' needs encoder type '{expected}', got '{self.encoder.type}'",
        )


# --------------------------------------------------------------------------- (de)serialisation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` (from YAML) against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            _check(type(None) in args, key, "must not be null")
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        _check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        _check(isinstance(value, list), key, f"expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(ok, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _check(ok, key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _convert(data[f.name], hints[f.name], where)
    return cls(**kwargs)


def _validate_tree(obj: Any, prefix: str = "") -> None:
    """Validate every nested dataclass (useful for configs built in code)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{prefix}{f.name}.")
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None


def config_from_dict(data: dict, cls: type = EchoStreamConfig) -> Any:
    """Build and validate a config dataclass from a plain dict (keys may be partial)."""
    _check(isinstance(data, dict), "<root>", f"expected a mapping, got {type(data).__name__}")
    obj = _from_dict(cls, data)
    _validate_tree(obj)
    return obj


def validate_config(cfg: Any) -> Any:
    """Validate a config built in code; returns it. Raises :class:`ConfigError`."""
    _validate_tree(cfg)
    return cfg


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "fr-en"  # the shipped configs


def config_path(name_or_path: str | Path) -> Path:
    """A config file, or a short name of one in ``configs/fr-en`` (``echostream``,
    ``streamspeech_tiny``, …). Raises FileNotFoundError listing the known names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"config_{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem.removeprefix("config_") for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no config file {str(name_or_path)!r} (known names: {known})")


def load_config(path: str | Path) -> EchoStreamConfig:
    """Read a YAML file into an :class:`EchoStreamConfig`; errors name the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        data = {}
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for name in ("src_spm", "tgt_spm"):
        value = getattr(cfg.vocab, name)
        if value is not None and not Path(value).is_absolute():
            setattr(cfg.vocab, name, str((path.parent / value).resolve()))
    if cfg.features.cmvn_path is not None and not Path(cfg.features.cmvn_path).is_absolute():
        cfg.features.cmvn_path = str((path.parent / cfg.features.cmvn_path).resolve())
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(path)

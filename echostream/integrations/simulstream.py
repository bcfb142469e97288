"""simulstream adapter: :class:`EchoStreamProcessor` runs EchoStream's StreamingTranslator as a
simulstream ``SpeechProcessor`` (simulstream 1.0.0: ``simulstream_inference``, its WebSocket
server and its scorers).

simulstream builds a processor from a YAML file whose ``type`` names the class; the whole file
is handed to it as a ``SimpleNamespace`` and also serves as the scorers' ``--eval-config``::

    type: echostream.integrations.simulstream.EchoStreamProcessor
    speech_chunk_size: 0.32        # seconds of audio per process_chunk call (simulstream's key)
    model: echostream-tiny-fr-en   # bundled model name, or a folder with model.pt [+ vocoder.pt]
    checkpoint: null               # or an EchoStream checkpoint file (takes precedence)
    vocoder: null                  # a unit vocoder .pt (default: the model folder's)
    speech_output: true            # false: text only (no T2U/unit vocoder audio)
    chunk_ms: 320                  # the agent's decision chunk
    mode: incremental              # or recompute (StreamSpeech's agent)
    threads: 1                     # torch CPU threads
    translator: {}                 # extra StreamingTranslator keyword arguments, e.g.
                                   # {segmenter: {max_segment_s: 15}, history: false}
    detokenizer_type: simuleval    # for the scorers: target pieces are joined,
    latency_unit: spm              # "▁" becomes a space (SimulEval's spm detokenizer)

Each ``process_chunk`` returns the target pieces emitted by the decision steps that chunk
completed (sentencepiece pieces, ``▁`` marking a word start; ``▁<id>`` for a model without
tokenizer; the first piece of each new sentence of the translator's segmenter starts a word), so
the words of ``tokens_to_string`` of all of them are the words of the translator's
``translation`` (spacing aside: sentencepiece may decode a lone ``▁`` piece as an extra space).
EchoStream never retracts output: ``deleted_tokens`` is always empty.

``python -m echostream.integrations.simulstream score-quality ARGS`` runs
``simulstream_score_quality ARGS``: simulstream 1.0.0 imports its COMET scorer when it builds the
scorer registry, which fails without the ``unbabel-comet`` package (its ``[eval]`` extra, which
pulls in PyTorch Lightning and Hugging Face models); this entry point first registers a module
``comet`` whose functions raise a clear error, so that the BLEU scorer (``--scorer sacrebleu``)
runs without it.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
from simulstream.server.speech_processors import SAMPLE_RATE, SpeechProcessor
from simulstream.server.speech_processors.incremental_output import IncrementalOutput

from ..text.tokenizer import SPECIAL_IDS

PIECE_SPACE = "▁"  # sentencepiece's word-boundary mark


@dataclass(frozen=True)
class ProcessorConfig:
    """The EchoStream part of a simulstream processor YAML (see module doc)."""

    speech_chunk_size: float = 0.32
    model: str = "echostream-tiny-fr-en"
    checkpoint: str | None = None
    vocoder: str | None = None
    speech_output: bool = True
    chunk_ms: int = 320
    mode: str = "incremental"
    threads: int = 1
    translator: dict = field(default_factory=dict)

    @classmethod
    def from_namespace(cls, ns: SimpleNamespace) -> ProcessorConfig:
        values = {k: getattr(ns, k) for k in cls.__dataclass_fields__ if hasattr(ns, k)}
        if values.get("translator") is None:
            values["translator"] = {}
        return cls(**{k: _plain(v) for k, v in values.items()})

    def __post_init__(self):
        where = "simulstream processor config"
        checks = (
            ("speech_chunk_size", isinstance(self.speech_chunk_size, (int, float))
             and self.speech_chunk_size > 0, "a number of seconds > 0"),
            ("chunk_ms", isinstance(self.chunk_ms, int) and self.chunk_ms > 0, "an integer > 0"),
            ("mode", self.mode in ("incremental", "recompute"), "incremental or recompute"),
            ("threads", isinstance(self.threads, int) and self.threads >= 1, "an integer >= 1"),
            ("speech_output", isinstance(self.speech_output, bool), "true or false"),
            ("model", isinstance(self.model, str) and self.model, "a model name or folder"),
            ("translator", isinstance(self.translator, dict), "a mapping of keyword arguments"),
        )  # fmt: skip
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"{where}: {name}: must be {expected}, got {getattr(self, name)!r}"
                )

    def translator_kwargs(self) -> dict:
        """``translator`` as StreamingTranslator keyword arguments: a mapping given for an
        argument whose default is a dataclass (e.g. ``segmenter``) replaces those fields."""
        from ..streaming.translator import StreamingTranslator

        params = inspect.signature(StreamingTranslator.__init__).parameters
        kwargs = {}
        reserved = ("self", "model", "vocoder", "chunk_ms", "mode")
        where = "simulstream processor config: translator"
        for name, value in self.translator.items():
            if name not in params or name in reserved:
                known = [p for p in params if p not in reserved]
                raise ValueError(
                    f"{where}.{name}: not a StreamingTranslator argument here (known: "
                    f"{', '.join(known)}; chunk_ms and mode are top-level keys)"
                )
            default = params[name].default
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                fields = {f.name for f in dataclasses.fields(default)}
                unknown = sorted(set(value) - fields)
                if unknown:
                    raise ValueError(
                        f"{where}.{name}: unknown field(s) {', '.join(unknown)} (known: "
                        f"{', '.join(sorted(fields))})"
                    )
                value = dataclasses.replace(default, **value)
            kwargs[name] = value
        return kwargs

    @property
    def model_key(self) -> tuple:
        return (self.checkpoint or self.model, self.vocoder, self.speech_output)


def _plain(value):
    """simulstream's SimpleNamespace tree (from the YAML) back to dicts and lists."""
    if isinstance(value, SimpleNamespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_model_and_vocoder(cfg: ProcessorConfig):
    """(EchoStreamModel, UnitVocoder | None) as ``cfg`` names them; nothing is downloaded."""
    from ..streaming.translator import load_model

    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise FileNotFoundError(
            f"simulstream processor config: checkpoint: no file {cfg.checkpoint}"
        )
    model, vocoder = load_model(cfg.model, cfg.checkpoint or None, cfg.vocoder or None)
    return model, (vocoder if cfg.speech_output else None)


class EchoStreamProcessor(SpeechProcessor):
    """EchoStream's simultaneous agent behind simulstream's ``SpeechProcessor`` interface."""

    _loaded: ClassVar[dict[tuple, tuple]] = {}  # model_key → (model, vocoder), shared by streams

    @classmethod
    def load_model(cls, config: SimpleNamespace) -> None:
        import torch

        cfg = ProcessorConfig.from_namespace(config)
        torch.set_num_threads(cfg.threads)
        if cfg.model_key not in cls._loaded:
            cls._loaded[cfg.model_key] = load_model_and_vocoder(cfg)

    def __init__(self, config: SimpleNamespace):
        from ..streaming.translator import StreamingTranslator

        super().__init__(config)
        self.options = ProcessorConfig.from_namespace(config)
        self.load_model(config)
        model, vocoder = self._loaded[self.options.model_key]
        self.translator = StreamingTranslator(
            model,
            vocoder,
            chunk_ms=self.options.chunk_ms,
            mode=self.options.mode,
            **self.options.translator_kwargs(),
        )
        self._tokenizer = model.tgt_tokenizer
        self._emitted, self._segment = 0, 0

    @property
    def speech_chunk_size(self) -> float:
        return float(self.options.speech_chunk_size)

    def _piece(self, token_id: int) -> str | None:
        if self._tokenizer is None:
            return f"{PIECE_SPACE}{token_id}"
        return None if token_id in SPECIAL_IDS else self._tokenizer.id_to_piece(token_id)

    def _output(self, events) -> IncrementalOutput:
        tokens = []
        for event in (e for e in events if e.kind == "text"):
            pieces = [p for p in map(self._piece, event.ids) if p is not None]
            segment = getattr(event, "segment", 0)  # the translator's sentence index
            if pieces and segment != self._segment:  # a new sentence starts a new word
                if self._emitted + len(tokens) and not pieces[0].startswith(PIECE_SPACE):
                    pieces[0] = PIECE_SPACE + pieces[0]
                self._segment = segment
            tokens += pieces
        text = "".join(tokens).replace(PIECE_SPACE, " ")
        new_string = text if self._emitted else text.lstrip()
        self._emitted += len(tokens)
        return IncrementalOutput(tokens, new_string, [], "")

    def process_chunk(self, waveform: np.ndarray) -> IncrementalOutput:
        """(n,) float32 in [-1, 1] at 16 kHz → the target pieces this audio made due."""
        return self._output(self.translator.push(np.asarray(waveform, np.float32), SAMPLE_RATE))

    def end_of_stream(self) -> IncrementalOutput:
        return self._output(self.translator.finish())

    def tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens).replace(PIECE_SPACE, " ").strip()

    def set_source_language(self, language: str) -> None:
        if language and not language.lower().startswith("fr"):
            raise ValueError(f"EchoStream translates French speech; source language {language!r}")

    def set_target_language(self, language: str) -> None:
        if language and not language.lower().startswith("en"):
            raise ValueError(f"EchoStream translates into English; target language {language!r}")

    def clear(self) -> None:
        self.translator.reset()
        self._emitted, self._segment = 0, 0


def _comet_unavailable(*args, **kwargs):
    raise RuntimeError(
        "COMET is not installed: install simulstream's [eval] extra (unbabel-comet) to use "
        "--scorer comet"
    )


def score_quality(argv: list[str]) -> int:
    """``simulstream_score_quality`` with ``argv``, runnable without ``unbabel-comet``."""
    try:
        import comet  # noqa: F401
    except ImportError:
        shim = types.ModuleType("comet")
        shim.__doc__ = "Placeholder registered by EchoStream: unbabel-comet is not installed."
        shim.download_model = shim.load_from_checkpoint = _comet_unavailable
        sys.modules["comet"] = shim
    from simulstream.metrics.score_quality import cli_main

    saved, sys.argv = sys.argv, ["simulstream_score_quality", *argv]
    try:
        cli_main()
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "score-quality":
        print(
            "usage: python -m echostream.integrations.simulstream score-quality "
            "SIMULSTREAM_SCORE_QUALITY_ARGS",
            file=sys.stderr,
        )
        return 2
    return score_quality(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

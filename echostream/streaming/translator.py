"""StreamingTranslator: push PCM as it arrives, get timestamped events back.

    translator = StreamingTranslator(model, vocoder, chunk_ms=320)
    for pcm in microphone:                       # any size, any common sample rate
        for event in translator.push(pcm, 48000):
            print(event.kind, event.time_s, event.text)
    events = translator.finish()

Events carry the *source time* at which they were emitted (seconds of input audio consumed when
the decision was taken) and the compute time of the step that produced them. Decisions are taken
every ``chunk_ms`` of input (StreamSpeech's decision chunk; a multiple of the encoder block is
sensible). ``mode="incremental"`` runs every stage on new data only (EchoStream);
``mode="recompute"`` reproduces StreamSpeech's agent, which recomputes everything at every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..audio.io import StreamingResampler, to_mono_float32
from ..evaluation.latency import InstanceLog
from ..models.checkpoint import load_checkpoint
from ..models.echostream import EchoStreamModel
from ..models.unit_vocoder import UnitVocoder
from .core import IncrementalCore, StepOutput
from .recompute import RecomputeCore


@dataclass
class Event:
    """One output of the translator.

    kind: ``asr`` (source transcript grew), ``text`` (target text grew), ``units``, ``audio``.
    time_s: source audio consumed when it was emitted; compute_ms: that step's compute.
    """

    kind: Literal["asr", "text", "units", "audio"]
    time_s: float
    compute_ms: float
    total_compute_ms: float = 0.0  # compute of the stream so far, this step included
    text: str = ""  # asr/text: the whole text so far
    delta: str = ""  # asr/text: what this event added
    ids: list[int] = field(default_factory=list)  # new token ids or unit ids
    audio: np.ndarray | None = None  # float32 16 kHz samples (audio events)


PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def load_pretrained(name_or_dir: str | Path) -> tuple[EchoStreamModel, UnitVocoder | None]:
    """A bundled model by name (a folder of ``echostream/pretrained/``) or a folder path:
    ``model.pt`` (EchoStream checkpoint with tokenizers and CMVN) and, if present,
    ``vocoder.pt`` (unit vocoder). Nothing is downloaded."""
    folder = Path(name_or_dir)
    if not folder.is_dir():
        folder = PRETRAINED_DIR / str(name_or_dir)
    if not (folder / "model.pt").is_file():
        known = sorted(p.parent.name for p in PRETRAINED_DIR.glob("*/model.pt"))
        raise FileNotFoundError(
            f"no model {name_or_dir!r}: {folder / 'model.pt'} does not "
            f"exist (bundled: {', '.join(known) or 'none'})"
        )
    model, _ = load_checkpoint(folder / "model.pt")
    vocoder = UnitVocoder.load(folder / "vocoder.pt") if (folder / "vocoder.pt").is_file() else None
    return model, vocoder


class StreamingTranslator:
    """One live stream through the simultaneous pipeline (see module docstring)."""

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, **kwargs) -> StreamingTranslator:
        """``StreamingTranslator.from_pretrained("echostream-tiny-fr-en", chunk_ms=320)``."""
        model, vocoder = load_pretrained(name_or_dir)
        return cls(model, vocoder, **kwargs)

    def __init__(
        self,
        model: EchoStreamModel,
        vocoder: UnitVocoder | None = None,
        chunk_ms: int = 320,
        mode: Literal["incremental", "recompute"] = "incremental",
        whole_word: bool | None = None,
        max_len_a: float = 0.5,
        max_len_b: int = 10,
    ):
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        if mode not in ("incremental", "recompute"):
            raise ValueError(f"mode must be 'incremental' or 'recompute', got {mode!r}")
        whole_word = chunk_ms >= 640 if whole_word is None else whole_word
        if whole_word and model.tgt_tokenizer is None:
            whole_word = False  # needs word boundaries from the target tokenizer
        core_cls = IncrementalCore if mode == "incremental" else RecomputeCore
        self.core = core_cls(model, vocoder, whole_word, max_len_a, max_len_b)
        self.model, self.mode, self.chunk_ms = model, mode, chunk_ms
        self.sample_rate = model.cfg.features.sample_rate
        self.chunk_samples = round(self.sample_rate * chunk_ms / 1000)
        self.reset()

    def reset(self) -> None:
        """Start a new stream (drops all state)."""
        self.state = self.core.init_state(1)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._resampler: StreamingResampler | None = None
        self._input_rate: int | None = None
        self.samples_in = 0
        self.asr_ids: list[int] = []
        self.target_ids: list[int] = []
        self.units: list[int] = []
        self.audio: list[np.ndarray] = []
        self.events: list[Event] = []
        self.compute_s = 0.0
        self.step_times: list[tuple[float, float]] = []  # (source time s, compute ms) per step
        self.finished = False

    # ------------------------------------------------------------------ input

    def push(self, pcm: np.ndarray, sample_rate: int | None = None) -> list[Event]:
        """Feed new audio (mono or (samples, channels); float or int16) and run every decision
        chunk that is now complete. Returns the events of those steps."""
        if self.finished:
            raise RuntimeError("push() after finish(): call reset() to start a new stream")
        pcm = self._to_16k(pcm, sample_rate or self.sample_rate, last=False)
        self._buffer = np.concatenate([self._buffer, pcm])
        events: list[Event] = []
        while len(self._buffer) >= self.chunk_samples:
            chunk, self._buffer = (
                self._buffer[: self.chunk_samples],
                self._buffer[self.chunk_samples :],
            )
            events += self._step(chunk, final=False)
        return events

    def finish(self) -> list[Event]:
        """End of source: flush every stage (decode to EOS, vocode the rest)."""
        if self.finished:
            return []
        tail = self._buffer
        if self._resampler is not None:
            tail = np.concatenate(
                [tail, self._resampler.process(np.zeros(0, np.float32), last=True)]
            )
        self._buffer = np.zeros(0, dtype=np.float32)
        events = self._step(tail, final=True)
        self.finished = True
        return events

    def _to_16k(self, pcm: np.ndarray, rate: int, last: bool) -> np.ndarray:
        pcm = (
            to_mono_float32(np.asarray(pcm), name="pushed audio")
            if np.size(pcm)
            else np.zeros(0, np.float32)
        )
        if self._input_rate is None:
            self._input_rate = rate
        elif rate != self._input_rate:
            raise ValueError(f"sample rate changed mid-stream: {self._input_rate} -> {rate}")
        if rate == self.sample_rate:
            return pcm
        if self._resampler is None:
            self._resampler = StreamingResampler(rate, self.sample_rate)
        return self._resampler.process(pcm, last=last)

    # ------------------------------------------------------------------ one step

    def _step(self, chunk: np.ndarray, final: bool) -> list[Event]:
        pcm = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))[None]
        t0 = time.perf_counter()
        outputs, self.state = self.core.step(
            pcm, torch.tensor([pcm.shape[1]]), self.state, final=final
        )
        compute_ms = (time.perf_counter() - t0) * 1000
        self.compute_s += compute_ms / 1000
        self.samples_in += pcm.shape[1]
        self.step_times.append((self.samples_in / self.sample_rate, compute_ms))
        events = self._events(outputs[0], self.samples_in / self.sample_rate, compute_ms)
        self.events += events
        return events

    def _events(self, out: StepOutput, time_s: float, compute_ms: float) -> list[Event]:
        events: list[Event] = []
        total_ms = self.compute_s * 1000
        src_tok, tgt_tok = self.model.src_tokenizer, self.model.tgt_tokenizer
        for kind, new, ids, tok in (
            ("asr", out.asr_ids, self.asr_ids, src_tok),
            ("text", out.target_ids, self.target_ids, tgt_tok),
        ):
            if not new:
                continue
            before = tok.decode(ids) if tok is not None else ""
            ids += new
            text = tok.decode(ids) if tok is not None else " ".join(map(str, ids))
            delta = text[len(before) :] if text.startswith(before) else text
            events.append(
                Event(kind, time_s, compute_ms, total_ms, text=text, delta=delta, ids=list(new))
            )
        if out.units:
            self.units += out.units
            events.append(Event("units", time_s, compute_ms, total_ms, ids=list(out.units)))
        if out.audio.numel():
            audio = out.audio.numpy().astype(np.float32)
            self.audio.append(audio)
            events.append(Event("audio", time_s, compute_ms, total_ms, audio=audio))
        return events

    # ------------------------------------------------------------------ results

    @property
    def transcript(self) -> str:
        tok = self.model.src_tokenizer
        return tok.decode(self.asr_ids) if tok is not None else " ".join(map(str, self.asr_ids))

    @property
    def translation(self) -> str:
        tok = self.model.tgt_tokenizer
        return (
            tok.decode(self.target_ids) if tok is not None else " ".join(map(str, self.target_ids))
        )

    def output_audio(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    def state_bytes(self) -> int:
        return self.state.nbytes()

    def instance_log(self, reference: str | None = None, index: int = 0) -> InstanceLog:
        """The stream's outputs with their timing, for SimulEval-style latency metrics: each
        target word is delayed by the source time at which it was emitted (a word counts once
        it is followed by another or the stream ended), each audio segment likewise; elapsed
        times add the compute spent so far."""
        log = InstanceLog(
            source_length_ms=1000 * self.samples_in / self.sample_rate,
            reference=reference,
            index=index,
        )
        logged = 0
        texts = [e for e in self.events if e.kind == "text"]
        for i, e in enumerate(texts):
            words = e.text.split()
            complete = len(words) if (i == len(texts) - 1 and self.finished) else len(words) - 1
            if complete > logged:
                log.add_text(words[logged:complete], 1000 * e.time_s, e.total_compute_ms)
                logged = complete
        for e in self.events:
            if e.kind == "audio":
                log.add_audio(len(e.audio), self.sample_rate, 1000 * e.time_s, e.total_compute_ms)
        log.finish(self.compute_s * 1000)
        return log

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

Long streams (a talk, an hour) are cut into sentences by ``segmenter``
(:class:`~echostream.streaming.segmenter.SegmenterConfig`; on by default, it never fires on a
short utterance without a pause): every stage's state and per-step compute stay bounded. Text
events carry the current sentence only (``Event.text``/``delta``, sentence ``Event.segment``;
:attr:`StreamingTranslator.translation` joins the sentences), so an event's size and the work
to make it do not grow with the stream; with ``history=False`` the translator also keeps nothing
of the past (no events, audio, ids or step times), so its memory is flat too.
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
from .segmenter import SegmenterConfig


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
    text: str = ""  # asr/text: the text of the current sentence (``segment``) so far
    delta: str = ""  # asr/text: what this event added to it
    ids: list[int] = field(default_factory=list)  # new token ids or unit ids
    audio: np.ndarray | None = None  # float32 16 kHz samples (audio events)
    segment: int = 0  # the sentence (segment) of the stream it belongs to, from 0


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


def load_model(
    name_or_dir: str | Path, checkpoint: str | Path | None = None, vocoder: str | Path | None = None
) -> tuple[EchoStreamModel, UnitVocoder | None]:
    """A model as the tools name it: ``checkpoint`` (an EchoStream checkpoint file, no vocoder)
    if given, else the bundled model or folder ``name_or_dir`` (:func:`load_pretrained`);
    ``vocoder`` (a unit vocoder file) replaces the model's own. Both in eval mode."""
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint)
        own_vocoder = None
    else:
        model, own_vocoder = load_pretrained(name_or_dir)
    voc = UnitVocoder.load(vocoder) if vocoder is not None else own_vocoder
    return model.eval(), (voc.eval() if voc is not None else None)


class StreamingTranslator:
    """One live stream through the simultaneous pipeline (see module docstring)."""

    history = True  # keep events, ids, audio and step times (``history=False``: nothing)

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
        segmenter: SegmenterConfig | None = SegmenterConfig(),  # noqa: B008 - frozen values
        history: bool = True,
    ):
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        if mode not in ("incremental", "recompute"):
            raise ValueError(f"mode must be 'incremental' or 'recompute', got {mode!r}")
        whole_word = chunk_ms >= 640 if whole_word is None else whole_word
        if whole_word and model.tgt_tokenizer is None:
            whole_word = False  # needs word boundaries from the target tokenizer
        core_cls = IncrementalCore if mode == "incremental" else RecomputeCore
        self.history = history
        core = core_cls(model, vocoder, whole_word, max_len_a, max_len_b, segmenter)
        self._attach(core, chunk_ms)

    def _attach(self, core: IncrementalCore | RecomputeCore, chunk_ms: int) -> None:
        """Run on ``core`` (the server shares one among its streams) in ``chunk_ms`` steps."""
        self.core, self.model = core, core.model
        self.mode = "incremental" if isinstance(core, IncrementalCore) else "recompute"
        self.chunk_ms, self.sample_rate = chunk_ms, core.sample_rate
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
        self.segment = 0  # the current sentence
        self.segment_ends: list[float] = []  # source time at which each sentence was closed
        self._close_compute_ms: list[float] = []  # compute of the stream when each was closed
        # per kind ("asr", "text"): texts of the closed sentences, ids of the current one
        self._done: dict[str, list[str]] = {"asr": [], "text": []}
        self._current: dict[str, list[int]] = {"asr": [], "text": []}

    # ------------------------------------------------------------------ input

    def push(self, pcm: np.ndarray, sample_rate: int | None = None) -> list[Event]:
        """Feed new audio (mono or (samples, channels); float or int16) and run every decision
        chunk that is now complete. Returns the events of those steps."""
        if self.finished:
            raise RuntimeError("push() after finish(): call reset() to start a new stream")
        pcm = self._to_16k(pcm, sample_rate or self.sample_rate, last=False)
        self._buffer = np.concatenate([self._buffer, pcm])
        events: list[Event] = []
        while (chunk := self._next_chunk()) is not None:
            events += self._step(chunk, final=False)
        return events

    def finish(self) -> list[Event]:
        """End of source: flush every stage (decode to EOS, vocode the rest)."""
        if self.finished:
            return []
        events = self._step(self._tail(), final=True)
        self.finished = True
        return events

    def _next_chunk(self) -> np.ndarray | None:
        """The next complete decision chunk of the 16 kHz buffer (taken out of it), or None."""
        if len(self._buffer) < self.chunk_samples:
            return None
        chunk, self._buffer = self._buffer[: self.chunk_samples], self._buffer[self.chunk_samples :]
        return chunk

    def _tail(self) -> np.ndarray:
        """Everything left at the end of the source, the resampler's last samples included."""
        tail = self._buffer
        if self._resampler is not None:
            tail = np.concatenate(
                [tail, self._resampler.process(np.zeros(0, np.float32), last=True)]
            )
        self._buffer = np.zeros(0, dtype=np.float32)
        return tail

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
        return self._book(outputs[0], pcm.shape[1], (time.perf_counter() - t0) * 1000)

    def _book(self, out: StepOutput, num_samples: int, compute_ms: float) -> list[Event]:
        """Account one step of ``num_samples`` source samples: times, events (kept with
        ``history``). ``self.state`` is already the state after the step."""
        self.compute_s += compute_ms / 1000
        self.samples_in += num_samples
        if self.history:
            self.step_times.append((self.samples_in / self.sample_rate, compute_ms))
        events = self._events(out, self.samples_in / self.sample_rate, compute_ms)
        if self.history:
            self.events += events
        return events

    def _events(self, out: StepOutput, time_s: float, compute_ms: float) -> list[Event]:
        events: list[Event] = []
        total_ms = self.compute_s * 1000
        seg = self.segment
        for kind, new, ids, tok in (
            ("asr", out.asr_ids, self.asr_ids, self.model.src_tokenizer),
            ("text", out.target_ids, self.target_ids, self.model.tgt_tokenizer),
        ):
            if not new:
                continue
            current = self._current[kind]
            before = self._decode(tok, current)
            current += new
            if self.history:
                ids += new
            text = self._decode(tok, current)
            delta = text[len(before) :] if text.startswith(before) else text
            events.append(
                Event(kind, time_s, compute_ms, total_ms, text, delta, list(new), segment=seg)
            )
        if out.units:
            if self.history:
                self.units += out.units
            events.append(
                Event("units", time_s, compute_ms, total_ms, ids=list(out.units), segment=seg)
            )
        if out.audio.numel():
            audio = out.audio.numpy().astype(np.float32)
            if self.history:
                self.audio.append(audio)
            events.append(Event("audio", time_s, compute_ms, total_ms, audio=audio, segment=seg))
        if out.segment_end:  # the sentence is closed: its text is final
            tokenizers = {"asr": self.model.src_tokenizer, "text": self.model.tgt_tokenizer}
            for kind, tok in tokenizers.items():
                if self.history and self._current[kind]:
                    self._done[kind].append(self._decode(tok, self._current[kind]))
                self._current[kind] = []
            self.segment += 1
            if self.history:
                self.segment_ends.append(time_s)
                self._close_compute_ms.append(total_ms)
        return events

    @staticmethod
    def _decode(tok, ids: list[int]) -> str:
        return tok.decode(ids) if tok is not None else " ".join(map(str, ids))

    # ------------------------------------------------------------------ results

    @property
    def transcript(self) -> str:
        """The source transcript so far (its sentences joined by spaces)."""
        return _join(
            self._done["asr"], self._decode(self.model.src_tokenizer, self._current["asr"])
        )

    @property
    def translation(self) -> str:
        """The translation so far (its sentences joined by spaces)."""
        return _join(
            self._done["text"], self._decode(self.model.tgt_tokenizer, self._current["text"])
        )

    def output_audio(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    def state_bytes(self) -> int:
        return self.state.nbytes()

    def instance_log(self, reference: str | None = None, index: int = 0) -> InstanceLog:
        """The stream's outputs with their timing, for SimulEval-style latency metrics: each
        target word is delayed by the source time at which it was emitted (a word counts once
        it is followed by another in its sentence, or its sentence was closed: the end of the
        stream closes the last one), each audio segment likewise; elapsed times add the compute
        spent so far."""
        log = InstanceLog(
            source_length_ms=1000 * self.samples_in / self.sample_rate,
            reference=reference,
            index=index,
        )
        total = self.compute_s * 1000
        segment, logged, words = 0, 0, []

        def close(index: int) -> None:  # a closed sentence's last words are final
            if index < len(self.segment_ends) and len(words) > logged:
                time_ms = 1000 * self.segment_ends[index]
                log.add_text(words[logged:], time_ms, self._close_compute_ms[index])

        for e in self.events:
            if e.kind != "text":
                continue
            if e.segment != segment:
                close(segment)
                segment, logged = e.segment, 0
            words = e.text.split()
            if len(words) - 1 > logged:  # all but the last word are complete
                log.add_text(words[logged:-1], 1000 * e.time_s, e.total_compute_ms)
                logged = len(words) - 1
        close(segment)
        for e in self.events:
            if e.kind == "audio":
                log.add_audio(len(e.audio), self.sample_rate, 1000 * e.time_s, e.total_compute_ms)
        log.finish(total)
        return log


def _join(done: list[str], current: str) -> str:
    """Sentences joined by one space (a new sentence starts a new word)."""
    return " ".join([*done, current] if current else done)

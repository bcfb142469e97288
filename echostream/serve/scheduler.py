"""Batched scheduling of live streams: one model step per tick for every stream that is ready.

Each connection owns a :class:`ServedStream` — StreamingTranslator's per-stream bookkeeping
(resampler, 16 kHz buffer, token ids, units, audio, events, instance log) without its own model
step. The :class:`Scheduler` runs one asyncio task::

    loop:
        take one decision chunk from every stream that has one complete (or, once stopped, its
        tail: the stream's last, final step)
        group them by (whole-word rule, final)           # at most 4 groups, usually 1
        in a worker thread: per group, stack the TranslatorStates, ONE IncrementalCore.step
            on pcm (B, S) with pcm_len (B,), unstack      # the event loop keeps serving meanwhile
        hand each stream its output: events → messages → the connection's outbox

A tick starts as soon as the previous one ended and a stream is ready, so the streams whose
chunks completed while the model was busy share the next step. Streams that finish are stepped
with ``final=True`` in their own sub-batch (the core's contract), on a second worker thread:
a flush decodes to EOS and vocodes the rest, far longer than a live step, and must not hold up
the live streams' ticks. Outputs equal a single-stream
:class:`~echostream.streaming.translator.StreamingTranslator` on the same audio (same chunks,
same order of operations; batching changes audio samples by float round-off only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..evaluation.latency import instance_latency
from ..models.echostream import EchoStreamModel
from ..models.unit_vocoder import UnitVocoder
from ..streaming.core import IncrementalCore, StepOutput, TranslatorState
from ..streaming.translator import Event, StreamingTranslator
from .protocol import ProtocolError, event_messages

logger = logging.getLogger(__name__)

Outbox = asyncio.Queue  # items: ("send", dict | bytes) or ("close", code, reason)


class ServedStream(StreamingTranslator):
    """One client's stream, stepped by the :class:`Scheduler` instead of by ``push``.

    Reuses StreamingTranslator's resampling, event building (``_events``: tokenizer decode,
    deltas), results (``transcript``, ``translation``, ``output_audio``) and ``instance_log``;
    shares the scheduler's :class:`IncrementalCore` instead of building one. ``keep_audio``:
    keep every output (for ``output_audio``); otherwise sent audio samples are dropped (see
    :meth:`compact`), so that an hour-long stream does not hold an hour of audio.
    """

    def __init__(
        self,
        stream_id: str,
        core: IncrementalCore,
        chunk_ms: int,
        input_rate: int,
        outbox: Outbox,
        input_format: str = "f32le",
        max_seconds: float = 3600.0,
        progress: bool = False,
        keep_audio: bool = False,
    ):
        self._attach(core, chunk_ms)  # StreamingTranslator's set-up with the shared core
        self.stream_id, self.input_rate, self.input_format = stream_id, input_rate, input_format
        self.outbox, self.max_seconds, self.progress = outbox, max_seconds, progress
        self.keep_audio = keep_audio
        self.source_samples = 0  # at the client's rate
        self.stopping = False  # "stop" received: flush once the buffer is drained
        self.closed = False  # released (client gone, error, or done)
        self.stop_at = 0.0
        self.ready_at: deque[float] = deque()  # when each buffered complete chunk was complete
        self.server_ms: list[float] = []  # per step: chunk complete → its messages queued
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------------ input (event loop)

    def feed(self, pcm: np.ndarray) -> None:
        """Append (N,) float32 samples at ``input_rate`` (resampled to 16 kHz here)."""
        if self.closed or self.stopping:
            raise RuntimeError(f"stream {self.stream_id}: feed() after stop or close")
        self.source_samples += len(pcm)
        if self.source_samples > self.max_seconds * self.input_rate:
            raise ProtocolError(
                "too_long",
                f"stream exceeds the server's maximum of {self.max_seconds:g} s of source audio",
            )
        if len(pcm):
            self._buffer = np.concatenate(
                [self._buffer, self._to_16k(pcm, self.input_rate, last=False)]
            )
        now = time.perf_counter()
        while len(self.ready_at) < len(self._buffer) // self.chunk_samples:
            self.ready_at.append(now)

    def stop(self) -> None:
        self.stopping, self.stop_at = True, time.perf_counter()

    @property
    def buffered_seconds(self) -> float:
        """16 kHz audio waiting for the model."""
        return len(self._buffer) / self.sample_rate

    @property
    def source_seconds(self) -> float:
        return self.source_samples / self.input_rate

    def take_chunk(self) -> tuple[np.ndarray, bool, float] | None:
        """The next step's 16 kHz samples, whether it is the final step, and when it was ready;
        ``None`` if nothing is due. The same chunks as StreamingTranslator.push/finish."""
        if self.closed or self.finished:
            return None
        if (chunk := self._next_chunk()) is not None:
            return chunk, False, self.ready_at.popleft()
        if not self.stopping:
            return None
        self.finished = True  # the final step is taken; nothing is stepped after it
        return self._tail(), True, self.stop_at

    # ------------------------------------------------------------------ output (event loop)

    def apply(
        self, out: StepOutput, state: TranslatorState, num_samples: int, compute_ms: float
    ) -> list[Event]:
        """Book one step's output (as StreamingTranslator._step after its core.step)."""
        self.state = state
        return self._book(out, num_samples, compute_ms)

    def compact(self, events: list[Event]) -> None:
        """After ``events`` were sent (unless ``keep_audio``): drop their output samples (the
        events keep their length) and the whole-transcript copies of ``asr`` events, which
        nothing reads later; ``text`` events stay whole for ``instance_log``."""
        if self.keep_audio:
            return
        self.audio.clear()
        for e in events:
            if e.audio is not None:
                e.audio = np.broadcast_to(np.zeros(1, np.float32), e.audio.shape)  # no memory
            if e.kind == "asr":
                e.text = ""

    def release(self) -> None:
        """Free what the stream holds (client gone or error); later steps skip it."""
        self.closed = True
        self._buffer = np.zeros(0, np.float32)
        self.audio.clear()
        self.events.clear()
        self.state = None

    def summary(self) -> dict:
        """The ``done`` message's ``latency``: SimulEval text/speech latency of this stream
        (ms of source; ``*_CA`` computation-aware, compute = the batched steps it was in),
        per-chunk server latency and compute."""
        log = self.instance_log()
        source_s = self.samples_in / self.sample_rate
        result: dict = {"text": None, "speech": None}
        if log.words:
            result["text"] = instance_latency(
                log, "text", metrics=("AL", "LAAL", "AP", "DAL", "StartOffset"), use_ref_len=False
            )
            ca = instance_latency(log, "text", True, False, metrics=("AL", "LAAL"))
            result["text"].update(AL_CA=ca["AL"], LAAL_CA=ca["LAAL"])
        if log.segment_delays_ms:
            result["speech"] = instance_latency(
                log, "speech", metrics=("StartOffset", "EndOffset", "AL"), use_ref_len=False
            )
        server = np.asarray(self.server_ms) if self.server_ms else np.zeros(1)
        steps = np.asarray([ms for _, ms in self.step_times] or [0.0])
        result.update(
            steps=len(self.step_times),
            server_ms_mean=float(server.mean()),
            server_ms_p95=float(np.percentile(server, 95)),
            server_ms_max=float(server.max()),
            step_compute_ms_mean=float(steps.mean()),
            step_compute_ms_p95=float(np.percentile(steps, 95)),
            compute_rtf=self.compute_s / source_s if source_s else 0.0,
            mean_batch_size=float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0,
        )
        return result

    def done_message(self) -> dict:
        audio_samples = sum(len(e.audio) for e in self.events if e.kind == "audio")
        return {
            "type": "done",
            "stream_id": self.stream_id,
            "transcript": self.transcript,
            "translation": self.translation,
            "units": list(self.units),
            "audio_seconds": audio_samples / self.sample_rate,
            "source_seconds": self.source_seconds,
            "latency": self.summary(),
        }


@dataclass
class _Group:
    """Streams stepped together: same core, same ``final``."""

    core: IncrementalCore
    final: bool
    streams: list[ServedStream] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    ready_at: list[float] = field(default_factory=list)
    states: list[TranslatorState] = field(default_factory=list)


def _step_group(group: _Group) -> tuple[list[StepOutput], list[TranslatorState], float]:
    """Worker thread: stack, ONE core step for the whole group, unstack. Returns the outputs,
    the new per-stream states and the wall time (ms, stacking included)."""
    t0 = time.perf_counter()
    lengths = [len(c) for c in group.chunks]
    pcm = torch.zeros(len(lengths), max(lengths))  # (B, S) 16 kHz, right-padded
    for b, chunk in enumerate(group.chunks):
        pcm[b, : len(chunk)] = torch.from_numpy(np.ascontiguousarray(chunk, np.float32))
    pcm_len = torch.tensor(lengths)  # (B,)
    single = len(lengths) == 1
    state = group.states[0] if single else TranslatorState.stack(group.states)
    outputs, state = group.core.step(pcm, pcm_len, state, final=group.final)
    states = [state] if single else state.unstack()
    return outputs, states, (time.perf_counter() - t0) * 1000


def _step_groups(groups: list[_Group]) -> list[tuple[_Group, tuple | BaseException]]:
    """Worker thread: step every group. If a batched step raises, each of its streams is
    retried alone (states are values: nothing was changed), so only a stream that fails by
    itself gets an error."""
    results: list[tuple[_Group, tuple | BaseException]] = []
    for group in groups:
        try:
            results.append((group, _step_group(group)))
            continue
        except Exception as err:
            logger.exception("model step failed for %d stream(s)", len(group.streams))
            if len(group.streams) == 1:
                results.append((group, err))
                continue
        for i in range(len(group.streams)):
            single = _Group(
                group.core,
                group.final,
                group.streams[i : i + 1],
                group.chunks[i : i + 1],
                group.ready_at[i : i + 1],
                group.states[i : i + 1],
            )
            try:
                results.append((single, _step_group(single)))
            except Exception as err:
                results.append((single, err))
    return results


class Scheduler:
    """Owns the model, the streams and the step loop (see module docstring).

    Use from the event loop: ``start()``, ``open(...)``, ``notify()`` after feeding or stopping
    a stream, ``close(stream)`` when its client is gone, ``stop()`` at shutdown. The model runs
    in two worker threads (live steps; final steps), so the event loop stays responsive while
    torch computes.
    """

    def __init__(
        self,
        model: EchoStreamModel,
        vocoder: UnitVocoder | None = None,
        max_len_a: float = 0.5,
        max_len_b: int = 10,
    ):
        self.model, self.vocoder = model.eval(), vocoder
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self.streams: dict[str, ServedStream] = {}
        self._cores: dict[bool, IncrementalCore] = {}
        self._wake = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None  # live steps
        self._flush_executor: ThreadPoolExecutor | None = None  # final steps
        self._pending_finals: list[_Group] = []  # waiting for the flush thread
        self._flush_task: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self.steps = 0  # model steps run
        self.stream_steps = 0  # sum of their batch sizes
        self.compute_s = 0.0
        # the same for live (not final) steps only: the cost of batching, flushes apart
        self.live_steps, self.live_stream_steps, self.live_compute_s = 0, 0, 0.0
        self.started_at = time.time()

    def core(self, whole_word: bool) -> IncrementalCore:
        if whole_word not in self._cores:
            self._cores[whole_word] = IncrementalCore(
                self.model, self.vocoder, whole_word, self.max_len_a, self.max_len_b
            )
        return self._cores[whole_word]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="echostream-step")
            self._flush_executor = ThreadPoolExecutor(1, thread_name_prefix="echostream-flush")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._flush_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = self._flush_task = None
        self._pending_finals = []
        for executor in (self._executor, self._flush_executor):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        self._executor = self._flush_executor = None
        for stream in list(self.streams.values()):
            self.close(stream)

    def open(
        self,
        chunk_ms: int,
        input_rate: int,
        outbox: Outbox,
        input_format: str = "f32le",
        max_seconds: float = 3600.0,
        progress: bool = False,
        keep_audio: bool = False,
        admit: bool = True,
    ) -> ServedStream:
        """A new stream; ``admit=False``: not scheduled until :meth:`admit` (e.g. to feed a
        whole file from another thread first)."""
        # StreamingTranslator's default: whole words from 640 ms chunks (needs the target
        # tokenizer's word boundaries)
        whole_word = chunk_ms >= 640 and self.model.tgt_tokenizer is not None
        stream = ServedStream(
            secrets.token_hex(8),
            self.core(whole_word),
            chunk_ms,
            input_rate,
            outbox,
            input_format,
            max_seconds,
            progress,
            keep_audio,
        )
        if admit:
            self.admit(stream)
        return stream

    def admit(self, stream: ServedStream) -> None:
        self.streams[stream.stream_id] = stream
        self.notify()

    def close(self, stream: ServedStream) -> None:
        """Release a stream now (idempotent); a step it is part of is discarded for it."""
        self.streams.pop(stream.stream_id, None)
        if not stream.closed:
            stream.release()

    def notify(self) -> None:
        """A stream got audio or was stopped: wake the loop if it sleeps."""
        self._wake.set()

    @property
    def mean_batch_size(self) -> float:
        return self.stream_steps / self.steps if self.steps else 0.0

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            groups = self._collect()
            if not groups:
                self._wake.clear()
                await self._wake.wait()
                continue
            # final steps (decode to EOS, vocode the rest: far longer than a live step) run on
            # their own thread, so that they never hold up the live streams' next tick; those
            # that arrive while it is busy are batched into its next step
            self._pending_finals += [group for group in groups if group.final]
            if self._pending_finals and (self._flush_task is None or self._flush_task.done()):
                self._flush_task = asyncio.create_task(self._flush_loop())
            live = [group for group in groups if not group.final]
            if live:
                await self._step(self._executor, live)

    async def _flush_loop(self) -> None:
        while self._pending_finals:
            merged: dict[int, _Group] = {}
            for group in self._pending_finals:
                into = merged.setdefault(id(group.core), _Group(group.core, True))
                for i, stream in enumerate(group.streams):
                    if not stream.closed:  # its client left while it waited
                        into.streams.append(stream)
                        into.chunks.append(group.chunks[i])
                        into.ready_at.append(group.ready_at[i])
                        into.states.append(group.states[i])
            self._pending_finals = []
            groups = [group for group in merged.values() if group.streams]
            if groups:
                await self._step(self._flush_executor, groups)

    async def _step(self, executor: ThreadPoolExecutor, groups: list[_Group]) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(executor, _step_groups, groups)
        for group, result in results:
            try:
                self._dispatch(group, result)
            except Exception:  # never let one stream's bookkeeping stop the loop
                logger.exception("dispatching a step's output failed")
                for stream in group.streams:
                    self._fail(stream, "internal", "the server failed on this stream")

    def _collect(self) -> list[_Group]:
        groups: dict[tuple[bool, bool], _Group] = {}
        for stream in list(self.streams.values()):
            taken = stream.take_chunk()
            if taken is None:
                continue
            chunk, final, ready_at = taken
            key = (stream.core.whole_word, final)
            if key not in groups:
                groups[key] = _Group(stream.core, final)
            group = groups[key]
            group.streams.append(stream)
            group.chunks.append(chunk)
            group.ready_at.append(ready_at)
            group.states.append(stream.state)
        return list(groups.values())

    def _dispatch(self, group: _Group, result: tuple | BaseException) -> None:
        if isinstance(result, BaseException):
            for stream in group.streams:
                self._fail(stream, "internal", f"model step failed: {result!r}")
            return
        outputs, states, compute_ms = result
        batch = len(group.streams)
        self.steps += 1
        self.stream_steps += batch
        self.compute_s += compute_ms / 1000
        if not group.final:
            self.live_steps += 1
            self.live_stream_steps += batch
            self.live_compute_s += compute_ms / 1000
        now = time.perf_counter()
        for stream, out, state, chunk, ready_at in zip(
            group.streams, outputs, states, group.chunks, group.ready_at, strict=True
        ):
            if stream.closed:
                continue  # client left while the step ran: drop its output
            events = stream.apply(out, state, len(chunk), compute_ms)
            server_ms = (now - ready_at) * 1000
            stream.server_ms.append(server_ms)
            stream.batch_sizes.append(batch)
            put = stream.outbox.put_nowait
            for event in events:
                for message in event_messages(event, batch):
                    put(("send", message))
            stream.compact(events)
            if stream.progress:
                put(
                    (
                        "send",
                        {
                            "type": "progress",
                            "time_s": stream.samples_in / stream.sample_rate,
                            "compute_ms": round(compute_ms, 3),
                            "batch_size": batch,
                            "server_ms": round(server_ms, 3),
                            "final": group.final,
                        },
                    )
                )
            if group.final:
                put(("send", stream.done_message()))
                put(("close", 1000, "done"))
                self.streams.pop(stream.stream_id, None)  # done: no longer scheduled
                stream.state = None

    def _fail(self, stream: ServedStream, code: str, message: str) -> None:
        err = ProtocolError(code, message)
        stream.outbox.put_nowait(("send", err.to_message()))
        stream.outbox.put_nowait(("close", err.close_code, code))
        self.close(stream)

"""The WebSocket protocol of ``echostream serve`` (``/ws/translate``): parsing and messages.

Client → server::

    {"type": "start", "sample_rate": 48000, "format": "f32le" | "s16le", "chunk_ms": 320,
     "progress": false}                         # chunk_ms and progress optional
    <binary frames: mono little-endian PCM in that format and rate, any size ≤ the max message>
    {"type": "stop"}                            # end of source: flush, send the rest, "done"

Server → client (text JSON, plus one binary frame after each ``audio`` message)::

    {"type": "ready", "stream_id", "sample_rate_out": 16000, "chunk_ms", "max_message_bytes",
     "max_seconds", "max_buffer_seconds"}
    {"type": "asr" | "text", "segment": sentence index (from 0), "text": that sentence so far,
     "delta": what this message added to it, "time_s", "compute_ms", "batch_size"}
                                                # a higher "segment" starts a new sentence
    {"type": "audio", "time_s", "samples": N, "compute_ms"} + N s16le 16 kHz mono samples
    {"type": "progress", "time_s", "compute_ms", "batch_size", "server_ms", "final"}
                                                # only with "progress": true, after every step
    {"type": "done", "transcript", "translation", "units", "audio_seconds", "source_seconds",
     "latency": {...}}
    {"type": "error", "code", "message"}        # then the server closes with ``close_code``

Unknown fields in client messages are ignored (forward compatibility); unknown ``type`` values
are errors. Every error names the offending field or message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio.io import AudioError, to_mono_float32
from ..streaming.translator import Event

FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 96000
CHUNK_MS_STEP, MAX_CHUNK_MS = 40, 2000  # decision chunks: multiples of the 40 ms encoder frame

# WebSocket close codes (RFC 6455 §7.4.1)
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003  # a message the server cannot interpret
CLOSE_POLICY = 1008  # a well-formed message that breaks the protocol's rules
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013

# error code -> close code (the table in docs/serve.md)
ERROR_CLOSE_CODES = {
    "bad_json": CLOSE_UNSUPPORTED_DATA,  # text frame that is not a JSON object
    "binary_before_start": CLOSE_UNSUPPORTED_DATA,
    "bad_audio": CLOSE_UNSUPPORTED_DATA,  # byte count not a whole number of samples, NaN/inf
    "unknown_type": CLOSE_POLICY,  # missing or unknown "type"
    "bad_start": CLOSE_POLICY,  # sample_rate / format / chunk_ms invalid
    "start_twice": CLOSE_POLICY,
    "after_stop": CLOSE_POLICY,  # audio or stop after "stop"
    "stop_before_start": CLOSE_POLICY,
    "start_timeout": CLOSE_POLICY,  # no "start" within --start-timeout seconds
    "too_long": CLOSE_POLICY,  # more source audio than --max-seconds
    "message_too_big": CLOSE_TOO_BIG,  # a message over --max-message-bytes
    "server_full": CLOSE_TRY_LATER,  # --max-streams streams already open
    "overloaded": CLOSE_TRY_LATER,  # over --max-buffer-seconds of the stream's audio waiting
    "internal": CLOSE_INTERNAL,  # the model step failed (a bug): only the streams in that step
}


class ProtocolError(Exception):
    """A client broke the protocol: send ``{"type": "error", code, message}``, then close."""

    def __init__(self, code: str, message: str):
        if code not in ERROR_CLOSE_CODES:
            raise ValueError(f"unknown protocol error code {code!r}")
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def close_code(self) -> int:
        return ERROR_CLOSE_CODES[self.code]

    def to_message(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


@dataclass(frozen=True)
class StartRequest:
    """A validated ``start`` message."""

    sample_rate: int
    format: str
    chunk_ms: int
    progress: bool = False


def parse_text(text: str) -> dict[str, Any]:
    """A client text frame as a JSON object with a known ``type`` (``start`` or ``stop``)."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ProtocolError("bad_json", f"text message is not valid JSON: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError(
            "bad_json", f"text message must be a JSON object, got {type(message).__name__}"
        )
    kind = message.get("type")
    if kind not in ("start", "stop"):
        what = "missing field 'type'" if kind is None else f"unknown message type {kind!r}"
        raise ProtocolError("unknown_type", f"{what}; expected 'start' or 'stop'")
    return message


def parse_start(message: dict[str, Any], default_chunk_ms: int) -> StartRequest:
    """Validate a ``start`` message (see module docstring); ``bad_start`` names the field."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    rate = message.get("sample_rate")
    if not is_int(rate) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            "bad_start",
            f"start.sample_rate: must be an integer in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} "
            f"Hz, got {rate!r}",
        )
    fmt = message.get("format")
    if fmt not in FORMATS:
        raise ProtocolError(
            "bad_start", f"start.format: must be one of {sorted(FORMATS)}, got {fmt!r}"
        )
    chunk_ms = message.get("chunk_ms", default_chunk_ms)
    if not is_int(chunk_ms) or chunk_ms <= 0 or chunk_ms % CHUNK_MS_STEP or chunk_ms > MAX_CHUNK_MS:
        raise ProtocolError(
            "bad_start",
            f"start.chunk_ms: must be a positive multiple of {CHUNK_MS_STEP} up to "
            f"{MAX_CHUNK_MS}, got {chunk_ms!r}",
        )
    progress = message.get("progress", False)
    if not isinstance(progress, bool):
        raise ProtocolError("bad_start", f"start.progress: must be true or false, got {progress!r}")
    return StartRequest(rate, fmt, chunk_ms, progress)


def decode_pcm(data: bytes, fmt: str) -> np.ndarray:
    """A binary frame of mono little-endian PCM as (N,) float32 in [-1, 1] (N may be 0)."""
    dtype = FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise ProtocolError(
            "bad_audio",
            f"binary message of {len(data)} bytes is not a whole number of {fmt} samples "
            f"({dtype.itemsize} bytes each)",
        )
    if not data:
        return np.zeros(0, np.float32)
    try:
        return to_mono_float32(np.frombuffer(data, dtype=dtype), name="binary message")
    except AudioError as err:
        raise ProtocolError("bad_audio", str(err)) from None


def to_s16le(audio: np.ndarray) -> bytes:
    """(N,) float audio in [-1, 1] → N little-endian int16 samples: ``round(x·32767)``,
    clipped to the int16 range."""
    scaled = np.clip(np.round(np.asarray(audio, np.float64) * 32767.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def event_messages(event: Event, batch_size: int) -> list[dict | bytes]:
    """The messages for one translator event, in order (``units`` events are not streamed;
    the units come in ``done``)."""
    base = {"time_s": event.time_s, "compute_ms": round(event.compute_ms, 3)}
    if event.kind in ("asr", "text"):
        return [
            {
                "type": event.kind,
                "segment": event.segment,
                "text": event.text,
                "delta": event.delta,
                **base,
                "batch_size": batch_size,
            }
        ]
    if event.kind == "audio" and event.audio is not None and event.audio.size:
        return [{"type": "audio", "samples": int(event.audio.size), **base}, to_s16le(event.audio)]
    return []

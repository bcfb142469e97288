"""echostream serve under bad clients: every protocol error gets its documented error message and
close code, vanishing clients are released, a failing step hits only its own stream — and a good
stream served at the same time is unaffected (equals its single-stream run)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import test_serve
from fastapi.testclient import TestClient
from helpers_models import speechlike
from starlette.websockets import WebSocketDisconnect
from test_serve import Gate, assert_same, collect, frames, reference, wait_until

from echostream.serve import scheduler as scheduler_module
from echostream.serve.app import ServeConfig, create_app

# test_serve's busy model (module scope); one thread as in test_serve
model = test_serve.model
pytestmark = pytest.mark.usefixtures("one_thread")

MAX_MESSAGE = 64 * 1024
MAX_SECONDS = 2.5


def start(rate=16000, fmt="s16le", **extra) -> str:
    return json.dumps({"type": "start", "sample_rate": rate, "format": fmt, **extra})


STOP = '{"type": "stop"}'
ONE_SECOND = np.zeros(16000, "<i2").tobytes()

# (case, messages sent in order, error code, close code, a fragment of the error message)
CASES = [
    ("bad_json", ['{"type": "start", '], "bad_json", 1003, "not valid JSON"),
    ("not_an_object", ["[1, 2]"], "bad_json", 1003, "JSON object, got list"),
    ("unknown_type", ['{"type": "pause"}'], "unknown_type", 1008, "'pause'"),
    ("missing_type", ['{"sample_rate": 16000}'], "unknown_type", 1008, "missing field 'type'"),
    ("binary_before_start", [b"\0\0" * 160], "binary_before_start", 1003, "before"),
    ("stop_before_start", [STOP], "stop_before_start", 1008, "before"),
    ("start_twice", [start(), start()], "start_twice", 1008, "already"),
    ("rate_too_low", [start(rate=4000)], "bad_start", 1008, "start.sample_rate"),
    ("rate_too_high", [start(rate=192000)], "bad_start", 1008, "start.sample_rate"),
    ("rate_a_string", [start(rate="48000")], "bad_start", 1008, "start.sample_rate"),
    ("rate_missing", ['{"type": "start", "format": "s16le"}'], "bad_start", 1008, "None"),
    ("bad_format", [start(fmt="mp3")], "bad_start", 1008, "start.format"),
    ("chunk_not_40ms", [start(chunk_ms=100)], "bad_start", 1008, "start.chunk_ms"),
    ("chunk_too_big", [start(chunk_ms=4000)], "bad_start", 1008, "start.chunk_ms"),
    ("progress_not_bool", [start(progress="yes")], "bad_start", 1008, "start.progress"),
    ("odd_byte_count", [start(), b"\0\0\0"], "bad_audio", 1003, "whole number of s16le"),
    (
        "nan_samples",
        [start(fmt="f32le"), np.full(100, np.nan, "<f4").tobytes()],
        "bad_audio",
        1003,
        "NaN",
    ),
    ("oversized_binary", [start(), b"\0" * (MAX_MESSAGE + 2)], "message_too_big", 1009, "65538"),
    ("oversized_text", ['{"pad": "' + "x" * MAX_MESSAGE + '"}'], "message_too_big", 1009, "bytes"),
    ("too_long", [start(), ONE_SECOND, ONE_SECOND, ONE_SECOND], "too_long", 1008, "2.5 s"),
    ("audio_after_stop", [start(), STOP, b"\0\0"], "after_stop", 1008, "after 'stop'"),
]


def expect_error(ws, code: str, close_code: int, fragment: str) -> None:
    """Skip ``ready`` and output messages up to the error; then the server closes."""
    while True:
        msg = ws.receive_json()
        if msg["type"] == "audio":
            ws.receive_bytes()
        if msg["type"] == "error":
            break
        assert msg["type"] in ("ready", "asr", "text", "audio", "done"), msg
    assert msg["code"] == code, msg
    assert fragment in msg["message"], msg
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == close_code


def held_good_stream(model, monkeypatch, seconds: float, seed: int, chunk_ms: int):
    """(gate, pcm, ref): the scheduler's worker held by a :class:`Gate` until its release, and a
    good stream's audio (16 kHz) with its single-stream run at ``chunk_ms``."""
    gate = Gate()
    monkeypatch.setattr(scheduler_module, "_step_groups", gate)
    pcm = speechlike(seconds, seed=seed)
    return gate, pcm, reference(model, pcm, 16000, chunk_ms)


@contextmanager
def two_streams(app):
    """Two WebSockets open on a TestClient of ``app``; once both are closed, the server must
    hold no stream."""
    with TestClient(app) as client:
        with (
            client.websocket_connect("/ws/translate") as first,
            client.websocket_connect("/ws/translate") as second,
        ):
            yield first, second
        assert client.get("/health").json()["streams"] == 0


def test_protocol_errors_while_a_good_stream_runs(model):
    pcm = (speechlike(2.4, seed=11) * 32767).astype(np.int16)
    ref = reference(model, pcm, 16000, 320)
    config = ServeConfig(max_message_bytes=MAX_MESSAGE, max_seconds=MAX_SECONDS, start_timeout=1)
    app = create_app(*model, config)
    pieces = frames(pcm, "s16le", 1600)
    half = len(pieces) // 2
    with TestClient(app) as client:
        with client.websocket_connect("/ws/translate") as good:
            good.send_text(start())
            assert good.receive_json()["type"] == "ready"
            for piece in pieces[:half]:
                good.send_bytes(piece)
            for case, messages, code, close_code, fragment in CASES:
                if case == "audio_after_stop":  # read long before the 1.9 s flush can finish
                    messages = [start(chunk_ms=2000), b"\0\0" * 30400, STOP, b"\0\0"]
                with client.websocket_connect("/ws/translate") as ws:
                    for message in messages:
                        (ws.send_text if isinstance(message, str) else ws.send_bytes)(message)
                    expect_error(ws, code, close_code, fragment)
            with client.websocket_connect("/ws/translate") as idle:  # connects, never starts
                assert client.get("/health").json()["connections"] == 2
                expect_error(idle, "start_timeout", 1008, "no 'start' within 1 s")
            # clients vanishing: mid-stream, and after 'stop' while their flush is being computed
            for stop in (False, True):
                with client.websocket_connect("/ws/translate") as ws:
                    ws.send_text(start(fmt="f32le", rate=48000))
                    ws.receive_json()
                    ws.send_bytes(np.full(48000, 0.1, "<f4").tobytes())
                    if stop:
                        ws.send_text(STOP)
                # leaving the block disconnects at once
            for piece in pieces[half:]:
                good.send_bytes(piece)
            good.send_text(STOP)
            got = collect(good)
        streams = dict(app.state.scheduler.streams)
        health = client.get("/health").json()
    assert_same(got, ref, audio_lsb=1)  # it may have shared steps with the faulty streams
    assert streams == {} and health["streams"] == 0  # every stream released
    assert health["connections"] == 0


def test_server_full_and_recovery(model):
    pcm = speechlike(1.2, seed=12)
    ref = reference(model, pcm, 16000, 320)
    app = create_app(*model, ServeConfig(max_streams=1))
    with TestClient(app) as client:
        with client.websocket_connect("/ws/translate") as first:
            first.send_text(start(fmt="f32le"))
            first.receive_json()
            with client.websocket_connect("/ws/translate") as second:
                second.send_text(start())
                expect_error(second, "server_full", 1013, "1 streams already open")
            assert client.post("/translate", content=b"x").status_code == 400  # checked first
            first.send_bytes(pcm.astype("<f4").tobytes())
            first.send_text(STOP)
            assert_same(collect(first), ref)
        with client.websocket_connect("/ws/translate") as again:  # the slot is free again
            again.send_text(start(fmt="f32le"))
            assert again.receive_json()["type"] == "ready"


def test_a_failing_step_errors_only_its_own_stream(model, monkeypatch):
    """A batched step that raises because of one stream is retried stream by stream: that
    stream gets ``internal`` (1011), the stream batched with it is unaffected."""
    doomed: set[str] = set()
    failed_batches: list[int] = []
    real = scheduler_module._step_group

    def failing(group):
        if any(s.stream_id in doomed for s in group.streams):
            failed_batches.append(len(group.streams))
            raise RuntimeError("injected failure")
        return real(group)

    monkeypatch.setattr(scheduler_module, "_step_group", failing)
    gate, pcm, ref = held_good_stream(model, monkeypatch, 2.0, seed=13, chunk_ms=480)
    app = create_app(*model, ServeConfig(chunk_ms=480))
    with two_streams(app) as (good, bad):
        good.send_text(start(fmt="f32le"))
        bad.send_text(start(fmt="f32le"))
        good.receive_json()
        doomed.add(bad.receive_json()["stream_id"])
        good.send_bytes(pcm[:7680].astype("<f4").tobytes())  # its first step, held
        assert gate.entered.wait(timeout=30)
        bad.send_bytes(pcm.astype("<f4").tobytes())
        good.send_bytes(pcm[7680:].astype("<f4").tobytes())
        good.send_text(STOP)
        streams = app.state.scheduler.streams.values()
        wait_until(lambda: all(s.stopping or s.buffered_seconds > 1.5 for s in streams))
        gate.release()
        expect_error(bad, "internal", 1011, "injected failure")
        got = collect(good)
    assert failed_batches[:2] == [2, 1]  # the batch of both, then the doomed one alone
    assert_same(got, ref)  # the good stream was retried alone when the batch failed


def test_overloaded_when_the_backlog_exceeds_the_limit(model, monkeypatch):
    """More than --max-buffer-seconds of a stream's audio waiting (here: the step is held while
    the client sends 2 s at once): 'overloaded' (1013); a stream within the limit goes on."""
    gate, pcm, ref = held_good_stream(model, monkeypatch, 1.2, seed=14, chunk_ms=320)
    app = create_app(*model, ServeConfig(max_buffer_seconds=1.5))
    with two_streams(app) as (good, fast):
        good.send_text(start(fmt="f32le"))
        good.receive_json()
        good.send_bytes(pcm.astype("<f4").tobytes())  # 1.2 s: within the limit
        good.send_text(STOP)
        fast.send_text(start(fmt="f32le"))
        fast.receive_json()
        for _ in range(20):  # 2 s at once, 100 ms per message
            fast.send_bytes(np.zeros(1600, "<f4").tobytes())
        expect_error(fast, "overloaded", 1013, "s behind this stream (limit 1.5 s)")
        gate.release()
        assert_same(collect(good), ref)

"""echostream serve: streams over a real (TestClient) WebSocket equal single-stream runs, alone
and batched with other streams; HTTP /translate and /health."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import soxr
from fastapi.testclient import TestClient
from helpers_models import busy_model, speechlike

from echostream.evaluation.latency import instance_latency
from echostream.serve import scheduler as scheduler_module
from echostream.serve.app import STATIC_DIR, ServeConfig, create_app
from echostream.serve.protocol import FORMATS, to_s16le
from echostream.streaming.translator import StreamingTranslator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def model():
    return busy_model()


def reference(model, pcm: np.ndarray, rate: int, chunk_ms: int) -> StreamingTranslator:
    """The single-stream run every served stream must reproduce."""
    tr = StreamingTranslator(*model, chunk_ms=chunk_ms)
    for start in range(0, len(pcm), 3000):
        tr.push(pcm[start : start + 3000], rate)
    tr.finish()
    return tr


def frames(pcm: np.ndarray, fmt: str, size: int) -> list[bytes]:
    data = pcm.astype(FORMATS[fmt]).tobytes()
    step = size * FORMATS[fmt].itemsize
    return [data[i : i + step] for i in range(0, len(data), step)]


def collect(ws) -> dict:
    """Every server message up to ``done``: events, progress, audio samples, done."""
    got = {"events": [], "progress": [], "audio": []}
    while True:
        msg = ws.receive_json()
        if msg["type"] == "done":
            got["done"] = msg
            break
        if msg["type"] == "progress":
            got["progress"].append(msg)
            continue
        assert msg["type"] in ("asr", "text", "audio"), msg
        got["events"].append(msg)
        if msg["type"] == "audio":
            samples = np.frombuffer(ws.receive_bytes(), dtype="<i2")
            assert len(samples) == msg["samples"]
            got["audio"].append(samples)
    got["audio"] = np.concatenate(got["audio"]) if got["audio"] else np.zeros(0, np.int16)
    return got


def assert_same(got: dict, ref: StreamingTranslator, audio_lsb: int = 0) -> None:
    """Served outputs == single-stream outputs: every text event (time, text, delta), every
    audio segment (time, length), the final texts and units; the 16-bit speech exactly, or
    within ``audio_lsb`` when batched (float round-off of batched matmuls)."""
    events = [m for m in got["events"] if m["type"] != "audio"]
    text = [(m["type"], m["time_s"], m["segment"], m["text"], m["delta"]) for m in events]
    want = [
        (e.kind, e.time_s, e.segment, e.text, e.delta)
        for e in ref.events
        if e.kind in ("asr", "text")
    ]
    assert text == want
    audio = [(m["time_s"], m["samples"]) for m in got["events"] if m["type"] == "audio"]
    assert audio == [(e.time_s, len(e.audio)) for e in ref.events if e.kind == "audio"]
    done = got["done"]
    assert done["transcript"] == ref.transcript and done["translation"] == ref.translation
    assert done["units"] == ref.units
    want_audio = np.frombuffer(to_s16le(ref.output_audio()), dtype="<i2").astype(np.int64)
    assert got["audio"].shape == want_audio.shape
    assert np.abs(got["audio"].astype(np.int64) - want_audio).max(initial=0) <= audio_lsb
    assert done["audio_seconds"] == len(want_audio) / 16000


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


class Gate:
    """Holds the scheduler's worker thread before its first step until ``release()``, so that
    chunks of several streams pile up and must be stepped together; records every tick's
    groups as (batch size, final)."""

    def __init__(self):
        self.event = threading.Event()
        self.entered = threading.Event()
        self.ticks: list[list[tuple[int, bool]]] = []
        self.real = scheduler_module._step_groups

    def __call__(self, groups):
        self.entered.set()
        assert self.event.wait(timeout=60), "gate never released"
        self.ticks.append([(len(g.streams), g.final) for g in groups])
        return self.real(groups)

    def release(self):
        self.event.set()


def test_one_stream_events_and_outputs_equal_streaming_translator(model):
    pcm16 = (speechlike(2.4, seed=1) * 32767).astype(np.int16)
    ref = reference(model, pcm16, 16000, 320)
    assert len([e for e in ref.events if e.kind == "text"]) >= 3  # the policy writes often
    app = create_app(*model, ServeConfig(chunk_ms=160), model_name="busy")
    with TestClient(app) as client, client.websocket_connect("/ws/translate") as ws:
        ws.send_text(
            json.dumps(
                {"type": "start", "sample_rate": 16000, "format": "s16le", "chunk_ms": 320}
                | {"progress": True}
            )
        )
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["chunk_ms"] == 320  # overrides the default
        assert ready["sample_rate_out"] == 16000 and len(ready["stream_id"]) == 16
        assert ready["max_buffer_seconds"] == 10.0 and ready["max_message_bytes"] == 1 << 20
        for frame in frames(pcm16, "s16le", 1234):  # frames unrelated to the chunk size
            ws.send_bytes(frame)
        ws.send_text('{"type": "stop"}')
        got = collect(ws)
        assert app.state.scheduler.streams == {}  # released after done
    assert_same(got, ref)  # one stream: every step has batch 1, audio bit-exact
    # one progress message per decision step, at the same source times as the reference
    assert [p["time_s"] for p in got["progress"]] == [t for t, _ in ref.step_times]
    assert [p["final"] for p in got["progress"]] == [False] * (len(ref.step_times) - 1) + [True]
    assert all(p["batch_size"] == 1 and p["server_ms"] >= p["compute_ms"] for p in got["progress"])
    # the done message's latency summary: the source-time metrics equal the reference's
    lat = got["done"]["latency"]
    want = instance_latency(
        ref.instance_log(), "text", metrics=("AL", "StartOffset"), use_ref_len=False
    )
    assert lat["text"]["AL"] == pytest.approx(want["AL"])
    assert lat["text"]["StartOffset"] == want["StartOffset"]
    assert lat["steps"] == len(ref.step_times) and lat["mean_batch_size"] == 1.0
    assert got["done"]["source_seconds"] == len(pcm16) / 16000


def test_three_concurrent_streams_batched_equal_single_streams(model, monkeypatch):
    """16 kHz s16le, 48 kHz f32le and 8 kHz s16le streams, with different lengths, decision
    chunks and start times, stepped together (ragged batches, joins, leaves, final sub-batches)."""
    base = [speechlike(s, seed=n) for s, n in ((2.4, 3), (1.6, 4), (3.2, 5))]
    specs = [  # rate, format, chunk_ms, samples at that rate
        (16000, "s16le", 320, (base[0] * 32767).astype(np.int16)),
        (48000, "f32le", 160, soxr.resample(base[1], 16000, 48000).astype(np.float32)),
        (8000, "s16le", 320, (soxr.resample(base[2], 16000, 8000) * 32767).astype(np.int16)),
    ]
    refs = [reference(model, pcm, rate, ms) for rate, _, ms, pcm in specs]
    gate = Gate()
    monkeypatch.setattr(scheduler_module, "_step_groups", gate)
    app = create_app(*model, ServeConfig())
    with TestClient(app) as client:
        sockets = [client.websocket_connect("/ws/translate") for _ in specs]
        pieces = [frames(pcm, fmt, rate // 10) for rate, fmt, _, pcm in specs]  # 100 ms
        for i, ws in enumerate(sockets):
            ws.__enter__()
            rate, fmt, ms, _ = specs[i]
            ws.send_text(
                json.dumps({"type": "start", "sample_rate": rate, "format": fmt, "chunk_ms": ms})
            )
            assert ws.receive_json()["type"] == "ready"
            if i == 0:  # stream 0 alone for its first step (held by the gate); then the others
                for piece in pieces[0][:4]:
                    ws.send_bytes(piece)
                pieces[0] = pieces[0][4:]
                assert gate.entered.wait(timeout=30)
        # the rest, interleaved 100 ms at a time; then stop (streams run out at different ticks)
        for k in range(max(len(p) for p in pieces)):
            for i, ws in enumerate(sockets):
                if k < len(pieces[i]):
                    ws.send_bytes(pieces[i][k])
        for ws in sockets:
            ws.send_text('{"type": "stop"}')
        wait_until(lambda: all(s.stopping for s in app.state.scheduler.streams.values()))
        gate.release()  # everything is read: the ticks from now on are deterministic
        results = [collect(ws) for ws in sockets]
        for ws in sockets:
            ws.__exit__(None, None, None)
        health = client.get("/health").json()
    for got, ref in zip(results, refs, strict=True):
        assert_same(got, ref, audio_lsb=1)
    sizes = [size for tick in gate.ticks for size, _ in tick]
    finals = [size for tick in gate.ticks for size, final in tick if final]
    assert gate.ticks[0] == [(1, False)]  # stream 0's first chunk, alone
    assert max(sizes) == 3  # all three streams in one step
    assert sum(finals) == 3  # each stream flushed once, in a final sub-batch
    # a stream flushed while the others were still live (finals run on their own thread)
    last_live = max(i for i, tick in enumerate(gate.ticks) if not tick[0][1])
    assert min(i for i, tick in enumerate(gate.ticks) if tick[0][1]) < last_live
    assert health["streams"] == 0 and health["steps"] == len(sizes)
    assert health["mean_batch_size"] > 1.5


def test_faster_than_real_time_within_the_buffer_limit_loses_nothing(model, monkeypatch):
    """A client may send faster than real time while the model is busy (here: held) as long as
    less than --max-buffer-seconds waits; everything is then processed in order."""
    pcm = speechlike(3.2, seed=6)
    ref = reference(model, pcm, 16000, 320)
    gate = Gate()
    monkeypatch.setattr(scheduler_module, "_step_groups", gate)
    app = create_app(*model, ServeConfig(max_buffer_seconds=3.0))
    with TestClient(app) as client, client.websocket_connect("/ws/translate") as ws:
        ws.send_text('{"type": "start", "sample_rate": 16000, "format": "f32le"}')
        ws.receive_json()
        for frame in frames(pcm, "f32le", 1600):  # 100 ms frames, all at once
            ws.send_bytes(frame)
        ws.send_text('{"type": "stop"}')
        stream = next(iter(app.state.scheduler.streams.values()))
        wait_until(lambda: stream.stopping)  # all read while the first step is held
        assert stream.buffered_seconds > 2.5
        gate.release()
        got = collect(ws)
    assert_same(got, ref)


def test_http_translate_and_health(model):
    pcm = speechlike(2.0, seed=7)
    stereo48 = np.stack([soxr.resample(pcm, 16000, 48000)] * 2, axis=1) * 0.9
    body = io.BytesIO()
    sf.write(body, stereo48, 48000, format="FLAC", subtype="PCM_16")
    decoded, _ = sf.read(io.BytesIO(body.getvalue()), dtype="float32", always_2d=True)
    ref = reference(model, decoded, 48000, 320)  # the translator averages the channels too
    app = create_app(*model, ServeConfig(), model_name="busy-tiny")
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "busy-tiny"
        assert health["streams"] == 0 and health["steps"] == 0 and health["vocoder"] is True
        r = client.post("/translate", content=body.getvalue())
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["transcript"] == ref.transcript and out["translation"] == ref.translation
        assert out["units"] == ref.units and out["chunk_ms"] == 320
        want = [(e.kind, e.time_s, e.text) for e in ref.events if e.kind in ("asr", "text")]
        assert [(e["type"], e["time_s"], e["text"]) for e in out["events"] if "text" in e] == want
        speech, rate = sf.read(io.BytesIO(base64.b64decode(out["audio_wav_base64"])), dtype="int16")
        assert rate == 16000
        np.testing.assert_array_equal(
            speech, np.frombuffer(to_s16le(ref.output_audio()), dtype="<i2")
        )
        wav = client.post("/translate?format=wav&chunk_ms=160", content=body.getvalue())
        assert wav.headers["content-type"] == "audio/wav"
        ref160 = reference(model, decoded, 48000, 160)
        speech160, _ = sf.read(io.BytesIO(wav.content), dtype="int16")
        np.testing.assert_array_equal(
            speech160, np.frombuffer(to_s16le(ref160.output_audio()), dtype="<i2")
        )
        bad = client.post("/translate", content=b"RIFF not really a wav")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_audio"
        bad = client.post("/translate?chunk_ms=100", content=body.getvalue())
        assert bad.status_code == 400 and "chunk_ms" in bad.json()["error"]["message"]
        health = client.get("/health").json()
        assert health["streams"] == 0
        assert health["steps"] == len(ref.step_times) + len(ref160.step_times)
        assert health["live_steps"] == health["steps"] - 2  # one final step per file
        page = client.get("/")
        if STATIC_DIR.joinpath("index.html").is_file():
            assert page.status_code == 200 and "html" in page.headers["content-type"]
        else:
            assert page.status_code == 404

"""Load and fault benchmark of ``echostream serve`` over real sockets.

    python -m echostream.bench.serve_load --clients 32 --seconds 30        # load
    python -m echostream.bench.serve_load --faults --seconds 20            # faults

Starts the server as a subprocess (``python -m echostream.serve.app`` on a free loopback port,
the bundled model unless ``--model``), then:

**load**: K clients stream real-time-paced audio (the bundled French samples concatenated and
looped to ``--seconds``; client *i* starts at its own offset in the loop, at a staggered time,
at a sample rate from ``--rates``: 48 kHz as f32le, others as s16le) in frames of ``--frame-ms``;
each frame is sent when its last sample "was recorded" (``--speedup`` divides the pacing; a
faster-than-real-time client also keeps what it sent ahead of the server's last ``progress``
below the server's ``max_buffer_seconds`` minus 1 s, as docs/serve.md asks of such clients). Every
stream must complete and its outputs (text events with their source times, units, 16-bit speech
within 1 LSB) must equal a single-stream StreamingTranslator run on the same samples, computed
here beforehand.

**Per-chunk latency** (what the tables report): for each decision step of a stream, the wall
time from sending the frame that holds the last source sample the step consumed (the step's
``time_s``, at the client's rate) to receiving the step's ``progress`` message, which the server
sends right after the step's text/audio messages. It includes waiting for the scheduler's tick,
the batched model step, and loopback transfers. The final step (after ``stop``: flush, decode
to EOS, vocode the rest) is reported apart as the **flush latency**: ``stop`` sent → ``done``.

**faults**: one good real-time stream runs while bad clients send malformed JSON, unknown types,
binary before start, wrong sample rates and formats, NaN audio, odd byte counts, oversized
messages (over the server's limit: its error + 1009; over the WebSocket library's limit: 1009),
vanish mid-stream (TCP reset, before and after ``stop``), and ``--cycles`` connect/disconnect
cycles — the whole storm ``--rounds`` times, RSS read after each round. Checks: every bad
client gets its documented error and close code, the server stays up, the good stream equals
its single-stream run, no stream is left open, and the server's RSS
(``VmRSS`` in /proc/PID/status) returns to within ``--rss-tolerance-mb`` of its baseline
(measured after a warm-up stream as long as the good one: the allocator keeps the high-water
mark of a stream's flush, which is not a leak).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"


# ---------------------------------------------------------------------------------- audio


def looped_source(seconds: float, offset_s: float) -> np.ndarray:
    """(N,) float32 16 kHz: the bundled samples concatenated, looped, starting at ``offset_s``."""
    from ..audio.io import load_audio

    loop = np.concatenate([load_audio(p) for p in sorted(SAMPLES_DIR.glob("*.wav"))])
    n = round(seconds * 16000)
    start = round(offset_s * 16000) % len(loop)
    reps = (start + n) // len(loop) + 1
    return np.tile(loop, reps)[start : start + n].astype(np.float32)


def client_input(pcm16k: np.ndarray, rate: int) -> tuple[np.ndarray, str]:
    """The samples a client sends at ``rate``: 48 kHz as f32le (a browser's rate and type),
    others as s16le. Returns (samples in the wire dtype, format)."""
    from ..audio.io import resample

    pcm = resample(pcm16k, 16000, rate)
    if rate == 48000:
        return pcm.astype("<f4"), "f32le"
    return np.clip(np.round(pcm * 32767), -32768, 32767).astype("<i2"), "s16le"


@dataclass
class Reference:
    text_events: list[tuple[str, float, str]]
    units: list[int]
    audio: np.ndarray  # int16, as the server sends it
    steps: int
    live_step_ms: list[float]  # compute of each live step, alone (this process)
    flush_ms: float  # compute of the final step, alone


def reference_run(model, vocoder, samples: np.ndarray, rate: int, chunk_ms: int) -> Reference:
    from ..serve.protocol import to_s16le
    from ..streaming.translator import StreamingTranslator

    tr = StreamingTranslator(model, vocoder, chunk_ms=chunk_ms)
    step = rate // 10
    for i in range(0, len(samples), step):
        tr.push(samples[i : i + step], rate)
    tr.finish()
    return Reference(
        [(e.kind, e.time_s, e.text) for e in tr.events if e.kind in ("asr", "text")],
        list(tr.units),
        np.frombuffer(to_s16le(tr.output_audio()), dtype="<i2"),
        len(tr.step_times),
        [ms for _, ms in tr.step_times[:-1]],
        tr.step_times[-1][1],
    )


# ---------------------------------------------------------------------------------- server


class Server:
    """``python -m echostream.serve.app`` in a subprocess on a free loopback port."""

    def __init__(self, args: argparse.Namespace, extra: list[str] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "echostream.serve.app", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--model", args.model, "--threads", str(args.threads)]
        cmd += ["--chunk-ms", str(args.chunk_ms), "--log-level", "warning"]
        cmd += ["--max-streams", str(args.clients + 64), "--workers", str(args.workers)]
        cmd += [*(extra or [])]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd)
        self.url = f"ws://127.0.0.1:{self.port}/ws/translate"
        deadline = time.time() + 120
        while True:
            try:
                self.pid = self.health()["pid"]
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"server did not start: {' '.join(cmd)}") from None
                time.sleep(0.2)

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return json.loads(r.read())

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------- clients


@dataclass
class ClientResult:
    index: int
    rate: int
    chunk_latency_ms: list[float] = field(default_factory=list)
    flush_ms: float = float("nan")
    batch_sizes: list[int] = field(default_factory=list)
    text_events: list[tuple[str, float, str]] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    done: dict | None = None
    error: str | None = None
    late_frames: int = 0  # frames sent more than 20 ms after their time (client overloaded)


async def stream_client(
    url: str,
    index: int,
    samples: np.ndarray,
    fmt: str,
    rate: int,
    chunk_ms: int,
    frame_ms: int,
    speedup: float,
    delay_s: float,
) -> ClientResult:
    """One paced client; see the module docstring for what it measures."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    result = ClientResult(index, rate)
    frame = round(rate * frame_ms / 1000)
    ends = [min(k + frame, len(samples)) / rate for k in range(0, len(samples), frame)]
    sent_at: list[float] = []
    await asyncio.sleep(delay_s)
    async with connect(url, max_size=None, compression=None) as ws:
        start = {"type": "start", "sample_rate": rate, "format": fmt, "chunk_ms": chunk_ms}
        await ws.send(json.dumps({**start, "progress": True}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            result.error = f"no ready: {ready}"
            return result
        stop_at, consumed = [0.0], [0.0]
        # faster than real time (a file, not a live source): stay within the server's buffer
        ahead_limit = ready["max_buffer_seconds"] - 1.0 if speedup > 1 else float("inf")

        async def receive() -> None:
            while True:
                msg = json.loads(await ws.recv())
                now = time.perf_counter()
                kind = msg["type"]
                if kind in ("asr", "text"):
                    result.text_events.append((kind, msg["time_s"], msg["text"]))
                elif kind == "audio":
                    data = await ws.recv()
                    result.audio.append(np.frombuffer(data, dtype="<i2"))
                elif kind == "progress":
                    consumed[0] = msg["time_s"]
                    result.batch_sizes.append(msg["batch_size"])
                    if not msg["final"]:
                        k = bisect.bisect_left(ends, msg["time_s"] - 1e-9)
                        result.chunk_latency_ms.append((now - sent_at[k]) * 1000)
                elif kind == "done":
                    result.done = msg
                    result.flush_ms = (now - stop_at[0]) * 1000
                    return
                elif kind == "error":
                    result.error = f"{msg['code']}: {msg['message']}"
                    return

        receiver = asyncio.create_task(receive())
        t0 = time.perf_counter()
        data = samples.tobytes()
        itemsize = samples.dtype.itemsize
        try:
            for n, k in enumerate(range(0, len(samples), frame)):
                due = t0 + ends[n] / speedup
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.02:
                    result.late_frames += 1
                while ends[n] - consumed[0] > ahead_limit and not receiver.done():
                    await asyncio.sleep(0.01)
                if receiver.done():  # the server ended the stream (error)
                    break
                sent_at.append(time.perf_counter())
                await ws.send(data[k * itemsize : (k + frame) * itemsize])
            else:
                stop_at[0] = time.perf_counter()
                await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass  # the receiver saw why (an error message) or raises below
        await asyncio.wait_for(receiver, timeout=3600)
    return result


def compare(result: ClientResult, ref: Reference) -> str | None:
    """None if the served outputs equal the single-stream run, else what differs."""
    if result.error or result.done is None:
        return result.error or "no done message"
    if result.text_events != ref.text_events:
        return "text events differ"
    if result.done["units"] != ref.units:
        return "units differ"
    audio = np.concatenate(result.audio) if result.audio else np.zeros(0, np.int16)
    if audio.shape != ref.audio.shape:
        return f"audio length {audio.shape} != {ref.audio.shape}"
    diff = np.abs(audio.astype(np.int64) - ref.audio.astype(np.int64)).max(initial=0)
    return None if diff <= 1 else f"audio differs by {diff} LSB"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


# ---------------------------------------------------------------------------------- load


def prepare_clients(args: argparse.Namespace, count: int, log) -> list[dict]:
    """Per client: samples at its rate, format, and the reference outputs (computed once per
    distinct (offset, rate))."""
    import torch

    from ..streaming.translator import load_pretrained

    torch.set_num_threads(args.threads)
    model, vocoder = load_pretrained(args.model)
    rates = [int(r) for r in args.rates.split(",")]
    cache: dict[tuple[int, int], tuple] = {}
    clients = []
    for i in range(count):
        key = (i % args.distinct, rates[i % len(rates)])
        if key not in cache:
            pcm = looped_source(args.seconds, offset_s=1.37 * key[0])
            samples, fmt = client_input(pcm, key[1])
            t0 = time.perf_counter()
            ref = reference_run(model, vocoder, samples, key[1], args.chunk_ms)
            log(f"reference {key}: {ref.steps} steps, {time.perf_counter() - t0:.1f} s")
            cache[key] = (samples, fmt, ref)
        samples, fmt, ref = cache[key]
        clients.append({"samples": samples, "fmt": fmt, "rate": key[1], "ref": ref})
    return clients


async def poll_health(server: Server, times_ms: list[float], every_s: float = 0.5) -> None:
    """GET /health every ``every_s`` until cancelled, recording response times: whether the
    event loop stays responsive while the model computes."""
    while True:
        t0 = time.perf_counter()
        await asyncio.to_thread(server.health)
        times_ms.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(every_s)


async def run_clients(
    server: Server, clients: list[dict], args: argparse.Namespace, rng, health_ms: list[float]
) -> list:
    poller = asyncio.create_task(poll_health(server, health_ms))
    url = server.url
    tasks = [
        stream_client(
            url,
            i,
            c["samples"],
            c["fmt"],
            c["rate"],
            args.chunk_ms,
            args.frame_ms,
            args.speedup,
            rng.uniform(0, args.stagger),
        )
        for i, c in enumerate(clients)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    poller.cancel()
    return results


def run_load(args: argparse.Namespace, log) -> dict:
    clients = prepare_clients(args, args.clients, log)
    server = Server(args)
    try:
        warm = prepare_clients_warmup(server, args)
        rss_before = server.rss_mb()
        health_before = server.health()
        log(f"server pid {server.pid} on :{server.port}, RSS {rss_before:.0f} MB, {warm}")
        t0 = time.perf_counter()
        health_ms: list[float] = []
        results = asyncio.run(run_clients(server, clients, args, random.Random(0), health_ms))
        wall = time.perf_counter() - t0
        time.sleep(1.0)
        health = server.health()
        rss_after = server.rss_mb()
    finally:
        server.stop()
    failures = {}
    latencies, flushes, late = [], [], 0
    for i, (c, r) in enumerate(zip(clients, results, strict=True)):
        if isinstance(r, BaseException):
            failures[i] = f"client raised {r!r}"
            continue
        problem = compare(r, c["ref"])
        if problem:
            failures[i] = problem
        latencies += r.chunk_latency_ms
        flushes.append(r.flush_ms)
        late += r.late_frames
    steps = health["steps"] - health_before["steps"]
    stream_steps = (
        health["mean_batch_size"] * health["steps"]
        - health_before["mean_batch_size"] * health_before["steps"]
    )
    compute_s = health["compute_s"] - health_before["compute_s"]
    live = {k: health[k] - health_before[k] for k in ("live_steps", "live_stream_steps")}
    live_compute_s = health["live_compute_s"] - health_before["live_compute_s"]
    return {
        "mode": "load",
        "command": "python -m echostream.bench.serve_load " + " ".join(args.argv),
        "server_command": " ".join(server.cmd),
        "clients": args.clients,
        "seconds": args.seconds,
        "speedup": args.speedup,
        "chunk_ms": args.chunk_ms,
        "frame_ms": args.frame_ms,
        "rates": args.rates,
        "all_completed": all(not isinstance(r, BaseException) and r.done for r in results),
        "all_equal_single_stream": not failures,
        "failures": failures,
        "failure_counts": {
            kind: sum(v.split(":")[0] == kind for v in failures.values())
            for kind in sorted({v.split(":")[0] for v in failures.values()})
        },
        "chunk_latency_ms": percentiles(latencies),
        "flush_latency_ms": percentiles(flushes),
        "reference_live_step_ms": percentiles(
            [ms for c in clients[: args.distinct] for ms in c["ref"].live_step_ms]
        ),
        "reference_flush_ms": percentiles([c["ref"].flush_ms for c in clients[: args.distinct]]),
        "late_client_frames": late,
        "health_response_ms": percentiles(health_ms),
        "server_steps": steps,
        "server_mean_batch_size": stream_steps / steps if steps else 0.0,
        "server_compute_s": compute_s,
        "server_live_steps": live["live_steps"],
        "server_live_mean_batch_size": live["live_stream_steps"] / max(1, live["live_steps"]),
        "server_live_compute_ms_per_stream_step": 1000
        * live_compute_s
        / max(1, live["live_stream_steps"]),
        "server_compute_rtf_per_stream_second": compute_s / (args.clients * args.seconds),
        "server_busy_fraction": compute_s / wall,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "wall_s": wall,
        "health_after": health,
    }


def prepare_clients_warmup(server: Server, args: argparse.Namespace, seconds: float = 2.0) -> str:
    """One stream of ``seconds`` through the server (``POST /translate``: all at once, no
    pacing), so that lazy allocations — and the allocator's high-water mark of a stream that
    long (its flush) — are in the baseline."""
    import io

    import soundfile as sf

    body = io.BytesIO()
    sf.write(body, looped_source(seconds, 0.0), 16000, format="WAV", subtype="PCM_16")
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/translate", data=body.getvalue(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=600) as r:
        done = json.loads(r.read())
    return f"warm-up: {seconds:g} s through POST /translate, {done['latency']['steps']} steps"


# ---------------------------------------------------------------------------------- faults


async def expect_error(url: str, messages: list, code: str | None, close: int) -> str | None:
    """Send messages; expect an error ``code`` (None: no error message) then close ``close``.
    Returns None if so, else what happened."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url, max_size=None, compression=None, max_queue=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
            got = None
            while True:
                raw = await asyncio.wait_for(ws.recv(), timeout=60)
                if isinstance(raw, str):
                    msg = json.loads(raw)
                    if msg["type"] == "error":
                        got = msg["code"]
        except ConnectionClosed as closed:
            rcvd = closed.rcvd.code if closed.rcvd else None
            if got == code and rcvd == close:
                return None
            return f"got error {got!r} close {rcvd}, expected {code!r} {close}"
        except TimeoutError:
            return "no close within 60 s"


async def vanish(url: str, rate: int, seconds: float, stop: bool) -> None:
    """Start, send audio fast, then reset the TCP connection (no close handshake)."""
    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None, compression=None)
    await ws.send(json.dumps({"type": "start", "sample_rate": rate, "format": "f32le"}))
    await ws.recv()
    pcm = (0.1 * np.sin(np.arange(int(rate * seconds)) / 7)).astype("<f4")
    for i in range(0, len(pcm), rate // 5):
        await ws.send(pcm[i : i + rate // 5].tobytes())
    if stop:
        await ws.send(json.dumps({"type": "stop"}))
    await asyncio.sleep(0.05)
    ws.transport.abort()


async def cycle(url: str, kind: int) -> None:
    """Connect and disconnect: 0 without a word, 1 after start, 2 after start and some audio."""
    from websockets.asyncio.client import connect

    async with connect(url, compression=None) as ws:
        if kind >= 1:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le"}))
            await ws.recv()
        if kind == 2:
            await ws.send(np.zeros(8000, "<i2").tobytes())


def run_faults(args: argparse.Namespace, log) -> dict:
    max_bytes = 1 << 20
    clients = prepare_clients(args, 1, log)
    server = Server(args, ["--max-message-bytes", str(max_bytes), "--max-seconds", "600"])
    start16 = json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le"})
    cases = {
        "malformed JSON": (['{"type": "start"'], "bad_json", 1003),
        "JSON array": (["[1]"], "bad_json", 1003),
        "unknown type": (['{"type": "hello"}'], "unknown_type", 1008),
        "binary before start": ([b"\0" * 640], "binary_before_start", 1003),
        "start twice": ([start16, start16], "start_twice", 1008),
        "sample rate 4000": (
            [json.dumps({"type": "start", "sample_rate": 4000, "format": "s16le"})],
            "bad_start",
            1008,
        ),
        "sample rate 192000": (
            [json.dumps({"type": "start", "sample_rate": 192000, "format": "s16le"})],
            "bad_start",
            1008,
        ),
        "format mp3": (
            [json.dumps({"type": "start", "sample_rate": 16000, "format": "mp3"})],
            "bad_start",
            1008,
        ),
        "chunk_ms 100": (
            [
                json.dumps(
                    {"type": "start", "sample_rate": 16000, "format": "s16le", "chunk_ms": 100}
                )
            ],
            "bad_start",
            1008,
        ),
        "odd byte count": ([start16, b"\0" * 641], "bad_audio", 1003),
        "NaN samples": (
            [
                json.dumps({"type": "start", "sample_rate": 16000, "format": "f32le"}),
                np.full(160, np.nan, "<f4").tobytes(),
            ],
            "bad_audio",
            1003,
        ),
        "frame over the server limit (1 MiB + 2)": (
            [start16, b"\0" * (max_bytes + 2)],
            "message_too_big",
            1009,
        ),
        "frame over the WebSocket limit (3 MiB)": ([start16, b"\0" * (3 * max_bytes)], None, 1009),
    }
    try:
        warm = prepare_clients_warmup(server, args, args.seconds)  # as long as the good one
        rss_base = server.rss_mb()
        log(f"server pid {server.pid}, baseline RSS {rss_base:.0f} MB after {warm}")

        health_ms: list[float] = []

        async def scenario():
            poller = asyncio.create_task(poll_health(server, health_ms))
            c = clients[0]
            good = asyncio.create_task(
                stream_client(
                    server.url, 0, c["samples"], c["fmt"], c["rate"], args.chunk_ms,
                    args.frame_ms, args.speedup, 0.0,
                )
            )  # fmt: skip
            outcomes: dict[str, str | None] = {}
            vanished, cycle_errors, cycles_s, rss_rounds = 0, [], 0.0, []
            sem = asyncio.Semaphore(16)

            async def one(k: int) -> None:
                async with sem:
                    try:
                        await cycle(server.url, k % 3)
                    except Exception as err:
                        cycle_errors.append(repr(err))

            for _ in range(args.rounds):  # the same storm again: a leak would grow each time
                for name, (messages, code, close) in cases.items():
                    problem = await expect_error(server.url, messages, code, close)
                    outcomes[name] = outcomes.get(name) or problem
                for i in range(args.vanish):
                    await vanish(server.url, (16000, 48000)[i % 2], 3.0, stop=i % 3 == 0)
                    vanished += 1
                t0 = time.perf_counter()
                await asyncio.gather(*(one(k) for k in range(args.cycles)))
                cycles_s += time.perf_counter() - t0
                await asyncio.sleep(1.0)
                rss_rounds.append(server.rss_mb())
            result = await good
            poller.cancel()
            return outcomes, vanished, cycle_errors, cycles_s, rss_rounds, result

        t0 = time.perf_counter()
        outcomes, vanished, cycle_errors, cycles_s, rss_rounds, good = asyncio.run(scenario())
        wall = time.perf_counter() - t0
        time.sleep(2.0)
        health = server.health()
        rss_after = server.rss_mb()
        alive = server.alive()
    finally:
        server.stop()
    problem = compare(good, clients[0]["ref"])
    return {
        "mode": "faults",
        "command": "python -m echostream.bench.serve_load " + " ".join(args.argv),
        "server_command": " ".join(server.cmd),
        "good_stream_seconds": args.seconds,
        "good_stream_equal_single_stream": problem is None,
        "good_stream_problem": problem,
        "good_stream_chunk_latency_ms": percentiles(good.chunk_latency_ms),
        "error_cases": {k: ("ok" if v is None else v) for k, v in outcomes.items()},
        "all_error_cases_ok": all(v is None for v in outcomes.values()),
        "health_response_ms": percentiles(health_ms),
        "vanished_clients": vanished,
        "rounds": args.rounds,
        "cycles": args.cycles * args.rounds,
        "cycle_errors": cycle_errors[:10],
        "cycles_s": cycles_s,
        "server_alive": alive,
        "streams_open_after": health["streams"],
        "rss_baseline_mb": rss_base,
        "rss_after_each_round_mb": rss_rounds,
        "rss_after_mb": rss_after,
        "rss_growth_mb": rss_after - rss_base,
        "rss_tolerance_mb": args.rss_tolerance_mb,
        "rss_ok": rss_after - rss_base <= args.rss_tolerance_mb,
        "wall_s": wall,
    }


# ---------------------------------------------------------------------------------- main


def render(result: dict) -> str:
    lines = [f"# serve {result['mode']} benchmark", "", f"`{result['command']}`", ""]
    for key, value in result.items():
        if key in ("command", "mode", "health_after"):
            continue
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, float | int) for v in value.values())
        ):
            value = ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
            )
        lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echostream bench serve", description=__doc__.split("\n\n")[0].strip()
    )
    p.add_argument("--model", default="echostream-tiny-fr-en")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0, help="audio per client")
    p.add_argument("--speedup", type=float, default=1.0, help="send N× faster than real time")
    p.add_argument("--chunk-ms", type=int, default=320)
    p.add_argument("--frame-ms", type=int, default=80, help="audio per WebSocket message")
    p.add_argument(
        "--rates", default="16000", help="client sample rates, cycled (e.g. 16000,48000)"
    )
    p.add_argument("--distinct", type=int, default=8, help="distinct audio offsets (references)")
    p.add_argument("--stagger", type=float, default=1.0, help="clients start within N s")
    p.add_argument("--threads", type=int, default=1, help="torch threads (server and references)")
    p.add_argument("--workers", type=int, default=1, help="server processes (`serve --workers`)")
    p.add_argument("--faults", action="store_true", help="the fault scenario instead of load")
    p.add_argument("--rounds", type=int, default=2, help="faults: repeat the storm N times")
    p.add_argument(
        "--cycles", type=int, default=500, help="faults: connect/disconnect cycles per round"
    )
    p.add_argument("--vanish", type=int, default=20, help="faults: clients resetting mid-stream")
    p.add_argument("--rss-tolerance-mb", type=float, default=50.0)
    p.add_argument("--json", help="write the result here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.faults:
        args.clients = 1

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    result = run_faults(args, log) if args.faults else run_load(args, log)
    result["load_average_after"] = list(os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(render(result))
    ok = (
        result["all_error_cases_ok"]
        and result["good_stream_equal_single_stream"]
        and result["server_alive"]
        and result["streams_open_after"] == 0
        and result["rss_ok"]
        if args.faults
        else result["all_completed"] and result["all_equal_single_stream"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

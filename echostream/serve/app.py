"""``echostream serve``: simultaneous translation over WebSocket and HTTP (FastAPI + uvicorn).

    echostream serve --model echostream-tiny-fr-en --port 8000
    # ws://HOST:8000/ws/translate   live streams (protocol: echostream/serve/protocol.py)
    # POST /translate               a whole wav/flac file → JSON (or ?format=wav → audio/wav)
    # GET  /health                  {"status": "ok", "streams": n, "model": ...}
    # GET  /                        the browser page (echostream/serve/static/), if present

All streams of a process share one model and one :class:`~echostream.serve.scheduler.Scheduler`
that batches them into one model step per tick. ``--workers N`` starts N uvicorn worker
processes, each with its own model copy; a stream lives on one process (docs/serve.md explains
sticky sessions behind a load balancer).

Back-pressure: a stream whose unprocessed audio exceeds ``--max-buffer-seconds`` ends with
``overloaded`` (1013). The server always keeps reading (see docs/serve.md for why it does not
pause reading instead).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..models.echostream import EchoStreamModel
from ..models.unit_vocoder import UnitVocoder
from .protocol import (
    ProtocolError,
    decode_pcm,
    parse_start,
    parse_text,
    to_s16le,
)
from .scheduler import Scheduler, ServedStream

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
CONFIG_ENV = "ECHOSTREAM_SERVE_CONFIG"  # hands the config to --workers processes


@dataclass
class ServeConfig:
    """Server settings (the CLI flags of the same names)."""

    model: str = "echostream-tiny-fr-en"  # bundled name or folder (model.pt [+ vocoder.pt])
    checkpoint: str | None = None  # an EchoStream checkpoint instead of --model
    vocoder: str | None = None  # a unit vocoder checkpoint (overrides the model's)
    host: str = "127.0.0.1"
    port: int = 8000
    chunk_ms: int = 320  # default decision chunk (a start message may choose its own)
    workers: int = 1
    max_streams: int = 64  # per process; more get "server_full"
    max_seconds: float = 3600.0  # source audio per stream
    max_message_bytes: int = 1 << 20  # per WebSocket message
    max_buffer_seconds: float = 10.0  # unprocessed audio per stream: more is "overloaded"
    max_upload_bytes: int = 200 << 20  # POST /translate body
    start_timeout: float = 30.0  # seconds a connection may wait before its "start"
    threads: int = 1  # torch threads per process
    log_level: str = "info"

    def validate(self) -> ServeConfig:
        try:  # the start message's rule
            parse_start({"sample_rate": 16000, "format": "s16le"}, self.chunk_ms)
        except ProtocolError as err:
            raise ValueError(err.message.replace("start.chunk_ms", "--chunk-ms")) from None
        for name in ("workers", "max_streams", "max_message_bytes", "max_upload_bytes", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 1")
        for name in ("max_seconds", "max_buffer_seconds", "start_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be > 0")
        return self


def load_model(cfg: ServeConfig) -> tuple[EchoStreamModel, UnitVocoder | None]:
    from ..streaming.translator import load_model

    return load_model(cfg.model, cfg.checkpoint or None, cfg.vocoder or None)


def _json(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _http_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def wav_bytes(stream: ServedStream) -> bytes:
    """The stream's output speech as a 16-bit 16 kHz mono wav (the samples sent over WS)."""
    pcm = np.frombuffer(to_s16le(stream.output_audio()), dtype="<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm, stream.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------------- app


def create_app(
    model: EchoStreamModel,
    vocoder: UnitVocoder | None = None,
    config: ServeConfig | None = None,
    model_name: str | None = None,
) -> FastAPI:
    """The ASGI app around an already-built model (+ vocoder). The scheduler starts with the
    app's lifespan (use ``with TestClient(app)`` in tests)."""
    cfg = (config or ServeConfig()).validate()
    name = model_name or cfg.checkpoint or cfg.model
    scheduler = Scheduler(model, vocoder)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()

    app = FastAPI(title="EchoStream", lifespan=lifespan)
    app.state.scheduler, app.state.config = scheduler, cfg
    app.state.connections = 0

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "streams": len(scheduler.streams),
            "connections": app.state.connections,
            "model": name,
            "vocoder": vocoder is not None,
            "sample_rate_out": model.cfg.features.sample_rate,
            "chunk_ms": cfg.chunk_ms,
            "max_streams": cfg.max_streams,
            "max_seconds": cfg.max_seconds,
            "max_message_bytes": cfg.max_message_bytes,
            "steps": scheduler.steps,
            "mean_batch_size": round(scheduler.mean_batch_size, 3),
            "compute_s": round(scheduler.compute_s, 3),
            "live_steps": scheduler.live_steps,
            "live_stream_steps": scheduler.live_stream_steps,
            "live_compute_s": round(scheduler.live_compute_s, 3),
            "uptime_s": round(time.time() - scheduler.started_at, 1),
            "pid": os.getpid(),
        }

    @app.post("/translate")
    async def translate(request: Request, format: str = "json", chunk_ms: int | None = None):
        if format not in ("json", "wav"):
            return _http_error(400, "bad_request", f"format: 'json' or 'wav', got {format!r}")
        try:
            start = parse_start(
                {"sample_rate": 16000, "format": "f32le", "chunk_ms": chunk_ms or cfg.chunk_ms},
                cfg.chunk_ms,
            )
        except ProtocolError as err:
            return _http_error(400, err.code, err.message.replace("start.", "query "))
        size = int(request.headers.get("content-length") or 0)
        if size > cfg.max_upload_bytes:
            return _http_error(413, "too_big", f"body over {cfg.max_upload_bytes} bytes")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > cfg.max_upload_bytes:
                return _http_error(413, "too_big", f"body over {cfg.max_upload_bytes} bytes")
        try:  # decoding and resampling a long file: off the event loop
            pcm, rate = await asyncio.to_thread(
                sf.read, io.BytesIO(bytes(body)), dtype="float32", always_2d=True
            )
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
            return _http_error(400, "bad_audio", f"request body is not readable audio: {err}")
        if not len(pcm) or not np.isfinite(pcm).all():
            return _http_error(400, "bad_audio", "request body has no samples or NaN/inf ones")
        if len(pcm) > cfg.max_seconds * rate:
            return _http_error(413, "too_long", f"audio longer than {cfg.max_seconds:g} s")
        if len(scheduler.streams) >= cfg.max_streams:
            return _http_error(503, "server_full", f"{cfg.max_streams} streams already open")
        outbox: asyncio.Queue = asyncio.Queue()
        stream = scheduler.open(
            start.chunk_ms, rate, outbox, max_seconds=cfg.max_seconds, keep_audio=True, admit=False
        )
        try:
            mono = pcm.mean(axis=1, dtype=np.float32) if pcm.shape[1] > 1 else pcm[:, 0]
            await asyncio.to_thread(stream.feed, mono)  # not scheduled yet: no race
            stream.stop()
            scheduler.admit(stream)
            done: dict | None = None
            while True:
                item = await outbox.get()
                if item[0] == "close":
                    break
                if isinstance(item[1], dict) and item[1]["type"] in ("done", "error"):
                    done = item[1]
        except BaseException:  # the request was cancelled (client gone): release the stream
            scheduler.close(stream)
            raise
        if done is None or done["type"] == "error":
            return _http_error(500, "internal", (done or {}).get("message", "no result"))
        wav = wav_bytes(stream)
        if format == "wav":
            return Response(wav, media_type="audio/wav")
        events = []
        for e in stream.events:
            if e.kind in ("asr", "text"):
                text = {"segment": e.segment, "text": e.text, "delta": e.delta}
                events.append({"type": e.kind, "time_s": e.time_s, **text})
            elif e.kind == "audio":
                events.append({"type": "audio", "time_s": e.time_s, "samples": len(e.audio)})
        del done["type"]
        return {
            **done,
            "chunk_ms": start.chunk_ms,
            "sample_rate_out": stream.sample_rate,
            "events": events,
            "audio_wav_base64": base64.b64encode(wav).decode("ascii"),
        }

    @app.websocket("/ws/translate")
    async def translate_ws(websocket: WebSocket) -> None:
        app.state.connections += 1
        try:
            await websocket.accept()
            await _serve_connection(websocket, scheduler, cfg)
        finally:
            app.state.connections -= 1

    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app


async def _serve_connection(websocket: WebSocket, scheduler: Scheduler, cfg: ServeConfig) -> None:
    """One WebSocket client: a reader (client messages → stream) and a writer (the outbox →
    client), so that a slow or vanished client never blocks the scheduler. Protocol errors go
    through the outbox too (after what was already queued), then the writer closes."""
    outbox: asyncio.Queue = asyncio.Queue()
    stream: ServedStream | None = None

    async def reader() -> str:
        nonlocal stream
        try:
            while True:
                if stream is None:
                    try:
                        message = await asyncio.wait_for(websocket.receive(), cfg.start_timeout)
                    except TimeoutError:
                        raise ProtocolError(
                            "start_timeout", f"no 'start' within {cfg.start_timeout:g} s"
                        ) from None
                else:
                    message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return "gone"
                text, data = message.get("text"), message.get("bytes")
                size = len(data) if data is not None else len((text or "").encode())
                if size > cfg.max_message_bytes:
                    raise ProtocolError(
                        "message_too_big",
                        f"message of {size} bytes exceeds the server's maximum of "
                        f"{cfg.max_message_bytes} bytes",
                    )
                if text is not None:
                    request = parse_text(text)
                    if request["type"] == "start":
                        if stream is not None:
                            raise ProtocolError("start_twice", "the stream was already started")
                        start = parse_start(request, cfg.chunk_ms)
                        if len(scheduler.streams) >= cfg.max_streams:
                            raise ProtocolError(
                                "server_full", f"{cfg.max_streams} streams already open"
                            )
                        stream = scheduler.open(
                            start.chunk_ms,
                            start.sample_rate,
                            outbox,
                            start.format,
                            cfg.max_seconds,
                            start.progress,
                        )
                        outbox.put_nowait(
                            (
                                "send",
                                {
                                    "type": "ready",
                                    "stream_id": stream.stream_id,
                                    "sample_rate_out": stream.sample_rate,
                                    "chunk_ms": stream.chunk_ms,
                                    "max_message_bytes": cfg.max_message_bytes,
                                    "max_seconds": cfg.max_seconds,
                                    "max_buffer_seconds": cfg.max_buffer_seconds,
                                },
                            )
                        )
                    else:
                        if stream is None:
                            raise ProtocolError("stop_before_start", "'stop' before 'start'")
                        if stream.stopping:
                            raise ProtocolError("after_stop", "'stop' sent twice")
                        stream.stop()
                        scheduler.notify()
                elif data is not None:
                    if stream is None:
                        raise ProtocolError(
                            "binary_before_start", "binary audio before the 'start' message"
                        )
                    if stream.stopping:
                        raise ProtocolError("after_stop", "binary audio after 'stop'")
                    stream.feed(decode_pcm(data, stream.input_format))
                    scheduler.notify()
                    if stream.buffered_seconds > cfg.max_buffer_seconds:
                        raise ProtocolError(
                            "overloaded",
                            f"the server is {stream.buffered_seconds:.1f} s behind this stream "
                            f"(limit {cfg.max_buffer_seconds:g} s): send audio in real time, or "
                            "try again later or elsewhere",
                        )
        except ProtocolError as err:
            if stream is not None:
                scheduler.close(stream)
            outbox.put_nowait(("send", err.to_message()))
            outbox.put_nowait(("close", err.close_code, err.code))
            return "error"

    async def writer() -> None:
        while True:
            item = await outbox.get()
            if item[0] == "close":
                await websocket.close(item[1], item[2])
                return
            payload = item[1]
            if isinstance(payload, bytes):
                await websocket.send_bytes(payload)
            else:
                await websocket.send_text(_json(payload))

    read_task = asyncio.create_task(reader())
    write_task = asyncio.create_task(writer())
    try:
        done, _ = await asyncio.wait({read_task, write_task}, return_when=asyncio.FIRST_COMPLETED)
        if read_task in done and read_task.result() == "error":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(write_task, timeout=10)
    except Exception:  # the client vanished mid-send: nothing to tell it
        logger.debug("connection ended", exc_info=True)
    finally:
        for task in (read_task, write_task):
            task.cancel()
        for task in (read_task, write_task):
            with contextlib.suppress(BaseException):
                await task
        if stream is not None:
            scheduler.close(stream)


# ---------------------------------------------------------------------------------- CLI


def create_app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker process loads its own model copy."""
    import torch

    cfg = ServeConfig(**json.loads(os.environ[CONFIG_ENV])).validate()
    torch.set_num_threads(cfg.threads)
    model, vocoder = load_model(cfg)
    return create_app(model, vocoder, cfg)


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(
        prog="echostream serve", description=__doc__.split("\n\n")[0].strip()
    )
    p.add_argument("--model", default=d.model, help="bundled model name or folder")
    p.add_argument("--checkpoint", help="an EchoStream checkpoint instead of --model")
    p.add_argument("--vocoder", help="a unit vocoder checkpoint (vocoder.pt)")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--chunk-ms", type=int, default=d.chunk_ms, help="default decision chunk")
    p.add_argument("--workers", type=int, default=d.workers, help="processes, one model each")
    p.add_argument("--max-streams", type=int, default=d.max_streams, help="per process")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="audio per stream")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument(
        "--max-buffer-seconds",
        type=float,
        default=d.max_buffer_seconds,
        help="unprocessed audio per stream; more ends the stream with 'overloaded'",
    )
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    p.add_argument(
        "--start-timeout", type=float, default=d.start_timeout, help="seconds until 'start'"
    )
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per process")
    p.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning"])
    return p


def main(argv: list[str] | None = None) -> int:
    import torch
    import uvicorn

    args = build_parser().parse_args(argv)
    cfg = ServeConfig(**vars(args))
    try:
        cfg.validate()
    except ValueError as err:
        raise SystemExit(f"echostream serve: {err}") from None
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    uv = {
        "host": cfg.host,
        "port": cfg.port,
        "log_level": cfg.log_level,
        # above our own limit, so that an oversized message gets our error message first;
        # beyond this the WebSocket library closes with 1009 by itself
        "ws_max_size": 2 * cfg.max_message_bytes,
        "ws_per_message_deflate": False,
    }
    if cfg.workers > 1:
        os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
        uvicorn.run(
            "echostream.serve.app:create_app_from_env", factory=True, workers=cfg.workers, **uv
        )
        return 0
    torch.set_num_threads(cfg.threads)
    try:
        model, vocoder = load_model(cfg)
    except FileNotFoundError as err:
        raise SystemExit(f"echostream serve: {err}") from None
    uvicorn.run(create_app(model, vocoder, cfg), **uv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

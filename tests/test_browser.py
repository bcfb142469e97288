"""The web page of ``echostream serve`` in a real headless Chromium, driven over the Chrome
DevTools Protocol (no Selenium/Playwright: one WebSocket and ``Runtime.evaluate``).

The server runs in-process (uvicorn on a free port) with a tiny random model whose CTC heads
fire often, so that text and speech arrive while audio is still being captured (the bundled
model writes only at the end of the source). ``ServedStream.feed`` is wrapped to record the
PCM the server actually received: capture timing in a browser is not exact, so the expected
outputs are those of a single-stream :class:`StreamingTranslator` on that PCM. What must fail:

- the capture worklet or the sample rate the page announces: the received audio, resampled
  from the announced rate, must match the bundled French sample that Chromium's fake
  microphone plays (normalised cross-correlation), and be what the page says it sent;
- text rendering: #transcript / #translation equal the reference's final texts;
- playback accounting: samples received, announced, scheduled as 16 kHz AudioBuffers, played
  to their end by the AudioContext, and their int16 checksum equal the reference's speech;
- the microphone's tail: what the worklet captured up to Stop is all sent;
- the file path: decodeAudioData + streaming over the same WebSocket, the same checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import uvicorn
from helpers_models import busy_model
from websockets.sync.client import connect as ws_connect

from echostream.serve.app import ServeConfig, create_app
from echostream.serve.protocol import to_s16le
from echostream.serve.scheduler import ServedStream
from echostream.streaming.translator import StreamingTranslator

SAMPLE = Path(__file__).resolve().parents[1] / "echostream/assets/samples/fr_dev_000988.wav"
CHUNK_MS = 320
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (CI: apt-get install chromium)"
)


# ---------------------------------------------------------------------------------- server


class Recorder:
    """What the server received and answered, per stream: (input rate, PCM pieces, done)."""

    def __init__(self):
        self.streams: dict[int, dict] = {}
        self.lock = threading.Lock()

    def install(self, mp: pytest.MonkeyPatch) -> None:
        feed, done_message = ServedStream.feed, ServedStream.done_message
        recorder = self

        def recording_feed(stream, pcm):
            with recorder.lock:
                entry = recorder.streams.setdefault(
                    id(stream), {"rate": stream.input_rate, "pieces": [], "done": None}
                )
                entry["pieces"].append(np.array(pcm, np.float32))
            return feed(stream, pcm)

        def recording_done(stream):
            message = done_message(stream)
            with recorder.lock:
                recorder.streams[id(stream)]["done"] = message
            return message

        mp.setattr(ServedStream, "feed", recording_feed)
        mp.setattr(ServedStream, "done_message", recording_done)

    def only_stream(self) -> dict:
        with self.lock:
            streams = list(self.streams.values())
            self.streams.clear()
        assert len(streams) == 1, f"expected one stream on the server, got {len(streams)}"
        return streams[0]


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's steps and the reference runs
    yield busy_model()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(model):
    """(base URL, recorder): the app on a free port, in a background thread."""
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        recorder.install(mp)
        recorder.config = ServeConfig(chunk_ms=CHUNK_MS)  # read at run time by the handlers
        app = create_app(*model, recorder.config, model_name="busy-tiny")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", ws_per_message_deflate=False)
        uv = uvicorn.Server(config)
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/", recorder
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


# ---------------------------------------------------------------------------------- browser


class Page:
    """One Chromium tab over CDP: ``evaluate`` JavaScript (as a user gesture), ``call`` any
    method. Console messages and exceptions are kept for failure messages."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.console: list[str] = []
        self.call("Runtime.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"]["args"]
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif msg.get("method") == "Runtime.exceptionThrown":
                details = msg["params"]["exceptionDetails"]
                self.console.append(str(details.get("exception", {}).get("description", details)))
            elif msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            userGesture=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def state(self) -> dict:
        return self.evaluate(
            "({...Object.fromEntries(Object.entries(window.echostream)"
            ".filter(([, v]) => typeof v !== 'function')),"
            " status: document.getElementById('status').textContent})"
        )

    def new_stream(self) -> str:
        """A JavaScript condition: a stream started after this call (its "ready" arrived)
        and not the one before (``window.echostream`` keeps the last stream's state)."""
        before = json.dumps(self.evaluate("echostream.ready && echostream.ready.stream_id"))
        return f"(echostream.ready !== null && echostream.ready.stream_id !== {before})"

    def wait_for(self, condition: str, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(condition):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {condition}\npage: {self.state()}\n"
                    f"console: {self.console}"
                )
            time.sleep(0.1)


@pytest.fixture(scope="module")
def browser(server):
    """A headless Chromium whose fake microphone plays the bundled French sample (looped)."""
    base_url, _ = server
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        profile, log = Path(tmp) / "profile", Path(tmp) / "chromium.log"
        args = [
            CHROMIUM,
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={SAMPLE}",  # 16-bit PCM wav; loops
            "--autoplay-policy=no-user-gesture-required",
            base_url,
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        try:
            port_file, tab = profile / "DevToolsActivePort", None
            deadline = time.monotonic() + 30
            while tab is None:  # the port file, then the tab showing the page
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"Chromium did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
                if port_file.is_file() and port_file.read_text().count("\n") >= 1:
                    port = int(port_file.read_text().split()[0])
                    url = f"http://127.0.0.1:{port}/json/list"
                    with urllib.request.urlopen(url, timeout=30) as r:
                        targets = [t for t in json.load(r) if t["type"] == "page"]
                    tab = next((t for t in targets if t["url"] == base_url), None)
            with ws_connect(tab["webSocketDebuggerUrl"], max_size=None) as ws:
                page = Page(ws)
                page.wait_for("document.readyState === 'complete' && 'echostream' in window")
                yield page
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # Chromium and the helper processes it started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ---------------------------------------------------------------------------------- checks


def reference(model, received: dict) -> StreamingTranslator:
    """A single-stream run on exactly the pieces the server was fed."""
    tr = StreamingTranslator(*model, chunk_ms=CHUNK_MS)
    for piece in received["pieces"]:
        tr.push(piece, received["rate"])
    tr.finish()
    return tr


def sample_16k() -> np.ndarray:
    pcm, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == 16000
    return pcm


def match(received_16k: np.ndarray, source: np.ndarray, block: int = 4000) -> np.ndarray:
    """(blocks, 2): per block of ``received_16k``, the normalised cross-correlation with
    ``source`` (which loops, like Chromium's fake microphone) at the best offset, and the gain.
    Per block, so that a capture glitch under load spoils one block, not the verdict."""
    n, rows = len(source), []
    for start in range(0, len(received_16k) - block + 1, block):
        x = received_16k[start : start + block]
        spectrum = np.conj(np.fft.rfft(x, n)) * np.fft.rfft(source, n)
        offset = int(np.argmax(np.fft.irfft(spectrum, n)))
        segment = np.roll(source, -offset)[:block]
        similarity = x @ segment / (np.linalg.norm(x) * np.linalg.norm(segment) + 1e-12)
        rows.append((similarity, x @ segment / (segment @ segment)))
    return np.array(rows)


def check_page_against_server(
    page: Page, model, received: dict
) -> tuple[dict, np.ndarray, StreamingTranslator]:
    """Everything the page shows and counted equals the server's answer and the reference on
    the PCM the server received. Returns (page state, that PCM resampled to 16 kHz, the
    reference translator)."""
    page.wait_for("echostream.playedSamples === echostream.audioSamples")  # speech played out
    state = page.state()
    assert state["done"] and state["error"] is None, state
    assert state["status"].startswith("Done"), state["status"]
    pcm = np.concatenate(received["pieces"])
    assert received["rate"] == state["sampleRate"]  # the AudioContext's rate, announced
    assert state["ready"]["sample_rate_out"] == 16000
    assert len(pcm) == state["sentSamples"] > 0
    ref = reference(model, received)
    done = received["done"]
    # text: what the page shows == what the server said it sent == the reference
    dom = page.evaluate(
        "[document.getElementById('transcript').textContent,"
        " document.getElementById('translation').textContent,"
        " document.getElementById('audio-samples').textContent]"
    )
    assert ref.translation, "the busy model translates every stream into something"
    assert dom[:2] == [ref.transcript, ref.translation]
    assert [state["transcript"], state["translation"]] == dom[:2]
    assert (done["transcript"], done["translation"]) == (ref.transcript, ref.translation)
    assert [state["final"]["transcript"], state["final"]["translation"]] == dom[:2]
    # speech: every sample received, announced, scheduled at 16 kHz, and their values
    speech = np.frombuffer(to_s16le(ref.output_audio()), dtype="<i2")
    assert len(speech) > 0
    assert state["audioSamples"] == state["announcedSamples"] == len(speech)
    assert state["playedSamples"] == len(speech)  # every AudioBuffer started and ended
    assert dom[2] == str(len(speech))
    assert state["audioSum"] == int(speech.astype(np.int64).sum())
    assert state["scheduledSeconds"] == pytest.approx(len(speech) / 16000, rel=1e-9)
    assert done["audio_seconds"] == len(speech) / 16000
    # latency: the last output's source time is the end of the source (the final step)
    events = [e for e in ref.events if e.kind in ("asr", "text", "audio")]
    assert state["lastTimeS"] == events[-1].time_s == ref.samples_in / 16000
    latency = page.evaluate("document.getElementById('latency').textContent")
    assert f"at {events[-1].time_s:.2f} s of source" in latency, latency
    return state, soxr.resample(pcm, received["rate"], 16000), ref


# ---------------------------------------------------------------------------------- tests


def test_microphone_stream_shows_and_plays_the_servers_translation(browser, server, model):
    page, (_, recorder) = browser, server
    page.evaluate("document.getElementById('echo-cancellation').checked = false")  # raw audio
    started = page.new_stream()
    page.evaluate("document.getElementById('start').click()")
    page.wait_for(
        f"{started} && echostream.translation !== '' && echostream.audioSamples > 0"
        " && echostream.sentSamples >= 1.5 * echostream.sampleRate"
    )
    live = page.state()  # text and speech arrived while the microphone was still open
    assert not live["done"] and live["lastTimeS"] > 0 and live["computeMs"] is not None
    page.evaluate("document.getElementById('stop').click()")
    page.wait_for("echostream.done || echostream.error !== null")
    state, received, _ = check_page_against_server(page, model, recorder.only_stream())
    assert state["source"] == "microphone" and state["sampleRate"] != 16000
    assert state["capturedSamples"] == state["sentSamples"]  # the tail was flushed at stop
    # the capture path (worklet frames, mono mix, announced rate): the server got the sample
    # Chromium's fake microphone plays, looped from some offset
    assert len(received) > 16000
    blocks = match(received[1600:], sample_16k())  # from 100 ms on: the capture's start-up
    similarity, gain = np.median(blocks, axis=0)
    assert similarity > 0.9 and 0.9 < gain < 1.1, blocks  # raw audio: no gain control


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "real-time"])
def test_file_upload_streams_over_the_websocket(browser, server, model, fast):
    page, (_, recorder) = browser, server
    page.evaluate(f"document.getElementById('fast').checked = {str(fast).lower()}")
    document = page.call("DOM.getDocument")
    node = page.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
    started = page.new_stream()
    page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(SAMPLE)])
    page.wait_for(f"{started} && (echostream.done || echostream.error !== null)")
    state, received, _ = check_page_against_server(page, model, recorder.only_stream())
    assert state["source"] == "file"
    source = sample_16k()  # decodeAudioData resampled it to the context's rate; sent whole
    assert abs(len(received) - len(source)) <= 2
    blocks = match(received, source)
    assert (blocks[:, 0] > 0.99).all() and (abs(blocks[:, 1] - 1) < 0.01).all(), blocks


def test_fast_upload_of_a_file_longer_than_the_servers_backlog_limit(
    browser, server, model, tmp_path
):
    """ "As fast as possible" paces on the server's progress messages: a file four times longer
    than the server's back-pressure limit streams through without `overloaded`."""
    page, (_, recorder) = browser, server
    source = np.tile(sample_16k(), 4)  # 13.9 s
    path = tmp_path / "long.wav"
    sf.write(path, source, 16000, subtype="PCM_16")
    limit, recorder.config.max_buffer_seconds = recorder.config.max_buffer_seconds, 3.0
    try:
        page.evaluate("document.getElementById('fast').checked = true")
        document = page.call("DOM.getDocument")
        node = page.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
        started = page.new_stream()
        page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])
        page.wait_for(f"{started} && (echostream.done || echostream.error !== null)")
        assert page.state()["ready"]["max_buffer_seconds"] == 3.0
        state, received, ref = check_page_against_server(page, model, recorder.only_stream())
    finally:
        recorder.config.max_buffer_seconds = limit
    assert state["source"] == "file" and len(source) / 16000 > 4 * 3.0
    # the page joined several sentences' texts (each message carries its own sentence)
    assert len({e.segment for e in ref.events if e.kind == "text" and e.text}) >= 2
    assert abs(len(received) - len(source)) <= 2


def test_server_error_is_shown_and_the_page_recovers(browser, server):
    page, (_, recorder) = browser, server
    page.evaluate(  # a decision chunk the server refuses (not a multiple of 40 ms)
        "(() => { const chunk = document.getElementById('chunk-ms');"
        " chunk.add(new Option('100 ms', '100')); chunk.value = '100'; })()"
    )
    try:
        page.evaluate("document.getElementById('start').click()")
        page.wait_for("echostream.error !== null")
    finally:
        page.evaluate(
            "(() => { const chunk = document.getElementById('chunk-ms');"
            " chunk.value = '320'; chunk.remove(chunk.options.length - 1); })()"
        )
    state = page.state()
    assert state["error"]["code"] == "bad_start" and state["ready"] is None, state
    message = "start.chunk_ms: must be a positive multiple of 40 up to 2000, got 100"
    assert state["status"] == f"Server error bad_start: {message}"
    assert page.evaluate(
        "[document.getElementById('status').className,"
        " document.getElementById('start').disabled, document.getElementById('stop').disabled]"
    ) == ["error", False, True]  # the page can start again
    assert recorder.streams == {}  # the server opened no stream

// EchoStream browser client: microphone or file → WebSocket /ws/translate → live French
// transcript, English text and English speech. Protocol: echostream/serve/protocol.py.
//
// Input: mono float32 PCM at the AudioContext's own rate ("f32le", frames of 100 ms); the
// server resamples to 16 kHz. The microphone goes through capture-worklet.js. A file is decoded
// with decodeAudioData (which resamples it to the context's rate) and streamed over the same
// WebSocket, by default at real-time pace — as a speaker would — so that the latency shown
// means what it means live; with "as fast as possible" it is sent as quickly as the server
// steps through it: the page asks for "progress" messages and keeps what the server has not yet
// processed under ready.max_buffer_seconds (minus a margin), the server's back-pressure limit.
// Output: text events replace the whole text; each "audio" message is followed by one binary
// frame of 16 kHz int16 LE samples, scheduled back-to-back in the same AudioContext.
// window.echostream exposes the page's state (and start/stop/streamFile) for tests.
"use strict";

const FRAME_SECONDS = 0.1; // audio per binary message sent
const BACKLOG_MARGIN_S = 2; // "as fast as possible": stay this far under the server's limit
const MAX_BUFFERED_BYTES = 1 << 20; // "as fast as possible": wait while the socket holds more
const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  stop: $("stop"),
  file: $("file"),
  fast: $("fast"),
  chunkMs: $("chunk-ms"),
  echo: $("echo-cancellation"),
  status: $("status"),
  latency: $("latency"),
  transcript: $("transcript"),
  translation: $("translation"),
  audioSamples: $("audio-samples"),
  audioSeconds: $("audio-seconds"),
};

const es = (window.echostream = {
  transcript: "", // French transcript so far (its sentences joined)
  translation: "", // English text so far (its sentences joined)
  audioSamples: 0, // 16 kHz samples received in binary frames
  done: false, // the server's "done" arrived
  start: startMicrophone,
  stop: stop,
  streamFile: streamFile,
});

let ctx = null; // one AudioContext for capture, file decoding and playback
let workletLoaded = false;
let session = null; // the stream in progress (one at a time)
let generation = 0; // counts streams: speech of an earlier stream is not counted as played
// Per kind: the closed sentences' text, and the sentence ("segment") the messages are about.
let sentences = null;

function newSentences() {
  return { asr: { closed: "", segment: 0 }, text: { closed: "", segment: 0 } };
}

// An "asr"/"text" message carries its sentence so far; a higher segment closes the one before.
function joinSentence(kind, msg, shown) {
  const s = sentences[kind];
  if (msg.segment !== s.segment) {
    s.closed = shown; // the last text shown of the previous sentence(s) is final
    s.segment = msg.segment;
  }
  return s.closed && msg.text ? `${s.closed} ${msg.text}` : s.closed || msg.text;
}

function resetState(source, sampleRate) {
  generation += 1;
  Object.assign(es, {
    source, // "microphone" | "file"
    sampleRate, // what "start" announced: the AudioContext's rate
    sentSamples: 0, // source samples sent, at sampleRate
    capturedSamples: null, // microphone: samples the worklet captured (known at stop)
    transcript: "",
    translation: "",
    audioSamples: 0,
    announcedSamples: 0, // sum of the "audio" messages' "samples"
    scheduledSeconds: 0, // duration of the AudioBuffers scheduled for playback
    playedSamples: 0, // samples of the AudioBuffers that finished playing
    audioSum: 0, // sum of the int16 values received (a checksum for tests)
    lastTimeS: null, // source time of the latest output
    computeMs: null, // model compute of the step that produced it
    ready: null,
    final: null, // the "done" message
    error: null,
    done: false,
  });
  sentences = newSentences();
  ui.transcript.textContent = ui.translation.textContent = "";
  ui.audioSamples.textContent = "0";
  ui.audioSeconds.textContent = "0.00";
  ui.latency.textContent = "Latency: —";
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function setBusy(busy) {
  ui.start.disabled = ui.file.disabled = ui.chunkMs.disabled = busy;
  ui.stop.disabled = !busy;
}

async function audioContext() {
  if (!ctx) ctx = new AudioContext(); // the device's native rate
  if (ctx.state === "suspended") await ctx.resume();
  return ctx;
}

// ------------------------------------------------------------------ connection

function connect(sampleRate) {
  const url = new URL("ws/translate", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const s = {
    ws,
    startedAt: 0, // performance.now() at "ready"
    playhead: 0, // AudioContext time at which the scheduled speech ends
    pendingAudio: null, // the "audio" message whose binary frame comes next
    stopping: false, // Stop pressed
    stopSent: false,
    processedSeconds: 0, // source the server has stepped through (from "progress")
    release: [], // what to free when the stream ends (microphone, worklet)
  };
  session = s;
  return new Promise((resolve, reject) => {
    ws.onopen = () => {
      // progress: one message per server step, so a fast file upload can keep its backlog
      // under the server's limit (ready.max_buffer_seconds)
      const start = { type: "start", sample_rate: sampleRate, format: "f32le", progress: true };
      ws.send(JSON.stringify({ ...start, chunk_ms: Number(ui.chunkMs.value) }));
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return onAudioFrame(s, event.data);
      const msg = JSON.parse(event.data);
      if (msg.type === "ready") {
        es.ready = msg;
        s.sampleRateOut = msg.sample_rate_out;
        s.startedAt = performance.now();
        resolve(s);
      } else {
        onMessage(s, msg);
      }
    };
    ws.onclose = (event) => {
      const reason = event.reason ? `: ${event.reason}` : "";
      const why = `connection closed (code ${event.code}${reason})`;
      if (session === s) end(s, es.done ? null : why);
      const err = new Error(why);
      err.reported = true; // end() has shown why (now or before: error message, Stop)
      reject(err); // (ignored once "ready" resolved the promise)
    };
  });
}

function onMessage(s, msg) {
  switch (msg.type) {
    case "asr":
      es.transcript = ui.transcript.textContent = joinSentence("asr", msg, es.transcript);
      showLatency(s, msg);
      break;
    case "text":
      es.translation = ui.translation.textContent = joinSentence("text", msg, es.translation);
      showLatency(s, msg);
      break;
    case "audio":
      if (s.pendingAudio) return end(s, "protocol: 'audio' message before the last one's samples");
      s.pendingAudio = msg;
      es.announcedSamples += msg.samples;
      showLatency(s, msg);
      break;
    case "progress":
      s.processedSeconds = msg.time_s;
      break;
    case "done":
      es.final = msg;
      es.done = true;
      showSummary(msg);
      end(s, null, `Done: ${msg.source_seconds.toFixed(2)} s of French → ` +
        `${msg.audio_seconds.toFixed(2)} s of English speech.`);
      break;
    case "error":
      es.error = msg;
      end(s, `Server error ${msg.code}: ${msg.message}`);
      break;
    default:
      console.warn("echostream: unknown message", msg); // newer server: ignore
  }
}

function onAudioFrame(s, buffer) {
  const msg = s.pendingAudio;
  s.pendingAudio = null;
  if (!msg) return end(s, "protocol: binary message without an 'audio' message before it");
  if (buffer.byteLength !== 2 * msg.samples) {
    const got = `${buffer.byteLength} bytes`;
    return end(s, `protocol: audio frame of ${got}, announced ${msg.samples} samples`);
  }
  play(s, buffer);
}

// Schedule one frame of int16 LE samples right after the previous one (or now, if playback
// caught up with the stream).
function play(s, buffer) {
  const n = buffer.byteLength / 2;
  const view = new DataView(buffer);
  const audio = ctx.createBuffer(1, n, s.sampleRateOut);
  const channel = audio.getChannelData(0);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const v = view.getInt16(2 * i, true);
    channel[i] = v / 32768;
    sum += v;
  }
  const node = ctx.createBufferSource();
  node.buffer = audio;
  node.connect(ctx.destination);
  const at = Math.max(s.playhead, ctx.currentTime + 0.05);
  const current = generation;
  node.onended = () => {
    if (current === generation) es.playedSamples += n;
  };
  node.start(at);
  s.playhead = at + audio.duration;
  es.audioSamples += n;
  es.scheduledSeconds += audio.duration;
  es.audioSum += sum;
  ui.audioSamples.textContent = String(es.audioSamples);
  ui.audioSeconds.textContent = (es.audioSamples / s.sampleRateOut).toFixed(2);
}

// Latency: the latest output was decided at `time_s` seconds of source; the wall clock since
// the stream started says how much source has been spoken (live) by now.
function showLatency(s, msg) {
  es.lastTimeS = msg.time_s;
  if (msg.compute_ms !== undefined) es.computeMs = msg.compute_ms;
  const wall = (performance.now() - s.startedAt) / 1000;
  ui.latency.textContent =
    `Latest output at ${msg.time_s.toFixed(2)} s of source, ${wall.toFixed(2)} s after start ` +
    `(lag ${(wall - msg.time_s).toFixed(2)} s)` +
    (es.computeMs === null ? "" : ` · model step ${es.computeMs.toFixed(1)} ms`);
}

function showSummary(done) {
  const lat = done.latency || {};
  const parts = [];
  const ms = (value) => `${Math.round(value)} ms`;
  if (lat.text) parts.push(`text AL ${ms(lat.text.AL)}, StartOffset ${ms(lat.text.StartOffset)}`);
  if (lat.speech) parts.push(`speech StartOffset ${ms(lat.speech.StartOffset)}`);
  if (lat.server_ms_mean !== undefined) parts.push(`server ${ms(lat.server_ms_mean)} per chunk`);
  if (parts.length) ui.latency.textContent += ` · ${parts.join(" · ")}`;
}

function sendPcm(s, pcm) {
  if (s.stopSent || s.ws.readyState !== WebSocket.OPEN) return;
  s.ws.send(pcm); // Float32Array: little-endian on every platform browsers run on
  es.sentSamples += pcm.length;
}

function sendStop(s) {
  if (s.stopSent) return;
  s.stopSent = true;
  if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "stop" }));
  release(s);
}

function release(s) {
  for (const free of s.release.splice(0)) free();
  clearTimeout(s.timer);
}

// The stream is over: done (error null), failed (error: a message), or the socket closed.
function end(s, error, message) {
  if (session !== s) return;
  session = null;
  release(s);
  if (s.ws.readyState <= WebSocket.OPEN) s.ws.close();
  if (error) {
    es.error = es.error || { code: "client", message: error };
    setStatus(error, true);
  } else if (message) {
    setStatus(message);
  }
  setBusy(false);
}

// ------------------------------------------------------------------ inputs

async function startMicrophone() {
  if (session) return;
  setBusy(true);
  let media = null;
  try {
    setStatus("Asking for the microphone…");
    const c = await audioContext();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("the microphone needs a secure page: open it over https or on localhost");
    }
    media = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        echoCancellation: ui.echo.checked,
        noiseSuppression: false,
        autoGainControl: false,
      },
    });
    if (!workletLoaded) {
      await c.audioWorklet.addModule("capture-worklet.js");
      workletLoaded = true;
    }
    resetState("microphone", c.sampleRate);
    setStatus("Connecting…");
    const s = await connect(c.sampleRate);
    const source = c.createMediaStreamSource(media);
    const node = new AudioWorkletNode(c, "capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0, // a sink: rendered without being connected to the speakers
      processorOptions: { frameSamples: Math.round(c.sampleRate * FRAME_SECONDS) },
    });
    node.port.onmessage = (event) => {
      if (event.data instanceof Float32Array) return sendPcm(s, event.data);
      if (event.data.type === "flushed") {
        es.capturedSamples = event.data.captured; // == sentSamples: nothing was lost
        sendStop(s);
      }
    };
    const tracks = media.getTracks();
    s.release.push(() => {
      source.disconnect();
      tracks.forEach((track) => track.stop());
    });
    media = null; // owned by the session now
    s.endInput = () => node.port.postMessage({ type: "flush" });
    source.connect(node);
    setStatus("Listening… speak French.");
  } catch (err) {
    if (media) media.getTracks().forEach((track) => track.stop());
    fail(err);
  }
}

async function streamFile(file) {
  if (session) return;
  setBusy(true);
  try {
    setStatus(`Decoding ${file.name}…`);
    const c = await audioContext();
    let decoded;
    try {
      decoded = await c.decodeAudioData(await file.arrayBuffer()); // at c.sampleRate
    } catch (err) {
      throw new Error(`${file.name}: not audio this browser can decode (${err.message || err})`);
    }
    const pcm = toMono(decoded);
    resetState("file", c.sampleRate);
    setStatus("Connecting…");
    const s = await connect(c.sampleRate);
    const fast = ui.fast.checked;
    const frame = Math.round(c.sampleRate * FRAME_SECONDS);
    let next = 0; // first sample not sent yet
    const pump = () => {
      if (session !== s || s.stopSent) return;
      // real-time pace: a frame is sent once its last sample "has been spoken"
      const elapsed = ((performance.now() - s.startedAt) / 1000) * c.sampleRate;
      const available = fast ? pcm.length : Math.min(pcm.length, Math.floor(elapsed));
      while (next < available && (available - next >= frame || available === pcm.length)) {
        if (fast && s.ws.bufferedAmount > MAX_BUFFERED_BYTES) break;
        const ahead = next / c.sampleRate - s.processedSeconds; // seconds queued at the server
        if (fast && ahead > es.ready.max_buffer_seconds - BACKLOG_MARGIN_S) break;
        sendPcm(s, pcm.subarray(next, Math.min(next + frame, pcm.length)));
        next += frame;
      }
      if (next >= pcm.length) return sendStop(s);
      s.timer = setTimeout(pump, fast ? 20 : (FRAME_SECONDS * 1000) / 2);
    };
    s.endInput = () => sendStop(s); // Stop pressed: the rest of the file is not sent
    const pace = fast ? "as fast as possible" : "real time";
    setStatus(`Streaming ${file.name} (${decoded.duration.toFixed(2)} s, ${pace})…`);
    pump();
  } catch (err) {
    fail(err);
  }
}

function toMono(buffer) {
  const out = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < out.length; i++) out[i] += channel[i] / buffer.numberOfChannels;
  }
  return out;
}

function stop() {
  const s = session;
  if (!s || s.stopping) return;
  s.stopping = true;
  ui.stop.disabled = true;
  if (!s.endInput) return end(s, null, "Cancelled."); // before "ready": just hang up
  setStatus("Stopping: the server translates what is left…");
  s.endInput();
}

function fail(err) {
  if (err && err.reported) return;
  const message = err && err.message ? err.message : String(err);
  if (session) end(session, message);
  else {
    es.error = es.error || { code: "client", message };
    setStatus(message, true);
    setBusy(false);
  }
}

resetState(null, null); // every field of window.echostream exists from the start
ui.start.addEventListener("click", startMicrophone);
ui.stop.addEventListener("click", stop);
ui.file.addEventListener("change", () => {
  const file = ui.file.files[0];
  ui.file.value = ""; // choosing the same file again streams it again
  if (file) streamFile(file);
});

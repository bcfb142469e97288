// AudioWorkletProcessor "capture": the microphone's audio, mono, at the AudioContext's rate,
// posted to the main thread in frames of `frameSamples` (default 100 ms) as Float32Array buffers.
//
// Main thread → processor:  {type: "flush"}: post what is buffered, then "flushed".
// Processor → main thread:  Float32Array (transferred) for every full frame;
//                           {type: "flushed", captured: samples captured in all}.
// Multi-channel input is averaged to mono. Blocks arriving after a flush are dropped (the
// stream is over), so that nothing is sent after the page's "stop" message.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.frameSamples = Math.max(128, Math.round(opts.frameSamples || sampleRate / 10));
    this.frame = new Float32Array(this.frameSamples);
    this.filled = 0;
    this.captured = 0; // samples taken from the input so far
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") {
        this.post(this.filled);
        this.stopped = true;
        this.port.postMessage({ type: "flushed", captured: this.captured });
      }
    };
  }

  post(count) {
    if (count === 0) return;
    const out = this.frame.slice(0, count);
    this.port.postMessage(out, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no source connected yet
    const length = channels[0].length; // 128 frames per render quantum
    this.captured += length;
    for (let i = 0; i < length; i++) {
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      this.frame[this.filled++] = sum / channels.length;
      if (this.filled === this.frameSamples) this.post(this.filled);
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);

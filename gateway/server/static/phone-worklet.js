// AudioWorklet processor of the softphone: microphone -> 16 kHz PCM16 frames, and the
// gateway's 16 kHz PCM16 -> speaker through a small jitter buffer with marks.
//
// One processor does both directions, so capture and playback times are on one clock (the
// AudioContext's): the page measures "end of speech -> first audio heard" on it.
//
// Commands (port.postMessage from phone.js):
//   {cmd: "capture", on: bool}     start/stop sending microphone frames
//   {cmd: "play", buf: ArrayBuffer} queue PCM16 16 kHz audio (transferred)
//   {cmd: "mark", name}            answer when the audio queued so far has been output
//   {cmd: "clear"}                 drop all queued audio; pending marks answer played=false
//   {cmd: "arm"}                   report the output time of the first sample queued after now
// Messages back:
//   {type: "audio", buf}           one 20 ms frame (320 samples PCM16, transferred)
//   {type: "captureStart", t}      AudioContext time of the first captured sample
//   {type: "level", rms}           microphone level, every ~50 ms
//   {type: "mark", name, played}
//   {type: "heard", t}             output time of the first sample queued after "arm"
//   {type: "stats", played, cleared, clears, underruns, buffered}  every ~250 ms (samples)
"use strict";

const WIRE_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
const JITTER_SAMPLES = 640; // start playing once 40 ms are buffered...
const JITTER_WAIT_S = 0.04; // ...or the oldest sample has waited 40 ms

class SoftphoneProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / WIRE_RATE; // context samples per wire sample
    // capture
    this.capturing = false;
    this.captureStarted = false;
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.fill = 0;
    this.phase = 0;
    this.sum = 0;
    this.count = 0;
    this.levelSum = 0;
    this.levelCount = 0;
    // playback (positions are absolute wire-sample counts)
    this.queue = []; // Int16Array chunks
    this.head = 0; // read offset in queue[0]
    this.written = 0;
    this.played = 0;
    this.readFrac = 0;
    this.playing = false;
    this.waitSince = -1;
    this.marks = []; // {pos, name}, in order
    this.armPos = -1;
    this.output = 0; // wire samples actually played (not dropped by a clear)
    this.cleared = 0;
    this.clears = 0;
    this.underruns = 0;
    this.sinceStats = 0;
    this.port.onmessage = (event) => this.command(event.data);
  }

  command(msg) {
    switch (msg.cmd) {
      case "capture":
        this.capturing = Boolean(msg.on);
        break;
      case "play": {
        const samples = new Int16Array(msg.buf);
        if (samples.length === 0) break;
        if (this.written === this.played) this.waitSince = currentTime;
        this.queue.push(samples);
        this.written += samples.length;
        break;
      }
      case "mark":
        this.marks.push({ pos: this.written, name: msg.name });
        this.answerMarks();
        break;
      case "clear":
        this.cleared += this.written - this.played;
        this.clears += 1;
        this.queue = [];
        this.head = 0;
        this.played = this.written;
        this.playing = false;
        for (const mark of this.marks) {
          this.port.postMessage({ type: "mark", name: mark.name, played: false });
        }
        this.marks = [];
        break;
      case "arm":
        this.armPos = this.written;
        break;
    }
  }

  answerMarks() {
    while (this.marks.length && this.marks[0].pos <= this.played) {
      const mark = this.marks.shift();
      this.port.postMessage({ type: "mark", name: mark.name, played: true });
    }
  }

  captureBlock(input) {
    if (!this.captureStarted) {
      this.captureStarted = true;
      this.port.postMessage({ type: "captureStart", t: currentTime });
    }
    for (let i = 0; i < input.length; i++) {
      const s = input[i];
      this.levelSum += s * s;
      this.levelCount += 1;
      // Box-filter decimation to 16 kHz (exact pass-through when the context runs at 16 kHz).
      this.sum += s;
      this.count += 1;
      this.phase += 1;
      if (this.phase < this.ratio) continue;
      this.phase -= this.ratio;
      const v = this.sum / this.count;
      this.sum = 0;
      this.count = 0;
      this.frame[this.fill++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
      if (this.fill === FRAME_SAMPLES) {
        const buf = this.frame.buffer;
        this.port.postMessage({ type: "audio", buf }, [buf]);
        this.frame = new Int16Array(FRAME_SAMPLES);
        this.fill = 0;
      }
    }
    if (this.levelCount >= 0.05 * sampleRate) {
      this.port.postMessage({ type: "level", rms: Math.sqrt(this.levelSum / this.levelCount) });
      this.levelSum = 0;
      this.levelCount = 0;
    }
  }

  playBlock(out) {
    const buffered = this.written - this.played;
    if (!this.playing && buffered > 0) {
      if (buffered >= JITTER_SAMPLES || currentTime - this.waitSince >= JITTER_WAIT_S) {
        this.playing = true;
      }
    }
    if (!this.playing) {
      out.fill(0);
      return;
    }
    const step = 1 / this.ratio; // wire samples per output sample
    for (let j = 0; j < out.length; j++) {
      if (this.queue.length === 0) {
        out.fill(0, j);
        this.playing = false;
        // Ran dry while a mark is still ahead: the reply is not over, this is an underrun.
        if (this.marks.length) this.underruns += 1;
        this.waitSince = currentTime;
        break;
      }
      const chunk = this.queue[0];
      if (this.armPos >= 0 && this.played >= this.armPos) {
        this.port.postMessage({ type: "heard", t: currentTime + j / sampleRate });
        this.armPos = -1;
      }
      out[j] = chunk[this.head] / 32768;
      this.readFrac += step;
      while (this.readFrac >= 1 && this.queue.length) {
        this.readFrac -= 1;
        this.head += 1;
        this.played += 1;
        this.output += 1;
        if (this.head === this.queue[0].length) {
          this.queue.shift();
          this.head = 0;
        }
      }
    }
    this.answerMarks();
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    if (this.capturing && input) this.captureBlock(input);
    const output = outputs[0];
    if (output && output[0]) {
      this.playBlock(output[0]);
      for (let c = 1; c < output.length; c++) output[c].set(output[0]);
    }
    this.sinceStats += 128;
    if (this.sinceStats >= 0.25 * sampleRate) {
      this.sinceStats = 0;
      this.port.postMessage({
        type: "stats",
        played: this.output,
        cleared: this.cleared,
        clears: this.clears,
        underruns: this.underruns,
        buffered: this.written - this.played,
      });
    }
    return true;
  }
}

registerProcessor("softphone", SoftphoneProcessor);

// The softphone page: microphone -> AudioWorklet (16 kHz PCM16) -> WebSocket /browser/media,
// and the gateway's audio -> jitter buffer -> speaker. Wire format: gateway/telephony/browser.py.
// No build step, no dependencies. State for humans is on the page; the same numbers are in
// window.softphone for tests and curious developers.
"use strict";

(() => {
  const WIRE_RATE = 16000;
  const $ = (id) => document.getElementById(id);
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;

  const pub = {
    state: "idle", // idle | connecting | in-call | ended | error
    callId: "",
    transcripts: [], // {turn, text}
    replies: [], // {turn, text}
    interruptions: [], // {turn, heard}: barge-ins, with what had been heard
    latencies: [], // {turn, ms}
    played: 0, // 16 kHz samples actually played
    cleared: 0, // samples dropped by "clear" (barge-in)
    clears: 0,
    underruns: 0,
    marks: { played: 0, cleared: 0 },
    closeCode: 0,
    closeReason: "",
    error: "",
  };
  window.softphone = pub;

  const loadedAt = performance.now();
  let pageToken = meta("call-token");
  const tokenTtlMs = 1000 * Number(meta("call-token-ttl") || 60);
  let call = null; // {ws, ctx, node, stream}
  let captureStart = null; // AudioContext time of the first sample sent
  let pendingSpeechEnd = null; // AudioContext time the gateway says the caller stopped speaking
  let lastTurn = 0;
  const agentLines = new Map(); // turn -> <li>

  function setStatus(state, text) {
    pub.state = state;
    $("status").textContent = text || state;
    $("call").disabled = state === "connecting" || state === "in-call";
    $("hangup").disabled = state !== "in-call" && state !== "connecting";
  }

  function addLine(cls, text) {
    const li = document.createElement("li");
    li.className = cls;
    li.dir = "auto";
    li.textContent = text; // never innerHTML: the text comes from the caller and the agent
    $("conversation").appendChild(li);
    return li;
  }

  async function freshToken() {
    // The token embedded in the page is good for its first call while it is young.
    if (pageToken && performance.now() - loadedAt < tokenTtlMs / 2) {
      const t = pageToken;
      pageToken = "";
      return t;
    }
    const response = await fetch("phone/token", { method: "POST", credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `token refused (${response.status})`);
    return body.token;
  }

  function mediaUrl(token) {
    const url = new URL("browser/media", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    return url.toString();
  }

  function newContext() {
    try {
      // 16 kHz end to end: no resampling in the page (the browser converts for the device).
      return new AudioContext({ sampleRate: WIRE_RATE, latencyHint: "interactive" });
    } catch (e) {
      return new AudioContext({ latencyHint: "interactive" }); // the worklet resamples
    }
  }

  async function startCall() {
    setStatus("connecting", "connecting...");
    pub.error = "";
    try {
      const token = await freshToken();
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      const ctx = newContext();
      await ctx.audioWorklet.addModule("phone/phone-worklet.js");
      const node = new AudioWorkletNode(ctx, "softphone", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
      });
      ctx.createMediaStreamSource(stream).connect(node);
      node.connect(ctx.destination);
      await ctx.resume();
      const ws = new WebSocket(mediaUrl(token));
      ws.binaryType = "arraybuffer";
      call = { ws, ctx, node, stream };
      node.port.onmessage = (event) => fromWorklet(event.data);
      ws.onopen = () => {
        ws.send(JSON.stringify({ type: "start", format: { encoding: "pcm16", sampleRate: WIRE_RATE, channels: 1 } }));
        node.port.postMessage({ cmd: "capture", on: true });
      };
      ws.onmessage = (event) => fromGateway(event.data);
      ws.onclose = (event) => endCall(event.code, event.reason);
      ws.onerror = () => {}; // onclose follows with the code
    } catch (e) {
      pub.error = String(e && e.message ? e.message : e);
      teardown();
      setStatus("error", `could not start the call: ${pub.error}`);
    }
  }

  function fromWorklet(msg) {
    switch (msg.type) {
      case "audio":
        if (call && call.ws.readyState === WebSocket.OPEN) call.ws.send(msg.buf);
        break;
      case "level":
        $("level").value = Math.min(1, msg.rms * 4);
        break;
      case "captureStart":
        captureStart = msg.t;
        break;
      case "mark":
        if (msg.played) pub.marks.played += 1;
        else pub.marks.cleared += 1;
        if (call && call.ws.readyState === WebSocket.OPEN) {
          call.ws.send(JSON.stringify({ type: "mark", name: msg.name, played: msg.played }));
        }
        break;
      case "heard":
        if (pendingSpeechEnd !== null) {
          const ms = Math.round(1000 * (msg.t - pendingSpeechEnd));
          pendingSpeechEnd = null;
          pub.latencies.push({ turn: lastTurn, ms });
          const row = document.createElement("tr");
          for (const value of [lastTurn, ms]) {
            const td = document.createElement("td");
            td.textContent = String(value);
            row.appendChild(td);
          }
          $("latency").appendChild(row);
        }
        break;
      case "stats":
        pub.played = msg.played;
        pub.cleared = msg.cleared;
        pub.clears = msg.clears;
        pub.underruns = msg.underruns;
        $("stats").textContent =
          `played ${(msg.played / WIRE_RATE).toFixed(1)} s, buffered ${Math.round(msg.buffered / 16)} ms, ` +
          `barge-ins cleared ${(msg.cleared / WIRE_RATE).toFixed(1)} s, underruns ${msg.underruns}`;
        break;
    }
  }

  function fromGateway(data) {
    if (!call) return;
    if (data instanceof ArrayBuffer) {
      if (data.byteLength >= 2) call.node.port.postMessage({ cmd: "play", buf: data }, [data]);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return;
    }
    switch (msg.type) {
      case "mark":
        call.node.port.postMessage({ cmd: "mark", name: msg.name });
        break;
      case "clear":
        call.node.port.postMessage({ cmd: "clear" });
        break;
      case "started":
        pub.callId = msg.call_id;
        setStatus("in-call", `in call ${msg.call_id}`);
        break;
      case "speech_end":
        // stream_ms counts the audio this page sent since the call started, so the end of
        // speech maps exactly onto the AudioContext clock the worklet plays on.
        if (captureStart !== null) {
          pendingSpeechEnd = captureStart + msg.stream_ms / 1000;
          call.node.port.postMessage({ cmd: "arm" });
        }
        break;
      case "transcript":
        lastTurn = msg.turn;
        pub.transcripts.push({ turn: msg.turn, text: msg.text });
        addLine("caller", msg.text);
        break;
      case "reply": {
        lastTurn = Math.max(lastTurn, msg.turn);
        pub.replies.push({ turn: msg.turn, text: msg.text });
        const li = agentLines.get(msg.turn);
        if (li) li.textContent += " " + msg.text;
        else agentLines.set(msg.turn, addLine("agent", msg.text));
        break;
      }
      case "interrupted":
        pub.interruptions.push({ turn: msg.turn, heard: msg.heard });
        addLine("interrupted", `(interrupted; heard: ${msg.heard || "nothing"})`);
        break;
      case "hangup":
        break; // the gateway closes the socket next
    }
  }

  function teardown() {
    if (!call) return;
    const { ws, ctx, node, stream } = call;
    call = null;
    try { node.port.postMessage({ cmd: "capture", on: false }); } catch (e) { /* closed */ }
    for (const track of stream.getTracks()) track.stop();
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
    ctx.close().catch(() => {});
    captureStart = null;
    pendingSpeechEnd = null;
  }

  function endCall(code, reason) {
    pub.closeCode = code;
    pub.closeReason = reason;
    teardown();
    $("level").value = 0;
    if (code === 1013) setStatus("ended", `the gateway is busy (${reason || "try again later"})`);
    else if (code === 1000) setStatus("ended", "call ended");
    else setStatus("ended", `call ended (${code}${reason ? " " + reason : ""})`);
  }

  function hangUp() {
    if (call && call.ws.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify({ type: "hangup" }));
    teardown();
    setStatus("ended", "call ended");
  }

  for (const digit of "123456789*0#") {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = digit;
    b.addEventListener("click", () => {
      if (call && call.ws.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify({ type: "dtmf", digit }));
    });
    $("keypad").appendChild(b);
  }
  $("call").addEventListener("click", startCall);
  $("hangup").addEventListener("click", hangUp);
  setStatus("idle", "ready");
})();

// LLark chat page: upload or record a clip (sent to POST /v1/files), draw its waveform, and chat
// through POST /v1/chat/completions with stream=true (server-sent events). No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, fileId: null, messages: [], busy: false, recorder: null };

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  localStorage.setItem("llark-api-key", key);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error.message}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("model-name").textContent = `models: ${await errorText(response)}`;
    return;
  }
  state.model = (await response.json()).data[0].id;
  $("model-name").textContent = state.model;
}

function drawWaveform(samples) {
  const canvas = $("waveform");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#3557d4";
  const perPixel = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let lo = 0, hi = 0;
    for (let i = x * perPixel; i < Math.min(samples.length, (x + 1) * perPixel); i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    const top = (1 - hi) * height / 2, bottom = (1 - lo) * height / 2;
    ctx.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

async function decodeForDisplay(bytes) {
  // OfflineAudioContext decodes without a user gesture; the server validates independently.
  const context = new OfflineAudioContext(1, 1, 44100);
  const buffer = await context.decodeAudioData(bytes.slice(0));
  return buffer;
}

function wavFromBuffer(buffer) {
  // 16-bit PCM mono WAV of an AudioBuffer (recordings arrive as webm/ogg from MediaRecorder).
  const samples = buffer.getChannelData(0);
  const rate = buffer.sampleRate;
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true);
  view.setUint16(22, 1, true); view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((v, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, v)) * 32767, true));
  return new Blob([view], { type: "audio/wav" });
}

async function attachClip(blob, name) {
  const status = $("clip-status");
  status.className = "muted";
  status.textContent = `checking ${name}…`;
  state.fileId = null;
  try {
    const buffer = await decodeForDisplay(await blob.arrayBuffer());
    drawWaveform(buffer.getChannelData(0));
  } catch (_) {
    drawWaveform(new Float32Array(0));
  }
  $("player").src = URL.createObjectURL(blob);
  $("player").hidden = false;
  const form = new FormData();
  form.append("purpose", "user_data");
  form.append("file", blob, name);
  const response = await fetch("/v1/files", { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    status.className = "error";
    status.textContent = `clip rejected: ${await errorText(response)}`;
    return;
  }
  const file = await response.json();
  state.fileId = file.id;
  status.textContent = `${name}: ${file.audio_tokens} audio tokens, ready`;
  resetChat();
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("chat").appendChild(div);
  $("chat").scrollTop = $("chat").scrollHeight;
  return div;
}

function resetChat() {
  state.messages = [];
  $("chat").textContent = "";
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = pending.indexOf("\n\n")) >= 0) {
      const event = pending.slice(0, cut);
      pending = pending.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function ask(question) {
  const content = [{ type: "text", text: question }];
  if (state.messages.length === 0 && state.fileId) {
    content.push({ type: "file", file: { file_id: state.fileId } });
  }
  state.messages.push({ role: "user", content });
  addMessage("user", question);
  const bubble = addMessage("assistant", "…");
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ model: state.model, messages: state.messages, stream: true }),
  });
  if (!response.ok) {
    bubble.className = "msg error";
    bubble.textContent = await errorText(response);
    state.messages.pop();
    return;
  }
  let answer = "";
  for await (const data of serverEvents(response)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
    if (delta) {
      answer += delta;
      bubble.textContent = answer;
    }
  }
  bubble.textContent = answer;
  bubble.dataset.done = "true";
  state.messages.push({ role: "assistant", content: answer });
}

async function toggleRecording() {
  const button = $("record");
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    $("clip-status").className = "error";
    $("clip-status").textContent = `no microphone: ${err.message}`;
    return;
  }
  const chunks = [];
  state.recorder = new MediaRecorder(stream);
  state.recorder.ondataavailable = (e) => chunks.push(e.data);
  state.recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    button.textContent = "Record";
    button.classList.remove("recording");
    const recorded = new Blob(chunks);
    const buffer = await decodeForDisplay(await recorded.arrayBuffer());
    await attachClip(wavFromBuffer(buffer), "recording.wav");
  };
  state.recorder.start();
  button.textContent = "Stop";
  button.classList.add("recording");
}

function init() {
  $("api-key").value = localStorage.getItem("llark-api-key") || "";
  $("api-key").addEventListener("change", loadModel);
  $("audio-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) attachClip(file, file.name);
  });
  $("record").addEventListener("click", toggleRecording);
  $("reset").addEventListener("click", resetChat);
  $("ask").addEventListener("submit", async (e) => {
    e.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.busy) return;
    state.busy = true;
    $("send").disabled = true;
    $("question").value = "";
    try {
      await ask(question);
    } catch (err) {
      addMessage("error", `request failed: ${err.message}`);
    } finally {
      state.busy = false;
      $("send").disabled = false;
    }
  });
  loadModel();
}

init();

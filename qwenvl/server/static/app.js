// The qwenvl demo page. The conversation lives here and is sent whole each turn to the server's
// OpenAI-compatible POST /v1/chat/completions (stream: true); replies arrive as Server-Sent Events.
// The finishing chunk may carry choices[0].delta.boxes (original pixels of the conversation's last
// image), drawn as an SVG overlay whose percentages scale with the shown image.
// Must not: fetch anything but this server's /v1 API, or hold model logic (the server parses boxes).
"use strict";

const $ = (selector) => document.querySelector(selector);
const els = {
  messages: $("#messages"), composer: $("#composer"), prompt: $("#prompt"), send: $("#send"),
  file: $("#file"), pending: $("#pending"), model: $("#model"), newChat: $("#new-chat"),
  temperature: $("#temperature"), maxTokens: $("#max-tokens"), apiKey: $("#api-key"), dropHint: $("#drop-hint"),
};
const SETTINGS_KEY = "qwenvl.settings";
// The same twelve colours as qwenvl/processing/draw.py, one per distinct label.
const PALETTE = ["#e6194b", "#3cb44b", "#0082c8", "#f58230", "#911eb4", "#46f0f0",
  "#f032e6", "#d2f53c", "#008080", "#aa6e28", "#800000", "#000080"];

let history = [];        // committed OpenAI messages (a failed turn is not committed)
let pending = [];        // [{url, width, height}] images for the next user message
const sizes = new Map(); // data URL -> [width, height]: the original pixels boxes refer to
let modelId = null;
let controller = null;   // AbortController of the reply being streamed, null when idle

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// ---- settings (localStorage) and API plumbing ----

function loadSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(SETTINGS_KEY)) || {}; } catch { saved = {}; }
  if (saved.temperature !== undefined) els.temperature.value = saved.temperature;
  if (saved.maxTokens !== undefined) els.maxTokens.value = saved.maxTokens;
  if (saved.apiKey) els.apiKey.value = saved.apiKey;
}

function saveSettings() {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify({
    temperature: els.temperature.value, maxTokens: els.maxTokens.value, apiKey: els.apiKey.value,
  }));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = els.apiKey.value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// A non-2xx reply as one readable line: the server's {"error": {"message"}} when it sent one.
async function errorText(res) {
  if (res.status === 401) $("#settings").open = true; // the key is what needs changing
  const raw = await res.text().catch(() => "");
  let message = raw.slice(0, 300) || res.statusText || "no details";
  try { message = JSON.parse(raw).error.message || message; } catch { /* not the JSON error shape */ }
  return `Error ${res.status}: ${message}`;
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (!res.ok) throw new Error(await errorText(res));
    modelId = (await res.json()).data?.[0]?.id ?? null;
    els.model.textContent = modelId ?? "no model served";
    els.model.classList.toggle("bad", !modelId);
  } catch (e) {
    modelId = null;
    els.model.textContent = "model unavailable: " + e.message;
    els.model.classList.add("bad");
  }
}

// ---- images: upload, paste, drag-and-drop ----

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.onload = () => {
      const img = new Image();
      img.onload = () => resolve({ url: reader.result, width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => reject(new Error(`${file.name || "the pasted file"} is not an image this browser can show`));
      img.src = reader.result;
    };
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    try {
      const image = await readImage(file);
      sizes.set(image.url, [image.width, image.height]);
      pending.push(image);
    } catch (e) {
      addBubble("notice", e.message);
    }
  }
  renderPending();
}

function renderPending() {
  els.pending.replaceChildren(...pending.map((image, i) => {
    const thumb = el("div", "thumb");
    const img = el("img");
    img.src = image.url;
    img.alt = `image ${i + 1}, ${image.width}×${image.height}`;
    img.title = img.alt;
    const remove = el("button", "remove", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `remove image ${i + 1}`);
    remove.onclick = () => { pending.splice(i, 1); renderPending(); };
    thumb.append(img, remove);
    return thumb;
  }));
}

// ---- the conversation ----

function scrollDown() { els.messages.scrollTop = els.messages.scrollHeight; }

function addBubble(role, text, images = []) {
  const bubble = el("div", "msg " + role);
  if (images.length) {
    const row = el("div", "images");
    for (const url of images) {
      const img = el("img");
      img.src = url;
      img.alt = "attached image";
      img.onload = scrollDown; // its height is known only now
      row.append(img);
    }
    bubble.append(row);
  }
  bubble.append(el("div", "text", text));
  els.messages.append(bubble);
  scrollDown();
  return bubble;
}

function lastImage(messages) {
  for (let m = messages.length - 1; m >= 0; m--) {
    const parts = Array.isArray(messages[m].content) ? messages[m].content : [];
    for (let p = parts.length - 1; p >= 0; p--) {
      const url = parts[p].type === "image_url" && parts[p].image_url.url;
      if (url && sizes.has(url)) return { url, size: sizes.get(url) };
    }
  }
  return null;
}

// Dark text on light colours, white on dark ones (ITU-R BT.601 luma, as draw.py).
function inkOn(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000" : "#fff";
}

// Boxes in original pixels -> percentages of the image, so the overlay fits whatever size it is shown at.
function drawBoxes(bubble, image, boxes) {
  const [w, h] = image.size;
  const figure = el("div", "figure");
  const img = el("img");
  img.src = image.url;
  img.alt = "image with the answer's boxes";
  img.onload = scrollDown;
  const svg = svgEl("svg", { class: "boxes", role: "img", "aria-label": `${boxes.length} box(es)` });
  const colours = new Map();
  const labels = [];
  boxes.forEach((b, i) => {
    const key = b.label ?? `#unlabelled${i}`;
    if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length]);
    const colour = colours.get(key);
    const pct = (v, total) => `${(100 * v) / total}%`;
    const g = svgEl("g", { class: "box" });
    const title = svgEl("title", {});
    const r = Math.round;
    title.textContent = `${b.label ?? "box"}: (${r(b.x1)}, ${r(b.y1)}) to (${r(b.x2)}, ${r(b.y2)})`;
    g.append(title, svgEl("rect", {
      x: pct(b.x1, w), y: pct(b.y1, h), width: pct(b.x2 - b.x1, w), height: pct(b.y2 - b.y1, h), stroke: colour,
    }));
    if (b.label) {
      // A filled tag above the box (inside it when the box touches the top), as draw.py writes them.
      const tag = el("span", b.y1 / h < 0.1 ? "label inside" : "label", b.label);
      Object.assign(tag.style, { left: pct(b.x1, w), top: pct(b.y1, h), background: colour, color: inkOn(colour) });
      labels.push(tag);
    }
    svg.append(g);
  });
  figure.append(img, svg, ...labels);
  bubble.append(figure);
  scrollDown();
}

// POST the conversation and stream the reply into bubble; resolves to the reply text, throws Error on failure.
async function streamReply(messages, bubble, signal) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), signal,
    body: JSON.stringify({
      model: modelId ?? "default", messages, stream: true,
      temperature: Number(els.temperature.value), max_tokens: parseInt(els.maxTokens.value, 10),
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(await errorText(res));
  const textNode = bubble.querySelector(".text");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", reply = "", finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop(); // an event cut in half stays for the next read
      for (const event of events) {
        const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return reply;
        let chunk;
        try { chunk = JSON.parse(data); } catch { throw new Error("unreadable event from the server: " + data.slice(0, 80)); }
        if (chunk.error) throw new Error("The reply stopped: " + (chunk.error.message || "server error"));
        const choice = chunk.choices?.[0];
        if (choice?.delta?.content) {
          reply += choice.delta.content;
          textNode.textContent = reply;
          scrollDown();
        }
        if (choice?.finish_reason) {
          finished = true;
          const image = lastImage(messages);
          if (choice.delta?.boxes?.length && image) drawBoxes(bubble, image, choice.delta.boxes);
          if (choice.finish_reason === "length") bubble.append(el("div", "meta", "stopped at max tokens"));
        }
        if (chunk.usage) {
          const u = chunk.usage;
          bubble.append(el("div", "meta", `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens`));
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (!finished) throw new Error("The connection closed before the reply finished.");
  return reply;
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.send.textContent = busy ? "…" : "Send";
}

async function send() {
  if (controller) return;
  const text = els.prompt.value.trim();
  if (!text && !pending.length) return;
  if (!modelId) await loadModel();
  const images = pending.map((image) => image.url);
  const content = images.map((url) => ({ type: "image_url", image_url: { url } }));
  if (text) content.push({ type: "text", text });
  const messages = [...history, { role: "user", content }];
  const draft = { text: els.prompt.value, images: pending };
  const userBubble = addBubble("user", text, images);
  const bubble = addBubble("assistant", "");
  bubble.dataset.state = "streaming";
  els.prompt.value = "";
  pending = [];
  renderPending();
  setBusy(true);
  const mine = new AbortController();
  controller = mine;
  try {
    const reply = await streamReply(messages, bubble, mine.signal);
    history = [...messages, { role: "assistant", content: reply }];
    bubble.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") return; // "New chat" cleared the page
    const message = e instanceof TypeError ? `Could not reach the server (${e.message}).` : e.message;
    bubble.dataset.state = "error";
    bubble.append(el("div", "error", message));
    userBubble.classList.add("failed");
    // The turn was not committed: put it back in the composer to send again (say, after fixing the key).
    if (!els.prompt.value && !pending.length) {
      els.prompt.value = draft.text;
      pending = draft.images;
      renderPending();
      bubble.append(el("div", "meta", "Your message is back in the box below, to send again."));
    }
  } finally {
    if (controller === mine) controller = null;
    setBusy(controller !== null);
  }
}

function newChat() {
  if (controller) controller.abort();
  controller = null;
  history = [];
  pending = [];
  sizes.clear();
  els.messages.replaceChildren();
  els.prompt.value = "";
  renderPending();
  setBusy(false);
  els.prompt.focus();
}

// ---- wiring ----

els.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
els.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
els.newChat.addEventListener("click", newChat);
$("#settings-form").addEventListener("submit", (e) => { e.preventDefault(); loadModel(); });
els.file.addEventListener("change", () => { addFiles([...els.file.files]); els.file.value = ""; });
for (const input of [els.temperature, els.maxTokens, els.apiKey]) input.addEventListener("input", saveSettings);
els.apiKey.addEventListener("change", loadModel);

document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.items ?? [])]
    .filter((item) => item.kind === "file" && item.type.startsWith("image/")).map((item) => item.getAsFile());
  if (files.length) { e.preventDefault(); addFiles(files); }
});
const dragsFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
document.addEventListener("dragover", (e) => {
  if (!dragsFiles(e)) return;
  e.preventDefault();
  els.dropHint.hidden = false;
});
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) els.dropHint.hidden = true; });
document.addEventListener("drop", (e) => {
  if (!dragsFiles(e)) return;
  e.preventDefault();
  els.dropHint.hidden = true;
  addFiles([...e.dataTransfer.files]);
});

loadSettings();
loadModel();

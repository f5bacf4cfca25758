// Draw a digit, see what the model says as you draw. No libraries, no build step.
//
// The drawing is sent as a PNG to /api/predict, so it goes through the same preprocessing as
// `digitrec predict` (crop, scale to 20 px, centre of mass), not a naive downscale.
"use strict";

const STROKE = 0.09;       // pen width as a fraction of the pad side: ~2.5 px of MNIST's 20 px box for a digit 3/4 of the pad high
const DEBOUNCE_MS = 150;   // while drawing, ask at most this often

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const statusLine = document.getElementById("status");
const labelEl = document.getElementById("label");
const confidenceEl = document.getElementById("confidence");
const undoButton = document.getElementById("undo");
const clearButton = document.getElementById("clear");
const fileInput = document.getElementById("file");
const resultSection = document.querySelector(".result");

let strokes = [];          // each stroke: [[x, y], ...] in 0..1 pad coordinates
let current = null;        // the stroke being drawn, or null
let timer = null;
let latest = 0;            // number of the newest request; older answers are dropped
let maxBodyBytes = 1 << 20;

// ---------------------------------------------------------------------------------------------
// probability bars: ten plain divs

const bars = [];
for (let digit = 0; digit < 10; digit++) {
  const row = document.createElement("div");
  row.className = "bar";
  row.dataset.digit = String(digit);
  row.innerHTML = `<span class="digit">${digit}</span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
  document.getElementById("bars").appendChild(row);
  bars.push(row);
}

// ---------------------------------------------------------------------------------------------
// the pad

function resizePad() {
  // the canvas keeps device pixels so strokes stay sharp; strokes are redrawn from their points
  const side = Math.round(pad.getBoundingClientRect().width * (window.devicePixelRatio || 1));
  if (side > 0 && pad.width !== side) {
    pad.width = pad.height = side;
    redraw();
  }
}

function redraw() {
  ctx.fillStyle = "#fff";  // opaque paper: dark ink on white, like a scan
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = STROKE * pad.width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) drawStroke(stroke);
  undoButton.disabled = clearButton.disabled = strokes.length === 0;
}

function drawStroke(stroke) {
  const s = pad.width;
  if (stroke.length === 1) {  // a tap is a dot
    ctx.beginPath();
    ctx.arc(stroke[0][0] * s, stroke[0][1] * s, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(stroke[0][0] * s, stroke[0][1] * s);
  for (let i = 1; i < stroke.length; i++) ctx.lineTo(stroke[i][0] * s, stroke[i][1] * s);
  ctx.stroke();
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (!event.isPrimary || event.button > 0) return;  // one finger; left button or pen tip
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = [point(event)];
  strokes.push(current);
  redraw();
});

pad.addEventListener("pointermove", (event) => {
  if (!current || !event.isPrimary) return;
  // coalesced events keep fast strokes smooth on high-rate pens and touch screens
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of (events.length ? events : [event])) current.push(point(e));
  // redraw everything rather than append a segment: the pixels then never depend on how the
  // stroke arrived, so undo gives back exactly the earlier drawing (and the earlier answer)
  redraw();
  schedulePredict(DEBOUNCE_MS);
});

function endStroke(event) {
  if (!current || !event.isPrimary) return;
  current = null;
  schedulePredict(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

undoButton.addEventListener("click", () => {
  strokes.pop();
  redraw();
  if (strokes.length) schedulePredict(0); else reset();
});

clearButton.addEventListener("click", () => {
  strokes = [];
  redraw();
  reset();
});

window.addEventListener("resize", resizePad);

// ---------------------------------------------------------------------------------------------
// asking the server

function schedulePredict(delay) {
  clearTimeout(timer);
  const ticket = ++latest;  // from now on, answers about the drawing as it was are stale
  setBusy(true);
  timer = setTimeout(() => predictDrawing(ticket), delay);
}

function predictDrawing(ticket) {
  if (!strokes.length) return;
  pad.toBlob((blob) => send(blob, "drawing.png", ticket), "image/png");
}

async function send(blob, name, ticket) {
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json();
    if (ticket !== latest) return;  // a newer drawing is already on its way
    setBusy(false);
    if (!response.ok) {
      showError(body.detail || `the server answered ${response.status}`);
      return;
    }
    show(body);
    setStatus(name === "drawing.png" ? "" : `from ${name}`);
  } catch (error) {
    if (ticket !== latest) return;
    setBusy(false);
    showError(`no answer from the server (${error.message})`);
  }
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  fileInput.value = "";  // choosing the same file again still fires `change`
  if (!file) return;
  clearTimeout(timer);
  strokes = [];
  redraw();
  if (file.size > maxBodyBytes) {
    reset();
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; the server takes files up to ${(maxBodyBytes / 1048576).toFixed(1)} MiB`);
    return;
  }
  setStatus(`reading ${file.name}\u2026`);
  setBusy(true);
  send(file, file.name, ++latest);
});

// ---------------------------------------------------------------------------------------------
// showing the answer

function show(result) {
  const probs = result.probabilities;
  labelEl.textContent = String(result.label);
  confidenceEl.textContent = `${(100 * probs[result.label]).toFixed(1)}% sure`;
  bars.forEach((row, digit) => {
    const p = probs[digit];
    row.dataset.p = String(p);
    row.classList.toggle("top", digit === result.label);
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(2)}%`;
    row.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  const pixels = seen.getContext("2d").createImageData(28, 28);
  result.image.flat().forEach((v, i) => {
    pixels.data.set([v, v, v, 255], 4 * i);
  });
  seen.getContext("2d").putImageData(pixels, 0, 0);
}

function reset() {
  latest++;  // answers still in flight are for a drawing that is gone
  clearTimeout(timer);
  labelEl.textContent = "\u2013";
  confidenceEl.textContent = "";
  bars.forEach((row) => {
    delete row.dataset.p;
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".pct").textContent = "";
  });
  seen.getContext("2d").clearRect(0, 0, 28, 28);
  setStatus("Draw one digit, large, in the box.");
  setBusy(false);
}

function setBusy(busy) {
  // aria-busy: screen readers wait for the answer; the styles dim a stale one
  resultSection.setAttribute("aria-busy", String(busy));
}

function setStatus(text) {
  statusLine.textContent = text;
  statusLine.classList.remove("error");
}

function showError(text) {
  statusLine.textContent = text;
  statusLine.classList.add("error");
}

async function loadModelInfo() {
  const el = document.getElementById("model");
  try {
    const info = await (await fetch("/api/model")).json();
    maxBodyBytes = info.max_body_bytes;
    let text = `model: run ${info.run} (preset ${info.preset}, ${info.parameters.toLocaleString("en")} parameters)`;
    if (info.accuracy !== null) {
      text += ` \u2014 ${(100 * info.accuracy).toFixed(2)}% accurate on the ${info.accuracy_on} set`;
      if (info.accuracy_n) text += ` of ${info.accuracy_n.toLocaleString("en")} images`;
    }
    el.textContent = text;
  } catch (error) {
    el.textContent = "could not read the model's details";
  }
}

resizePad();
redraw();
loadModelInfo();

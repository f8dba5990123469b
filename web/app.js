// The demo page: loads the engine and the embedded model, streams generations,
// and draws the expert-routing heat map. URL options (used by the browser test):
// ?autorun=1&greedy=1&max=16&prompt=...  and  ?selftest=1
import { Engine, embeddedChatTemplate, initWasm, loadFromFiles, loadFromUrl, loadGgufFromUrl, openaiApi, wasmMemoryBytes } from "./webmoe.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { engine: null, model: null, running: false, routing: null };
// What the browser test reads.
window.__webmoe = { ready: false, done: false, error: null, generated: [], promptIds: [], routingTotal: 0, report: null };

function status(text, kind = "info") {
  $("status").textContent = text;
  $("status").dataset.kind = kind;
}

function fail(error) {
  const message = String(error?.message ?? error);
  let text = message;
  if (/max_storage_buffer_binding_size|max_buffer_size/.test(message)) {
    text = `This model needs larger GPU buffers than this browser's adapter allows: ${message}`;
  } else if (/device lost/i.test(message)) {
    text = `The GPU device was lost (driver reset or out of memory). Reload the page to start again. ${message}`;
  }
  status(text, "error");
  window.__webmoe.error = message;
  window.__webmoe.done = true;
  setRunning(false);
}

function setRunning(running) {
  state.running = running;
  $("generate").disabled = running || !state.model;
  $("stop").disabled = !running;
}

function resetHeatmap() {
  const { moe_layers: layers, experts } = state.model;
  state.routing = new Float64Array(layers * experts);
  window.__webmoe.routingTotal = 0;
  drawHeatmap();
}

// Redraws at most once per frame while tokens stream (and never resizes the canvas
// unless its size changes): a full redraw per token slowed the page's decode on a CPU
// adapter, whose threads share the cores with the page (SwiftShader, embedded Q4_K_M:
// 29-40 -> 36-38 tokens/s).
let heatmapFrame = 0;
function scheduleHeatmap() {
  if (heatmapFrame) return;
  heatmapFrame = requestAnimationFrame(() => {
    heatmapFrame = 0;
    drawHeatmap();
  });
}

function drawHeatmap() {
  const canvas = $("heatmap");
  const { moe_layers: layers, experts } = state.model;
  const cell = Math.max(4, Math.floor(canvas.clientWidth / experts) || 8);
  // Resizing reallocates the canvas: only when the size changes.
  const [width, height] = [cell * experts, Math.min(Math.max(cell, 12), 28) * layers];
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const rowHeight = canvas.height / layers;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  for (let l = 0; l < layers; l++) {
    const row = state.routing.subarray(l * experts, (l + 1) * experts);
    const max = Math.max(1, ...row);
    for (let e = 0; e < experts; e++) {
      const v = row[e] / max;
      g.fillStyle = `rgba(22, 82, 160, ${v.toFixed(3)})`;
      g.fillRect(e * cell, l * rowHeight, cell - 1, rowHeight - 1);
    }
  }
  $("heatmap-legend").textContent = `${layers} MoE layers × ${experts} experts; ${window.__webmoe.routingTotal} routed assignments so far.`;
}

// The embedded model in Q4_K_M (llama.cpp-quantized: 7.1 MiB, perplexity +0.3% over bf16) unless the page asks
// for the bf16 safetensors (?model=safetensors, 20.5 MiB), another GGUF URL (?model=...gguf) or a Hugging Face
// model directory (?model=path/to/dir/: config.json, tokenizer.json and safetensors shards).
const DEFAULT_MODEL = "models/tiny-moe/tiny-moe-q4_k_m.gguf";

async function loadDefault() {
  const choice = params.get("model") ?? DEFAULT_MODEL;
  status(`Loading ${choice}…`);
  const before = wasmMemoryBytes();
  const directory = choice.endsWith("/") ? choice.slice(0, -1) : "models/tiny-moe";
  state.model = choice.endsWith(".gguf")
    ? await loadGgufFromUrl(state.engine, choice, (m) => status(m))
    : await loadFromUrl(state.engine, directory, (m) => status(m));
  // wasm memory never shrinks: its size after the load is the load's peak.
  window.__webmoe.load = { fromCache: state.model.fromCache, notes: state.model.notes, wasmBytesBefore: before, wasmBytesAfter: wasmMemoryBytes(), weightBytes: state.model.weight_bytes };
  const label = choice.endsWith(".gguf")
    ? choice.split("/").pop()
    : choice.endsWith("/") ? `${directory.split("/").pop()} (safetensors)` : "tiny-moe (bf16 safetensors)";
  modelReady(`${label}${state.model.fromCache ? ", from the browser's cache" : ""}`);
  if (state.model.notes?.length) status(`Ready. ${state.model.notes.join(" ")}`, "warning");
}

function modelReady(name) {
  const m = state.model;
  $("model-summary").textContent = `${name}: ${m.architecture}, ${m.layers} layers, ${m.experts} experts (top-${m.top_k}), hidden ${m.hidden_size}, vocabulary ${m.vocab_size}, context ${m.context}`;
  resetHeatmap();
  setRunning(false);
  status("Ready.");
  // OpenAI-style calls for scripts and the browser test: window.__webmoe.api.chat.completions.create(...)
  window.__webmoe.api = openaiApi(state.engine, { chatTemplate: embeddedChatTemplate() });
  window.__webmoe.ready = true;
}

async function pickFiles(files) {
  if (!files?.length || state.running) return;
  try {
    state.model = null;
    setRunning(false);
    state.model = await loadFromFiles(state.engine, files, (m) => status(m));
    modelReady(files[0].webkitRelativePath?.split("/")[0] || files[0].name);
  } catch (e) {
    fail(e);
  }
}

async function generate() {
  const greedy = $("greedy").checked;
  const prompt = $("prompt").value;
  const out = $("output");
  out.textContent = "";
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  out.append(promptSpan);
  resetHeatmap();
  setRunning(true);
  status("Generating…");
  window.__webmoe.done = false;
  window.__webmoe.generated = [];
  try {
    const promptIds = Array.from(state.engine.encode(prompt));
    window.__webmoe.promptIds = promptIds;
    const report = JSON.parse(await state.engine.generate(
      Uint32Array.from(promptIds),
      Number($("max-tokens").value),
      greedy ? 0 : Number($("temperature").value),
      Number($("top-k").value),
      Number($("top-p").value),
      Number($("seed").value),
      (id, text, routing) => {
        window.__webmoe.generated.push(id);
        out.append(text);
        for (let i = 0; i < routing.length; i++) state.routing[i] += routing[i];
        window.__webmoe.routingTotal += routing.reduce((a, b) => a + b, 0);
        scheduleHeatmap();
        return true;
      },
    ));
    drawHeatmap();
    window.__webmoe.report = report;
    $("stats").textContent = `prefill ${report.prefill_tokens_per_second.toFixed(1)} tokens/s (${report.prompt_ids.length} tokens) · decode ${report.decode_tokens_per_second.toFixed(1)} tokens/s (${report.generated_ids.length} tokens)${report.cancelled ? " · stopped" : ""}`;
    status("Done.");
  } catch (e) {
    fail(e);
    return;
  }
  setRunning(false);
  window.__webmoe.done = true;
}

async function main() {
  if (!navigator.gpu) {
    fail(new Error("This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or Safari, or enable WebGPU in your browser's settings."));
    return;
  }
  try {
    await initWasm();
    // ?kernels=gpu|cpu: the kernel target (default: by the adapter).
    state.engine = await Engine.create(params.get("kernels") ?? undefined);
    const info = JSON.parse(state.engine.adapterInfo());
    if (!info.name) {
      // wgpu's WebGPU backend reports no adapter name; ask the browser directly.
      const web = (await navigator.gpu.requestAdapter())?.info;
      if (web) info.description = [web.vendor, web.architecture, web.device, web.description].filter(Boolean).join(" ") || info.description;
    }
    $("adapter").textContent = `GPU: ${info.description}; largest storage binding ${(info.max_storage_buffer_binding_size / 2 ** 20).toFixed(0)} MiB`;
    window.__webmoe.adapter = info;
    if (params.has("selftest")) {
      status("Running the kernel self-test…");
      window.__webmoe.selftest = JSON.parse(await state.engine.selfTest());
      status(`Self-test: ${window.__webmoe.selftest.passed} passed, ${window.__webmoe.selftest.failed} failed.`);
    }
    await loadDefault();
  } catch (e) {
    fail(e);
    return;
  }
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.engine.cancel());
  $("pick-folder").addEventListener("change", (e) => pickFiles(e.target.files));
  $("pick-files").addEventListener("change", (e) => pickFiles(e.target.files));
  if (params.has("prompt")) $("prompt").value = params.get("prompt");
  if (params.has("max")) $("max-tokens").value = params.get("max");
  if (params.get("greedy") === "1") $("greedy").checked = true;
  for (const name of ["temperature", "top-k", "top-p", "seed"]) {
    if (params.has(name)) $(name).value = params.get(name);
  }
  if (params.get("autorun") === "1") await generate();
  else window.__webmoe.done = true;
}

main();

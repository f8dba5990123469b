// Opens the demo page (web/dist, built by scripts/build-web.sh) in headless Chromium
// with WebGPU, generates 16 greedy tokens on the embedded model, and checks them
// against the native engine, and sampled ones on both kernel targets; checks the routing heat map's totals; the OpenAI-style
// API; runs the kernel self-test in the browser; saves a screenshot.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createServer } from "node:http";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(web, "..");
const dist = join(web, "dist");
const PROMPT = "The Rust programming language";
// What the demo page loads by default: the embedded model in Q4_K_M (made by llama.cpp).
const DEFAULT_GGUF = join(dist, "models/tiny-moe/tiny-moe-q4_k_m.gguf");
const TOKENS = 16;
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

let server, baseUrl, context;
// When set, the server refuses the model's files (as if the network were gone).
let modelFilesOffline = false;

before(async () => {
  server = createServer((req, res) => {
    const pathname = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (modelFilesOffline && pathname.startsWith("/models/")) {
      res.writeHead(503).end();
      return;
    }
    // The transformers fixtures (tests/fixtures/models) are served under /fixtures/.
    const path = pathname.startsWith("/fixtures/")
      ? join(root, "tests/fixtures/models", pathname.slice("/fixtures/".length))
      : join(dist, pathname);
    try {
      const file = statSync(path).isDirectory() ? join(path, "index.html") : path;
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(readFileSync(file));
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  baseUrl = `http://127.0.0.1:${server.address().port}`;
  context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "webmoe-chromium-")), {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: false,
    ignoreDefaultArgs: ["--headless"],
    args: ["--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"],
    viewport: { width: 1000, height: 1100 },
  });
});

after(async () => {
  await context?.close();
  server?.close();
});

async function openPage(query) {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.log(`[browser] ${m.text()}`); });
  await page.goto(`${baseUrl}/index.html?${query}`);
  await page.waitForFunction(() => window.__webmoe?.done === true, null, { timeout: 600_000, polling: 500 });
  const state = await page.evaluate(() => window.__webmoe);
  assert.equal(state.error, null, `the page reported an error: ${state.error}`);
  return { page, state };
}

// Chromium's own SwiftShader Vulkan driver, the adapter its WebGPU falls back to without
// a GPU: running the native engine on it too separates the browser's cost (wasm, Dawn)
// from the driver's (SwiftShader's JIT against lavapipe's LLVM).
const SWIFTSHADER_ICD = process.env.SWIFTSHADER_ICD ?? "/usr/lib/chromium/vk_swiftshader_icd.json";

// `webmoe run` on the default GGUF, greedy: its JSON, and the rates it prints on stderr.
function nativeRun(bin, env) {
  const run = spawnSync(bin, ["run", "--model", DEFAULT_GGUF, "--prompt", PROMPT, "--max-tokens", String(TOKENS), "--greedy", "--json"], {
    env: { ...process.env, ...env }, encoding: "utf8", maxBuffer: 1 << 24,
  });
  assert.equal(run.status, 0, `webmoe run failed: ${run.stderr}`);
  const rates = /prefill: \d+ tokens, ([\d.]+) tokens\/s; decode: \d+ tokens, ([\d.]+) tokens\/s \((.*)\)/.exec(run.stderr);
  assert.ok(rates, `no rates in webmoe run's output: ${run.stderr}`);
  return { ...JSON.parse(run.stdout), prefill: Number(rates[1]), decode: Number(rates[2]), adapter: rates[3] };
}

// Generations per side whose median rates the first test compares.
const RATE_RUNS = 3;

// The median prefill and decode rates of `runs`, each taken on its own.
function median(runs) {
  const mid = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  return { prefill: mid(runs.map((r) => r.prefill)), decode: mid(runs.map((r) => r.decode)) };
}

// Clicks the page's Generate button again (same prompt and settings) and waits for it.
async function generateAgain(page) {
  await page.evaluate(() => { window.__webmoe.done = false; document.getElementById("generate").click(); });
  await page.waitForFunction(() => window.__webmoe?.done === true, null, { timeout: 600_000, polling: 100 });
  const state = await page.evaluate(() => window.__webmoe);
  assert.equal(state.error, null, `the page reported an error: ${state.error}`);
  return state;
}

test("greedy tokens in the browser equal the native engine's", async () => {
  const bin = process.env.WEBMOE_BIN ?? join(root, "target/release/webmoe");
  // The page's default model is the Q4_K_M GGUF; the native engine runs the same file.
  const native = nativeRun(bin, {});

  const { page, state } = await openPage(`autorun=1&greedy=1&max=${TOKENS}&prompt=${encodeURIComponent(PROMPT)}`);
  assert.deepEqual(state.promptIds, native.prompt_ids, "browser and native tokenizers disagree");
  assert.deepEqual(state.generated, native.generated_ids, "browser tokens differ from native tokens");

  const summary = await page.evaluate(() => document.getElementById("model-summary").textContent);
  assert.match(summary, /tiny-moe-q4_k_m\.gguf/, "the page did not load the Q4_K_M GGUF by default");
  const layers = Number(/(\d+) layers/.exec(summary)[1]);
  const topK = Number(/top-(\d+)/.exec(summary)[1]);
  const processed = state.promptIds.length + state.generated.length - 1; // the last token is never fed back
  assert.equal(state.routingTotal, processed * layers * topK, "routing counts do not add up to tokens x layers x k");

  mkdirSync(join(web, "test-results"), { recursive: true });
  const shot = join(web, "test-results", "demo.png");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot of the demo page after generation: ${shot}`);
  console.log(`adapter: ${state.adapter.description}`);
  // Rates: the median of RATE_RUNS generations on each side (this machine's timings
  // swing from run to run), each run listed too.
  const browserRuns = [{ prefill: state.report.prefill_tokens_per_second, decode: state.report.decode_tokens_per_second }];
  for (let run = 1; run < RATE_RUNS; run++) {
    const again = await generateAgain(page);
    assert.deepEqual(again.generated, native.generated_ids, `browser tokens differ from native tokens in run ${run + 1}`);
    browserRuns.push({ prefill: again.report.prefill_tokens_per_second, decode: again.report.decode_tokens_per_second });
  }
  const browserRates = median(browserRuns);
  const line = (name, r) => `${name}: prefill ${r.prefill.toFixed(1)} tokens/s, decode ${r.decode.toFixed(1)} tokens/s`;
  const runs = (list) => list.map((r) => `${r.prefill.toFixed(1)}/${r.decode.toFixed(1)}`).join(", ");
  console.log(`${line("browser (median)", browserRates)} [runs ${runs(browserRuns)}]; ${line(`native (${native.adapter})`, native)}`);
  if (existsSync(SWIFTSHADER_ICD) && /swiftshader/i.test(JSON.stringify(state.adapter))) {
    // The browser's adapter, natively: same tokens, and the rates of the same driver.
    const sameRuns = [];
    for (let run = 0; run < RATE_RUNS; run++) {
      const same = nativeRun(bin, { WGPU_BACKEND: "vulkan", VK_ICD_FILENAMES: SWIFTSHADER_ICD });
      assert.deepEqual(same.generated_ids, native.generated_ids, `native tokens on ${same.adapter} differ`);
      sameRuns.push(same);
    }
    const same = { ...median(sameRuns), adapter: sameRuns[0].adapter };
    const ratio = (r) => `prefill ${(browserRates.prefill / r.prefill).toFixed(2)}x, decode ${(browserRates.decode / r.decode).toFixed(2)}x`;
    console.log(`${line(`native on Chromium's driver (${same.adapter}, median)`, same)} [runs ${runs(sameRuns)}]; browser / native: ${ratio(same)} on the same driver, ${ratio(native)} against ${native.adapter}`);
  }
  await page.close();
});

// Sampled tokens (temperature, top-p, a seed) on either kernel target: on "gpu" the
// `sample` kernel draws each token inside the decode step, on "cpu" the CPU sampler
// draws it from read-back logits; both follow the same rules and seed as natively.
test("sampled tokens in the browser equal the native engine's for the seed, on either kernel target", async () => {
  const bin = process.env.WEBMOE_BIN ?? join(root, "target/release/webmoe");
  const settings = { temperature: "0.8", "top-k": "0", "top-p": "0.9", seed: "7" };
  for (const kernels of ["gpu", "cpu"]) {
    const native = spawnSync(bin, ["run", "--model", DEFAULT_GGUF, "--prompt", PROMPT, "--max-tokens", String(TOKENS),
      "--temperature", settings.temperature, "--top-k", settings["top-k"], "--top-p", settings["top-p"],
      "--seed", settings.seed, "--json"], {
      env: { ...process.env, WEBMOE_KERNELS: kernels }, encoding: "utf8", maxBuffer: 1 << 24,
    });
    assert.equal(native.status, 0, `webmoe run failed: ${native.stderr}`);
    const want = JSON.parse(native.stdout).generated_ids;
    const query = new URLSearchParams({ autorun: "1", max: String(TOKENS), prompt: PROMPT, kernels, ...settings });
    const { page, state } = await openPage(query.toString());
    assert.equal(state.adapter.kernel_target, kernels === "gpu" ? "Gpu" : "Cpu");
    assert.deepEqual(state.generated, want, `kernels=${kernels}: the browser's sampled tokens differ from the native engine's`);
    await page.close();
  }
});

test("the OpenAI-style browser API answers in OpenAI's shapes, like the native engine", async () => {
  const bin = process.env.WEBMOE_BIN ?? join(root, "target/release/webmoe");
  const native = execFileSync(bin, ["run", "--model", DEFAULT_GGUF, "--prompt", PROMPT, "--max-tokens", "8", "--greedy"], {
    env: { ...process.env }, stdio: ["ignore", "pipe", "inherit"],
  }).toString().replace(/\n$/, "");
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.log(`[browser] ${m.text()}`); });
  await page.goto(`${baseUrl}/index.html`);
  await page.waitForFunction(() => window.__webmoe?.ready === true, null, { timeout: 600_000, polling: 500 });
  const got = await page.evaluate(async (prompt) => {
    const api = window.__webmoe.api;
    const completion = await api.completions.create({ model: "tiny-moe", prompt, max_tokens: 8, temperature: 0 });
    const messages = [{ role: "user", content: "What is a crate?" }];
    const chat = await api.chat.completions.create({ messages, max_tokens: 6, temperature: 0 });
    const chunks = [];
    const stream = await api.chat.completions.create({ messages, max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true } });
    for await (const chunk of stream) chunks.push(chunk);
    let error = null;
    try {
      await api.completions.create({ prompt, max_tokens: -1 });
    } catch (e) {
      error = { status: e.status, message: e.message, type: e.error?.type };
    }
    return { completion, chat, chunks, error };
  }, PROMPT);
  await page.close();
  assert.equal(got.completion.object, "text_completion");
  assert.equal(PROMPT + got.completion.choices[0].text, native, "browser completion vs `webmoe run` on the same GGUF");
  assert.equal(got.completion.usage.prompt_tokens, 5);
  assert.equal(got.chat.object, "chat.completion");
  assert.equal(got.chat.choices[0].message.role, "assistant");
  const streamed = got.chunks.flatMap((c) => c.choices).map((c) => c.delta.content ?? "").join("");
  assert.equal(streamed, got.chat.choices[0].message.content);
  assert.ok(got.chunks.every((c) => c.object === "chat.completion.chunk"));
  assert.equal(got.chunks.at(-1).usage.completion_tokens, got.chat.usage.completion_tokens);
  assert.equal(got.chunks.at(-2).choices[0].finish_reason, got.chat.choices[0].finish_reason);
  assert.deepEqual({ status: got.error?.status, type: got.error?.type }, { status: 400, type: "invalid_request_error" });
  assert.match(got.error.message, /max_tokens/);
});

test("gpt-oss (MXFP4 experts, sinks, sliding window) and DeepSeek-V3 (MLA) give transformers' greedy tokens in the browser", async () => {
  const architectures = { gpt_oss_mxfp4: /GptOssForCausalLM/, deepseek_v3: /DeepseekV3ForCausalLM/ };
  for (const [fixture, architecture] of Object.entries(architectures)) {
    const expected = JSON.parse(readFileSync(join(root, "tests/fixtures/models", fixture, "expected.json"), "utf8"));
    const bin = process.env.WEBMOE_BIN ?? join(root, "target/release/webmoe");
    const native = JSON.parse(execFileSync(bin, ["run", "--model", join(root, "tests/fixtures/models", fixture),
      "--prompt", expected.prompt_text, "--max-tokens", String(expected.greedy_ids.length), "--greedy", "--json"], {
      env: { ...process.env }, stdio: ["ignore", "pipe", "inherit"],
    }).toString());
    const query = `model=fixtures/${fixture}/&autorun=1&greedy=1&max=${expected.greedy_ids.length}&prompt=${encodeURIComponent(expected.prompt_text)}`;
    const { page, state } = await openPage(query);
    assert.deepEqual(state.promptIds, expected.prompt_ids, `${fixture}: browser prompt ids differ from transformers'`);
    assert.deepEqual(state.generated, expected.greedy_ids, `${fixture}: browser tokens differ from transformers'`);
    assert.deepEqual(native.generated_ids, expected.greedy_ids, `${fixture}: native tokens differ from transformers'`);
    const summary = await page.evaluate(() => document.getElementById("model-summary").textContent);
    assert.match(summary, architecture);
    await page.close();
  }
});

test("shards stream into the GPU with bounded wasm memory, and a reload works offline from Cache Storage", async () => {
  const shardBytes = statSync(join(dist, "models/tiny-moe/model.safetensors")).size;
  const query = `model=safetensors&autorun=1&greedy=1&max=8&prompt=${encodeURIComponent(PROMPT)}`;
  const first = await openPage(query);
  const load = first.state.load;
  console.log(`wasm memory: ${(load.wasmBytesBefore / 2 ** 20).toFixed(1)} MiB before the load, ${(load.wasmBytesAfter / 2 ** 20).toFixed(1)} MiB after (the shard is ${(shardBytes / 2 ** 20).toFixed(1)} MiB); from cache: ${load.fromCache}`);
  // Streaming: the load adds less than half a shard to wasm memory (the tokenizer and
  // the 1 MiB feed pieces; a copy of the shard would add all of it), and the whole
  // wasm memory stays under 60% of the shard's size.
  assert.ok(load.wasmBytesAfter - load.wasmBytesBefore < shardBytes / 2, "the load grew wasm memory by half a shard or more");
  assert.ok(load.wasmBytesAfter < 0.6 * shardBytes, `wasm memory ${load.wasmBytesAfter} is not below 60% of the shard's ${shardBytes} bytes`);
  assert.deepEqual(load.notes, []);
  await first.page.close();

  modelFilesOffline = true;
  try {
    const again = await openPage(query);
    assert.equal(again.state.load.fromCache, true, "the reload did not come from Cache Storage");
    assert.deepEqual(again.state.generated, first.state.generated, "tokens after an offline reload differ");
    await again.page.close();
  } finally {
    modelFilesOffline = false;
  }
});

test("every kernel matches the CPU reference in the browser", async () => {
  const { page, state } = await openPage("selftest=1");
  const report = state.selftest;
  for (const c of report.checks.filter((c) => !c.passed)) console.log(`FAILED ${c.name}: error ${c.error} > ${c.tolerance} ${c.detail}`);
  console.log(`self-test on ${report.adapter}: ${report.passed} passed, ${report.failed} failed`);
  assert.equal(report.failed, 0);
  assert.ok(report.passed > 40);
  await page.close();
});

test("the benchmark page produces the CLI's JSON report", async () => {
  const page = await context.newPage();
  await page.goto(`${baseUrl}/bench.html?autorun=1&shapes=qwen3&tokens=1,8&repeats=2`);
  await page.waitForFunction(() => window.__bench?.done === true, null, { timeout: 600_000, polling: 500 });
  const bench = await page.evaluate(() => window.__bench);
  assert.equal(bench.error, null, `bench page error: ${bench.error}`);
  const report = bench.report;
  assert.equal(report.rows.length, 2);
  for (const key of ["adapter", "backend", "timing_method", "ceilings", "rows", "max_storage_buffer_binding_size"]) assert.ok(key in report, key);
  assert.ok(report.ceilings.copy_gb_per_s > 0 && report.ceilings.f32_gflop_per_s > 0);
  assert.ok(report.ceilings.shader_read_gb_per_s > 0);
  console.log(`browser bench (${report.timing_method}): copy ${report.ceilings.copy_gb_per_s.toFixed(1)} GB/s, ` +
    `shader read ${report.ceilings.shader_read_gb_per_s.toFixed(1)} GB/s, FMA ${report.ceilings.f32_gflop_per_s.toFixed(1)} GFLOP/s; ` +
    report.rows.map((r) => `T=${r.tokens} ${r.layer.median_ms.toFixed(2)} ms`).join(", "));
  await page.close();
});

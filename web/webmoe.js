// Loading helpers around the wasm engine (pkg/webmoe.js, built by scripts/build-web.sh):
// a model directory from URLs or from files the user picked. Shards stream into the
// GPU: each one's header is read first, then its bytes go to the engine piece by piece
// as they arrive, so no whole shard is ever held in wasm memory. Files fetched from
// URLs are kept in Cache Storage, so a reload loads from disk (and works offline).
import init, { Engine, embeddedChatTemplate } from "./pkg/webmoe.js";

export { Engine, embeddedChatTemplate };

const CACHE_NAME = "webmoe-models-v1";
const FEED_BYTES = 1 << 20;
let ready = null;
let wasm = null;

/** Loads the wasm module once. */
export function initWasm() {
  ready ??= init().then((exports) => (wasm = exports));
  return ready;
}

/** Bytes of the wasm module's linear memory (what the page holds in wasm). */
export function wasmMemoryBytes() {
  return wasm?.memory?.buffer?.byteLength ?? 0;
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

async function openCache() {
  try {
    return typeof caches === "undefined" ? null : await caches.open(CACHE_NAME);
  } catch {
    return null; // e.g. storage disabled
  }
}

/**
 * A response for `url`: from Cache Storage when it is there, else from the network,
 * stored in the cache on the way (streamed to disk, then read back). `notes` collects
 * why something could not be cached (quota exceeded).
 */
async function cachedResponse(cache, url, notes) {
  if (cache) {
    const hit = await cache.match(url);
    if (hit) return { response: hit, cached: true };
  }
  const response = await fetchOk(url);
  if (!cache) return { response, cached: false };
  try {
    await cache.put(url, response);
    const stored = await cache.match(url);
    if (stored) return { response: stored, cached: false };
  } catch (e) {
    const quota = e?.name === "QuotaExceededError" || /quota/i.test(String(e?.message));
    notes.push(quota
      ? `${url} is not kept for offline use: the browser's storage quota is exceeded (free some site data to cache it)`
      : `${url} is not kept for offline use: ${e?.message ?? e}`);
  }
  return { response: await fetchOk(url), cached: false };
}

/** Reads a byte stream with a look-ahead buffer: `take(n)` returns exactly n bytes. */
class ByteReader {
  constructor(stream) {
    this.reader = stream.getReader();
    this.pending = [];
    this.pendingBytes = 0;
    this.offset = 0; // file offset of the next byte handed out
  }
  async fill(n) {
    while (this.pendingBytes < n) {
      const { value, done } = await this.reader.read();
      if (done) return false;
      this.pending.push(value);
      this.pendingBytes += value.byteLength;
    }
    return true;
  }
  /** Exactly n bytes (fewer at the end of the stream). */
  async take(n) {
    await this.fill(n);
    const out = new Uint8Array(Math.min(n, this.pendingBytes));
    let at = 0;
    while (at < out.length) {
      const head = this.pending[0];
      const want = out.length - at;
      if (head.byteLength <= want) {
        out.set(head, at);
        at += head.byteLength;
        this.pending.shift();
      } else {
        out.set(head.subarray(0, want), at);
        this.pending[0] = head.subarray(want);
        at += want;
      }
    }
    this.pendingBytes -= out.length;
    this.offset += out.length;
    return out;
  }
  /** The next piece of the stream as it arrives (null at the end). */
  async next() {
    if (this.pending.length) {
      const piece = this.pending.shift();
      this.pendingBytes -= piece.byteLength;
      this.offset += piece.byteLength;
      return piece;
    }
    const { value, done } = await this.reader.read();
    if (done) return null;
    this.offset += value.byteLength;
    return value;
  }
  cancel() {
    this.reader.cancel().catch(() => {});
  }
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Feeds every file into the planned load: first the bytes already read (`heads`,
 * from offset 0; the engine skips header bytes), then the rest of each stream as it
 * arrives, at most 1 MiB per call (each call copies its bytes into wasm memory).
 */
async function feedAll(engine, plan, sources, readers, heads, onProgress) {
  const total = plan.total_bytes;
  const started = performance.now();
  let done = 0;
  const feed = (i, start, bytes) => {
    for (let at = 0; at < bytes.byteLength; at += FEED_BYTES) {
      done = engine.feed(i, start + at, bytes.subarray(at, at + FEED_BYTES));
    }
    const seconds = (performance.now() - started) / 1000;
    onProgress(`loading ${sources[i].name}: ${(done / 2 ** 20).toFixed(1)} / ${(total / 2 ** 20).toFixed(1)} MiB (${(done / 2 ** 20 / Math.max(seconds, 1e-3)).toFixed(1)} MiB/s)`, done / total);
  };
  for (const [i, reader] of readers.entries()) {
    feed(i, 0, heads[i]);
    let piece;
    while ((piece = await reader.next()) !== null) feed(i, reader.offset - piece.byteLength, piece);
    reader.cancel();
  }
  return finishLoad(engine, onProgress);
}

/**
 * Ends a load, then compiles the kernels with a few warm-up steps
 * (drivers compile a pipeline on its first use; SwiftShader's JIT takes about a second
 * for the embedded model), so the first generation runs at the model's speed.
 */
async function finishLoad(engine, onProgress) {
  const summary = JSON.parse(engine.finishLoad());
  onProgress("compiling kernels (warm-up steps)…", 1);
  try {
    summary.warm_up_seconds = await engine.warmUp();
  } catch (e) {
    // The model is loaded; kernels then compile on first use.
    summary.warm_up_error = String(e?.message ?? e);
  }
  return summary;
}

/**
 * Streams safetensors shards into the engine. `sources` are {name, size, stream()};
 * config and tokenizer are already read. `onProgress(text, fraction)` reports bytes.
 */
async function streamShards(engine, config, tokenizer, sources, onProgress) {
  const readers = [];
  const headers = [];
  for (const source of sources) {
    const reader = new ByteReader(await source.stream());
    const first = await reader.take(8);
    const header = concat(first, await reader.take(Engine.headerLength(first) - 8));
    readers.push(reader);
    headers.push(header);
  }
  const plan = JSON.parse(engine.beginLoad(config, tokenizer, sources.map((s) => s.name), sources.map((s) => s.size ?? 0), headers));
  return feedAll(engine, plan, sources, readers, headers, onProgress);
}

/** Streams GGUF files (one, or split files in order) into the engine. */
async function streamGguf(engine, sources, onProgress) {
  const readers = [];
  const heads = [];
  for (const source of sources) {
    const reader = new ByteReader(await source.stream());
    readers.push(reader);
    heads.push(await reader.take(1 << 20));
  }
  const names = sources.map((s) => s.name);
  for (;;) {
    try {
      const plan = JSON.parse(engine.beginLoadGguf(names, sources.map((s) => s.size ?? 0), heads));
      return await feedAll(engine, plan, sources, readers, heads, onProgress);
    } catch (e) {
      // Metadata longer than the bytes read so far: read four times as much and retry.
      if (!/more bytes needed/.test(String(e?.message ?? e))) throw e;
      let grew = false;
      for (const [i, reader] of readers.entries()) {
        const more = await reader.take(heads[i].length * 3);
        if (more.length) {
          heads[i] = concat(heads[i], more);
          grew = true;
        }
      }
      if (!grew) throw e;
    }
  }
}

/** Shard names of a model at `base` (model.safetensors or the index's shards). */
async function shardNames(cache, base, notes) {
  const url = `${base}/model.safetensors.index.json`;
  let index = cache ? await cache.match(url) : null;
  if (!index) {
    index = await fetch(url).catch(() => null);
    if (index?.ok && cache) await cache.put(url, index.clone()).catch(() => {});
  }
  if (index?.ok) {
    const map = (await index.json()).weight_map ?? {};
    return [...new Set(Object.values(map))].sort();
  }
  void notes;
  return ["model.safetensors"];
}

async function optionalBytes(cache, url, notes) {
  try {
    const { response } = await cachedResponse(cache, url, notes);
    return new Uint8Array(await response.arrayBuffer());
  } catch {
    return undefined;
  }
}

/**
 * Loads the model at `base` (config.json, safetensors shards, tokenizer.json),
 * streaming each shard into the GPU and keeping the files in Cache Storage.
 * `onProgress(text, fraction)`; resolves to the model summary plus `notes` (e.g. a
 * quota message) and `fromCache` (every shard came from Cache Storage).
 */
export async function loadFromUrl(engine, base, onProgress = () => {}) {
  const cache = await openCache();
  const notes = [];
  const config = await (await cachedResponse(cache, `${base}/config.json`, notes)).response.text();
  const tokenizer = await optionalBytes(cache, `${base}/tokenizer.json`, notes);
  const names = await shardNames(cache, base, notes);
  let fromCache = true;
  const sources = names.map((name) => ({
    name,
    size: 0,
    stream: async () => {
      onProgress(`opening ${name}`, 0);
      const { response, cached } = await cachedResponse(cache, `${base}/${name}`, notes);
      fromCache &&= cached;
      const size = Number(response.headers.get("content-length") ?? 0);
      sources.find((s) => s.name === name).size = size;
      return response.body;
    },
  }));
  const summary = await streamShards(engine, config, tokenizer, sources, onProgress);
  return { ...summary, notes, fromCache };
}

/**
 * Loads a GGUF model from `url` (a single file, or the first of `-00001-of-0000N.gguf`
 * split files), streamed into the GPU and kept in Cache Storage like `loadFromUrl`.
 */
export async function loadGgufFromUrl(engine, url, onProgress = () => {}) {
  const cache = await openCache();
  const notes = [];
  const split = /^(.*)-(\d+)-of-(\d+)\.gguf$/.exec(url);
  const urls = split
    ? Array.from({ length: Number(split[3]) }, (_, i) => `${split[1]}-${String(i + 1).padStart(split[2].length, "0")}-of-${split[3]}.gguf`)
    : [url];
  let fromCache = true;
  const sources = urls.map((u) => ({
    name: u.split("/").pop(),
    size: 0,
    stream: async () => {
      onProgress(`opening ${u}`, 0);
      const { response, cached } = await cachedResponse(cache, u, notes);
      fromCache &&= cached;
      sources.find((s) => s.url === u).size = Number(response.headers.get("content-length") ?? 0);
      return response.body;
    },
    url: u,
  }));
  const summary = await streamGguf(engine, sources, onProgress);
  return { ...summary, notes, fromCache };
}

/** Loads a model from user-picked files (a folder or several files, or .gguf files), streaming each. */
export async function loadFromFiles(engine, fileList, onProgress = () => {}) {
  const files = [...fileList];
  const ggufs = files.filter((f) => f.name.endsWith(".gguf")).sort((a, b) => a.name.localeCompare(b.name));
  if (ggufs.length) {
    const sources = ggufs.map((f) => ({ name: f.name, size: f.size, stream: async () => f.stream() }));
    return { ...(await streamGguf(engine, sources, onProgress)), notes: [], fromCache: false };
  }
  const byName = (n) => files.find((f) => f.name === n);
  const configFile = byName("config.json");
  if (!configFile) throw new Error("the chosen files have no config.json");
  const shardFiles = files.filter((f) => f.name.endsWith(".safetensors")).sort((a, b) => a.name.localeCompare(b.name));
  if (shardFiles.length === 0) throw new Error("the chosen files have no .safetensors file");
  const tokFile = byName("tokenizer.json");
  const tokenizer = tokFile ? new Uint8Array(await tokFile.arrayBuffer()) : undefined;
  const sources = shardFiles.map((f) => ({ name: f.name, size: f.size, stream: async () => f.stream() }));
  return { ...(await streamShards(engine, await configFile.text(), tokenizer, sources, onProgress)), notes: [], fromCache: false };
}

/** Removes the cached model files (Cache Storage). */
export async function clearModelCache() {
  if (typeof caches !== "undefined") await caches.delete(CACHE_NAME);
}

/** An Error from an OpenAI-style failure: `status` (HTTP-like) and OpenAI's `error` object. */
function apiError(e) {
  let parsed = null;
  try {
    parsed = JSON.parse(typeof e === "string" ? e : e?.message);
  } catch {
    // not OpenAI's error JSON
  }
  const error = parsed?.error ?? { message: String(e?.message ?? e), type: "invalid_request_error" };
  return Object.assign(new Error(error.message), { status: parsed?.status ?? 400, error });
}

/**
 * OpenAI-style calls on a loaded engine, with OpenAI's request and response shapes
 * (the same code as `webmoe serve`), so code written for OpenAI's client works:
 * `await api.chat.completions.create({ messages, max_tokens, temperature, stream })`
 * and `api.completions.create({ prompt, ... })`. Without `stream` the promise gives the
 * response object; with `stream: true` it gives an async iterable of chunk objects
 * (`for await (const chunk of stream)`; breaking out stops the generation). Failures
 * throw an Error with `status` and `error`. Chats use the model's chat template, else
 * `chatTemplate`.
 */
export function openaiApi(engine, { chatTemplate } = {}) {
  const endpoint = (name) => ({
    async create(body) {
      const call = (onChunk) => {
        try {
          return engine.openaiRequest(name, JSON.stringify(body), chatTemplate, onChunk);
        } catch (e) {
          return Promise.reject(e);
        }
      };
      if (!body.stream) {
        try {
          return JSON.parse(await call(() => {}));
        } catch (e) {
          throw apiError(e);
        }
      }
      const queue = [];
      let wake = null;
      let done = false;
      let failure = null;
      const notify = () => { wake?.(); wake = null; };
      call((chunk) => { queue.push(JSON.parse(chunk)); notify(); })
        .then(() => { done = true; notify(); }, (e) => { failure = apiError(e); done = true; notify(); });
      return {
        async *[Symbol.asyncIterator]() {
          try {
            for (;;) {
              if (queue.length) {
                yield queue.shift();
              } else if (done) {
                if (failure) throw failure;
                return;
              } else {
                await new Promise((resolve) => (wake = resolve));
              }
            }
          } finally {
            if (!done) engine.cancel();
          }
        },
      };
    },
  });
  return { chat: { completions: endpoint("chat/completions") }, completions: endpoint("completions") };
}

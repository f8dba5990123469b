// Loading helpers around the wasm engine (pkg/webmoe.js, built by scripts/build-web.sh):
// a model directory from URLs or from files the user picked.
import init, { Engine } from "./pkg/webmoe.js";

export { Engine };

let ready = null;
/** Loads the wasm module once. */
export function initWasm() {
  ready ??= init();
  return ready;
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

/** Shard names of a model at `base` (model.safetensors or the index's shards). */
async function shardNames(base) {
  const index = await fetch(`${base}/model.safetensors.index.json`);
  if (index.ok) {
    const map = (await index.json()).weight_map ?? {};
    return [...new Set(Object.values(map))].sort();
  }
  return ["model.safetensors"];
}

/** Fetches config.json, the safetensors shards and tokenizer.json from `base`. */
export async function loadFromUrl(engine, base, onProgress = () => {}) {
  const config = await (await fetchOk(`${base}/config.json`)).text();
  const names = await shardNames(base);
  const shards = [];
  for (const [i, name] of names.entries()) {
    onProgress(`fetching ${name} (${i + 1}/${names.length})`);
    shards.push(new Uint8Array(await (await fetchOk(`${base}/${name}`)).arrayBuffer()));
  }
  const tok = await fetch(`${base}/tokenizer.json`);
  const tokenizer = tok.ok ? new Uint8Array(await tok.arrayBuffer()) : undefined;
  onProgress("uploading weights to the GPU");
  return JSON.parse(engine.loadModel(config, names, shards, tokenizer));
}

/** Loads a model from user-picked files (a folder or several files). */
export async function loadFromFiles(engine, fileList, onProgress = () => {}) {
  const files = [...fileList];
  const byName = (n) => files.find((f) => f.name === n);
  const configFile = byName("config.json");
  if (!configFile) throw new Error("the chosen files have no config.json");
  const shardFiles = files.filter((f) => f.name.endsWith(".safetensors")).sort((a, b) => a.name.localeCompare(b.name));
  if (shardFiles.length === 0) throw new Error("the chosen files have no .safetensors file");
  const shards = [];
  for (const f of shardFiles) {
    onProgress(`reading ${f.name}`);
    shards.push(new Uint8Array(await f.arrayBuffer()));
  }
  const tokFile = byName("tokenizer.json");
  const tokenizer = tokFile ? new Uint8Array(await tokFile.arrayBuffer()) : undefined;
  onProgress("uploading weights to the GPU");
  return JSON.parse(engine.loadModel(await configFile.text(), shardFiles.map((f) => f.name), shards, tokenizer));
}

//! Loading streams the checkpoint into GPU buffers without a host copy of the model:
//! with a counting global allocator, the host heap grows by at most twice the largest
//! tensor plus 64 MiB while a ~150 MB bf16 checkpoint loads (a host copy of its f32
//! values, or even of its bf16 bytes, would exceed that). One test per binary: the
//! allocator counts the whole process.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use webmoe::model::load::{load_model_dir, LoadOptions};
use webmoe::model::session::Session;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Writes a bf16 safetensors file tensor by tensor (deterministic small values; norms 1).
fn write_checkpoint(path: &std::path::Path, tensors: &[(String, Vec<usize>)]) -> usize {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let mut state = 0x2545_f491_u32;
    let mut piece = Vec::with_capacity(1 << 20);
    let mut largest = 0;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        largest = largest.max(n * 2);
        let norm = name.contains("norm");
        let mut left = n;
        while left > 0 {
            piece.clear();
            for _ in 0..left.min(1 << 19) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let v = if norm {
                    1.0
                } else {
                    (state as f32 / u32::MAX as f32 - 0.5) * 0.1
                };
                piece.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
            left -= piece.len() / 2;
            file.write_all(&piece).unwrap();
        }
    }
    file.flush().unwrap();
    largest
}

#[test]
fn loading_keeps_the_host_heap_under_two_tensors_plus_64_mib() {
    let (d, heads, kv_heads, hd, experts, ffn, layers, vocab) = (512, 8, 2, 64, 32, 256, 4, 16384);
    let dir = std::env::temp_dir().join(format!("webmoe-load-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": hd, "num_experts": experts,
        "num_experts_per_tok": 4, "moe_intermediate_size": ffn, "intermediate_size": 1024,
        "vocab_size": vocab, "max_position_embeddings": 256, "norm_topk_prob": true,
        "tie_word_embeddings": false, "dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, d]),
        ("lm_head.weight".to_string(), vec![vocab, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![heads * hd, d]),
            ("self_attn.k_proj.weight", vec![kv_heads * hd, d]),
            ("self_attn.v_proj.weight", vec![kv_heads * hd, d]),
            ("self_attn.o_proj.weight", vec![d, heads * hd]),
            ("self_attn.q_norm.weight", vec![hd]),
            ("self_attn.k_norm.weight", vec![hd]),
            ("mlp.gate.weight", vec![experts, d]),
        ] {
            tensors.push((format!("{p}.{name}"), shape));
        }
        for e in 0..experts {
            tensors.push((format!("{p}.mlp.experts.{e}.gate_proj.weight"), vec![ffn, d]));
            tensors.push((format!("{p}.mlp.experts.{e}.up_proj.weight"), vec![ffn, d]));
            tensors.push((format!("{p}.mlp.experts.{e}.down_proj.weight"), vec![d, ffn]));
        }
    }
    let largest = write_checkpoint(&dir.join("model.safetensors"), &tensors);
    let file_bytes = std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as usize;
    drop(tensors);

    let ctx = common::context();
    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let loaded = load_model_dir(&ctx, &dir, LoadOptions::default()).unwrap();
    let grew = PEAK.load(Ordering::Relaxed) - baseline;
    let bound = 2 * largest + (64 << 20);
    eprintln!(
        "checkpoint {:.1} MB (largest tensor {:.1} MB): host heap grew by at most {:.1} MB during the load (bound {:.1} MB)",
        file_bytes as f64 / 1e6,
        largest as f64 / 1e6,
        grew as f64 / 1e6,
        bound as f64 / 1e6
    );
    assert!(
        file_bytes > bound,
        "the checkpoint must be larger than the bound for the test to mean anything"
    );
    assert!(
        grew <= bound,
        "loading grew the heap by {grew} bytes, more than {bound}"
    );
    assert_eq!(
        loaded.model.weight_bytes() as usize / 1_000_000,
        (file_bytes - 8) / 1_000_000
    );

    // The model runs.
    let mut session = Session::new(&ctx, &loaded.model, None).unwrap();
    let token = pollster::block_on(session.next_greedy(&ctx, &loaded.model, &[1, 2, 3])).unwrap();
    assert!((token as usize) < vocab);
    std::fs::remove_dir_all(&dir).ok();
}

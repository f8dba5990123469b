//! Host-side f32 weights of the generic decoder, by Hugging Face tensor names (per
//! family, [`crate::model::names`]) in one layout: `[out, in]` matrices, experts as
//! `[E, out, in]`. The CPU reference decoder and synthetic models use these; the GPU
//! load streams checkpoint bytes instead ([`crate::model::model`]).

use crate::error::Result;
use crate::model::config::{Family, ModelConfig, QkNorm};
use crate::model::families::{self, gpt_oss};
use crate::model::names::{self, ExpertTensors};
use crate::model::safetensors_io::TensorStore;
use crate::moe::{ExpertBiasWeights, MoeWeights, SharedExpertWeights};
use crate::weights::WeightFormat;

/// Multi-head latent attention's tensors (DeepSeek), Hugging Face orientation.
#[derive(Clone, Debug, Default)]
pub struct MlaWeights {
    /// `q_proj` `[H (nope + rope), d]` without q compression.
    pub q: Option<Vec<f32>>,
    /// `q_a_proj` `[q_lora, d]`, `q_a_layernorm` `[q_lora]`, `q_b_proj` `[H (nope + rope), q_lora]`.
    pub q_a: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    /// `kv_a_proj_with_mqa` `[L + rope, d]`
    pub kv_a: Vec<f32>,
    /// `kv_a_layernorm` `[L]`
    pub kv_a_norm: Vec<f32>,
    /// `kv_b_proj` `[H (nope + v), L]`
    pub kv_b: Vec<f32>,
}

/// Attention tensors; an MLA layer fills `mla` and `o` and leaves q, k, v empty.
#[derive(Clone, Debug, Default)]
pub struct AttentionWeights {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// `[d]` (gpt-oss)
    pub o_bias: Option<Vec<f32>>,
    /// `[heads]` sink logits (gpt-oss)
    pub sinks: Option<Vec<f32>>,
    pub mla: Option<MlaWeights>,
}

#[derive(Clone, Debug)]
pub enum FeedForwardWeights {
    Moe(Box<MoeWeights>),
    Dense {
        gate: Vec<f32>,
        up: Vec<f32>,
        down: Vec<f32>,
    },
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub attention: AttentionWeights,
    pub post_attention_norm: Vec<f32>,
    pub ffn: FeedForwardWeights,
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// `[vocab, d]`
    pub embed_tokens: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab, d]`; `None` when tied to the embedding.
    pub lm_head: Option<Vec<f32>>,
}

impl ModelWeights {
    pub fn load(config: &ModelConfig, store: &TensorStore) -> Result<Self> {
        Self::load_with_progress(config, store, &mut |_| {})
    }

    /// Like [`ModelWeights::load`], calling `progress(layers done)` after each layer.
    pub fn load_with_progress(
        config: &ModelConfig,
        store: &TensorStore,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let c = config;
        let d = c.hidden_size;
        let layers = (0..c.num_layers)
            .map(|i| {
                let layer = load_layer(c, store, i);
                progress(i + 1);
                layer
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(store.get_f32(names::LM_HEAD, &[c.vocab_size, d])?)
        };
        Ok(Self {
            embed_tokens: store.get_f32(names::EMBED_TOKENS, &[c.vocab_size, d])?,
            layers,
            final_norm: store.get_f32(names::FINAL_NORM, &[d])?,
            lm_head,
        })
    }
}

fn load_layer(c: &ModelConfig, store: &TensorStore, i: usize) -> Result<LayerWeights> {
    let p = names::layer(i);
    let get = |name: &str, shape: &[usize]| store.get_f32(&format!("{p}.{name}"), shape);
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
    let bias = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
        if c.attention_bias {
            Ok(Some(get(&format!("self_attn.{name}.bias"), &[n])?))
        } else {
            Ok(None)
        }
    };
    let (q_norm, k_norm) = match c.qk_norm {
        QkNorm::None => (None, None),
        QkNorm::PerHead => (
            Some(get("self_attn.q_norm.weight", &[hd])?),
            Some(get("self_attn.k_norm.weight", &[hd])?),
        ),
        QkNorm::Full => (
            Some(get("self_attn.q_norm.weight", &[qw])?),
            Some(get("self_attn.k_norm.weight", &[kvw])?),
        ),
    };
    let attention = match c.mla {
        Some(m) => {
            let (heads, qk) = (c.num_heads, m.qk_nope_head_dim + m.qk_rope_head_dim);
            let (l, r) = (m.kv_lora_rank, m.qk_rope_head_dim);
            AttentionWeights {
                o: get("self_attn.o_proj.weight", &[d, heads * m.v_head_dim])?,
                mla: Some(MlaWeights {
                    q: match m.q_lora_rank {
                        None => Some(get("self_attn.q_proj.weight", &[heads * qk, d])?),
                        Some(_) => None,
                    },
                    q_a: match m.q_lora_rank {
                        None => None,
                        Some(rank) => Some((
                            get("self_attn.q_a_proj.weight", &[rank, d])?,
                            get("self_attn.q_a_layernorm.weight", &[rank])?,
                            get("self_attn.q_b_proj.weight", &[heads * qk, rank])?,
                        )),
                    },
                    kv_a: get("self_attn.kv_a_proj_with_mqa.weight", &[l + r, d])?,
                    kv_a_norm: get("self_attn.kv_a_layernorm.weight", &[l])?,
                    kv_b: get(
                        "self_attn.kv_b_proj.weight",
                        &[heads * (m.qk_nope_head_dim + m.v_head_dim), l],
                    )?,
                }),
                ..Default::default()
            }
        }
        None => AttentionWeights {
            q: get("self_attn.q_proj.weight", &[qw, d])?,
            k: get("self_attn.k_proj.weight", &[kvw, d])?,
            v: get("self_attn.v_proj.weight", &[kvw, d])?,
            o: get("self_attn.o_proj.weight", &[d, qw])?,
            q_bias: bias("q_proj", qw)?,
            k_bias: bias("k_proj", kvw)?,
            v_bias: bias("v_proj", kvw)?,
            q_norm,
            k_norm,
            o_bias: if c.output_bias {
                Some(get("self_attn.o_proj.bias", &[d])?)
            } else {
                None
            },
            sinks: if c.attention_sinks {
                Some(store.get_f32(&gpt_oss::sinks_name(&p), &[c.num_heads])?)
            } else {
                None
            },
            mla: None,
        },
    };
    let ffn = if c.sparse_layers[i] {
        FeedForwardWeights::Moe(Box::new(load_moe(c, store, i)?))
    } else {
        let f = c.dense_ffn;
        FeedForwardWeights::Dense {
            gate: get("mlp.gate_proj.weight", &[f, d])?,
            up: get("mlp.up_proj.weight", &[f, d])?,
            down: get("mlp.down_proj.weight", &[d, f])?,
        }
    };
    Ok(LayerWeights {
        input_norm: get("input_layernorm.weight", &[d])?,
        attention,
        post_attention_norm: get("post_attention_layernorm.weight", &[d])?,
        ffn,
    })
}

/// Concatenates per-expert `[out, in]` tensors into `[E, out, in]`.
fn stack(store: &TensorStore, names: impl Iterator<Item = String>, shape: &[usize]) -> Result<Vec<f32>> {
    let mut all = Vec::new();
    for name in names {
        all.extend(store.get_f32(&name, shape)?);
    }
    Ok(all)
}

fn load_moe(c: &ModelConfig, store: &TensorStore, layer: usize) -> Result<MoeWeights> {
    let (d, f, e) = (c.hidden_size, c.moe.expert_ffn, c.moe.num_experts());
    let n = names::moe(c.family, layer, c.per_expert_names);
    let (gate, up, down) = match &n.experts {
        ExpertTensors::PerExpert { prefix, gate, up, down } => {
            let kind = |suffix: &str, shape: &[usize]| {
                stack(store, (0..e).map(|x| ExpertTensors::expert(prefix, x, suffix)), shape)
            };
            (kind(gate, &[f, d])?, kind(up, &[f, d])?, kind(down, &[d, f])?)
        }
        ExpertTensors::Fused { input, output } => {
            // input [E, 2 ffn, d]: the first ffn rows are the gate, the rest up.
            let fused = store.get_f32(input, &[e, 2 * f, d])?;
            let (mut gate, mut up) = (Vec::with_capacity(e * f * d), Vec::with_capacity(e * f * d));
            for expert in fused.chunks(2 * f * d) {
                gate.extend_from_slice(&expert[..f * d]);
                up.extend_from_slice(&expert[f * d..]);
            }
            (gate, up, store.get_f32(output, &[e, d, f])?)
        }
        ExpertTensors::GptOss(g) => {
            // [E, in, cols] applied as x @ W: expert rows are columns (gate/up interleaved).
            let (gate_up, down) = if c.experts_mxfp4 {
                (
                    gpt_oss_mxfp4_rows(store, &g.gate_up, e, 2 * f, d)?,
                    gpt_oss_mxfp4_rows(store, &g.down, e, d, f)?,
                )
            } else {
                (
                    transpose_experts(&store.get_f32(&g.gate_up, &[e, d, 2 * f])?, e, d, 2 * f),
                    transpose_experts(&store.get_f32(&g.down, &[e, f, d])?, e, f, d),
                )
            };
            let (gate, up) = deinterleave_rows(&gate_up, e * f, d);
            (gate, up, down)
        }
    };
    let (router_bias, expert_biases) = match c.family {
        Family::GptOss => {
            let g = gpt_oss::expert_names(&names::layer(layer));
            let (gate, up) = if c.per_expert_names {
                let (gate, up) = gpt_oss::split_bias_names(&names::layer(layer));
                (store.get_f32(&gate, &[e, f])?, store.get_f32(&up, &[e, f])?)
            } else {
                deinterleave_rows(&store.get_f32(&g.gate_up_bias, &[e, 2 * f])?, e * f, 1)
            };
            (
                Some(store.get_f32(&g.router_bias, &[e])?),
                Some(ExpertBiasWeights {
                    gate,
                    up,
                    down: store.get_f32(&g.down_bias, &[e, d])?,
                }),
            )
        }
        _ => (None, None),
    };
    let shared = match c.moe.shared_expert {
        None => None,
        Some(s) => Some(SharedExpertWeights {
            gate: store.get_f32(&n.shared_gate, &[s.ffn, d])?,
            up: store.get_f32(&n.shared_up, &[s.ffn, d])?,
            down: store.get_f32(&n.shared_down, &[d, s.ffn])?,
            gate_weight: if s.gated {
                Some(store.get_f32(&n.shared_expert_gate, &[1, d])?)
            } else {
                None
            },
        }),
    };
    Ok(MoeWeights {
        router: store.get_f32(&n.router, &[e, d])?,
        router_bias,
        expert_biases,
        selection_bias: match families::selection_bias(c, &names::layer(layer)) {
            Some((name, shape)) => Some(store.get_f32(&name, &shape)?),
            None => None,
        },
        gate,
        up,
        down,
        shared,
    })
}

/// `[E, rows, cols]` -> `[E, cols, rows]`.
fn transpose_experts(w: &[f32], experts: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for e in 0..experts {
        let (src, dst) = (
            &w[e * rows * cols..][..rows * cols],
            &mut out[e * rows * cols..][..rows * cols],
        );
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }
    out
}

/// Rows alternating a, b, a, b, ... (`2 n` rows of `width`) -> (`[n, width]`, `[n, width]`).
fn deinterleave_rows(w: &[f32], n: usize, width: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut a, mut b) = (Vec::with_capacity(n * width), Vec::with_capacity(n * width));
    for (i, row) in w.chunks(width).enumerate() {
        if i % 2 == 0 { &mut a } else { &mut b }.extend_from_slice(row);
    }
    (a, b)
}

/// `[E, rows, input]` f32 from Hugging Face MXFP4 `{name}_blocks` / `{name}_scales`.
fn gpt_oss_mxfp4_rows(store: &TensorStore, name: &str, experts: usize, rows: usize, input: usize) -> Result<Vec<f32>> {
    let blocks = input / 32;
    let checkpoint = &store.checkpoint;
    let (b_shard, b_info) = checkpoint.expect_raw(&format!("{name}_blocks"), &[experts, rows, blocks, 16], "U8")?;
    let (s_shard, s_info) = checkpoint.expect_raw(&format!("{name}_scales"), &[experts, rows, blocks], "U8")?;
    let nibbles = &store.shard_bytes(b_shard)[b_info.start as usize..(b_info.start + b_info.len) as usize];
    let scales = &store.shard_bytes(s_shard)[s_info.start as usize..(s_info.start + s_info.len) as usize];
    let mut ggml = Vec::with_capacity(scales.len() * 17);
    for (i, &scale) in scales.iter().enumerate() {
        ggml.push(scale);
        ggml.extend(crate::weights::upload::hf_to_ggml_mxfp4_nibbles(
            &nibbles[i * 16..i * 16 + 16],
        ));
    }
    Ok(WeightFormat::Mxfp4.dequantize(&ggml))
}

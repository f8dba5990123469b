//! Models made up in code: a plain config for a family and seeded random weights,
//! for tests and for benchmarking real shapes without their checkpoints.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::config::{Family, ModelConfig, QkNorm};
use crate::model::weights::{AttentionWeights, FeedForwardWeights, LayerWeights, ModelWeights};
use crate::moe::{MoeConfig, MoeWeights};

/// Attention and vocabulary sizes of a synthetic model.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

/// A config of `family` with no family extras switched on (callers set those).
pub fn synthetic_config(family: Family, dims: Dims, moe: MoeConfig) -> ModelConfig {
    ModelConfig {
        family,
        architecture: format!("{family:?} (synthetic)"),
        vocab_size: dims.vocab,
        hidden_size: moe.hidden_size,
        num_layers: dims.layers,
        num_heads: dims.heads,
        num_kv_heads: dims.kv_heads,
        head_dim: dims.head_dim,
        max_position_embeddings: dims.max_positions,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rotary_dim: dims.head_dim,
        tie_word_embeddings: false,
        attention_bias: false,
        qk_norm: QkNorm::None,
        clip_qkv: None,
        dense_ffn: moe.expert_ffn * 2,
        sparse_layers: vec![true; dims.layers],
        embedding_multiplier: 1.0,
        residual_multiplier: 1.0,
        attention_scale: 1.0 / (dims.head_dim as f32).sqrt(),
        logits_scaling: 1.0,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        torch_dtype: None,
        moe,
    }
}

/// Seeded random weights for every tensor `config` needs.
pub fn random_weights(c: &ModelConfig, seed: u64) -> ModelWeights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut random = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let mut norm = |n: usize| random(n, 0.5).into_iter().map(|v| 1.0 + v).collect::<Vec<_>>();
        let input_norm = norm(d);
        let post_attention_norm = norm(d);
        let (q_norm, k_norm) = match c.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead => (Some(norm(hd)), Some(norm(hd))),
            QkNorm::Full => (Some(norm(qw)), Some(norm(kvw))),
        };
        let bias = c.attention_bias;
        let attention = AttentionWeights {
            q: random(qw * d, 0.3),
            k: random(kvw * d, 0.3),
            v: random(kvw * d, 0.3),
            o: random(d * qw, 0.3),
            q_bias: bias.then(|| random(qw, 0.3)),
            k_bias: bias.then(|| random(kvw, 0.3)),
            v_bias: bias.then(|| random(kvw, 0.3)),
            q_norm,
            k_norm,
        };
        let ffn = if c.sparse_layers[i] {
            FeedForwardWeights::Moe(MoeWeights::random(&c.moe, seed.wrapping_add(1 + i as u64), false))
        } else {
            let f = c.dense_ffn;
            FeedForwardWeights::Dense {
                gate: random(f * d, 0.3),
                up: random(f * d, 0.3),
                down: random(d * f, 0.3),
            }
        };
        layers.push(LayerWeights {
            input_norm,
            attention,
            post_attention_norm,
            ffn,
        });
    }
    ModelWeights {
        embed_tokens: random(c.vocab_size * d, 1.0),
        final_norm: random(d, 0.5).into_iter().map(|v| 1.0 + v).collect(),
        lm_head: (!c.tie_word_embeddings).then(|| random(c.vocab_size * d, 0.3)),
        layers,
    }
}

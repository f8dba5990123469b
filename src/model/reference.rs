//! CPU reference forward of the generic decoder, built from the ops' references.
//! Slow and simple: it recomputes the whole sequence, with no cache.

use crate::model::config::{MlaConfig, ModelConfig};
use crate::model::families::deepseek::LOW_RANK_NORM_EPS;
use crate::model::weights::{FeedForwardWeights, MlaWeights, ModelWeights};
use crate::moe::reference::moe_reference;
use crate::ops::attention::attention_reference;
use crate::ops::expert_matmul::{matvec_reference, swiglu_reference};
use crate::ops::norm::rms_norm_reference;
use crate::ops::rope::{rope_reference, rope_table_scaled};
use crate::ops::router::dot;
use crate::weights::WeightFormat;

/// `x [T, in]` times `w [out, in]^T`.
fn linear(x: &[f32], w: &[f32], input: usize, out: usize) -> Vec<f32> {
    x.chunks(input).flat_map(|row| matvec_reference(row, w, out)).collect()
}

fn add_bias(x: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// Logits `[T, vocab]` for every position of `ids` (positions 0..T), with weights
/// rounded as a load of f32 weights stores them for `config.moe.weight_format`: every
/// matrix in it, or, for a block format (quantize at load), the projections in it, the
/// lm_head in Q8_0 and the embedding in f32 (see `StorageFormats`).
pub fn forward_reference(config: &ModelConfig, weights: &ModelWeights, ids: &[u32]) -> Vec<f32> {
    let c = config;
    let format = c.moe.weight_format;
    let round = |v: &[f32]| -> Vec<f32> { format.round_trip_all(v) };
    let (embed_format, head_format) = if format.is_quantized() {
        (WeightFormat::F32, WeightFormat::Q8_0)
    } else {
        (format, format)
    };
    let (t, d, hd) = (ids.len(), c.hidden_size, c.head_dim);
    let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
    let embed = embed_format.round_trip_all(&weights.embed_tokens);
    let mut x: Vec<f32> = ids
        .iter()
        .flat_map(|&id| embed[id as usize * d..][..d].iter().map(|v| v * c.embedding_multiplier))
        .collect();
    let table = rope_table_scaled(c.rope_theta, c.rotary_dim, t, &c.rope_scaling);
    for (i, layer) in weights.layers.iter().enumerate() {
        let a = &layer.attention;
        let h = rms_norm_reference(&x, &layer.input_norm, c.rms_norm_eps);
        let o = match (c.mla, &a.mla) {
            (Some(dims), Some(w)) => mla_reference(c, dims, w, &round(&a.o), &h, &table, &round),
            _ => {
                let mut q = linear(&h, &round(&a.q), d, qw);
                let mut k = linear(&h, &round(&a.k), d, kvw);
                let mut v = linear(&h, &round(&a.v), d, kvw);
                add_bias(&mut q, a.q_bias.as_ref());
                add_bias(&mut k, a.k_bias.as_ref());
                add_bias(&mut v, a.v_bias.as_ref());
                if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                    q = rms_norm_reference(&q, qn, c.rms_norm_eps);
                    k = rms_norm_reference(&k, kn, c.rms_norm_eps);
                }
                if let Some(limit) = c.clip_qkv {
                    for m in [&mut q, &mut k, &mut v] {
                        m.iter_mut().for_each(|e| *e = e.clamp(-limit, limit));
                    }
                }
                rope_reference(&mut q, &table, c.rotary_dim / 2, c.num_heads, hd, 0, c.rope_interleaved);
                rope_reference(
                    &mut k,
                    &table,
                    c.rotary_dim / 2,
                    c.num_kv_heads,
                    hd,
                    0,
                    c.rope_interleaved,
                );
                let attn = attention_reference(
                    &q,
                    &k,
                    &v,
                    c.num_heads,
                    c.num_kv_heads,
                    hd,
                    0,
                    c.attention_scale,
                    a.sinks.as_deref(),
                    c.attention_windows[i],
                );
                let mut o = linear(&attn, &round(&a.o), qw, d);
                add_bias(&mut o, a.o_bias.as_ref());
                o
            }
        };
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += c.residual_multiplier * o);
        let h = rms_norm_reference(&x, &layer.post_attention_norm, c.rms_norm_eps);
        let f = match &layer.ffn {
            FeedForwardWeights::Moe(moe) => moe_reference(&c.moe, moe, &h).output,
            FeedForwardWeights::Dense { gate, up, down } => {
                let (g, u, dn) = (round(gate), round(up), round(down));
                h.chunks(d)
                    .flat_map(|row| matvec_reference(&swiglu_reference(row, &g, &u, c.dense_ffn), &dn, d))
                    .collect()
            }
        };
        x.iter_mut().zip(&f).for_each(|(x, f)| *x += c.residual_multiplier * f);
    }
    let h = rms_norm_reference(&x, &weights.final_norm, c.rms_norm_eps);
    let head = match &weights.lm_head {
        Some(head) => head_format.round_trip_all(head),
        None => embed.clone(),
    };
    let mut logits = linear(&h, &head, d, c.vocab_size);
    logits.iter_mut().for_each(|l| *l *= 1.0 / c.logits_scaling);
    logits
}

/// Multi-head latent attention the plain way (no absorption, no latent cache):
/// per-head keys and values expanded from the latent by `kv_b_proj`, then attention.
fn mla_reference(
    c: &ModelConfig,
    m: MlaConfig,
    w: &MlaWeights,
    o_proj: &[f32],
    h: &[f32],
    table: &[f32],
    round: &dyn Fn(&[f32]) -> Vec<f32>,
) -> Vec<f32> {
    let (d, heads) = (c.hidden_size, c.num_heads);
    let (nope, rope, l, v) = (m.qk_nope_head_dim, m.qk_rope_head_dim, m.kv_lora_rank, m.v_head_dim);
    let (qk, t) = (nope + rope, h.len() / d);
    let eps = LOW_RANK_NORM_EPS;
    let q = match (&w.q, &w.q_a) {
        (Some(q), _) => linear(h, &round(q), d, heads * qk),
        (None, Some((qa, qn, qb))) => {
            let r = qn.len();
            let compressed = rms_norm_reference(&linear(h, &round(qa), d, r), qn, eps);
            linear(&compressed, &round(qb), r, heads * qk)
        }
        (None, None) => unreachable!("MLA weights without queries"),
    };
    let kv = linear(h, &round(&w.kv_a), d, l + rope);
    let latent: Vec<f32> = kv.chunks(l + rope).flat_map(|row| row[..l].to_vec()).collect();
    let latent = rms_norm_reference(&latent, &w.kv_a_norm, eps);
    let mut k_pe: Vec<f32> = kv.chunks(l + rope).flat_map(|row| row[l..].to_vec()).collect();
    let expanded = linear(&latent, &round(&w.kv_b), l, heads * (nope + v)); // [T, H, nope + v]
    let mut q_pe: Vec<f32> = q.chunks(qk).flat_map(|head| head[nope..].to_vec()).collect();
    rope_reference(&mut q_pe, table, rope / 2, heads, rope, 0, c.rope_interleaved);
    rope_reference(&mut k_pe, table, rope / 2, 1, rope, 0, c.rope_interleaved);
    let mut out = vec![0.0f32; t * heads * v];
    for ti in 0..t {
        for hh in 0..heads {
            let qh = &q[(ti * heads + hh) * qk..][..qk];
            let qp = &q_pe[(ti * heads + hh) * rope..][..rope];
            let scores: Vec<f32> = (0..=ti)
                .map(|j| {
                    let kn = &expanded[(j * heads + hh) * (nope + v)..][..nope];
                    let kp = &k_pe[j * rope..][..rope];
                    (dot(&qh[..nope], kn) + dot(qp, kp)) * c.attention_scale
                })
                .collect();
            let max = scores.iter().fold(f32::MIN, |a, &b| a.max(b));
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for dv in 0..v {
                let acc: f32 = (0..=ti)
                    .map(|j| e[j] * expanded[(j * heads + hh) * (nope + v) + nope + dv])
                    .sum();
                out[(ti * heads + hh) * v + dv] = acc / sum;
            }
        }
    }
    linear(&out, o_proj, heads * v, d)
}

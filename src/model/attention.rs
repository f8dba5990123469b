//! The attention of a decoder layer, a choice that owns its weights and its KV-cache
//! layout:
//! - [`Gqa`]: grouped-query attention (every family but DeepSeek), with optional q/k
//!   norms, biases, clip, sinks and a sliding window; caches keys and values per kv head.
//! - [`Mla`]: DeepSeek's multi-head latent attention with the up-projections absorbed,
//!   so the cache holds one compressed latent and one RoPE key per position
//!   ([`KvCache::latent`]):
//!
//! ```text
//! q            = q_b(rms_norm(q_a(h)))  or  q_proj(h)          [T, H, nope + rope]
//! latent, k_pe = kv_a(h)                                         [T, L], [T, rope]
//! key          = [rms_norm(latent), rope(k_pe)]                  cached, [T, L + rope]
//! q_lat[h]     = W_UK[h]^T q_nope[h]                             [T, H, L]
//! scores       = scale * ([q_lat, rope(q_pe)] . key)   (= q_nope . k_nope + q_pe . k_pe)
//! out_lat[h]   = sum_j softmax(scores)_j latent_j                [T, H, L]
//! out          = o_proj(W_UV[h] out_lat[h])                      [T, d]
//! ```
//!
//! W_UK[h] and W_UV[h] are head h's key and value rows of `kv_b_proj`; the per-head
//! products run as the expert GEMV with one "expert" per head.

use crate::error::Result;
use crate::gpu::kernel::Recorder;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::config::{MlaConfig, ModelConfig, QkNorm};
use crate::model::families::deepseek::LOW_RANK_NORM_EPS;
use crate::model::families::gpt_oss;
use crate::model::model::{linear, linear_with, norm};
use crate::model::names;
use crate::model::planner::{Planner, Role};
use crate::moe::Residual;
use crate::ops::attention::{encode_attend, encode_attention, row_width, AttentionOptions, KvCache};
use crate::ops::attention_inputs::{encode_attention_inputs, HeadRows, InputTransforms};
use crate::ops::columns::{encode_join_columns, encode_split_columns};
use crate::ops::expert_matmul::{encode_down, ExpertRows};
use crate::ops::norm::encode_rms_norm_pair;
use crate::ops::rope::{encode_rope_pair, RopeAngles};
use crate::ops::TokenPositions;
use crate::weights::WeightMatrix;

/// Head-split forms of `kv_b_proj` as llama.cpp's converter writes them: W_UK^T
/// `[H, L, nope]` (`attn_k_b`) and W_UV `[H, v, L]` (`attn_v_b`).
pub fn absorbed_k_name(layer_prefix: &str) -> String {
    format!("{layer_prefix}.self_attn.k_b_proj.weight")
}

pub fn absorbed_v_name(layer_prefix: &str) -> String {
    format!("{layer_prefix}.self_attn.v_b_proj.weight")
}

/// One layer's attention.
pub(crate) enum LayerAttention {
    Gqa(Box<Gqa>),
    Mla(Box<Mla>),
}

/// What a layer's attention reads besides its weights.
pub(crate) struct AttentionInputs<'a> {
    pub(crate) config: &'a ModelConfig,
    pub(crate) rope: RopeAngles<'a>,
    pub(crate) cache: &'a KvCache,
    pub(crate) positions: &'a TokenPositions,
    /// GEMV kernels for the projections (else tiles).
    pub(crate) gemv: bool,
    /// Runs to split each (token, head)'s context into (flash decoding), or one pass.
    pub(crate) splits: Option<usize>,
    /// One attention workgroup per query head, not per group of heads sharing a kv head.
    pub(crate) per_head: bool,
    /// A prompt's consecutive tokens share attention workgroups (see
    /// `AttentionOptions::share_tokens`).
    pub(crate) share_tokens: bool,
}

impl LayerAttention {
    pub(crate) fn plan(p: &mut Planner, c: &ModelConfig, layer: usize) -> Result<Self> {
        Ok(match c.mla {
            None => LayerAttention::Gqa(Box::new(Gqa::plan(p, c, layer)?)),
            Some(mla) => LayerAttention::Mla(Box::new(Mla::plan(p, c, mla, layer)?)),
        })
    }

    /// The KV cache of `dtype` elements this attention needs for `slots` sequences of
    /// `max_ctx` positions.
    pub(crate) fn new_cache(
        &self,
        ctx: &GpuContext,
        c: &ModelConfig,
        dtype: DType,
        slots: usize,
        max_ctx: usize,
    ) -> Result<KvCache> {
        match self {
            LayerAttention::Gqa(_) => KvCache::of_dtype(ctx, dtype, slots, c.num_kv_heads, c.head_dim, max_ctx),
            LayerAttention::Mla(m) => KvCache::latent_of_dtype(
                ctx,
                dtype,
                slots,
                m.dims.kv_lora_rank + m.dims.qk_rope_head_dim,
                m.dims.kv_lora_rank,
                max_ctx,
            ),
        }
    }

    /// Bytes its KV cache of `dtype` elements holds per position of one sequence: keys
    /// and values of every kv head, or MLA's latent and RoPE key (rows padded to a
    /// multiple of 4 elements, as [`KvCache`] stores them).
    pub(crate) fn cache_bytes_per_position(&self, c: &ModelConfig, dtype: DType) -> u64 {
        let elements = match self {
            LayerAttention::Gqa(_) => 2 * c.num_kv_heads * row_width(c.head_dim),
            LayerAttention::Mla(m) => row_width(m.dims.kv_lora_rank + m.dims.qk_rope_head_dim),
        };
        (elements * dtype.size()) as u64
    }

    /// Whether q, k and v run as one matrix.
    pub(crate) fn joined_qkv(&self) -> bool {
        matches!(self, LayerAttention::Gqa(a) if matches!(a.projections, QkvProjections::Joined { .. }))
    }

    /// Bytes of GPU memory its weights take.
    pub(crate) fn weight_bytes(&self) -> u64 {
        let sum = |ms: &[&WeightMatrix]| ms.iter().map(|m| m.bytes()).sum::<u64>();
        match self {
            LayerAttention::Gqa(a) => match &a.projections {
                QkvProjections::Joined { qkv, .. } => sum(&[qkv, &a.o]),
                QkvProjections::Separate { q, k, v, .. } => sum(&[q, k, v, &a.o]),
            },
            LayerAttention::Mla(m) => {
                let q = match &m.queries {
                    MlaQueries::Direct(q) => sum(&[q]),
                    MlaQueries::Compressed { a, b, .. } => sum(&[a, b]),
                };
                q + sum(&[&m.kv_a, &m.absorb_k, &m.absorb_v, &m.o])
            }
        }
    }

    /// Records attention of `h [T, d]` (normed hidden states), its output projection
    /// adding into the residual stream `[T, d]`.
    pub(crate) fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &AttentionInputs,
        h: &GpuTensor,
        residual: Residual,
    ) -> Result<()> {
        match self {
            LayerAttention::Gqa(a) => a.record(ctx, rec, inputs, h, residual),
            LayerAttention::Mla(m) => m.record(ctx, rec, inputs, h, residual),
        }
    }
}

/// A GQA layer's q, k and v projections (one per layer, inside the boxed [`Gqa`], so the
/// variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum QkvProjections {
    /// Their rows stacked in one matrix (and their biases in one vector): one GEMV or
    /// matmul computes all three, `[T, qw + 2 kvw]`.
    Joined { qkv: WeightMatrix, bias: Option<GpuTensor> },
    /// Three matrices: where the checkpoint stores them in different formats, or where
    /// whole-projection q/k norms (OLMoE) need the queries and keys as rows of their own.
    Separate {
        q: WeightMatrix,
        k: WeightMatrix,
        v: WeightMatrix,
        biases: Option<[GpuTensor; 3]>,
    },
}

/// Grouped-query attention's weights.
pub(crate) struct Gqa {
    projections: QkvProjections,
    o: WeightMatrix,
    o_bias: Option<GpuTensor>,
    qk_norm: Option<(GpuTensor, GpuTensor)>,
    /// `[heads]` sink logits (gpt-oss).
    sinks: Option<GpuTensor>,
    /// Sliding window in positions, or full causal attention.
    window: Option<usize>,
}

impl Gqa {
    fn plan(p: &mut Planner, c: &ModelConfig, i: usize) -> Result<Self> {
        let prefix = names::layer(i);
        let name = |s: &str| format!("{prefix}.{s}");
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (qw, kvw) = (c.num_heads * hd, c.num_kv_heads * hd);
        let part = |s: &str, rows: usize| (name(&format!("self_attn.{s}")), rows);
        let weights = [
            part("q_proj.weight", qw),
            part("k_proj.weight", kvw),
            part("v_proj.weight", kvw),
        ];
        let biases = [
            part("q_proj.bias", qw),
            part("k_proj.bias", kvw),
            part("v_proj.bias", kvw),
        ];
        let joined = match c.qk_norm {
            QkNorm::Full => None,
            QkNorm::None | QkNorm::PerHead => p.joined_rows(&name("self_attn.qkv_proj"), &weights, d)?,
        };
        let projections = match joined {
            Some(qkv) => QkvProjections::Joined {
                qkv,
                bias: match c.attention_bias {
                    true => Some(p.joined_vector(&name("self_attn.qkv_proj.bias"), &biases)?),
                    false => None,
                },
            },
            None => {
                let [q, k, v] = &weights;
                QkvProjections::Separate {
                    q: p.matrix(&q.0, qw, d)?,
                    k: p.matrix(&k.0, kvw, d)?,
                    v: p.matrix(&v.0, kvw, d)?,
                    biases: match c.attention_bias {
                        true => Some([
                            p.vector(&biases[0].0, &[qw])?,
                            p.vector(&biases[1].0, &[kvw])?,
                            p.vector(&biases[2].0, &[kvw])?,
                        ]),
                        false => None,
                    },
                }
            }
        };
        let qk_norm = match c.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some((
                p.vector(&name("self_attn.q_norm.weight"), &[hd])?,
                p.vector(&name("self_attn.k_norm.weight"), &[hd])?,
            )),
            QkNorm::Full => Some((
                p.vector(&name("self_attn.q_norm.weight"), &[qw])?,
                p.vector(&name("self_attn.k_norm.weight"), &[kvw])?,
            )),
        };
        Ok(Self {
            projections,
            o: p.matrix(&name("self_attn.o_proj.weight"), d, qw)?,
            o_bias: if c.output_bias {
                Some(p.vector(&name("self_attn.o_proj.bias"), &[d])?)
            } else {
                None
            },
            qk_norm,
            sinks: if c.attention_sinks {
                Some(p.vector(&gpt_oss::sinks_name(&prefix), &[c.num_heads])?)
            } else {
                None
            },
            window: c.attention_windows[i],
        })
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &AttentionInputs,
        h: &GpuTensor,
        residual: Residual,
    ) -> Result<()> {
        let (c, gemv) = (inputs.config, inputs.gemv);
        let tokens = h.shape[0];
        let (qw, kvw) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        // The projections (biases, Qwen2-style, in their epilogue), as one tensor
        // `[T, qw + 2 kvw]` or three, with the column where each of q, k, v starts.
        let (projected, columns) = match &self.projections {
            QkvProjections::Joined { qkv, bias } => (
                vec![linear_with(ctx, rec, h, qkv, gemv, bias.as_ref(), None)?],
                [0, qw, qw + kvw],
            ),
            QkvProjections::Separate { q, k, v, biases } => {
                let [qb, kb, vb] = match biases {
                    Some([q, k, v]) => [Some(q), Some(k), Some(v)],
                    None => [None; 3],
                };
                let (mut q, mut k, v) = (
                    linear_with(ctx, rec, h, q, gemv, qb, None)?,
                    linear_with(ctx, rec, h, k, gemv, kb, None)?,
                    linear_with(ctx, rec, h, v, gemv, vb, None)?,
                );
                if let (QkNorm::Full, Some((qn, kn))) = (c.qk_norm, &self.qk_norm) {
                    // Whole-projection norms (OLMoE), both in one dispatch.
                    let q_normed = GpuTensor::empty(ctx, "normed queries", &q.shape, DType::F32)?;
                    let k_normed = GpuTensor::empty(ctx, "normed keys", &k.shape, DType::F32)?;
                    encode_rms_norm_pair(ctx, rec, (&q, qn, &q_normed), (&k, kn, &k_normed), c.rms_norm_eps)?;
                    (q, k) = (q_normed, k_normed);
                }
                (vec![q, k, v], [0; 3])
            }
        };
        let rows = |i: usize| HeadRows::columns(&projected[i.min(projected.len() - 1)], columns[i]);
        // Per-head q/k norms, the clamp, RoPE and the cache stores in one dispatch.
        let transforms = InputTransforms {
            norms: match (c.qk_norm, &self.qk_norm) {
                (QkNorm::PerHead, Some((qn, kn))) => Some((qn, kn)),
                _ => None,
            },
            eps: c.rms_norm_eps,
            clip: c.clip_qkv,
            angles: inputs.rope,
            interleaved: c.rope_interleaved,
        };
        let q = GpuTensor::empty(ctx, "queries", &[tokens, qw], DType::F32)?;
        let positions = inputs.positions;
        encode_attention_inputs(
            ctx,
            rec,
            inputs.cache,
            (rows(0), rows(1), rows(2)),
            c.num_heads,
            transforms,
            positions,
            &q,
        )?;
        let out = GpuTensor::empty(ctx, "attention output", &q.shape, DType::F32)?;
        let options = AttentionOptions {
            sinks: self.sinks.as_ref(),
            window: self.window,
            splits: inputs.splits,
            per_head: inputs.per_head,
            share_tokens: inputs.share_tokens,
        };
        encode_attend(
            ctx,
            rec,
            inputs.cache,
            &q,
            c.num_heads,
            positions,
            c.attention_scale,
            options,
            &out,
        )?;
        linear_with(ctx, rec, &out, &self.o, gemv, self.o_bias.as_ref(), Some(residual))?;
        Ok(())
    }
}

enum MlaQueries {
    /// `q_proj` `[H (nope + rope), d]`.
    Direct(WeightMatrix),
    /// `q_a_proj` `[q_lora, d]`, its RMSNorm, `q_b_proj` `[H (nope + rope), q_lora]`.
    Compressed {
        a: WeightMatrix,
        norm: GpuTensor,
        b: WeightMatrix,
    },
}

/// Multi-head latent attention's weights, with `kv_b_proj` split per head for the
/// absorbed products.
pub(crate) struct Mla {
    dims: MlaConfig,
    queries: MlaQueries,
    /// `kv_a_proj_with_mqa` `[L + rope, d]`: the latent, then the RoPE key.
    kv_a: WeightMatrix,
    /// `[L]`
    kv_a_norm: GpuTensor,
    /// `[H, L, nope]`: W_UK[h]^T, head h's key rows of `kv_b_proj`, transposed.
    absorb_k: WeightMatrix,
    /// `[H, v, L]`: W_UV[h], head h's value rows of `kv_b_proj`.
    absorb_v: WeightMatrix,
    /// `[d, H v]`
    o: WeightMatrix,
}

impl Mla {
    fn plan(p: &mut Planner, c: &ModelConfig, dims: MlaConfig, i: usize) -> Result<Self> {
        let prefix = names::layer(i);
        let name = |s: &str| format!("{prefix}.self_attn.{s}");
        let (d, heads) = (c.hidden_size, c.num_heads);
        let (nope, rope, l, v) = (
            dims.qk_nope_head_dim,
            dims.qk_rope_head_dim,
            dims.kv_lora_rank,
            dims.v_head_dim,
        );
        let queries = match dims.q_lora_rank {
            None => MlaQueries::Direct(p.matrix(&name("q_proj.weight"), heads * (nope + rope), d)?),
            Some(r) => MlaQueries::Compressed {
                a: p.matrix(&name("q_a_proj.weight"), r, d)?,
                norm: p.vector(&name("q_a_layernorm.weight"), &[r])?,
                b: p.matrix(&name("q_b_proj.weight"), heads * (nope + rope), r)?,
            },
        };
        let (k_b, v_b) = (absorbed_k_name(&prefix), absorbed_v_name(&prefix));
        let kv_b = name("kv_b_proj.weight");
        let kv_b_shape = [heads * (nope + v), l];
        let (absorb_k, absorb_v) = if p.checkpoint.contains(&k_b) {
            // Already split per head (GGUF).
            let k_shape = [heads, l, nope];
            let v_shape = [heads, v, l];
            (
                p.stacked(Role::Projection, &k_b, heads, l, nope, &|h| {
                    (k_b.clone(), k_shape.to_vec(), h * l)
                })?,
                p.stacked(Role::Projection, &v_b, heads, v, l, &|h| {
                    (v_b.clone(), v_shape.to_vec(), h * v)
                })?,
            )
        } else {
            Self::split_kv_b(p, &prefix, &kv_b, kv_b_shape, (heads, nope, l, v))?
        };
        Ok(Self {
            dims,
            queries,
            kv_a: p.matrix(&name("kv_a_proj_with_mqa.weight"), l + rope, d)?,
            kv_a_norm: p.vector(&name("kv_a_layernorm.weight"), &[l])?,
            absorb_k,
            absorb_v,
            o: p.matrix(&name("o_proj.weight"), d, heads * v)?,
        })
    }

    /// W_UK^T and W_UV per head from `kv_b_proj` `[H (nope + v), L]`.
    fn split_kv_b(
        p: &mut Planner,
        prefix: &str,
        kv_b: &str,
        kv_b_shape: [usize; 2],
        (heads, nope, l, v): (usize, usize, usize, usize),
    ) -> Result<(WeightMatrix, WeightMatrix)> {
        // Head h's rows of kv_b_proj: nope key rows, then v value rows, each L wide.
        let absorb_k = p.transposed(
            &format!("{prefix}.self_attn.absorb_k"),
            kv_b,
            &kv_b_shape,
            heads,
            l,
            nope,
            l,
            (0, 1),
            &|h| h * (nope + v) * l,
        )?;
        let absorb_v = p.stacked(
            Role::Projection,
            &format!("{prefix}.self_attn.absorb_v"),
            heads,
            v,
            l,
            &|h| (kv_b.to_string(), kv_b_shape.to_vec(), h * (nope + v) + nope),
        )?;
        Ok((absorb_k, absorb_v))
    }

    fn record(
        &self,
        ctx: &GpuContext,
        rec: &mut Recorder,
        inputs: &AttentionInputs,
        h: &GpuTensor,
        residual: Residual,
    ) -> Result<()> {
        let (c, gemv) = (inputs.config, inputs.gemv);
        let t = h.shape[0];
        let heads = c.num_heads;
        let (nope, rope, l, v) = (
            self.dims.qk_nope_head_dim,
            self.dims.qk_rope_head_dim,
            self.dims.kv_lora_rank,
            self.dims.v_head_dim,
        );
        let (qk, key) = (nope + rope, l + rope);
        let f32_tensor = |label: &str, shape: &[usize]| GpuTensor::empty(ctx, label, shape, DType::F32);
        // Queries, split per head into the no-RoPE part and the RoPE part.
        let q = match &self.queries {
            MlaQueries::Direct(w) => linear(ctx, rec, h, w, gemv)?,
            MlaQueries::Compressed { a, norm: n, b } => {
                let compressed = linear(ctx, rec, h, a, gemv)?;
                let compressed = norm(ctx, rec, &compressed, n, LOW_RANK_NORM_EPS)?;
                linear(ctx, rec, &compressed, b, gemv)?
            }
        };
        let q_nope = f32_tensor("mla q nope", &[t * heads, nope])?;
        let q_pe = f32_tensor("mla q rope", &[t, heads * rope])?;
        encode_split_columns(ctx, rec, t * heads, &q, qk, &[(&q_nope, 0), (&q_pe, nope)])?;

        // The cached key: the normed latent, then the RoPE key shared by all heads.
        let kv = linear(ctx, rec, h, &self.kv_a, gemv)?;
        let latent = f32_tensor("mla latent", &[t, l])?;
        let k_pe = f32_tensor("mla k rope", &[t, rope])?;
        encode_split_columns(ctx, rec, t, &kv, key, &[(&latent, 0), (&k_pe, l)])?;
        let latent = norm(ctx, rec, &latent, &self.kv_a_norm, LOW_RANK_NORM_EPS)?;
        // The queries' and the key's RoPE parts rotate in one dispatch.
        encode_rope_pair(
            ctx,
            rec,
            (&q_pe, heads),
            (&k_pe, 1),
            inputs.rope,
            rope,
            inputs.positions,
            c.rope_interleaved,
        );
        let keys = f32_tensor("mla key", &[t, key])?;
        encode_join_columns(ctx, rec, t, &[(&latent, 0), (&k_pe, l)], &keys, key)?;

        // Absorb W_UK into the queries: [q_nope W_UK, q_pe] per head.
        let head_of_row: Vec<u32> = (0..t * heads).map(|r| (r % heads) as u32).collect();
        let head_ids = GpuTensor::from_u32(ctx, "mla head of each row", &[t * heads], &head_of_row)?;
        let per_head = ExpertRows::PerAssignment {
            routed_ids: &head_ids,
            top_k: heads,
        };
        let q_lat = f32_tensor("mla q latent", &[t * heads, l])?;
        encode_down(ctx, rec, per_head, &q_nope, &self.absorb_k, &q_lat)?;
        let queries = f32_tensor("mla queries", &[t, heads * key])?;
        encode_join_columns(ctx, rec, t * heads, &[(&q_lat, 0), (&q_pe, l)], &queries, key)?;

        let out_lat = f32_tensor("mla attention latent", &[t, heads * l])?;
        encode_attention(
            ctx,
            rec,
            inputs.cache,
            &queries,
            &keys,
            &keys,
            heads,
            inputs.positions,
            c.attention_scale,
            AttentionOptions {
                splits: inputs.splits,
                per_head: inputs.per_head,
                share_tokens: inputs.share_tokens,
                ..AttentionOptions::default()
            },
            &out_lat,
        )?;
        // Values: W_UV per head, then o_proj.
        let values = f32_tensor("mla values", &[t * heads, v])?;
        encode_down(
            ctx,
            rec,
            per_head,
            &out_lat.reshaped(&[t * heads, l]),
            &self.absorb_v,
            &values,
        )?;
        let values = values.reshaped(&[t, heads * v]);
        linear_with(ctx, rec, &values, &self.o, gemv, None, Some(residual))?;
        Ok(())
    }
}

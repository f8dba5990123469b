//! Rotary position embedding (shaders/rope.wgsl) and its cos/sin table.

use crate::error::Result;
use crate::gpu::kernel::{Recorder, ROPE};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::ops::{workgroups, TokenPositions};

/// YaRN's magnitude correction for a context stretched `scale` times, weighted by `m`
/// (transformers' `get_mscale`): `0.1 m ln(scale) + 1`, or 1 when nothing is stretched.
/// Its ratios give the cos/sin attention factor; DeepSeek also scales the softmax by
/// its square with `m = mscale_all_dim`.
pub fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

/// RoPE frequency scaling, as transformers' `modeling_rope_utils` computes it (f32
/// like torch): linear (`inv_freq / factor`), llama3 (low frequencies divided by the
/// factor, a smooth ramp between), YaRN (interpolation blended with extrapolation over
/// a correction range, cos/sin times the attention factor), dynamic NTK (a larger
/// theta once a forward reaches past `max_positions`; see [`DynamicNtk`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RopeScaling {
    #[default]
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_positions: f32,
    },
    Yarn {
        factor: f64,
        original_max_positions: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// Multiplies cos and sin.
        attention_factor: f64,
        truncate: bool,
    },
    /// Dynamic NTK: a forward whose sequence reaches `length > max_positions` rotates
    /// with theta times `(factor length / max_positions - (factor - 1))^(rot / (rot - 2))`.
    DynamicNtk {
        factor: f32,
        /// The config's max_position_embeddings.
        max_positions: f32,
    },
}

/// Dynamic NTK RoPE as transformers runs it with a KV cache: each forward computes its
/// frequencies from where its sequence ends (`max(position_ids) + 1`) and rotates its
/// own queries and keys with them; keys cached by earlier forwards keep the rotation
/// they got. So a token's cos/sin depend on its position and on its forward's length,
/// and are computed per step on the CPU ([`DynamicNtk::step_rows`]) instead of read
/// from one table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicNtk {
    pub theta: f32,
    pub rotary_dim: usize,
    pub factor: f32,
    pub max_positions: f32,
}

impl DynamicNtk {
    /// The theta of a forward whose sequence ends at `length` (torch's f32 arithmetic).
    pub fn theta_at(&self, length: usize) -> f32 {
        let length = (length as f32).max(self.max_positions);
        let dim = self.rotary_dim as f32;
        let stretch = self.factor * length / self.max_positions - (self.factor - 1.0);
        self.theta * stretch.powf(dim / (dim - 2.0))
    }

    /// The inverse frequencies of a forward whose sequence ends at `length`.
    pub fn inv_freq_at(&self, length: usize) -> Vec<f32> {
        inv_freq(self.theta_at(length), self.rotary_dim, &RopeScaling::None)
    }

    /// `[tokens, rot/2, 2]` (cos, sin) of tokens at `positions`, each in a forward
    /// whose sequence ends at the same index of `lengths`.
    pub fn step_rows(&self, positions: &[usize], lengths: &[usize]) -> Vec<f32> {
        assert_eq!(positions.len(), lengths.len(), "one length per token");
        let mut rows = Vec::with_capacity(positions.len() * self.rotary_dim);
        let mut cached: Option<(usize, Vec<f32>)> = None;
        for (&pos, &length) in positions.iter().zip(lengths) {
            let inv_freq = match &cached {
                Some((l, f)) if *l == length => f,
                _ => &cached.insert((length, self.inv_freq_at(length))).1,
            };
            for f in inv_freq {
                let angle = pos as f32 * f;
                rows.extend([angle.cos(), angle.sin()]);
            }
        }
        rows
    }
}

/// The inverse frequencies of `rotary_dim` rotated dimensions (for dynamic NTK: those
/// of a forward within `max_positions`, see [`DynamicNtk::inv_freq_at`]).
pub fn inv_freq(theta: f32, rotary_dim: usize, scaling: &RopeScaling) -> Vec<f32> {
    let half = rotary_dim / 2;
    let base: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dim as f32))
        .collect();
    match *scaling {
        RopeScaling::None | RopeScaling::DynamicNtk { .. } => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions: old,
        } => {
            let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        return scaled;
                    }
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                })
                .collect()
        }
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            let dim = rotary_dim as f64;
            let b = theta as f64;
            let correction = |rotations: f64| {
                dim * (original_max_positions / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * b.ln())
            };
            let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
            if truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0) as f32, high.min(dim - 1.0) as f32);
            if low == high {
                high += 0.001;
            }
            (0..half)
                .map(|i| {
                    let pos_freq = theta.powf((2 * i) as f32 / rotary_dim as f32);
                    let extrapolation = 1.0 / pos_freq;
                    let interpolation = 1.0 / (factor as f32 * pos_freq);
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
                })
                .collect()
        }
    }
}

/// The (cos, sin) table `[positions, rot/2, 2]` as transformers computes it in f32:
/// `inv_freq[i] = 1 / theta^(2i / rot)` (scaled), angle = position * inv_freq[i].
/// Dynamic NTK's table is that of one forward over all `positions`.
pub fn rope_table_scaled(theta: f32, rotary_dim: usize, positions: usize, scaling: &RopeScaling) -> Vec<f32> {
    let half = rotary_dim / 2;
    let inv_freq = match *scaling {
        RopeScaling::DynamicNtk { factor, max_positions } => DynamicNtk {
            theta,
            rotary_dim,
            factor,
            max_positions,
        }
        .inv_freq_at(positions),
        _ => inv_freq(theta, rotary_dim, scaling),
    };
    let attention = match *scaling {
        RopeScaling::Yarn { attention_factor, .. } => Some(attention_factor as f32),
        _ => None,
    };
    let mut table = Vec::with_capacity(positions * half * 2);
    for pos in 0..positions {
        for f in &inv_freq {
            let angle = pos as f32 * f;
            let (c, s) = (angle.cos(), angle.sin());
            match attention {
                Some(a) => table.extend([c * a, s * a]),
                None => table.extend([c, s]),
            }
        }
    }
    table
}

/// The unscaled table.
pub fn rope_table(theta: f32, rotary_dim: usize, positions: usize) -> Vec<f32> {
    rope_table_scaled(theta, rotary_dim, positions, &RopeScaling::None)
}

/// Uploads a rope table.
pub fn upload_rope_table(
    ctx: &GpuContext,
    theta: f32,
    rotary_dim: usize,
    positions: usize,
    scaling: &RopeScaling,
) -> Result<GpuTensor> {
    let table = rope_table_scaled(theta, rotary_dim, positions, scaling);
    GpuTensor::from_f32(ctx, "rope table", &[positions, rotary_dim / 2, 2], &table, DType::F32)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RopeParams {
    pub(crate) tokens: u32,
    pub(crate) heads: u32,
    pub(crate) head_dim: u32,
    pub(crate) half_rot: u32,
    pub(crate) interleaved: u32,
    pub(crate) by_token: u32,
    pub(crate) heads2: u32,
    pub(crate) _pad: u32,
}

/// Where the RoPE kernel finds each token's (cos, sin).
#[derive(Clone, Copy)]
pub enum RopeAngles<'a> {
    /// A table `[positions, rot/2, 2]`, read at each token's position.
    ByPosition(&'a GpuTensor),
    /// Rows `[tokens, rot/2, 2]` written for the step, read at each token's index
    /// (dynamic NTK: see [`TokenPositions::with_dynamic_ntk`]).
    ByToken(&'a GpuTensor),
}

/// Rotates `x [T, heads * head_dim]` in place, token t at the position `positions`
/// gives it: pairs (i, i + rot/2), or (2i, 2i + 1) when `interleaved`.
#[allow(clippy::too_many_arguments)]
pub fn encode_rope(
    ctx: &GpuContext,
    rec: &mut Recorder,
    x: &GpuTensor,
    angles: RopeAngles,
    heads: usize,
    head_dim: usize,
    positions: &TokenPositions,
    interleaved: bool,
) {
    dispatch_rope(ctx, rec, (x, heads), None, angles, head_dim, positions, interleaved);
}

/// Rotates queries `q [T, q_heads * head_dim]` and keys `k [T, k_heads * head_dim]` in
/// place in one dispatch, each as [`encode_rope`] would.
#[allow(clippy::too_many_arguments)]
pub fn encode_rope_pair(
    ctx: &GpuContext,
    rec: &mut Recorder,
    (q, q_heads): (&GpuTensor, usize),
    (k, k_heads): (&GpuTensor, usize),
    angles: RopeAngles,
    head_dim: usize,
    positions: &TokenPositions,
    interleaved: bool,
) {
    assert_eq!(q.shape[0], k.shape[0], "queries and keys of the same tokens");
    dispatch_rope(
        ctx,
        rec,
        (q, q_heads),
        Some((k, k_heads)),
        angles,
        head_dim,
        positions,
        interleaved,
    );
}

#[allow(clippy::too_many_arguments)]
fn dispatch_rope(
    ctx: &GpuContext,
    rec: &mut Recorder,
    (x, heads): (&GpuTensor, usize),
    second: Option<(&GpuTensor, usize)>,
    angles: RopeAngles,
    head_dim: usize,
    positions: &TokenPositions,
    interleaved: bool,
) {
    let tokens = x.shape[0];
    let (table, by_token) = match angles {
        RopeAngles::ByPosition(table) => (table, false),
        RopeAngles::ByToken(rows) => (rows, true),
    };
    let half_rot = table.shape[1];
    let (y, heads2) = second.map_or((ctx.unread_binding(), 0), |(y, h)| (&y.buffer, h));
    let params = RopeParams {
        tokens: tokens as u32,
        heads: heads as u32,
        head_dim: head_dim as u32,
        half_rot: half_rot as u32,
        interleaved: interleaved as u32,
        by_token: by_token as u32,
        heads2: heads2 as u32,
        _pad: 0,
    };
    rec.dispatch(
        ctx,
        ROPE.entry("rope"),
        &params,
        &[(1, &x.buffer), (2, &table.buffer), (3, &positions.buffer), (4, y)],
        workgroups(tokens * (heads + heads2) * half_rot, 64),
    );
}

/// CPU reference, in place on `x [T, heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_reference(
    x: &mut [f32],
    table: &[f32],
    half_rot: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    interleaved: bool,
) {
    for (th, head) in x.chunks_mut(head_dim).enumerate() {
        let pos = pos0 + th / heads;
        for i in 0..half_rot {
            let (c, s) = (table[(pos * half_rot + i) * 2], table[(pos * half_rot + i) * 2 + 1]);
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half_rot)
            };
            let (x1, x2) = (head[a], head[b]);
            head[a] = x1 * c - x2 * s;
            head[b] = x2 * c + x1 * s;
        }
    }
}

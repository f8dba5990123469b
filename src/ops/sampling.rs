//! Choosing tokens from logits on the GPU (shaders/sampling.wgsl): greedy argmax, and
//! sampling (temperature, top-k, top-p, a draw) with its CPU reference, which the CPU
//! sampler shares, so that a token sampled on either side follows the same rules.

use crate::error::Result;
use crate::gpu::kernel::{Recorder, SAMPLING};
use crate::gpu::{GpuContext, GpuTensor, KernelTarget};
use crate::ops::expect_shape;

/// `result[r] = argmax(logits[r])` for logits `[rows, vocab]` (or `[vocab]`) and
/// `result [rows]`, lowest index on ties.
pub fn encode_argmax(ctx: &GpuContext, rec: &mut Recorder, logits: &GpuTensor, result: &GpuTensor) {
    let rows = result.len().max(1);
    debug_assert_eq!(logits.len() % rows, 0);
    let params = [(logits.len() / rows) as u32, 0, 0, 0];
    rec.dispatch(
        ctx,
        SAMPLING.entry("argmax"),
        &params,
        &[(1, &logits.buffer), (2, &result.buffer)],
        rows as u32,
    );
}

/// CPU reference of argmax (lowest index on ties, NaN ignored).
pub fn argmax_reference(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(f32, usize)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(b, _)| v > b) {
            best = Some((v, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Whether sampled tokens are drawn on the GPU (the `sample` kernel, inside the decode
/// step) on this context: on a GPU kernel target. On a CPU one (lavapipe, SwiftShader)
/// the logits are read back and sampled on the CPU by the same rules instead: there the
/// readback is a copy in memory, and the kernel, one workgroup on one CPU thread, took
/// 2 to 16 times as long as the CPU sampler (BENCHMARKS.md, 2026-12-03, tenth session).
pub fn samples_on_gpu(ctx: &GpuContext) -> bool {
    ctx.kernel_target == KernelTarget::Gpu
}

/// One row's sampling settings, as the `sample` kernel reads them (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RowSampling {
    /// 0 (or not a positive number): greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: u32,
    /// Keep the smallest run of them, most likely first, whose probability reaches
    /// top_p (1 = all).
    pub top_p: f32,
    /// Where in [0, 1) the draw falls.
    pub uniform: f32,
}

/// What sampling a row gave: the token, and for tests the sizes and weight of the
/// sets it was drawn from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Tokens kept by top-k (every finite logit without it).
    pub kept_top_k: u32,
    /// Tokens kept by top-p after top-k: those drawn from.
    pub kept: u32,
    /// Their weight, sum of exp((logit - max) / temperature).
    pub kept_weight: f32,
}

impl Sampled {
    /// From a row of the kernel's `details` (token, |A|, |B|, weight bits).
    pub fn from_details(words: &[u32]) -> Self {
        Self {
            token: words[0],
            kept_top_k: words[1],
            kept: words[2],
            kept_weight: f32::from_bits(words[3]),
        }
    }
}

/// `tokens[r]` = a token sampled from row r of `logits [rows, vocab]` under
/// `settings [rows, 4]` (words of [`RowSampling`], written by the caller, and rewritten
/// between replays for each draw), as [`sample_reference`] does; `details [rows, 4]`
/// gets [`Sampled`]'s fields.
pub fn encode_sample(
    ctx: &GpuContext,
    rec: &mut Recorder,
    logits: &GpuTensor,
    settings: &GpuTensor,
    tokens: &GpuTensor,
    details: &GpuTensor,
) -> Result<()> {
    let rows = tokens.len().max(1);
    let vocab = logits.len() / rows;
    expect_shape("sampling logits", logits, &[rows, vocab])
        .or_else(|_| expect_shape("sampling logits", logits, &[vocab]))?;
    expect_shape("sampling settings", settings, &[rows, 4])?;
    expect_shape("sampling details", details, &[rows, 4])?;
    let params = [vocab as u32, 0, 0, 0];
    rec.dispatch(
        ctx,
        SAMPLING.entry("sample"),
        &params,
        &[
            (1, &logits.buffer),
            (2, &tokens.buffer),
            (3, &settings.buffer),
            (4, &details.buffer),
        ],
        rows as u32,
    );
    Ok(())
}

/// A key that orders f32 values as unsigned integers (-0 just below +0), the order
/// in which sampling ranks logits.
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn key_value(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 { key & 0x7fff_ffff } else { !key })
}

/// (key, index): larger logit first, lower index first among equal ones.
fn most_likely_first(a: &(u32, u32), b: &(u32, u32)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// CPU reference of the `sample` kernel, one row. Over the finite logits, with weights
/// w = exp((logit - max) / temperature): A = the `top_k` most likely (larger logit
/// first, lower index first among equal ones; 0 = all); B = the shortest run of A, most
/// likely first, whose weight reaches `top_p` x weight(A) (1 = all of A); the token is
/// the one of B, walked in index order, whose weight interval holds `uniform` x
/// weight(B) (past the end by rounding: the last of nonzero weight). Temperature 0 (or
/// not a positive number) keeps only the most likely token; no finite logit gives token
/// 0. Without truncation nothing is sorted, and top-p sorts only as many tokens as it
/// keeps (partial selection, growing 4x at a time): sorting a 151,936-token vocabulary
/// took about 15 ms.
pub fn sample_reference(logits: &[f32], settings: RowSampling) -> Sampled {
    let (temperature, top_k) = if settings.temperature > 0.0 {
        (settings.temperature, settings.top_k as usize)
    } else {
        (1.0, 1)
    };
    // (key, index) of the finite logits, in index order.
    let mut kept: Vec<(u32, u32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .map(|(i, &x)| (order_key(x), i as u32))
        .collect();
    let Some(top_key) = kept.iter().map(|c| c.0).max() else {
        return Sampled::default();
    };
    let top = key_value(top_key);
    let weight = |key: u32| ((key_value(key) - top) / temperature).exp();
    if top_k > 0 && top_k < kept.len() {
        kept.select_nth_unstable_by(top_k - 1, most_likely_first);
        kept.truncate(top_k);
        kept.sort_unstable_by_key(|c| c.1);
    }
    let kept_top_k = kept.len() as u32;
    if settings.top_p < 1.0 && kept.len() > 1 {
        let target = settings.top_p as f64 * kept.iter().map(|c| weight(c.0) as f64).sum::<f64>();
        let len = kept.len();
        let (mut done, mut sorted, mut cumulative) = (0, 64.min(len), 0.0f64);
        loop {
            // kept[..done] are the most likely, sorted, their weight in `cumulative`;
            // bring the next ones after them.
            if sorted < len {
                kept[done..].select_nth_unstable_by(sorted - done - 1, most_likely_first);
            }
            kept[done..sorted].sort_by(most_likely_first);
            let reached = kept[done..sorted].iter().position(|c| {
                cumulative += weight(c.0) as f64;
                cumulative >= target
            });
            match reached {
                Some(i) => {
                    kept.truncate(done + i + 1);
                    break;
                }
                None if sorted == len => break,
                None => (done, sorted) = (sorted, (sorted * 4).min(len)),
            }
        }
        kept.sort_unstable_by_key(|c| c.1);
    }
    let weights: Vec<f32> = kept.iter().map(|c| weight(c.0)).collect();
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    let mut left = settings.uniform as f64 * total;
    let mut last = kept[0].1;
    let mut token = None;
    for (c, &w) in kept.iter().zip(&weights) {
        let w = w as f64;
        if left < w {
            token = Some(c.1);
            break;
        }
        left -= w;
        if w > 0.0 {
            last = c.1;
        }
    }
    Sampled {
        token: token.unwrap_or(last),
        kept_top_k,
        kept: kept.len() as u32,
        kept_weight: total as f32,
    }
}

//! Expert selection: scores, top-k and routing weights (shaders/routing.wgsl).

use crate::error::{Error, Result};
use crate::gpu::kernel::{Recorder, ROUTING, SENTINEL};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::router::{check_router, router_kernel};
use crate::ops::{expect_shape, workgroups};

/// How router logits become scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    /// DeepSeek-V3 style; pairs with an optional selection bias.
    Sigmoid,
}

/// The order of scoring and top-k selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopKOrder {
    /// Score all experts, pick the top k, weights = their scores (optionally
    /// renormalised). Qwen-MoE, OLMoE, DeepSeek; Mixtral with renormalisation.
    ScoreThenTopK,
    /// Pick the top k logits, weights = softmax over those k. Mixtral, GraniteMoE, gpt-oss.
    TopKThenSoftmax,
}

/// How a group's score is formed in group-limited selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// Best key in the group (DeepSeek-V2 group_limited_greedy).
    Max,
    /// Sum of the group's two best keys (DeepSeek-V3 noaux_tc).
    TopTwoSum,
}

/// Restricts the choice to the `topk_group` best of `n_group` equal expert groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLimit {
    pub n_group: usize,
    pub topk_group: usize,
    pub score: GroupScore,
}

/// Most groups group-limited selection supports (a private array in the kernel).
pub const MAX_GROUPS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutingConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub scoring: Scoring,
    pub order: TopKOrder,
    /// Divide the k weights by their sum (ScoreThenTopK only).
    pub renormalize: bool,
    /// Multiplies the final weights (DeepSeek's routed_scaling_factor); 1.0 for most.
    pub scaling: f32,
    pub group_limit: Option<GroupLimit>,
}

impl RoutingConfig {
    /// Softmax over all experts then top-k, as Qwen2/3-MoE and OLMoE do.
    pub fn softmax_top_k(num_experts: usize, top_k: usize, renormalize: bool) -> Self {
        Self {
            num_experts,
            top_k,
            scoring: Scoring::Softmax,
            order: TopKOrder::ScoreThenTopK,
            renormalize,
            scaling: 1.0,
            group_limit: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let cfg = |m: String| Err(Error::Config(m));
        if self.num_experts == 0 {
            return cfg("num_experts must be at least 1".into());
        }
        if self.top_k == 0 || self.top_k > self.num_experts {
            return cfg(format!(
                "top_k = {} must be between 1 and num_experts = {}",
                self.top_k, self.num_experts
            ));
        }
        if !self.scaling.is_finite() {
            return cfg(format!("routed scaling factor {} is not finite", self.scaling));
        }
        if self.order == TopKOrder::TopKThenSoftmax && self.scoring == Scoring::Sigmoid {
            return cfg("top-k-then-softmax routing cannot use sigmoid scoring".into());
        }
        if let Some(g) = self.group_limit {
            if g.n_group == 0 || g.n_group > MAX_GROUPS || !self.num_experts.is_multiple_of(g.n_group) {
                return cfg(format!(
                    "n_group = {} must divide num_experts = {} and be at most {MAX_GROUPS}",
                    g.n_group, self.num_experts
                ));
            }
            let group_size = self.num_experts / g.n_group;
            if g.topk_group == 0 || g.topk_group > g.n_group || g.topk_group * group_size < self.top_k {
                return cfg(format!(
                    "topk_group = {} of n_group = {} leaves fewer than top_k = {} experts",
                    g.topk_group, g.n_group, self.top_k
                ));
            }
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RoutingParams {
    pub(crate) tokens: u32,
    pub(crate) experts: u32,
    pub(crate) top_k: u32,
    pub(crate) scoring: u32,
    pub(crate) order: u32,
    pub(crate) renormalize: u32,
    pub(crate) has_bias: u32,
    pub(crate) n_group: u32,
    pub(crate) topk_group: u32,
    pub(crate) group_score: u32,
    pub(crate) dim: u32,
    pub(crate) has_router_bias: u32,
    pub(crate) scaling: f32,
    pub(crate) _pad1: [f32; 3],
}

impl RoutingParams {
    /// Parameters of the router logits alone: `tokens x experts` dot products of width `dim`.
    pub(crate) fn logits(tokens: usize, experts: usize, dim: usize, router_bias: bool) -> Self {
        Self {
            tokens: tokens as u32,
            experts: experts as u32,
            dim: dim as u32,
            has_router_bias: router_bias as u32,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    /// Parameters of `config`'s selection for `tokens` tokens (`bias`: a selection bias).
    fn selection(config: &RoutingConfig, tokens: usize, bias: bool) -> Self {
        let group = config.group_limit.unwrap_or(GroupLimit {
            n_group: 1,
            topk_group: 1,
            score: GroupScore::Max,
        });
        Self {
            top_k: config.top_k as u32,
            scoring: (config.scoring == Scoring::Sigmoid) as u32,
            order: (config.order == TopKOrder::TopKThenSoftmax) as u32,
            renormalize: config.renormalize as u32,
            has_bias: bias as u32,
            n_group: group.n_group as u32,
            topk_group: group.topk_group as u32,
            group_score: (group.score == GroupScore::TopTwoSum) as u32,
            scaling: config.scaling,
            ..Self::logits(tokens, config.num_experts, 0, false)
        }
    }
}

/// Records the selection: `ids [T, k]` and `weights [T, k]` from `logits [T, E]`.
/// `bias [E]` shifts the selection key only.
pub fn encode_routing(
    ctx: &GpuContext,
    rec: &mut Recorder,
    config: &RoutingConfig,
    logits: &GpuTensor,
    bias: Option<&GpuTensor>,
    ids: &GpuTensor,
    weights: &GpuTensor,
) -> Result<()> {
    config.validate()?;
    let tokens = logits.shape[0];
    let (e, k) = (config.num_experts, config.top_k);
    expect_shape("router logits", logits, &[tokens, e])?;
    expect_shape("top-k ids", ids, &[tokens, k])?;
    expect_shape("top-k weights", weights, &[tokens, k])?;
    if let Some(b) = bias {
        expect_shape("expert selection bias", b, &[e])?;
    }
    let params = RoutingParams::selection(config, tokens, bias.is_some());
    let bias_buffer = bias.map_or(ctx.unread_binding(), |b| &b.buffer);
    rec.dispatch(
        ctx,
        ROUTING.entry("route"),
        &params,
        &[
            (1, &logits.buffer),
            (2, bias_buffer),
            (3, &ids.buffer),
            (4, &weights.buffer),
        ],
        workgroups(tokens, 64),
    );
    Ok(())
}

/// The router of a MoE layer: its weight `[E, d]` and an optional bias `[E]` added to
/// its logits.
#[derive(Clone, Copy)]
pub struct Router<'a> {
    pub weight: &'a GpuTensor,
    pub bias: Option<&'a GpuTensor>,
}

/// Records the router logits and the selection of `x [T, d]` in one dispatch (one
/// workgroup per token: meant for decode's few tokens): `logits [T, E]` as
/// [`crate::ops::router::encode_router_logits`] writes them, bit for bit, then `ids`
/// and `weights` as [`encode_routing`] selects them.
#[allow(clippy::too_many_arguments)]
pub fn encode_routing_fused(
    ctx: &GpuContext,
    rec: &mut Recorder,
    config: &RoutingConfig,
    x: &GpuTensor,
    router: Router,
    selection_bias: Option<&GpuTensor>,
    logits: &GpuTensor,
    ids: &GpuTensor,
    weights: &GpuTensor,
) -> Result<()> {
    config.validate()?;
    let (tokens, dim) = (x.shape[0], x.shape[1]);
    let (e, k) = (config.num_experts, config.top_k);
    check_router(x, router, logits, e)?;
    expect_shape("top-k ids", ids, &[tokens, k])?;
    expect_shape("top-k weights", weights, &[tokens, k])?;
    if let Some(b) = selection_bias {
        expect_shape("expert selection bias", b, &[e])?;
    }
    let params = RoutingParams {
        dim: dim as u32,
        has_router_bias: router.bias.is_some() as u32,
        ..RoutingParams::selection(config, tokens, selection_bias.is_some())
    };
    // Unread bindings (no bias) take other read-only buffers.
    let selection_bias = selection_bias.map_or(&x.buffer, |b| &b.buffer);
    let router_bias = router.bias.map_or(&x.buffer, |b| &b.buffer);
    rec.dispatch(
        ctx,
        router_kernel("route_fused", router.weight, dim)?,
        &params,
        &[
            (1, &logits.buffer),
            (2, selection_bias),
            (3, &ids.buffer),
            (4, &weights.buffer),
            (5, &x.buffer),
            (6, &router.weight.buffer),
            (7, router_bias),
        ],
        tokens as u32,
    );
    Ok(())
}

/// Strict selection order: (ka, a) comes before (kb, b).
fn before(ka: f32, a: usize, kb: f32, b: usize) -> bool {
    ka > kb || (ka == kb && a < b)
}

/// CPU reference of the kernel, step for step: returns (ids, weights), each [T, k].
pub fn routing_reference(
    config: &RoutingConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    tokens: usize,
) -> (Vec<u32>, Vec<f32>) {
    let (n, k) = (config.num_experts, config.top_k);
    let mut ids = vec![SENTINEL; tokens * k];
    let mut weights = vec![0.0f32; tokens * k];
    for t in 0..tokens {
        let row = &logits[t * n..(t + 1) * n];
        let max = row.iter().skip(1).fold(row[0], |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for &l in row {
            sum += (l - max).exp();
        }
        let score = |e: usize| -> f32 {
            match (config.scoring, config.order) {
                (Scoring::Sigmoid, _) => 1.0 / (1.0 + (-row[e]).exp()),
                (Scoring::Softmax, TopKOrder::TopKThenSoftmax) => row[e],
                (Scoring::Softmax, TopKOrder::ScoreThenTopK) => (row[e] - max).exp() / sum,
            }
        };
        let key = |e: usize| -> f32 {
            if bias.is_none() && config.group_limit.is_none() {
                return row[e];
            }
            score(e) + bias.map_or(0.0, |b| b[e])
        };
        let allowed = group_mask(config, &key);
        let out = &mut ids[t * k..(t + 1) * k];
        let mut prev: Option<(f32, usize)> = None;
        for slot in out.iter_mut() {
            let mut best: Option<(f32, usize)> = None;
            for e in (0..n).filter(|&e| allowed(e)) {
                let ke = key(e);
                if let Some((pk, pe)) = prev {
                    if !before(pk, pe, ke, e) {
                        continue;
                    }
                }
                if best.is_none_or(|(bk, be)| before(ke, e, bk, be)) {
                    best = Some((ke, e));
                }
            }
            let Some(chosen) = best else { break };
            *slot = chosen.1 as u32;
            prev = Some(chosen);
        }
        let w = &mut weights[t * k..(t + 1) * k];
        let chosen = |j: usize| (out[j] != SENTINEL).then(|| out[j] as usize);
        match config.order {
            TopKOrder::TopKThenSoftmax => {
                let top = (0..k).filter_map(chosen).fold(-3.0e38f32, |m, e| m.max(row[e]));
                let mut s = 0.0f32;
                for (j, wj) in w.iter_mut().enumerate() {
                    *wj = chosen(j).map_or(0.0, |e| (row[e] - top).exp());
                    s += *wj;
                }
                for v in w.iter_mut() {
                    *v = *v / s * config.scaling;
                }
            }
            TopKOrder::ScoreThenTopK => {
                let mut s = 0.0f32;
                for (j, wj) in w.iter_mut().enumerate() {
                    *wj = chosen(j).map_or(0.0, score);
                    s += *wj;
                }
                for v in w.iter_mut() {
                    if config.renormalize {
                        *v /= s;
                    }
                    *v *= config.scaling;
                }
            }
        }
    }
    (ids, weights)
}

/// Which experts group-limited selection leaves open (all when there are no groups).
fn group_mask(config: &RoutingConfig, key: &dyn Fn(usize) -> f32) -> impl Fn(usize) -> bool {
    let Some(g) = config.group_limit else {
        return Box::new(|_| true) as Box<dyn Fn(usize) -> bool>;
    };
    let size = config.num_experts / g.n_group;
    let group_keys: Vec<f32> = (0..g.n_group)
        .map(|grp| {
            let (mut best1, mut best2) = (key(grp * size), -3.0e38f32);
            for i in 1..size {
                let v = key(grp * size + i);
                if v > best1 {
                    best2 = best1;
                    best1 = v;
                } else if v > best2 {
                    best2 = v;
                }
            }
            match g.score {
                GroupScore::Max => best1,
                GroupScore::TopTwoSum => best1 + best2,
            }
        })
        .collect();
    let mut open = vec![false; g.n_group];
    let mut order: Vec<usize> = (0..g.n_group).collect();
    order.sort_by(|&a, &b| {
        group_keys[b]
            .partial_cmp(&group_keys[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &grp in order.iter().take(g.topk_group) {
        open[grp] = true;
    }
    Box::new(move |e: usize| open[e / size])
}

//! CPU reference of the whole MoE layer, composed of the ops' references.

use crate::gpu::kernel::SENTINEL;
use crate::moe::config::MoeConfig;
use crate::moe::weights::MoeWeights;
use crate::ops::capacity::{capacity_reference, expert_capacity};
use crate::ops::combine::combine_reference;
use crate::ops::expert_matmul::{gated_reference, matvec_reference, swiglu_reference};
use crate::ops::router::router_logits_reference;
use crate::ops::routing::routing_reference;

/// Everything the reference computes on the way.
#[derive(Clone, Debug)]
pub struct MoeReference {
    pub router_logits: Vec<f32>,
    pub topk_ids: Vec<u32>,
    pub topk_weights: Vec<f32>,
    pub routed_ids: Vec<u32>,
    pub expert_counts: Vec<u32>,
    pub dropped: Option<Vec<u32>>,
    pub output: Vec<f32>,
}

/// Runs the layer on the CPU. Weights are first rounded through the config's
/// weight dtype, as the GPU stores them.
pub fn moe_reference(config: &MoeConfig, weights: &MoeWeights, hidden: &[f32]) -> MoeReference {
    let (d, f, e, k) = (
        config.hidden_size,
        config.expert_ffn,
        config.num_experts(),
        config.top_k(),
    );
    let tokens = hidden.len() / d;
    let round = |v: &[f32]| -> Vec<f32> { config.weight_format.round_trip_all(v) };
    let (gate, up, down) = (round(&weights.gate), round(&weights.up), round(&weights.down));

    let mut router_logits = router_logits_reference(hidden, &weights.router, tokens, e, d);
    if let Some(bias) = &weights.router_bias {
        for row in router_logits.chunks_mut(e) {
            row.iter_mut().zip(bias).for_each(|(l, b)| *l += b);
        }
    }
    let (topk_ids, topk_weights) = routing_reference(
        &config.routing,
        &router_logits,
        weights.selection_bias.as_deref(),
        tokens,
    );
    let (routed_ids, dropped) = match config.capacity_factor {
        None => (topk_ids.clone(), None),
        Some(factor) => {
            let capacity = expert_capacity(tokens, k, e, factor).expect("validated capacity factor");
            let (routed, dropped) = capacity_reference(&topk_ids, &topk_weights, e, capacity);
            (routed, Some(dropped))
        }
    };
    let mut expert_counts = vec![0u32; e];
    let expert_rows: Vec<Option<Vec<f32>>> = routed_ids
        .iter()
        .enumerate()
        .map(|(a, &id)| {
            if id == SENTINEL {
                return None;
            }
            let ex = id as usize;
            expert_counts[ex] += 1;
            let x = &hidden[(a / k) * d..(a / k + 1) * d];
            let biases = weights.expert_biases.as_ref();
            let h = gated_reference(
                x,
                &gate[ex * f * d..(ex + 1) * f * d],
                &up[ex * f * d..(ex + 1) * f * d],
                f,
                biases.map(|b| (&b.gate[ex * f..(ex + 1) * f], &b.up[ex * f..(ex + 1) * f])),
                config.activation,
            );
            let mut y = matvec_reference(&h, &down[ex * d * f..(ex + 1) * d * f], d);
            if let Some(b) = biases {
                y.iter_mut()
                    .zip(&b.down[ex * d..(ex + 1) * d])
                    .for_each(|(y, b)| *y += b);
            }
            Some(y)
        })
        .collect();

    let shared = config.shared_expert.zip(weights.shared.as_ref()).map(|(cfg, w)| {
        let (sg, su, sd) = (round(&w.gate), round(&w.up), round(&w.down));
        let out: Vec<f32> = (0..tokens)
            .flat_map(|t| {
                let h = swiglu_reference(&hidden[t * d..(t + 1) * d], &sg, &su, cfg.ffn);
                matvec_reference(&h, &sd, d)
            })
            .collect();
        let gate_logits = w
            .gate_weight
            .as_ref()
            .map(|g| router_logits_reference(hidden, g, tokens, 1, d));
        (out, gate_logits)
    });
    let output = combine_reference(
        &routed_ids,
        &topk_weights,
        &expert_rows,
        shared.as_ref().map(|(o, g)| (o.as_slice(), g.as_deref())),
        tokens,
        k,
        d,
    );
    MoeReference {
        router_logits,
        topk_ids,
        topk_weights,
        routed_ids,
        expert_counts,
        dropped,
        output,
    }
}

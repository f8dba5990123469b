//! The host/kernel contract for parameter structs: every `#[repr(C)]` params struct
//! the host writes is checked (in a test, with naga's reflection of the WGSL) to have
//! the size of its WGSL struct and the same offsets for every named field, in order.
//! Padding fields (`_pad*`) may be spelled differently on each side.

use std::mem::{offset_of, size_of};

use crate::gpu::kernel::{self, Shader};
use crate::ops;

/// The Rust side of one kernel's parameter struct.
pub struct ParamsLayout {
    pub shader: Shader,
    /// The WGSL struct's name.
    pub wgsl_struct: &'static str,
    pub size: usize,
    /// Offsets of the named (non-padding) fields, in declaration order.
    pub offsets: Vec<usize>,
}

macro_rules! layout {
    ($shader:expr, $wgsl:literal, $ty:ty, [$($field:ident),* $(,)?]) => {
        ParamsLayout {
            shader: $shader,
            wgsl_struct: $wgsl,
            size: size_of::<$ty>(),
            offsets: vec![$(offset_of!($ty, $field)),*],
        }
    };
}

/// Every params struct the host writes, with the WGSL struct it must match.
pub fn all() -> Vec<ParamsLayout> {
    use ops::attention::AttentionParams;
    use ops::capacity::CapacityParams;
    use ops::combine::CombineParams;
    use ops::elementwise::ElementwiseParams;
    use ops::embedding::EmbeddingParams;
    use ops::expert_matmul::MatmulParams;
    use ops::norm::NormParams;
    use ops::permute::PermuteParams;
    use ops::rope::RopeParams;
    use ops::routing::RoutingParams;
    let matmul_fields = |shader, wgsl| {
        let mut l = layout!(
            shader,
            "",
            MatmulParams,
            [
                rows_per_token,
                k_dim,
                n_dim,
                col_tiles,
                expert_begin,
                expert_end,
                rows_or_blocks,
                dense,
                row_begin,
                row_end,
                expert_stride,
                flags,
                alpha,
                limit,
                residual_scale
            ]
        );
        l.wgsl_struct = wgsl;
        l
    };
    vec![
        layout!(
            kernel::ROUTING,
            "RoutingParams",
            RoutingParams,
            [
                tokens,
                experts,
                top_k,
                scoring,
                order,
                renormalize,
                has_bias,
                n_group,
                topk_group,
                group_score,
                dim,
                has_router_bias,
                scaling
            ]
        ),
        layout!(
            kernel::CAPACITY,
            "CapacityParams",
            CapacityParams,
            [assignments, capacity]
        ),
        layout!(
            kernel::PERMUTE,
            "PermuteParams",
            PermuteParams,
            [assignments, experts, chunks, block_rows, max_blocks]
        ),
        matmul_fields(kernel::EXPERT_MATMUL, "MatmulParams"),
        matmul_fields(kernel::EXPERT_GEMV, "GemvParams"),
        layout!(
            kernel::COMBINE,
            "CombineParams",
            CombineParams,
            [
                tokens,
                top_k,
                dim,
                identity_rows,
                shared_mode,
                residual,
                residual_scale,
                eps
            ]
        ),
        layout!(kernel::NORM, "NormParams", NormParams, [rows, dim, eps, rows2, dim2]),
        layout!(
            kernel::COLUMNS,
            "ColumnsParams",
            ops::columns::ColumnsParams,
            [rows, width, src_stride, src_offset, dst_stride, dst_offset]
        ),
        layout!(
            kernel::ELEMENTWISE,
            "ElementwiseParams",
            ElementwiseParams,
            [len, cols, scale, limit]
        ),
        layout!(
            kernel::ROPE,
            "RopeParams",
            RopeParams,
            [tokens, heads, head_dim, half_rot, interleaved, by_token, heads2]
        ),
        layout!(
            kernel::ATTENTION_INPUTS,
            "InputsParams",
            ops::attention_inputs::InputsParams,
            [
                tokens,
                heads,
                kv_heads,
                head_dim,
                max_ctx,
                slots,
                half_rot,
                interleaved,
                by_token,
                has_norm,
                eps,
                clip,
                q_offset,
                q_stride,
                k_offset,
                k_stride,
                v_offset,
                v_stride,
            ]
        ),
        layout!(
            kernel::ATTENTION,
            "AttentionParams",
            AttentionParams,
            [
                tokens,
                heads,
                kv_heads,
                head_dim,
                max_ctx,
                scale,
                slots,
                has_sinks,
                window,
                value_dim,
                latent,
                splits,
                group_lanes,
                token_lanes
            ]
        ),
        layout!(
            kernel::EMBEDDING,
            "EmbeddingParams",
            EmbeddingParams,
            [tokens, dim, scale, row_begin, row_end]
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (size, offsets of non-padding members) of WGSL struct `name` in `shader`.
    fn wgsl_layout(shader: &Shader, name: &str) -> (usize, Vec<usize>) {
        let module =
            naga::front::wgsl::parse_str(&kernel::compose(shader)).unwrap_or_else(|e| panic!("{}: {e}", shader.name));
        for (_, ty) in module.types.iter() {
            if ty.name.as_deref() == Some(name) {
                if let naga::TypeInner::Struct { members, span } = &ty.inner {
                    let offsets = members
                        .iter()
                        .filter(|m| !m.name.as_deref().unwrap_or("_").starts_with('_'))
                        .map(|m| m.offset as usize)
                        .collect();
                    return (*span as usize, offsets);
                }
            }
        }
        panic!("{}: no struct {name}", shader.name);
    }

    #[test]
    fn every_params_struct_matches_its_wgsl_struct() {
        for l in all() {
            let (size, offsets) = wgsl_layout(&l.shader, l.wgsl_struct);
            assert_eq!(l.size, size, "{}::{}: size", l.shader.name, l.wgsl_struct);
            assert_eq!(
                l.offsets, offsets,
                "{}::{}: field offsets",
                l.shader.name, l.wgsl_struct
            );
        }
    }
}

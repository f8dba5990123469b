//! Weights on the GPU: storage formats with their CPU references ([`format`]),
//! matrices split into buffers under the adapter's limits that pick the kernel
//! variant for their format ([`matrix`]), and the bounded streaming upload that moves
//! checkpoint bytes into those buffers ([`upload`]).
pub mod format;
pub mod matrix;
pub mod upload;

pub use format::WeightFormat;
pub use matrix::{WeightChunk, WeightMatrix};
pub use upload::{Assembly, Placement, Uploader};

//! webmoe: Mixture-of-Experts inference on wgpu, native and in the browser.
pub mod error;
pub mod gpu;

pub use error::{Error, Result};
pub mod ops;
pub mod moe;

pub use gpu::{ContextOptions, DType, GpuContext, GpuTensor};
pub use moe::{MoeConfig, MoeLayer, MoeOutputs, MoeWeights};

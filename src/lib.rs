//! webmoe: Mixture-of-Experts inference on wgpu, native and in the browser.
pub mod bench;
pub mod chat;
pub mod error;
pub mod gpu;

pub use error::{Error, ErrorKind, Result};
pub mod model;
pub mod moe;
pub mod openai;
pub mod ops;
pub mod selftest;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
pub mod util;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
pub mod weights;

pub use gpu::{ContextOptions, DType, GpuContext, GpuTensor, KernelTarget};
pub use moe::{MoeConfig, MoeLayer, MoeOutputs, MoeWeights};
pub use weights::{WeightFormat, WeightMatrix};

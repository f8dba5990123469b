//! wgpu plumbing: context, tensors, kernels.
pub mod context;
pub mod kernel;
pub mod profile;
pub mod tensor;

pub use context::{ContextOptions, GpuContext, KernelTarget};
pub use tensor::{DType, GpuTensor};

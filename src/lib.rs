//! webmoe: Mixture-of-Experts inference on wgpu, native and in the browser.
pub mod error;
pub mod gpu;

pub use error::{Error, Result};

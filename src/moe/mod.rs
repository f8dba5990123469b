//! The MoE feed-forward layer: configuration, weights, the GPU layer and its CPU reference.
pub mod config;
pub mod layer;
pub mod reference;
pub mod weights;

pub use config::{MoeConfig, SharedExpertConfig};
pub use layer::{MoeLayer, MoeOutputs, Residual};
pub use weights::{ExpertBiasWeights, MoeWeights, SharedExpertWeights};

//! Hugging Face MoE checkpoints: config, safetensors loading, and the generic decoder.
pub mod config;
pub mod safetensors_io;
pub mod weights;

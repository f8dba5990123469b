//! Hugging Face MoE checkpoints: config, tensor names, safetensors reading, the
//! generic decoder on the GPU ([`model::Model`]), per-sequence state
//! ([`session::Session`]) and generation.
pub mod attention;
pub mod batch;
pub mod config;
pub mod families;
pub mod generate;
pub mod gguf;
pub mod load;
#[allow(clippy::module_inception)]
pub mod model;
pub mod names;
pub mod perplexity;
pub(crate) mod planner;
pub mod reference;
pub mod safetensors_io;
pub mod session;
pub mod synthetic;
pub mod tokenizer;
pub mod warm_up;
pub mod weights;

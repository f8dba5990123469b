//! Hugging Face MoE checkpoints: config, safetensors loading, and the generic decoder.
pub mod config;
pub mod generate;
pub mod load;
pub mod perplexity;
pub mod reference;
pub mod safetensors_io;
pub mod synthetic;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

//! GGUF files (versions 2 and 3, llama.cpp's format): [`file`] parses the header,
//! metadata, tensor infos and alignment from a file's first bytes and checks them like
//! safetensors headers (every size bounded by the file, offsets aligned and inside the
//! data, sizes from the ggml type without overflow; unsupported types named with their
//! tensor); [`mapping`] turns one or more split files into the engine's config and a
//! checkpoint under the names the decoder reads (stacked expert tensors become
//! per-expert views of the same bytes, so nothing is copied); [`tokenizer`] builds a
//! `tokenizers` tokenizer from `tokenizer.ggml.*`.
pub mod file;
pub mod mapping;
pub mod tokenizer;

pub use file::{parse_gguf, GgufFile, GgufTensor, MetaValue};
pub use mapping::{gguf_checkpoint, GgufModel};
pub use tokenizer::tokenizer_of;

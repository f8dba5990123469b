//! The crate's error type: every failure a user can cause or meet is a variant
//! with a message that names the thing at fault (tensor, field, limit).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found ({0}). Install a Vulkan driver (on Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` gives Mesa's lavapipe CPU driver), or a Metal/DX12 capable GPU driver")]
    NoAdapter(String),
    #[error("no adapter matches {requested:?}; available adapters: {available}")]
    AdapterNotFound { requested: String, available: String },
    #[error("could not create a GPU device on {adapter}: {reason}")]
    RequestDevice { adapter: String, reason: String },
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },
    #[error("GPU out of memory in {context}: {message}")]
    OutOfMemory { context: String, message: String },
    #[error("reading back {what} from the GPU failed: {reason}")]
    Readback { what: String, reason: String },
    #[error("{what} needs {bytes} bytes, more than the adapter's {limit} ({max} bytes)")]
    ExceedsLimit {
        what: String,
        bytes: u64,
        limit: &'static str,
        max: u64,
    },
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    Shape {
        what: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

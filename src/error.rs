//! The crate's error type: every failure a user can cause or meet is a variant
//! with a message that names the thing at fault (file, tensor, field, limit), and
//! every variant has a [`ErrorKind`] so the CLI and a server can map it (exit code,
//! HTTP status) without parsing messages.

use thiserror::Error;

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad input from the caller: a malformed file or config, wrong shapes or dtypes,
    /// token ids past the vocabulary, prompts past the context.
    InvalidInput,
    /// A file that cannot be opened, read or mapped.
    Io,
    /// Valid input the engine does not handle (yet): an architecture, a RoPE variant, a dtype.
    Unsupported,
    /// No usable GPU adapter or device.
    NoDevice,
    /// The GPU ran out of memory.
    OutOfMemory,
    /// The GPU device was lost (driver reset, unplugged, browser tab reclaimed).
    DeviceLost,
    /// A size past one of the adapter's limits (the error names the limit).
    LimitExceeded,
    /// Any other GPU failure (validation, readback).
    Gpu,
}

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
    /// Invalid input: a config, checkpoint or request that is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file that cannot be read.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// Something valid that webmoe does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoAdapter(_) | Error::AdapterNotFound { .. } | Error::RequestDevice { .. } => ErrorKind::NoDevice,
            Error::DeviceLost(_) => ErrorKind::DeviceLost,
            Error::Validation { .. } | Error::Readback { .. } => ErrorKind::Gpu,
            Error::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            Error::ExceedsLimit { .. } => ErrorKind::LimitExceeded,
            Error::Shape { .. } | Error::Config(_) => ErrorKind::InvalidInput,
            Error::Io { .. } => ErrorKind::Io,
            Error::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

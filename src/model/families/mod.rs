//! One module per model family that needs more than the generic decoder's switches:
//! its config mapping and tensor names in one place.
pub mod deepseek;
pub mod gpt_oss;

//! Kernel warm-up before the first request: drivers compile a pipeline on its first use
//! (SwiftShader's JIT takes about a second for the embedded model, most of a short
//! generation's time), so front-ends run one throwaway prefill and decode step at
//! load, and the first request's tokens/s are the model's, not the compiler's.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::model::Model;
use crate::model::session::{Readback, Session};
use crate::util::Clock;

/// Prompt length of the warm-up prefill: long enough to take the kernels of most
/// prompts (on a CPU kernel target the GEMV's 4-token groups; on a GPU the tiles).
const WARM_UP_PROMPT: usize = 8;

/// Runs a prefill of a few tokens and one greedy decode step on a throwaway session of
/// `model`, compiling the pipelines a generation uses; returns the seconds it took.
pub async fn warm_up(ctx: &GpuContext, model: &Model) -> Result<f64> {
    let clock = Clock::start();
    let positions = (WARM_UP_PROMPT + 1).min(model.max_context);
    if positions < 2 {
        return Ok(0.0);
    }
    let mut session = Session::new(ctx, model, Some(positions))?;
    let prompt = vec![0u32; positions - 1];
    session.step(ctx, model, &prompt, Readback::LastLogits).await?;
    session.step(ctx, model, &[0], Readback::Argmax).await?;
    Ok(clock.seconds())
}

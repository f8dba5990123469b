//! Kernel warm-up before the first request: drivers compile a pipeline on its first use
//! (SwiftShader's JIT takes about a second for the embedded model, most of a short
//! generation's time), so front-ends run a few throwaway steps at load, and the first
//! request's tokens/s are the model's, not the compiler's.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::generate::{Sampler, SamplingParams};
use crate::model::model::Model;
use crate::model::session::{Readback, Session};
use crate::ops::sampling::samples_on_gpu;
use crate::util::Clock;

/// Step sizes of the warm-up, run in this order on one sequence: a prompt long enough
/// for the prefill kernels of most prompts (on a GPU the tiles; on a CPU kernel target
/// the GEMV's 4-token groups), then the GEMV's 4-, 2- and 1-token groups of short
/// prompts, batched decode (`webmoe serve`) and decode; then, where sampling runs on
/// the GPU, one step of sampled decode (the `sample` kernel).
const WARM_UP_STEPS: [usize; 4] = [8, 3, 2, 1];

/// Runs the warm-up steps on a throwaway session of `model` (as much of them as its
/// context holds), compiling the pipelines a generation uses; returns the seconds it
/// took. Long prompts on a GPU may still compile tiles of other row blocks.
pub async fn warm_up(ctx: &GpuContext, model: &Model) -> Result<f64> {
    let clock = Clock::start();
    let sampled_steps = usize::from(samples_on_gpu(ctx));
    let positions = (WARM_UP_STEPS.iter().sum::<usize>() + sampled_steps).min(model.max_context);
    let mut session = Session::new(ctx, model, Some(positions))?;
    for (i, &tokens) in WARM_UP_STEPS.iter().enumerate() {
        if session.position() + tokens > positions {
            break;
        }
        let last = i == WARM_UP_STEPS.len() - 1;
        let read = if last { Readback::Argmax } else { Readback::LastLogits };
        session.step(ctx, model, &vec![0u32; tokens], read).await?;
    }
    let mut sampler = Sampler::new(SamplingParams {
        temperature: 1.0,
        ..SamplingParams::greedy()
    });
    session
        .decode(ctx, model, 0, sampled_steps, &mut sampler, |_, _| false)
        .await?;
    Ok(clock.seconds())
}

//! Perplexity of a token sequence with the engine: non-overlapping windows, each
//! run as one batched prefill from position 0, every position's logits scored.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::model::{LogitsFor, Model};
use crate::model::session::Session;

#[derive(Clone, Copy, Debug)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Tokens predicted (each window's first token is context only).
    pub predicted: usize,
    pub seconds: f64,
}

impl Perplexity {
    pub fn tokens_per_second(&self) -> f64 {
        self.predicted as f64 / self.seconds.max(1e-9)
    }
}

/// exp(mean negative log-likelihood) of `ids`, in windows of `window` tokens.
pub async fn perplexity(ctx: &GpuContext, model: &Model, ids: &[u32], window: usize) -> Result<Perplexity> {
    if window < 2 || window > model.max_context {
        return Err(Error::Config(format!(
            "perplexity window {window} must be between 2 and the context of {} positions",
            model.max_context
        )));
    }
    let vocab = model.config.vocab_size;
    let mut session = Session::new(ctx, model, Some(window))?;
    let clock = crate::util::Clock::start();
    let (mut nll, mut predicted) = (0.0f64, 0usize);
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        session.rewind(0)?;
        let logits = session.logits(ctx, model, chunk, LogitsFor::All).await?;
        for (pos, &target) in chunk.iter().enumerate().skip(1) {
            let row = &logits[(pos - 1) * vocab..pos * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let log_sum = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            nll += log_sum - row[target as usize] as f64;
            predicted += 1;
        }
    }
    if predicted == 0 {
        return Err(Error::Config("the text has fewer than 2 tokens".into()));
    }
    Ok(Perplexity {
        perplexity: (nll / predicted as f64).exp(),
        predicted,
        seconds: clock.seconds(),
    })
}

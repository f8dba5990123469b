//! Runs one MoE layer with random weights on the GPU, checks it against the CPU
//! reference and prints routing statistics and timings.
//!
//! `cargo run --release --example moe_layer_demo [tokens]`

use std::time::Instant;

use rand::{Rng, SeedableRng};
use webmoe::moe::reference::moe_reference;
use webmoe::moe::SharedExpertConfig;
use webmoe::{DType, GpuContext, GpuTensor, MoeConfig, MoeLayer, MoeWeights};

fn main() -> webmoe::Result<()> {
    let tokens: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let ctx = GpuContext::new_blocking()?;
    println!("adapter: {}", webmoe::gpu::context::describe_adapter(&ctx.adapter_info));

    // A Qwen2-MoE-like layer, scaled down to run on a CPU driver.
    let mut config = MoeConfig::new(256, 128, 32, 4);
    config.shared_expert = Some(SharedExpertConfig { ffn: 256, gated: true });
    let (d, f, e) = (config.hidden_size, config.expert_ffn, config.num_experts());
    let weights = MoeWeights::random(&config, 7, false);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let hidden: Vec<f32> = (0..tokens * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();

    let layer = MoeLayer::new(&ctx, config, &weights)?;
    let input = GpuTensor::from_f32(&ctx, "hidden", &[tokens, d], &hidden, DType::F32)?;
    layer.forward_blocking(&ctx, &input)?.output.read_f32_blocking(&ctx)?; // warm-up
    let start = Instant::now();
    let out = layer.forward_blocking(&ctx, &input)?;
    let output = out.output.read_f32_blocking(&ctx)?;
    let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
    let counts = out.expert_counts.read_u32_blocking(&ctx)?;

    let reference = moe_reference(&config, &weights, &hidden);
    let scale = reference.output.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let err = output
        .iter()
        .zip(&reference.output)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0f32, f32::max);
    println!(
        "MoE layer: T={tokens} d={d} ffn={f} E={e} k={} + gated shared expert",
        config.top_k()
    );
    println!("GPU forward + readback: {gpu_ms:.2} ms; max relative error vs CPU reference: {err:.2e}");
    println!("tokens per expert: {counts:?}");
    if err > 1e-4 {
        return Err(webmoe::Error::Config(format!(
            "GPU result differs from the CPU reference ({err:e})"
        )));
    }
    Ok(())
}

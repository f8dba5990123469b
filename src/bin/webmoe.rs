//! The `webmoe` command line: run a model, list adapters.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use webmoe::model::generate::{generate, SamplingParams};
use webmoe::model::load::{load_model_dir, LoadOptions};
use webmoe::model::tokenizer::TextStream;
use webmoe::{DType, GpuContext};

#[derive(Parser)]
#[command(
    name = "webmoe",
    version,
    about = "Mixture-of-Experts LLM inference on the GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a Hugging Face model directory.
    Run(RunArgs),
    /// List GPU adapters with their backend, features and limits.
    Info,
}

#[derive(Args)]
struct RunArgs {
    /// Model directory: config.json, *.safetensors, tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (needs tokenizer.json).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as token ids, e.g. "1 17 42".
    #[arg(long)]
    prompt_ids: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Greedy decoding (same as --temperature 0).
    #[arg(long)]
    greedy: bool,
    /// Print one JSON object: prompt_ids, generated_ids, first_logits_top.
    #[arg(long)]
    json: bool,
    /// KV-cache positions (default: max_position_embeddings, at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// Weight storage on the GPU: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Info => info(),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn parse_dtype(s: &str) -> webmoe::Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(webmoe::Error::Config(format!(
            "--dtype {other}: expected f32, f16 or bf16"
        ))),
    }
}

fn run(args: RunArgs) -> webmoe::Result<()> {
    let ctx = GpuContext::new_blocking()?;
    let options = LoadOptions {
        max_context: args.context,
        weight_dtype: parse_dtype(&args.dtype)?,
    };
    let loaded = load_model_dir(&ctx, &args.model, options)?;
    let prompt_ids: Vec<u32> = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse().map_err(|_| {
                    webmoe::Error::Config(format!("--prompt-ids: {s:?} is not a token id"))
                })
            })
            .collect::<webmoe::Result<_>>()?,
        (None, Some(text)) => loaded.tokenizer()?.encode(text)?,
        (None, None) => {
            return Err(webmoe::Error::Config(
                "give --prompt or --prompt-ids".into(),
            ))
        }
    };
    let sampling = SamplingParams {
        temperature: if args.greedy { 0.0 } else { args.temperature },
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let stop = loaded.model.config.eos_token_ids.clone();
    let mut stream = TextStream::default();
    let tokenizer = if args.json {
        None
    } else {
        loaded.tokenizer.as_ref()
    };
    let mut stdout = std::io::stdout();
    if let Some(tok) = tokenizer {
        if let Some(text) = &args.prompt {
            print!("{text}");
        } else {
            print!("{}", tok.decode(&prompt_ids)?);
        }
        stdout.flush().ok();
    }
    let generation = pollster::block_on(generate(
        &ctx,
        &loaded.model,
        &prompt_ids,
        args.max_tokens,
        sampling,
        &stop,
        |id| {
            if let Some(tok) = tokenizer {
                if let Ok(piece) = stream.push(tok, id) {
                    print!("{piece}");
                    stdout.flush().ok();
                }
            }
            true
        },
    ))?;
    if args.json {
        let top: Vec<String> = generation
            .first_logits_top
            .iter()
            .map(|(id, l)| format!("[{id},{}]", json_f32(*l)))
            .collect();
        println!(
            "{{\"prompt_ids\":{:?},\"generated_ids\":{:?},\"first_logits_top\":[{}]}}",
            generation.prompt_ids,
            generation.generated_ids,
            top.join(",")
        );
    } else {
        println!();
    }
    eprintln!(
        "prefill: {} tokens, {:.1} tokens/s; decode: {} tokens, {:.1} tokens/s ({})",
        generation.prompt_ids.len(),
        generation.prefill_tokens_per_second(),
        generation.generated_ids.len(),
        generation.decode_tokens_per_second(),
        ctx.adapter_info.name
    );
    Ok(())
}

/// A JSON number for an f32 (shortest form that round-trips).
fn json_f32(v: f32) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else {
        "null".into()
    }
}

fn info() -> webmoe::Result<()> {
    let adapters = webmoe::gpu::context::list_adapters(wgpu::Backends::from_env());
    if adapters.is_empty() {
        return Err(webmoe::Error::NoAdapter("no adapter on any backend".into()));
    }
    for info in adapters {
        println!("{}", webmoe::gpu::context::describe_adapter(&info));
    }
    let ctx = GpuContext::new_blocking()?;
    let l = &ctx.limits;
    println!(
        "\nselected: {}",
        webmoe::gpu::context::describe_adapter(&ctx.adapter_info)
    );
    println!("features: {:?}", ctx.features);
    println!(
        "limits: max_storage_buffer_binding_size {}, max_buffer_size {}, max_compute_invocations_per_workgroup {}, max_compute_workgroup_storage_size {}, max_storage_buffers_per_shader_stage {}, max_compute_workgroups_per_dimension {}",
        l.max_storage_buffer_binding_size,
        l.max_buffer_size,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroup_storage_size,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_workgroups_per_dimension
    );
    Ok(())
}

//! The `webmoe` command line: run, score or serve a model, list adapters, benchmark,
//! self-test the kernels.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use webmoe::model::generate::{generate, SamplingParams};
use webmoe::model::load::{load_model_path, LoadOptions, LoadedModel};
use webmoe::model::perplexity::perplexity;
use webmoe::model::session::Session;
use webmoe::model::tokenizer::TextStream;
use webmoe::{DType, GpuContext, WeightFormat};

#[derive(Parser)]
#[command(
    name = "webmoe",
    version,
    about = "Mixture-of-Experts LLM inference on the GPU (wgpu)"
)]
struct Cli {
    /// Without a command: `run` on the embedded model with its default prompt.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a Hugging Face model directory (default: the embedded model).
    Run(RunArgs),
    /// Perplexity of a text file, in windows of batched prefill.
    Perplexity(PerplexityArgs),
    /// List GPU adapters with their backend, features and limits.
    Info,
    /// Benchmark the MoE layer on real models' shapes against the adapter's ceilings.
    Bench(BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, batching all requests.
    Serve(ServeArgs),
    /// Run every GPU op against its CPU reference on this adapter (the browser's
    /// `Engine.selfTest`), on both kernel targets; fails if any check does.
    SelfTest(SelfTestArgs),
}

#[derive(Args)]
struct SelfTestArgs {
    /// Write the full report (every check's error and tolerance) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Model directory or .gguf file (default: the embedded tiny-moe model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once (KV-cache slots).
    #[arg(long, default_value_t = 16)]
    max_sequences: usize,
    /// Requests waiting for a slot before new ones get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Positions per sequence (default: the model's context, at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// Prompt tokens per prompt step (prompts join running streams in chunks of this).
    #[arg(long, default_value_t = 64)]
    prefill_chunk: usize,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "WEBMOE_API_KEY")]
    api_key: Option<String>,
    /// The model id clients send (default: the directory or file name).
    #[arg(long)]
    model_name: Option<String>,
    /// Seconds running requests may go on after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace: f64,
    #[command(flatten)]
    storage: StorageArgs,
}

/// How a loaded model is stored on the GPU (run, serve, perplexity).
#[derive(Args)]
struct StorageArgs {
    /// Weight storage on the GPU: f32, f16 or bf16 (default: the checkpoint's dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// KV cache elements: f16 (the default; half the memory and the bytes a decode step reads) or f32.
    #[arg(long)]
    kv_cache: Option<String>,
    /// Quantize attention, MLP and expert matrices at load: q8_0, q4_0 or mxfp4 (lm_head
    /// becomes q8_0; embeddings, routers and norms keep their formats).
    #[arg(long)]
    quantize: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Scaled-down shapes and few repeats, for CPU adapters (lavapipe, SwiftShader).
    #[arg(long)]
    quick: bool,
    /// Comma-separated parts of model names to run, e.g. "mixtral,qwen3".
    #[arg(long)]
    shapes: Option<String>,
    /// Timed repeats per row (default 20, or 3 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Token counts, comma-separated (default 1,4,128,512, or 1,4,32 with --quick).
    #[arg(long)]
    tokens: Option<String>,
    /// Expert weight formats, comma-separated: f32, f16, bf16, q8_0, q4_0, q4_k, q5_k,
    /// q6_k, mxfp4 (default f16). Shapes whose rows are not whole blocks are skipped.
    #[arg(long)]
    formats: Option<String>,
    /// Leave out the whole-model rows (they build a 2-layer Qwen3-30B-A3B-shaped model).
    #[arg(long)]
    no_models: bool,
    /// Whole-model rows for this model (directory or .gguf file) instead of the embedded
    /// and the Qwen3-shaped ones (scripts/peer-bench.sh uses it beside llama-bench).
    #[arg(long, conflicts_with = "no_models")]
    model: Option<PathBuf>,
    /// Prompt tokens of the whole-model rows' prefill (default 32 with --quick, else 512).
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// Tokens decoded after the prompt in the whole-model rows (default 16 with --quick,
    /// else 64).
    #[arg(long)]
    decode_tokens: Option<usize>,
    /// Whole-model rows: GPU time per kernel of one prefill and one decode step
    /// (needs timestamp queries).
    #[arg(long)]
    profile: bool,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a roofline chart as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct PerplexityArgs {
    /// Model directory or .gguf file (default: the embedded model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// UTF-8 text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Tokens per window (each window is one prefill from position 0).
    #[arg(long, default_value_t = 256)]
    window: usize,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Model directory (config.json, *.safetensors, tokenizer.json) or a .gguf file (the first of split files) (default: the
    /// embedded tiny-moe model, models/tiny-moe).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text (needs tokenizer.json). Default: "The Rust programming language".
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
    /// KV-cache positions (default: max_position_embeddings, times the factor for
    /// dynamic NTK RoPE; at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// Most prompt tokens per forward: longer prompts prefill in chunks (smaller ones by
    /// themselves where a chunk's activations pass the adapter's binding limit).
    #[arg(long, default_value_t = webmoe::model::session::DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    #[command(flatten)]
    storage: StorageArgs,
}

fn main() {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| match Cli::parse_from(["webmoe", "run"]).command {
            Some(run) => run,
            None => unreachable!("`webmoe run` parses to the run command"),
        });
    let result = match command {
        Command::Run(args) => run(args),
        Command::Perplexity(args) => perplexity_of_file(args),
        Command::Info => info(),
        Command::Bench(args) => bench(args),
        Command::Serve(args) => serve(args),
        Command::SelfTest(args) => self_test(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(exit_code(e.kind()));
    }
}

/// Exit codes by kind of error: 1 for bad input or files, 2 for what is unsupported,
/// 3 for GPU trouble (no device, out of memory, lost, over a limit).
fn exit_code(kind: webmoe::ErrorKind) -> i32 {
    use webmoe::ErrorKind::*;
    match kind {
        InvalidInput | Io => 1,
        Unsupported => 2,
        NoDevice | OutOfMemory | DeviceLost | LimitExceeded | Gpu => 3,
    }
}

fn parse_quantize(s: Option<&str>) -> webmoe::Result<Option<WeightFormat>> {
    let Some(s) = s else { return Ok(None) };
    match WeightFormat::from_name(s) {
        Some(f) if f.is_quantized() && f.can_encode() => Ok(Some(f)),
        _ => Err(webmoe::Error::Config(format!(
            "--quantize {s}: expected q8_0, q4_0 or mxfp4"
        ))),
    }
}

fn parse_dtype(s: Option<&str>) -> webmoe::Result<Option<WeightFormat>> {
    let Some(s) = s else { return Ok(None) };
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(Some(WeightFormat::F32)),
        "f16" => Ok(Some(WeightFormat::F16)),
        "bf16" => Ok(Some(WeightFormat::BF16)),
        other => Err(webmoe::Error::Config(format!(
            "--dtype {other}: expected f32, f16 or bf16"
        ))),
    }
}

/// The default model, compiled into the binary: it runs from anywhere, with no download.
#[cfg(feature = "embedded-model")]
fn default_model(ctx: &GpuContext, options: LoadOptions) -> webmoe::Result<LoadedModel> {
    use webmoe::model::load::{load_model_files, ModelFiles};
    use webmoe::model::safetensors_io::ShardBytes;
    macro_rules! file {
        ($name:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-moe/", $name))
        };
    }
    let files = ModelFiles {
        config_json: String::from_utf8_lossy(file!("config.json")).into_owned(),
        safetensors: vec![(
            "models/tiny-moe/model.safetensors (embedded)".into(),
            ShardBytes::Static(file!("model.safetensors")),
        )],
        tokenizer_json: Some(file!("tokenizer.json").to_vec()),
    };
    load_model_files(ctx, files, options)
}

/// Built without the `embedded-model` feature (a binary 21 MB smaller, for machines the
/// repository travels to anyway: scripts/device-pack.sh), the default model is read
/// from `models/tiny-moe` under the working directory.
#[cfg(not(feature = "embedded-model"))]
fn default_model(ctx: &GpuContext, options: LoadOptions) -> webmoe::Result<LoadedModel> {
    let dir = Path::new("models/tiny-moe");
    if !dir.join("config.json").is_file() {
        return Err(webmoe::Error::Config(format!(
            "this webmoe was built without the embedded model (feature `embedded-model`) and \
             {} is missing: run it from the repository's root or pass --model",
            dir.join("config.json").display()
        )));
    }
    load_model_path(ctx, dir, options)
}

fn load(ctx: &GpuContext, model: Option<&Path>, options: LoadOptions) -> webmoe::Result<LoadedModel> {
    let loaded = match model {
        Some(path) => load_model_path(ctx, path, options),
        None => default_model(ctx, options).map(|l| LoadedModel {
            chat_template: Some(webmoe::chat::EMBEDDED_TEMPLATE.to_string()),
            ..l
        }),
    }?;
    let s = loaded.stats;
    eprintln!(
        "loaded {:.2} GB in {:.1} s ({:.2} GB/s); {:.2} GB on the GPU; KV cache {} bytes per position",
        s.bytes as f64 / 1e9,
        s.seconds,
        s.gb_per_second(),
        loaded.model.weight_bytes() as f64 / 1e9,
        loaded.model.kv_bytes_per_position()
    );
    Ok(loaded)
}

/// Compiles the kernels of a generation before the first request (model::warm_up). A
/// failed warm-up is only a warning: kernels then compile on first use, and a real
/// fault shows again, with its error, in the first request.
fn warm_up(ctx: &GpuContext, loaded: &LoadedModel) -> webmoe::Result<()> {
    match pollster::block_on(webmoe::model::warm_up::warm_up(ctx, &loaded.model)) {
        Ok(seconds) => eprintln!("kernels compiled in {seconds:.1} s (warm-up steps)"),
        Err(e) => eprintln!("warning: the kernel warm-up failed ({e}); kernels compile on first use"),
    }
    Ok(())
}

fn load_options(context: Option<usize>, storage: &StorageArgs) -> webmoe::Result<LoadOptions> {
    Ok(LoadOptions {
        max_context: context,
        weight_format: parse_dtype(storage.dtype.as_deref())?,
        quantize: parse_quantize(storage.quantize.as_deref())?,
        kv_cache: parse_kv_cache(storage.kv_cache.as_deref())?,
    })
}

fn parse_kv_cache(s: Option<&str>) -> webmoe::Result<Option<DType>> {
    let Some(s) = s else { return Ok(None) };
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(Some(DType::F32)),
        "f16" => Ok(Some(DType::F16)),
        other => Err(webmoe::Error::Config(format!(
            "--kv-cache {other}: expected f32 or f16"
        ))),
    }
}

fn serve(args: ServeArgs) -> webmoe::Result<()> {
    let ctx = GpuContext::new_blocking()?;
    let options = load_options(args.context, &args.storage)?;
    let loaded = load(&ctx, args.model.as_deref(), options)?;
    warm_up(&ctx, &loaded)?;
    let model_name = args.model_name.unwrap_or_else(|| match &args.model {
        Some(path) => path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        None => "tiny-moe".into(),
    });
    let context = loaded.model.max_context;
    let prompt_kernels = webmoe::serve::engine::prompt_kernels_for(ctx.kernel_target);
    webmoe::serve::serve(
        ctx,
        loaded,
        webmoe::serve::ServeOptions {
            host: args.host,
            port: args.port,
            model_name,
            api_key: args.api_key,
            engine: webmoe::serve::engine::EngineOptions {
                max_sequences: args.max_sequences,
                context,
                prefill_chunk: args.prefill_chunk,
                max_queue: args.max_queue,
                prompt_kernels,
            },
            shutdown_grace: std::time::Duration::from_secs_f64(args.shutdown_grace.max(0.0)),
        },
    )
}

const DEFAULT_PROMPT: &str = "The Rust programming language";

fn perplexity_of_file(args: PerplexityArgs) -> webmoe::Result<()> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| webmoe::Error::io(args.file.display(), e))?;
    let ctx = GpuContext::new_blocking()?;
    let options = load_options(None, &args.storage)?;
    let loaded = load(&ctx, args.model.as_deref(), options)?;
    warm_up(&ctx, &loaded)?;
    let ids = loaded.tokenizer()?.encode(&text)?;
    let result = pollster::block_on(perplexity(&ctx, &loaded.model, &ids, args.window))?;
    println!(
        "perplexity {:.4} over {} predicted tokens",
        result.perplexity, result.predicted
    );
    eprintln!(
        "{} tokens in windows of {}: {:.1} tokens/s ({})",
        ids.len(),
        args.window,
        result.tokens_per_second(),
        ctx.adapter_info.name
    );
    Ok(())
}

fn run(args: RunArgs) -> webmoe::Result<()> {
    if args.prefill_chunk == 0 {
        return Err(webmoe::Error::Config("--prefill-chunk must be at least 1".into()));
    }
    let ctx = GpuContext::new_blocking()?;
    let options = load_options(args.context, &args.storage)?;
    let loaded = load(&ctx, args.model.as_deref(), options)?;
    warm_up(&ctx, &loaded)?;
    let prompt_ids: Vec<u32> = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| webmoe::Error::Config(format!("--prompt-ids: {s:?} is not a token id")))
            })
            .collect::<webmoe::Result<_>>()?,
        (None, text) => loaded.tokenizer()?.encode(text.as_deref().unwrap_or(DEFAULT_PROMPT))?,
    };
    let sampling = SamplingParams {
        temperature: if args.greedy { 0.0 } else { args.temperature },
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let stop = loaded.model.config.eos_token_ids.clone();
    let mut stream = TextStream::default();
    let tokenizer = if args.json { None } else { loaded.tokenizer.as_ref() };
    let mut stdout = std::io::stdout();
    if let Some(tok) = tokenizer {
        match (&args.prompt, &args.prompt_ids) {
            (Some(text), _) => print!("{text}"),
            (None, None) => print!("{DEFAULT_PROMPT}"),
            (None, Some(_)) => print!("{}", tok.decode(&prompt_ids)?),
        }
        stdout.flush().ok();
    }
    let mut session = Session::new(&ctx, &loaded.model, None)?;
    session.prefill_chunk = args.prefill_chunk;
    let generation = pollster::block_on(generate(
        &ctx,
        &loaded.model,
        &mut session,
        &prompt_ids,
        args.max_tokens,
        sampling,
        &stop,
        |id, _| {
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

fn bench(args: BenchArgs) -> webmoe::Result<()> {
    let mut options = webmoe::bench::BenchOptions::new(args.quick);
    if let Some(shapes) = args.shapes {
        options.shapes = shapes
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(r) = args.repeats {
        options.repeats = r.max(1);
    }
    if let Some(t) = args.tokens {
        options.tokens = t
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| webmoe::Error::Config(format!("--tokens: {s:?} is not a count")))
            })
            .collect::<webmoe::Result<_>>()?;
    }
    if let Some(list) = args.formats {
        options.formats = list
            .split(',')
            .map(|s| {
                WeightFormat::from_name(s.trim())
                    .ok_or_else(|| webmoe::Error::Config(format!("--formats: {s:?} is not a weight format")))
            })
            .collect::<webmoe::Result<_>>()?;
    }
    options.prompt_tokens = args.prompt_tokens;
    options.decode_tokens = args.decode_tokens;
    options.profile = args.profile;
    let ctx = GpuContext::new_blocking()?;
    // Whole-model rows: the embedded model, and random weights in Qwen3-30B-A3B's shape
    // (2 of its 48 layers; hidden, ffn and vocabulary divided by 16 with --quick).
    let report = if args.no_models {
        pollster::block_on(webmoe::bench::run_bench(&ctx, &options, &[]))?
    } else if let Some(path) = &args.model {
        let loaded = load(&ctx, Some(path), LoadOptions::default())?;
        let name = path.display().to_string();
        pollster::block_on(webmoe::bench::run_bench(&ctx, &options, &[(name, &loaded.model)]))?
    } else {
        let embedded = load(&ctx, None, LoadOptions::default())?;
        let synthetic = qwen3_shaped_model(&ctx, args.quick)?;
        let models = [
            ("tiny-moe (embedded)".to_string(), &embedded.model),
            (synthetic.0.clone(), &synthetic.1),
        ];
        pollster::block_on(webmoe::bench::run_bench(&ctx, &options, &models))?
    };
    print!("{}", webmoe::bench::markdown(&report));
    let write =
        |path: &Path, text: String| std::fs::write(path, text).map_err(|e| webmoe::Error::io(path.display(), e));
    if let Some(path) = &args.json {
        write(path, serde_json::to_string_pretty(&report).unwrap_or_default())?;
    }
    if let Some(path) = &args.svg {
        write(path, webmoe::bench::roofline_svg(&report))?;
    }
    Ok(())
}

/// A 2-layer model with random f16 weights in Qwen3-30B-A3B's shape.
fn qwen3_shaped_model(ctx: &GpuContext, quick: bool) -> webmoe::Result<(String, webmoe::model::model::Model)> {
    use webmoe::model::synthetic::{random_weights, synthetic_config, Dims};
    let scale = if quick { 16 } else { 1 };
    let dims = Dims {
        layers: 2,
        heads: 32 / scale.min(8),
        kv_heads: 4,
        head_dim: 128 / scale.min(8),
        vocab: 151_936 / scale,
        max_positions: 1024,
    };
    let mut moe = webmoe::MoeConfig::new(2048 / scale, 768 / scale, 128, 8);
    moe.routing.renormalize = true;
    moe.weight_format = WeightFormat::F16;
    let mut config = synthetic_config(webmoe::model::config::Family::Qwen3Moe, dims, moe);
    config.qk_norm = webmoe::model::config::QkNorm::PerHead;
    let weights = random_weights(&config, 42);
    let name = format!(
        "Qwen3-30B-A3B shape, 2 layers, random{}",
        if quick { " /16" } else { "" }
    );
    Ok((
        name,
        webmoe::model::synthetic::model_from_weights(ctx, &config, &weights, 1024)?,
    ))
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

fn self_test(args: SelfTestArgs) -> webmoe::Result<()> {
    let ctx = GpuContext::new_blocking()?;
    println!("adapter: {}", webmoe::gpu::context::describe_adapter(&ctx.adapter_info));
    let start = std::time::Instant::now();
    let report = pollster::block_on(webmoe::selftest::run(&ctx));
    for c in report.checks.iter().filter(|c| !c.passed) {
        println!(
            "FAILED {}: error {:.3e} (tolerance {:.1e}) {}",
            c.name, c.error, c.tolerance, c.detail
        );
    }
    println!(
        "self-test: {} of {} checks passed in {:.1} s",
        report.passed,
        report.checks.len(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, json).map_err(|e| webmoe::Error::io(path.display(), e))?;
    }
    if report.failed > 0 {
        return Err(webmoe::Error::Config(format!(
            "{} of {} self-test checks failed on {}",
            report.failed,
            report.checks.len(),
            report.adapter
        )));
    }
    Ok(())
}

//! The weights module: formats against their references, matrices split under the
//! binding limit, and streaming loads in arbitrary pieces equal to loading at once.

mod common;

use std::path::PathBuf;

use common::*;
use rand::Rng;
use webmoe::model::config::ModelConfig;
use webmoe::model::load::{load_model_dir, LoadOptions, StreamingLoad};
use webmoe::model::model::{LogitsFor, Model};
use webmoe::model::safetensors_io::TensorStore;
use webmoe::model::session::Session;
use webmoe::weights::Uploader;
use webmoe::{ContextOptions, ErrorKind, GpuContext, WeightFormat, WeightMatrix};

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(family)
}

#[test]
fn formats_encode_and_decode_like_the_half_crate() {
    let mut rng = rng(1);
    let mut values = random_vec(&mut rng, 999, 100.0);
    values.extend([0.0, -0.0, 1.0e-8, 65504.0, -3.0e38]);
    for format in WeightFormat::ALL {
        let mut bytes = Vec::new();
        format.encode_into(&values, &mut bytes);
        assert_eq!(bytes.len(), format.bytes_for(values.len()).unwrap());
        let decoded = format.dequantize(&bytes);
        let want: Vec<f32> = values
            .iter()
            .map(|&v| match format {
                WeightFormat::F32 => v,
                WeightFormat::F16 => half::f16::from_f32(v).to_f32(),
                WeightFormat::BF16 => half::bf16::from_f32(v).to_f32(),
            })
            .collect();
        assert_eq!(
            decoded.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{format}"
        );
        // Converting from any format equals encoding its decoded values.
        for from in WeightFormat::ALL {
            let mut src = Vec::new();
            from.encode_into(&values, &mut src);
            let mut converted = Vec::new();
            format.convert_into(from, &src, &mut converted);
            let mut direct = Vec::new();
            format.encode_into(&from.dequantize(&src), &mut direct);
            assert_eq!(converted, direct, "{from} -> {format}");
        }
    }
}

#[test]
fn matrices_split_into_chunks_under_the_binding_limit() {
    let ctx = context_with(ContextOptions {
        max_binding_bytes: Some(4096),
        ..ContextOptions::from_env()
    });
    // Experts: whole experts per chunk.
    let m = WeightMatrix::allocate(&ctx, "experts", [7, 32, 8], WeightFormat::F32).unwrap();
    let experts: Vec<_> = m.chunks.iter().map(|c| c.experts.clone()).collect();
    assert_eq!(experts, [0..4, 4..7]);
    // A plain matrix: rows per chunk, every chunk within the limit and word-aligned.
    for (format, rows, cols) in [
        (WeightFormat::F32, 300, 24),
        (WeightFormat::BF16, 257, 33),
        (WeightFormat::F16, 1001, 7),
    ] {
        let m = WeightMatrix::allocate(&ctx, "table", [1, rows, cols], format).unwrap();
        assert!(m.chunks.len() > 1, "{format} {rows}x{cols} was not split");
        let mut next = 0;
        for chunk in &m.chunks {
            assert_eq!(chunk.rows.start, next, "chunks must tile the rows");
            next = chunk.rows.end;
            assert!(chunk.buffer.size() <= 4096);
            assert_eq!(chunk.buffer.size() % 4, 0);
        }
        assert_eq!(next, rows);
        for (_, _, offset) in m.destinations(0, 0..rows) {
            assert_eq!(offset % 4, 0);
        }
    }
    // Odd expert sizes in half types: each expert starts on a word.
    let m = WeightMatrix::allocate(&ctx, "odd", [5, 3, 5], WeightFormat::BF16).unwrap();
    assert_eq!(m.expert_stride, 16);
    // One expert over the limit: an error naming the limit.
    let err = WeightMatrix::allocate(&ctx, "huge", [2, 64, 64], WeightFormat::F32).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    assert!(err.to_string().contains("max_storage_buffer_binding_size"), "{err}");
}

/// Last-position logits of `prompt` on a fresh session.
fn logits(ctx: &GpuContext, model: &Model, prompt: &[u32]) -> Vec<f32> {
    let mut session = Session::new(ctx, model, None).unwrap();
    pollster::block_on(session.logits(ctx, model, prompt, LogitsFor::Last)).unwrap()
}

#[test]
fn streaming_in_arbitrary_pieces_equals_loading_at_once() {
    let ctx = context();
    let mut rng = rng(2);
    let prompt = [1u32, 5, 9, 2, 77];
    for family in ["olmoe", "granitemoe", "qwen2_moe"] {
        let dir = fixture(family);
        for format in [None, Some(WeightFormat::F16), Some(WeightFormat::F32)] {
            let options = LoadOptions {
                max_context: None,
                weight_format: format,
            };
            let whole = load_model_dir(&ctx, &dir, options).unwrap();
            let store = TensorStore::open_dir(&dir).unwrap();
            let config = ModelConfig::from_dir(&dir).unwrap();
            let mut load = StreamingLoad::new(&ctx, config, store.checkpoint.shards.clone(), None, options).unwrap();
            let mut uploader = Uploader::new(&ctx);
            // The whole file, header included, in random pieces of 1 byte to 5 KiB.
            for shard in 0..store.checkpoint.shards.len() {
                let bytes = store.shard_bytes(shard);
                let mut offset = 0;
                while offset < bytes.len() {
                    let n = rng.random_range(1..5000).min(bytes.len() - offset);
                    load.feed(&mut uploader, shard, offset as u64, &bytes[offset..offset + n])
                        .unwrap();
                    offset += n;
                }
            }
            uploader.finish();
            let streamed = load.finish(&ctx).unwrap();
            assert_eq!(
                logits(&ctx, &streamed.model, &prompt),
                logits(&ctx, &whole.model, &prompt),
                "{family} {format:?}: streamed and whole loads differ"
            );
        }
    }
}

#[test]
fn an_incomplete_stream_is_an_error_naming_a_tensor() {
    let ctx = context();
    let dir = fixture("mixtral");
    let store = TensorStore::open_dir(&dir).unwrap();
    let config = ModelConfig::from_dir(&dir).unwrap();
    let mut load = StreamingLoad::new(
        &ctx,
        config,
        store.checkpoint.shards.clone(),
        None,
        LoadOptions::default(),
    )
    .unwrap();
    let bytes = store.shard_bytes(0);
    let mut uploader = Uploader::new(&ctx);
    load.feed(&mut uploader, 0, 0, &bytes[..bytes.len() / 2]).unwrap();
    // Bytes out of order are refused too.
    let err = load.feed(
        &mut uploader,
        0,
        (bytes.len() / 2 + 100) as u64,
        &bytes[bytes.len() / 2 + 100..],
    );
    assert!(err.is_err());
    let err = load.finish(&ctx).err().unwrap().to_string();
    assert!(err.contains("incomplete") && err.contains('`'), "{err}");
}

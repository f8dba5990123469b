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
use webmoe::ops::expert_matmul::{encode_down, matvec_reference, ExpertRows};
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
    for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
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
                _ => unreachable!("element formats only"),
            })
            .collect();
        assert_eq!(
            decoded.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{format}"
        );
        // Converting from any format equals encoding its decoded values.
        for from in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
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
    for family in ["olmoe", "granitemoe", "qwen2_moe", "gpt_oss", "gpt_oss_mxfp4"] {
        let dir = fixture(family);
        for format in [None, Some(WeightFormat::F16), Some(WeightFormat::F32)] {
            let options = LoadOptions {
                weight_format: format,
                ..Default::default()
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

/// One fixture of scripts/gen_quant_fixtures.py: (inputs, gguf's quantized bytes,
/// gguf's dequantization of them, raw blocks, gguf's dequantization of those).
type QuantFixture = (Vec<f32>, Vec<u8>, Vec<f32>, Vec<u8>, Vec<f32>);

fn quant_fixture(name: &str) -> QuantFixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/quants/{name}.bin"));
    let bytes = std::fs::read(path).unwrap();
    let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let floats = |from: usize, n: usize| -> Vec<f32> {
        bytes[from..from + 4 * n]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let input = floats(4, n);
    let mut at = 4 + 4 * n;
    let nq = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at += 4;
    let quantized = bytes[at..at + nq].to_vec();
    at += nq;
    let dequantized = floats(at, n);
    at += 4 * n;
    let nr = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at += 4;
    let raw = bytes[at..at + nr].to_vec();
    at += nr;
    let raw_values = (bytes.len() - at) / 4;
    let raw_dequantized = floats(at, raw_values);
    (input, quantized, dequantized, raw, raw_dequantized)
}

/// The fixture's ggml-quantized rows of `format` (two blocks each) uploaded as they are
/// into a [1, rows, cols] matrix, with their dequantized values.
fn ggml_rows_on_gpu(ctx: &GpuContext, format: WeightFormat) -> (WeightMatrix, Vec<f32>) {
    let name = &format.to_string();
    let (_, _, _, raw, dequantized) = quant_fixture(name);
    let (rows, cols) = (raw.len() / format.block_bytes() / 2, 2 * format.block_elements());
    let matrix = WeightMatrix::allocate(ctx, name, [1, rows, cols], format).unwrap();
    let mut uploader = Uploader::new(ctx);
    for (chunk, chunk_rows, offset) in matrix.destinations(0, 0..rows) {
        let row_bytes = matrix.row_bytes();
        uploader.write(
            &chunk.buffer,
            offset,
            &raw[chunk_rows.start * row_bytes..chunk_rows.end * row_bytes],
        );
    }
    uploader.finish();
    (matrix, dequantized)
}

#[test]
fn block_formats_match_ggml_reference_bit_for_bit() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
        let name = &format.to_string();
        let (input, quantized, dequantized, raw, raw_dequantized) = quant_fixture(name);
        if format.can_encode() {
            assert!(!input.is_empty(), "{name}: the fixture has no quantization case");
        }
        let mut ours = Vec::new();
        format.encode_into(&input, &mut ours);
        assert_eq!(
            ours, quantized,
            "{name}: quantization differs from gguf.quants.quantize"
        );
        assert_eq!(
            bits(&format.dequantize(&quantized)),
            bits(&dequantized),
            "{name}: dequantize"
        );
        assert_eq!(
            bits(&format.dequantize(&raw)),
            bits(&raw_dequantized),
            "{name}: dequantize of raw blocks"
        );
        assert_eq!(
            raw_dequantized.len(),
            raw.len() / format.block_bytes() * format.block_elements()
        );
    }
}

#[test]
fn block_formats_decode_on_the_gpu_like_the_cpu() {
    // Raw blocks of every kind (random bytes, finite scales) read by the embedding
    // kernel, which decodes through the shared weight accessor. Formats whose decode
    // is one product per element match bit for bit; Q4_K/Q5_K's `scale * q - min` and
    // Q4_1/Q5_1's `d * q + m` may be fused into one FMA by a GPU compiler, so they
    // match to 1e-6.
    let ctx = context();
    for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
        let name = &format.to_string();
        let (table, want) = ggml_rows_on_gpu(&ctx, format);
        let (rows, cols) = (table.out_dim, table.in_dim);
        let ids: Vec<u32> = (0..rows as u32).collect();
        let ig = webmoe::GpuTensor::from_u32(&ctx, "ids", &[rows], &ids).unwrap();
        // Both decoders: one element per read (every kernel's path for rows not a
        // multiple of 8) and runs of 8 (the GEMV's and the embedding's otherwise).
        for weights_per_read in [1, 8] {
            let what = format!("{name} on the GPU, {weights_per_read} weights per read");
            let x = webmoe::GpuTensor::empty(&ctx, "x", &[rows, cols], webmoe::DType::F32).unwrap();
            x.poison(&ctx);
            run(&ctx, |rec| {
                webmoe::ops::embedding::encode_embedding_in_runs(&ctx, rec, &ig, &table, 1.0, &x, weights_per_read)
                    .unwrap()
            });
            let got = x.read_f32_blocking(&ctx).unwrap();
            if matches!(
                format,
                WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q4_1 | WeightFormat::Q5_1
            ) {
                assert_close(&what, &got, &want, 1e-6);
            } else {
                assert_eq!(bits(&got), bits(&want), "{what}");
            }
        }
    }
}

#[test]
fn block_formats_in_the_gemv_match_the_dequantized_reference() {
    // ggml's quantized rows as the GEMV's weights, against a product with their
    // dequantized values: on the CPU target the serial GEMV walks them in runs of 32
    // (each block's or sub-block's scales read once for four runs of 8), on the GPU
    // target the split GEMV in runs of 8.
    for ctx in &contexts_for_every_gemv() {
        for format in WeightFormat::ALL.into_iter().filter(|f| f.is_quantized()) {
            let name = &format.to_string();
            let (matrix, dequantized) = ggml_rows_on_gpu(ctx, format);
            let (rows, cols) = (matrix.out_dim, matrix.in_dim);
            for tokens in [1, 3] {
                let x = random_vec(&mut rng(tokens as u64), tokens * cols, 1.0);
                let want: Vec<f32> = x
                    .chunks(cols)
                    .flat_map(|row| matvec_reference(row, &dequantized, rows))
                    .collect();
                let xg = webmoe::GpuTensor::from_f32(ctx, "x", &[tokens, cols], &x, webmoe::DType::F32).unwrap();
                let y = webmoe::GpuTensor::empty(ctx, "y", &[tokens, rows], webmoe::DType::F32).unwrap();
                y.poison(ctx);
                run(ctx, |rec| {
                    encode_down(ctx, rec, ExpertRows::Dense { tokens, gemv: true }, &xg, &matrix, &y).unwrap()
                });
                let what = format!("{name} GEMV, {tokens} tokens, {}", ctx.kernel_choices());
                assert_close(&what, &y.read_f32_blocking(ctx).unwrap(), &want, 1e-5);
            }
        }
    }
}

#[test]
fn unquantized_formats_decode_in_runs_like_one_by_one() {
    // f32, f16 and bf16 rows (random normals, zeros of both signs, infinities, the
    // largest f16) through the embedding kernel, both decoders.
    let ctx = context();
    let (rows, cols) = (5, 24);
    let mut values = random_vec(&mut rng(7), rows * cols, 4.0);
    for (i, special) in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 65504.0, -1.5e-3]
        .into_iter()
        .enumerate()
    {
        values[i * 13] = special;
    }
    for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
        let table = WeightMatrix::from_f32(&ctx, "table", &values, [1, rows, cols], format).unwrap();
        let ids: Vec<u32> = vec![3, 0, 4, 4, 1, 2];
        let ig = webmoe::GpuTensor::from_u32(&ctx, "ids", &[ids.len()], &ids).unwrap();
        let mut outputs = Vec::new();
        for weights_per_read in [1, 8] {
            let x = webmoe::GpuTensor::empty(&ctx, "x", &[ids.len(), cols], webmoe::DType::F32).unwrap();
            x.poison(&ctx);
            run(&ctx, |rec| {
                webmoe::ops::embedding::encode_embedding_in_runs(&ctx, rec, &ig, &table, 0.5, &x, weights_per_read)
                    .unwrap()
            });
            outputs.push(x.read_f32_blocking(&ctx).unwrap());
        }
        let mut encoded = Vec::new();
        format.encode_into(&values, &mut encoded);
        let decoded = format.dequantize(&encoded);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| decoded[id as usize * cols..][..cols].iter().map(|v| v * 0.5))
            .collect();
        assert_eq!(bits(&outputs[0]), bits(&want), "{format}, one weight per read");
        assert_eq!(bits(&outputs[1]), bits(&want), "{format}, 8 weights per read");
    }
}

#[test]
fn runs_of_8_need_rows_of_a_multiple_of_8() {
    let ctx = context();
    let table = WeightMatrix::from_f32(&ctx, "table", &[1.0; 12], [1, 2, 6], WeightFormat::F16).unwrap();
    let ig = webmoe::GpuTensor::from_u32(&ctx, "ids", &[1], &[1]).unwrap();
    let x = webmoe::GpuTensor::empty(&ctx, "x", &[1, 6], webmoe::DType::F32).unwrap();
    let mut result = None;
    run(&ctx, |rec| {
        result = Some(webmoe::ops::embedding::encode_embedding_in_runs(
            &ctx, rec, &ig, &table, 1.0, &x, 8,
        ));
    });
    let message = result.unwrap().unwrap_err().to_string();
    assert!(
        message.contains("multiple of 8") && message.contains("6 long"),
        "{message}"
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

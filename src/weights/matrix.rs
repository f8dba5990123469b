//! A weight matrix on the GPU: `[experts, out, in]` (a plain matrix has one expert),
//! stored in its format and split into buffers that each fit the adapter's
//! `max_storage_buffer_binding_size` and `max_buffer_size`: whole experts per buffer
//! when there are several, else ranges of rows (an embedding or lm_head of 151,936 x
//! 2048 becomes several buffers). Kernels run once per chunk.

use std::ops::Range;

use rand::Rng;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuTensor};
use crate::weights::format::WeightFormat;

/// One buffer of a matrix: experts `experts` (all rows), or rows `rows` of its one expert.
#[derive(Clone, Debug)]
pub struct WeightChunk {
    pub buffer: wgpu::Buffer,
    pub experts: Range<usize>,
    pub rows: Range<usize>,
}

#[derive(Clone, Debug)]
pub struct WeightMatrix {
    pub name: String,
    pub experts: usize,
    /// Output rows per expert.
    pub out_dim: usize,
    /// Input columns.
    pub in_dim: usize,
    pub format: WeightFormat,
    /// Elements from one expert to the next inside a chunk (`out * in`, rounded up to
    /// whole blocks that fill whole 32-bit words, so every expert starts on a word).
    pub expert_stride: usize,
    pub chunks: Vec<WeightChunk>,
}

impl WeightMatrix {
    /// A `[out, in]` tensor (f32, f16 or bf16) as a one-expert matrix sharing its buffer
    /// (no copy): the tensor's kernels already bind the whole buffer, so it is one chunk.
    pub fn of_tensor(name: &str, tensor: &GpuTensor) -> Result<Self> {
        let &[out_dim, in_dim] = tensor.shape.as_slice() else {
            return Err(Error::Shape {
                what: format!("{name} (a matrix)"),
                expected: vec![tensor.len(), 1],
                actual: tensor.shape.clone(),
            });
        };
        Ok(Self {
            name: name.to_string(),
            experts: 1,
            out_dim,
            in_dim,
            format: WeightFormat::of_dtype(tensor.dtype)?,
            expert_stride: out_dim * in_dim,
            chunks: vec![WeightChunk {
                buffer: tensor.buffer.clone(),
                experts: 0..1,
                rows: 0..out_dim,
            }],
        })
    }

    /// Allocates the buffers of a `[experts, out, in]` matrix in `format` (contents
    /// zero until written).
    pub fn allocate(ctx: &GpuContext, name: &str, shape: [usize; 3], format: WeightFormat) -> Result<Self> {
        let [experts, out_dim, in_dim] = shape;
        if experts == 0 || out_dim == 0 || in_dim == 0 {
            return Err(Error::Shape {
                what: format!("{name} (no dimension may be 0)"),
                expected: vec![experts.max(1), out_dim.max(1), in_dim.max(1)],
                actual: shape.to_vec(),
            });
        }
        if !in_dim.is_multiple_of(format.block_elements()) {
            return Err(Error::Config(format!(
                "{name}: rows of {in_dim} elements are not whole {format} blocks of {}",
                format.block_elements()
            )));
        }
        let row_bytes = format.bytes_for(in_dim)? as u64;
        let expert_stride = format.word_aligned_elements(out_dim * in_dim);
        let expert_bytes = format.bytes_for(expert_stride)? as u64;
        let limit = ctx.max_binding_bytes();
        let mut plan: Vec<(Range<usize>, Range<usize>, u64)> = Vec::new();
        if experts > 1 {
            ctx.check_binding(&format!("one expert of {name}"), expert_bytes)?;
            let per_chunk = ((limit / expert_bytes) as usize).clamp(1, experts);
            for begin in (0..experts).step_by(per_chunk) {
                let end = (begin + per_chunk).min(experts);
                plan.push((begin..end, 0..out_dim, expert_bytes * (end - begin) as u64));
            }
        } else {
            ctx.check_binding(&format!("one row of {name}"), row_bytes.next_multiple_of(4))?;
            // Chunks after the first start on a word: an even row count keeps half types aligned.
            let mut per_chunk = ((limit / row_bytes) as usize).clamp(1, out_dim);
            if per_chunk < out_dim && !row_bytes.is_multiple_of(4) {
                per_chunk = (per_chunk - per_chunk % 2).max(2);
                ctx.check_binding(&format!("two rows of {name}"), 2 * row_bytes)?;
            }
            for begin in (0..out_dim).step_by(per_chunk) {
                let end = (begin + per_chunk).min(out_dim);
                plan.push((0..1, begin..end, (row_bytes * (end - begin) as u64).next_multiple_of(4)));
            }
        }
        let many = plan.len() > 1;
        let chunks = plan
            .into_iter()
            .map(|(experts, rows, bytes)| {
                let label = if !many {
                    name.to_string()
                } else if experts.len() > 1 || rows.len() == out_dim {
                    format!("{name}[experts {}..{}]", experts.start, experts.end)
                } else {
                    format!("{name}[rows {}..{}]", rows.start, rows.end)
                };
                let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&label),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                WeightChunk { buffer, experts, rows }
            })
            .collect();
        Ok(Self {
            name: name.to_string(),
            experts,
            out_dim,
            in_dim,
            format,
            expert_stride,
            chunks,
        })
    }

    /// Allocates and fills a matrix from f32 values `[experts, out, in]` (tests,
    /// benchmarks and the host-side layer API; checkpoints stream their bytes instead).
    pub fn from_f32(
        ctx: &GpuContext,
        name: &str,
        values: &[f32],
        shape: [usize; 3],
        format: WeightFormat,
    ) -> Result<Self> {
        let [experts, out_dim, in_dim] = shape;
        if values.len() != experts * out_dim * in_dim {
            return Err(Error::Shape {
                what: name.to_string(),
                expected: shape.to_vec(),
                actual: vec![values.len()],
            });
        }
        if !format.can_encode() {
            return Err(crate::error::Error::Unsupported(format!(
                "{name}: webmoe has no {format} encoder (such weights come from files already in {format})"
            )));
        }
        let matrix = Self::allocate(ctx, name, shape, format)?;
        let mut uploader = crate::weights::Uploader::new(ctx);
        let mut bytes = Vec::new();
        for e in 0..experts {
            bytes.clear();
            format.encode_into(&values[e * out_dim * in_dim..(e + 1) * out_dim * in_dim], &mut bytes);
            let row_bytes = bytes.len() / out_dim;
            for (chunk, rows, offset) in matrix.destinations(e, 0..out_dim) {
                let piece = &bytes[rows.start * row_bytes..rows.end * row_bytes];
                uploader.write(&chunk.buffer, offset, piece);
            }
        }
        uploader.finish();
        Ok(matrix)
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.in_dim / self.format.block_elements() * self.format.block_bytes()
    }

    /// Where rows `rows` of expert `expert` live: (chunk, the rows it holds, byte offset
    /// of the first of them in the chunk's buffer), in row order.
    pub fn destinations(&self, expert: usize, rows: Range<usize>) -> Vec<(&WeightChunk, Range<usize>, u64)> {
        let row_bytes = self.row_bytes() as u64;
        let elem_bytes = |elements: usize| (elements / self.format.block_elements() * self.format.block_bytes()) as u64;
        self.chunks
            .iter()
            .filter(|c| c.experts.contains(&expert))
            .filter_map(|c| {
                let begin = rows.start.max(c.rows.start);
                let end = rows.end.min(c.rows.end);
                (begin < end).then(|| {
                    let expert_offset = elem_bytes((expert - c.experts.start) * self.expert_stride);
                    (c, begin..end, expert_offset + (begin - c.rows.start) as u64 * row_bytes)
                })
            })
            .collect()
    }

    /// Bytes of GPU memory the matrix takes.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buffer.size()).sum()
    }
}

/// Random raw blocks of `format` (random bytes, scales in a finite range), `blocks` of
/// them: weights for tests and benchmarks of formats webmoe does not encode.
pub fn random_blocks(rng: &mut rand_chacha::ChaCha8Rng, format: WeightFormat, blocks: usize) -> Vec<u8> {
    let size = format.block_bytes();
    let mut bytes: Vec<u8> = (0..blocks * size).map(|_| rng.random()).collect();
    let f16 = |rng: &mut rand_chacha::ChaCha8Rng| half::f16::from_f32(rng.random_range(-0.02..0.02)).to_le_bytes();
    for block in bytes.chunks_exact_mut(size) {
        match format {
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q5_0 => block[..2].copy_from_slice(&f16(rng)),
            WeightFormat::Q4_1 | WeightFormat::Q5_1 => {
                block[..2].copy_from_slice(&f16(rng));
                block[2..4].copy_from_slice(&f16(rng));
            }
            WeightFormat::Q4K | WeightFormat::Q5K => {
                block[..2].copy_from_slice(&f16(rng));
                block[2..4].copy_from_slice(&f16(rng));
            }
            WeightFormat::Q6K => block[208..210].copy_from_slice(&f16(rng)),
            WeightFormat::Mxfp4 => block[0] = rng.random_range(100..150),
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {}
        }
    }
    bytes
}

impl WeightMatrix {
    /// A matrix of random raw blocks (see [`random_blocks`]), or of `values` encoded
    /// when the format has an encoder: weights for benchmarks of every format.
    pub fn random_or_encoded(
        ctx: &GpuContext,
        name: &str,
        values: &[f32],
        shape: [usize; 3],
        format: WeightFormat,
        seed: u64,
    ) -> Result<Self> {
        if format.can_encode() {
            return Self::from_f32(ctx, name, values, shape, format);
        }
        use rand::SeedableRng;
        let matrix = Self::allocate(ctx, name, shape, format)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let blocks_per_row = shape[2] / format.block_elements();
        let mut uploader = crate::weights::Uploader::new(ctx);
        for e in 0..shape[0] {
            let bytes = random_blocks(&mut rng, format, shape[1] * blocks_per_row);
            let row_bytes = matrix.row_bytes();
            for (chunk, rows, offset) in matrix.destinations(e, 0..shape[1]) {
                uploader.write(
                    &chunk.buffer,
                    offset,
                    &bytes[rows.start * row_bytes..rows.end * row_bytes],
                );
            }
        }
        uploader.finish();
        Ok(matrix)
    }
}

//! Typed GPU tensors: a storage buffer with a shape and an element type, plus
//! upload, poisoning and readback.

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;

/// Element type of a GPU tensor. Half types are packed two per 32-bit word
/// (element 0 in the low half), which every WGSL implementation can decode
/// (`unpack2x16float`, or a shift for bf16) without the shader-f16 feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::U32 => 4,
        }
    }

    /// Bytes of storage for `len` elements (whole 32-bit words, at least one).
    pub fn storage_bytes(self, len: usize) -> u64 {
        ((len * self.size()).div_ceil(4).max(1) * 4) as u64
    }

    /// Encodes f32 values in this type's storage layout (the weight formats' encoder).
    pub fn encode_f32(self, values: &[f32]) -> Vec<u8> {
        let format = crate::weights::WeightFormat::of_dtype(self).expect("encode_f32 called for a u32 tensor");
        let mut bytes = Vec::with_capacity(self.storage_bytes(values.len()) as usize);
        format.encode_into(values, &mut bytes);
        bytes.resize(self.storage_bytes(values.len()) as usize, 0);
        bytes
    }

    /// The value an f32 becomes after a round trip through this type.
    pub fn round_trip(self, v: f32) -> f32 {
        match self {
            DType::F16 => half::f16::from_f32(v).to_f32(),
            DType::BF16 => half::bf16::from_f32(v).to_f32(),
            DType::F32 | DType::U32 => v,
        }
    }
}

/// Bit pattern written into outputs before a kernel runs, so unwritten
/// elements show up in tests (a NaN for floats, an unlikely index for u32).
pub const POISON_WORD: u32 = 0x7fc0_dead;

/// A storage buffer with a shape and an element type.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl GpuTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same buffer viewed with another shape of as many elements.
    pub fn reshaped(&self, shape: &[usize]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.len(),
            "reshape must keep the element count"
        );
        Self {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        }
    }

    /// An uninitialised (zeroed by wgpu) tensor.
    pub fn empty(ctx: &GpuContext, name: &str, shape: &[usize], dtype: DType) -> Result<Self> {
        let bytes = dtype.storage_bytes(shape.iter().product());
        ctx.check_binding(name, bytes)?;
        let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    fn from_bytes(ctx: &GpuContext, name: &str, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Self> {
        let tensor = Self::empty(ctx, name, shape, dtype)?;
        ctx.queue.write_buffer(&tensor.buffer, 0, bytes);
        Ok(tensor)
    }

    /// Uploads f32 values, stored as `dtype` (F32, F16 or BF16).
    pub fn from_f32(ctx: &GpuContext, name: &str, shape: &[usize], values: &[f32], dtype: DType) -> Result<Self> {
        check_len(name, shape, values.len())?;
        Self::from_bytes(ctx, name, shape, dtype, &dtype.encode_f32(values))
    }

    /// Uploads u32 values.
    pub fn from_u32(ctx: &GpuContext, name: &str, shape: &[usize], values: &[u32]) -> Result<Self> {
        check_len(name, shape, values.len())?;
        let mut bytes = bytemuck::cast_slice(values).to_vec();
        bytes.resize(DType::U32.storage_bytes(values.len()) as usize, 0);
        Self::from_bytes(ctx, name, shape, DType::U32, &bytes)
    }

    /// Fills the tensor with [`POISON_WORD`].
    pub fn poison(&self, ctx: &GpuContext) {
        let words = vec![POISON_WORD; (self.buffer.size() / 4) as usize];
        ctx.queue.write_buffer(&self.buffer, 0, bytemuck::cast_slice(&words));
    }

    /// Reads the raw words back.
    pub async fn read_words(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        let bytes = read_buffer(ctx, &self.buffer, self.buffer.size()).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Reads an f32 tensor back.
    pub async fn read_f32(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        if self.dtype != DType::F32 {
            return Err(Error::Readback {
                what: format!("{:?} tensor as f32", self.dtype),
                reason: "only f32 tensors are read back as f32".into(),
            });
        }
        let words = self.read_words(ctx).await?;
        Ok(words[..self.len()].iter().map(|w| f32::from_bits(*w)).collect())
    }

    /// Reads a u32 tensor back.
    pub async fn read_u32(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        let words = self.read_words(ctx).await?;
        Ok(words[..self.len()].to_vec())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(ctx))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32_blocking(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        pollster::block_on(self.read_u32(ctx))
    }
}

fn check_len(name: &str, shape: &[usize], len: usize) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != len {
        return Err(Error::Shape {
            what: format!("data for {name}"),
            expected: shape.to_vec(),
            actual: vec![len],
        });
    }
    Ok(())
}

/// Copies `size` bytes of `buffer` into a staging buffer and maps it.
pub async fn read_buffer(ctx: &GpuContext, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    ctx.check_healthy()?;
    let staging = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    ctx.queue.submit([encoder.finish()]);
    map_read(ctx, &staging, "a GPU buffer").await
}

/// Maps a MAP_READ buffer once the submitted work that fills it is done, copies its
/// bytes out and unmaps it (so it can be filled again).
pub async fn map_read(ctx: &GpuContext, staging: &wgpu::Buffer, what: &str) -> Result<Vec<u8>> {
    map_read_after(ctx, staging, what, None).await
}

/// [`map_read`] of a buffer that `submission` fills: natively it waits for that
/// submission only (not the latest), so submissions queued after it keep the GPU busy
/// while the bytes are read (browsers wait for the buffer's own work anyway).
pub async fn map_read_after(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    what: &str,
    submission: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    let failed = |reason: String| Error::Readback {
        what: what.to_string(),
        reason,
    };
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = sender.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: None,
        })
        .map_err(|e| failed(e.to_string()))?;
    #[cfg(target_arch = "wasm32")]
    let _ = submission;
    let mapped = receiver
        .await
        .map_err(|_| failed("the map callback was dropped (device lost?)".into()))?;
    mapped.map_err(|e| failed(e.to_string()))?;
    ctx.check_healthy()?;
    let view = staging.get_mapped_range(..).map_err(|e| failed(e.to_string()))?;
    let bytes = view.to_vec();
    drop(view);
    staging.unmap();
    Ok(bytes)
}

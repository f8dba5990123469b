//! Moving checkpoint bytes into GPU buffers: a [`Placement`] says where one tensor's
//! bytes (or a slice of them) go and in which format; [`Placements`] takes a shard's
//! bytes in file order, in pieces of any size (a memory map, or a browser's fetch
//! stream), converts where the formats differ, and writes them through an
//! [`Uploader`] that waits for the GPU every [`FLUSH_BYTES`] so staging memory stays
//! bounded. Nothing holds more than one piece of a tensor on the host.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::weights::format::WeightFormat;

/// Bytes written between waits for the GPU (natively), bounding wgpu's staging memory.
pub const FLUSH_BYTES: u64 = 64 << 20;
/// Largest piece of a tensor converted or written at once.
pub const PIECE_BYTES: usize = 16 << 20;

/// Writes bytes into buffers with `queue.write_buffer`, waiting for the GPU to take
/// them every [`FLUSH_BYTES`].
pub struct Uploader<'a> {
    ctx: &'a GpuContext,
    pending: u64,
    /// Bytes written so far.
    pub written: u64,
}

impl<'a> Uploader<'a> {
    pub fn new(ctx: &'a GpuContext) -> Self {
        Self {
            ctx,
            pending: 0,
            written: 0,
        }
    }

    /// Writes `bytes` at `offset` (a multiple of 4) of `buffer`; a ragged tail is
    /// padded with zeros to a whole 32-bit word.
    pub fn write(&mut self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        debug_assert_eq!(offset % 4, 0, "unaligned weight write");
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.ctx.queue.write_buffer(buffer, offset, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.ctx.queue.write_buffer(buffer, offset + whole as u64, &tail);
        }
        self.pending += bytes.len() as u64;
        self.written += bytes.len() as u64;
        if self.pending >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Submits the pending writes and (natively) waits until the GPU has them, which
    /// frees their staging memory.
    pub fn flush(&mut self) {
        self.ctx.queue.submit([]);
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.ctx.device.poll(wgpu::PollType::wait_indefinitely());
        self.pending = 0;
    }

    pub fn finish(mut self) {
        self.flush();
    }
}

/// How a placement's source bytes become destination bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assembly {
    /// Converted in order as they arrive; nothing is held beyond one conversion unit.
    Stream,
    /// The source range is a row-major `[rows, cols]` matrix of `src_format` elements;
    /// the destination rows are its columns `first, first + step, …` (`count` of them):
    /// a transpose that can also pick interleaved columns (gpt-oss's `gate_up_proj`,
    /// `[E, in, 2 ffn]` with gate and up columns alternating). Held whole until complete.
    Columns {
        rows: usize,
        cols: usize,
        first: usize,
        step: usize,
        count: usize,
    },
    /// Hugging Face's MXFP4 (gpt-oss checkpoints): the source range holds e2m1 nibble
    /// blocks `[rows, blocks, 16]` (element 2j in the low nibble of byte j, 2j + 1 in
    /// the high one) and `scales`, another range of the same shard, their e8m0 scales
    /// `[rows, blocks]`. Rows `first, first + step, …` (`count`) become MXFP4 blocks
    /// (`src_format` is then [`WeightFormat::Mxfp4`]). Both parts are held until the
    /// later one arrives.
    HfMxfp4 {
        scales: std::ops::Range<u64>,
        blocks: usize,
        first: usize,
        step: usize,
        count: usize,
    },
}

/// Where one run of checkpoint bytes goes.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The tensor (for errors).
    pub tensor: String,
    pub shard: usize,
    /// Absolute byte range in the shard file.
    pub src_offset: u64,
    pub src_len: u64,
    pub src_format: WeightFormat,
    pub dst: wgpu::Buffer,
    /// A multiple of 4.
    pub dst_offset: u64,
    pub dst_format: WeightFormat,
    pub assembly: Assembly,
}

impl Placement {
    /// The source ranges this placement reads: its own, and the scales of `HfMxfp4`.
    fn parts(&self) -> Vec<std::ops::Range<u64>> {
        let own = self.src_offset..self.src_offset + self.src_len;
        match &self.assembly {
            Assembly::HfMxfp4 { scales, .. } => vec![own, scales.clone()],
            _ => std::iter::once(own).collect(),
        }
    }
}

struct Progress {
    placement: Placement,
    /// Source bytes taken so far, per part.
    received: Vec<u64>,
    /// Source bytes of each part.
    lengths: Vec<u64>,
    /// Destination bytes written so far.
    written: u64,
    /// Streaming: source bytes held back until a whole unit has arrived.
    carry: Vec<u8>,
    /// Assembled placements: each part's bytes, held until all have arrived.
    held: Vec<Vec<u8>>,
}

impl Progress {
    fn complete(&self) -> bool {
        self.received == self.lengths
    }

    /// Source bytes of whole source and destination blocks that convert to a whole
    /// number of 32-bit destination words.
    fn unit(&self) -> usize {
        let p = &self.placement;
        let (src, dst) = (p.src_format, p.dst_format);
        let step = lcm(src.block_elements(), dst.block_elements());
        let mut elements = step;
        while !(elements / dst.block_elements() * dst.block_bytes()).is_multiple_of(4) {
            elements += step;
        }
        elements / src.block_elements() * src.block_bytes()
    }

    /// Takes `data`, the next bytes of part `part` of this placement.
    fn take(&mut self, up: &mut Uploader, part: usize, data: &[u8]) {
        self.received[part] += data.len() as u64;
        if self.placement.assembly == Assembly::Stream {
            let last = self.received[0] == self.placement.src_len;
            self.stream(up, data, last);
            return;
        }
        self.held[part].extend_from_slice(data);
        if self.complete() {
            let held = std::mem::take(&mut self.held);
            let assembled = assemble(&self.placement, &held);
            self.stream(up, &assembled, true);
        }
    }

    /// Converts and writes source-format bytes in order; `last` when no more follow.
    fn stream(&mut self, up: &mut Uploader, data: &[u8], last: bool) {
        let unit = self.unit();
        let mut data = data;
        if !self.carry.is_empty() {
            let need = (unit - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..need]);
            data = &data[need..];
            if self.carry.len() == unit || (last && data.is_empty()) {
                let carry = std::mem::take(&mut self.carry);
                self.emit(up, &carry);
            }
        }
        let whole = if last { data.len() } else { data.len() / unit * unit };
        for piece in data[..whole].chunks(PIECE_BYTES / unit * unit) {
            self.emit(up, piece);
        }
        self.carry.extend_from_slice(&data[whole..]);
    }

    fn emit(&mut self, up: &mut Uploader, src: &[u8]) {
        let p = &self.placement;
        let offset = p.dst_offset + self.written;
        if p.src_format == p.dst_format {
            up.write(&p.dst, offset, src);
            self.written += src.len() as u64;
        } else {
            let mut converted = Vec::with_capacity(src.len() * 2);
            p.dst_format.convert_into(p.src_format, src, &mut converted);
            up.write(&p.dst, offset, &converted);
            self.written += converted.len() as u64;
        }
    }
}

/// The source-format bytes of an assembled placement, from its parts' bytes.
fn assemble(p: &Placement, held: &[Vec<u8>]) -> Vec<u8> {
    match &p.assembly {
        Assembly::Stream => held[0].clone(),
        &Assembly::Columns {
            rows,
            first,
            step,
            count,
            cols,
        } => {
            let size = p.src_format.block_bytes();
            let src = &held[0];
            let mut out = Vec::with_capacity(count * rows * size);
            for j in 0..count {
                let c = first + j * step;
                for r in 0..rows {
                    let at = (r * cols + c) * size;
                    out.extend_from_slice(&src[at..at + size]);
                }
            }
            out
        }
        &Assembly::HfMxfp4 {
            blocks,
            first,
            step,
            count,
            ..
        } => {
            let (nibbles, scales) = (&held[0], &held[1]);
            let mut out = Vec::with_capacity(count * blocks * 17);
            for j in 0..count {
                let row = first + j * step;
                for b in 0..blocks {
                    let block = row * blocks + b;
                    out.push(scales[block]);
                    out.extend(hf_to_ggml_mxfp4_nibbles(&nibbles[block * 16..block * 16 + 16]));
                }
            }
            out
        }
    }
}

/// Reorders one block's e2m1 nibbles from Hugging Face's order (elements 2j and
/// 2j + 1 in byte j, low nibble first) to ggml's (elements j and j + 16 in byte j).
pub fn hf_to_ggml_mxfp4_nibbles(hf: &[u8]) -> [u8; 16] {
    let element = |i: usize| (hf[i / 2] >> (4 * (i % 2))) & 0x0f;
    std::array::from_fn(|j| element(j) | (element(j + 16) << 4))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// One source range of a placement, indexed by file offset.
struct Entry {
    offset: u64,
    len: u64,
    progress: usize,
    part: usize,
}

/// Every placement of a load, fed shard by shard in file order.
pub struct Placements {
    progress: Vec<Progress>,
    /// Per shard, the source ranges sorted by offset.
    by_shard: Vec<Vec<Entry>>,
    /// Per shard, the first entry not yet complete.
    cursor: Vec<usize>,
    total: u64,
    fed: u64,
}

impl Placements {
    pub fn new(shards: usize, placements: Vec<Placement>) -> Self {
        let mut by_shard: Vec<Vec<Entry>> = (0..shards).map(|_| Vec::new()).collect();
        let mut total = 0;
        let mut progress = Vec::with_capacity(placements.len());
        for placement in placements {
            let parts = placement.parts();
            for (part, range) in parts.iter().enumerate() {
                total += range.end - range.start;
                by_shard[placement.shard].push(Entry {
                    offset: range.start,
                    len: range.end - range.start,
                    progress: progress.len(),
                    part,
                });
            }
            progress.push(Progress {
                received: vec![0; parts.len()],
                lengths: parts.iter().map(|r| r.end - r.start).collect(),
                held: vec![Vec::new(); parts.len()],
                placement,
                written: 0,
                carry: Vec::new(),
            });
        }
        for list in &mut by_shard {
            list.sort_by_key(|e| e.offset);
        }
        Self {
            progress,
            cursor: vec![0; shards],
            by_shard,
            total,
            fed: 0,
        }
    }

    /// Source bytes the placements need, over all shards.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Source bytes taken so far.
    pub fn fed_bytes(&self) -> u64 {
        self.fed
    }

    /// The byte ranges of `shard` the placements read, merged, in file order.
    pub fn ranges(&self, shard: usize) -> Vec<std::ops::Range<u64>> {
        let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
        for e in &self.by_shard[shard] {
            let (start, end) = (e.offset, e.offset + e.len);
            match ranges.last_mut() {
                Some(last) if start <= last.end => last.end = last.end.max(end),
                _ => ranges.push(start..end),
            }
        }
        ranges
    }

    /// Takes `data`, the bytes of `shard` starting at file offset `offset`. Bytes of
    /// each placement must arrive in order (any piece sizes); bytes no placement
    /// needs are skipped.
    pub fn feed(&mut self, up: &mut Uploader, shard: usize, offset: u64, data: &[u8]) -> Result<()> {
        let list = self
            .by_shard
            .get(shard)
            .ok_or_else(|| Error::Config(format!("shard {shard} is not part of this load")))?;
        let end = offset + data.len() as u64;
        let mut i = self.cursor[shard];
        while i < list.len() && list[i].offset < end {
            let e = &list[i];
            let p = &mut self.progress[e.progress];
            let (p_start, p_end) = (e.offset, e.offset + e.len);
            let done = p.received[e.part];
            if p_end > offset && done < e.len {
                let from = p_start.max(offset);
                let expected = p_start + done;
                if from != expected {
                    return Err(Error::Config(format!(
                        "bytes of tensor `{}` arrived out of order (at offset {from}, expected {expected})",
                        p.placement.tensor
                    )));
                }
                let to = p_end.min(end);
                p.take(up, e.part, &data[(from - offset) as usize..(to - offset) as usize]);
                self.fed += to - from;
            }
            i += 1;
        }
        let progress = &self.progress;
        let cursor = &mut self.cursor[shard];
        while *cursor < list.len() && progress[list[*cursor].progress].received[list[*cursor].part] == list[*cursor].len
        {
            *cursor += 1;
        }
        Ok(())
    }

    /// Fails, naming the tensor, unless every placement got all its bytes.
    pub fn check_complete(&self) -> Result<()> {
        if let Some(p) = self.progress.iter().find(|p| !p.complete()) {
            let (got, want): (u64, u64) = (p.received.iter().sum(), p.lengths.iter().sum());
            return Err(Error::Config(format!(
                "tensor `{}` is incomplete: {got} of {want} bytes arrived",
                p.placement.tensor
            )));
        }
        Ok(())
    }
}

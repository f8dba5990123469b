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
}

struct Progress {
    placement: Placement,
    /// Source bytes taken so far.
    done: u64,
    /// Destination bytes written so far.
    written: u64,
    /// Source bytes held back until a whole unit has arrived.
    carry: Vec<u8>,
}

impl Progress {
    fn end(&self) -> u64 {
        self.placement.src_offset + self.placement.src_len
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

    /// Takes `data`, the next source bytes of this placement.
    fn take(&mut self, up: &mut Uploader, data: &[u8]) {
        let unit = self.unit();
        let mut data = data;
        self.done += data.len() as u64;
        let last = self.done == self.placement.src_len;
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

/// Every placement of a load, fed shard by shard in file order.
pub struct Placements {
    /// Per shard, sorted by source offset.
    by_shard: Vec<Vec<Progress>>,
    /// Per shard, the first placement not yet complete.
    cursor: Vec<usize>,
    total: u64,
    fed: u64,
}

impl Placements {
    pub fn new(shards: usize, placements: Vec<Placement>) -> Self {
        let mut by_shard: Vec<Vec<Progress>> = (0..shards).map(|_| Vec::new()).collect();
        let total = placements.iter().map(|p| p.src_len).sum();
        for placement in placements {
            by_shard[placement.shard].push(Progress {
                placement,
                done: 0,
                written: 0,
                carry: Vec::new(),
            });
        }
        for list in &mut by_shard {
            list.sort_by_key(|p| p.placement.src_offset);
        }
        Self {
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
        for p in &self.by_shard[shard] {
            let (start, end) = (p.placement.src_offset, p.end());
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
            .get_mut(shard)
            .ok_or_else(|| Error::Config(format!("shard {shard} is not part of this load")))?;
        let end = offset + data.len() as u64;
        let mut i = self.cursor[shard];
        while i < list.len() && list[i].placement.src_offset < end {
            let p = &mut list[i];
            let (p_start, p_end) = (p.placement.src_offset, p.end());
            if p_end > offset && p.done < p.placement.src_len {
                let from = p_start.max(offset);
                let expected = p_start + p.done;
                if from != expected {
                    return Err(Error::Config(format!(
                        "bytes of tensor `{}` arrived out of order (at offset {from}, expected {expected})",
                        p.placement.tensor
                    )));
                }
                let to = p_end.min(end);
                p.take(up, &data[(from - offset) as usize..(to - offset) as usize]);
                self.fed += to - from;
            }
            i += 1;
        }
        while self.cursor[shard] < list.len()
            && list[self.cursor[shard]].done == list[self.cursor[shard]].placement.src_len
        {
            self.cursor[shard] += 1;
        }
        Ok(())
    }

    /// Fails, naming the tensor, unless every placement got all its bytes.
    pub fn check_complete(&self) -> Result<()> {
        for list in &self.by_shard {
            if let Some(p) = list.iter().find(|p| p.done < p.placement.src_len) {
                return Err(Error::Config(format!(
                    "tensor `{}` is incomplete: {} of {} bytes arrived",
                    p.placement.tensor, p.done, p.placement.src_len
                )));
            }
        }
        Ok(())
    }
}

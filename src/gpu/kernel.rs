//! Shader sources, the pipeline cache, and helpers to bind and dispatch kernels.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::gpu::context::GpuContext;
use crate::weights::WeightFormat;

/// Helpers prepended to every kernel file (grid indexing, SiLU, the weight format override).
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");
/// The weight decoder, instantiated per weight array a kernel names in `//! weights: ...`.
pub const WEIGHT_ACCESS_WGSL: &str = include_str!("../../shaders/weight_access.wgsl");

/// The kernel files of `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderId {
    Routing,
    Capacity,
    Permute,
    ExpertMatmul,
    ExpertGemv,
    ExpertGemvSubgroup,
    Combine,
    Norm,
    Elementwise,
    Columns,
    Rope,
    Attention,
    AttentionF16Cache,
    AttentionInputs,
    AttentionInputsF16Cache,
    Embedding,
    Sampling,
    Bench,
    BenchF16,
}

/// One kernel module: a WGSL file of `shaders/`, composed by [`compose`] with
/// `common.wgsl`, weight accessors and the [`ShaderPart`]s it names.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub id: ShaderId,
    /// The module's name (labels, profiles).
    pub name: &'static str,
    /// The file under `shaders/`, without `.wgsl`.
    pub file: &'static str,
    pub source: &'static str,
    /// What fills the file's `//! part: NAME` lines.
    pub parts: &'static [ShaderPart],
    /// Uses subgroup operations: built only where the device has the SUBGROUP feature.
    pub subgroups: bool,
}

/// A piece of WGSL a kernel file leaves open (`//! part: NAME`), one file per variant:
/// e.g. the split GEMV's reduction through shared memory or with subgroups.
#[derive(Clone, Copy, Debug)]
pub struct ShaderPart {
    pub name: &'static str,
    /// The file under `shaders/`, without `.wgsl`.
    pub file: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($id:ident, $name:literal) => {
        Shader {
            id: ShaderId::$id,
            name: $name,
            file: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            parts: &[],
            subgroups: false,
        }
    };
}

macro_rules! part {
    ($name:literal, $file:literal) => {
        ShaderPart {
            name: $name,
            file: $file,
            source: include_str!(concat!("../../shaders/", $file, ".wgsl")),
        }
    };
}

pub const ROUTING: Shader = shader!(Routing, "routing");
pub const CAPACITY: Shader = shader!(Capacity, "capacity");
pub const PERMUTE: Shader = shader!(Permute, "permute");
pub const EXPERT_MATMUL: Shader = shader!(ExpertMatmul, "expert_matmul");
/// The GEMV reducing through shared memory alone (any adapter).
pub const EXPERT_GEMV: Shader = Shader {
    parts: &[part!("gemv_reduce", "gemv_reduce_shared")],
    ..shader!(ExpertGemv, "expert_gemv")
};
/// The GEMV whose split mapping reduces with subgroupAdd (needs SUBGROUP).
pub const EXPERT_GEMV_SUBGROUP: Shader = Shader {
    id: ShaderId::ExpertGemvSubgroup,
    name: "expert_gemv_subgroup",
    parts: &[part!("gemv_reduce", "gemv_reduce_subgroup")],
    subgroups: true,
    ..shader!(ExpertGemv, "expert_gemv")
};
pub const COMBINE: Shader = shader!(Combine, "combine");
pub const NORM: Shader = shader!(Norm, "norm");
pub const ELEMENTWISE: Shader = shader!(Elementwise, "elementwise");
pub const COLUMNS: Shader = shader!(Columns, "columns");
pub const ROPE: Shader = shader!(Rope, "rope");
/// Attention over f32 KV caches.
pub const ATTENTION: Shader = Shader {
    parts: &[part!("attention_cache", "attention_cache_f32")],
    ..shader!(Attention, "attention")
};
/// Attention over f16 KV caches (two elements to a u32 word; no shader-f16 needed).
pub const ATTENTION_F16_CACHE: Shader = Shader {
    id: ShaderId::AttentionF16Cache,
    name: "attention_f16_cache",
    parts: &[part!("attention_cache", "attention_cache_f16")],
    ..shader!(Attention, "attention")
};
/// A GQA step's query/key norms, RoPE and cache stores in one kernel, f32 KV caches.
pub const ATTENTION_INPUTS: Shader = Shader {
    parts: &[part!("attention_cache", "attention_cache_f32")],
    ..shader!(AttentionInputs, "attention_inputs")
};
/// The same for f16 KV caches.
pub const ATTENTION_INPUTS_F16_CACHE: Shader = Shader {
    id: ShaderId::AttentionInputsF16Cache,
    name: "attention_inputs_f16_cache",
    parts: &[part!("attention_cache", "attention_cache_f16")],
    ..shader!(AttentionInputs, "attention_inputs")
};
pub const EMBEDDING: Shader = shader!(Embedding, "embedding");
pub const SAMPLING: Shader = shader!(Sampling, "sampling");
pub const BENCH: Shader = shader!(Bench, "bench");
/// Needs the SHADER_F16 feature.
pub const BENCH_F16: Shader = shader!(BenchF16, "bench_f16");

/// Every kernel file, for validation tests and tools.
pub const ALL_SHADERS: &[Shader] = &[
    ROUTING,
    CAPACITY,
    PERMUTE,
    EXPERT_MATMUL,
    EXPERT_GEMV,
    EXPERT_GEMV_SUBGROUP,
    COMBINE,
    NORM,
    ELEMENTWISE,
    COLUMNS,
    ROPE,
    ATTENTION,
    ATTENTION_F16_CACHE,
    ATTENTION_INPUTS,
    ATTENTION_INPUTS_F16_CACHE,
    EMBEDDING,
    SAMPLING,
    BENCH,
    BENCH_F16,
];

impl Shader {
    /// The kernel `entry` of this file (no weight decoding variant).
    pub const fn entry(&self, entry: &'static str) -> KernelKey {
        KernelKey {
            shader: *self,
            entry,
            weights: None,
            rows: None,
            tokens: None,
            run: None,
        }
    }
}

/// Everything that identifies a compiled pipeline: the file, the entry point, the
/// weight format the kernel decodes (its `WEIGHT_DTYPE` override), if it reads weights,
/// the output rows per workgroup (its `WG_ROWS` override), the tokens per workgroup
/// (its `TOKENS` override) and the consecutive weights one invocation decodes at a
/// time (its `RUN` override: 8 where rows are a multiple of 8 long, else 1), for
/// kernels that have them.
#[derive(Clone, Copy, Debug)]
pub struct KernelKey {
    pub shader: Shader,
    pub entry: &'static str,
    pub weights: Option<WeightFormat>,
    pub rows: Option<u32>,
    pub tokens: Option<u32>,
    pub run: Option<u32>,
}

impl KernelKey {
    /// This kernel's variant for weights stored in `format`.
    pub const fn weights(mut self, format: WeightFormat) -> Self {
        self.weights = Some(format);
        self
    }

    /// This kernel's variant computing `rows` output rows per workgroup.
    pub const fn rows(mut self, rows: u32) -> Self {
        self.rows = Some(rows);
        self
    }

    /// This kernel's variant computing `tokens` tokens per workgroup.
    pub const fn tokens(mut self, tokens: u32) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// This kernel's variant decoding `run` consecutive weights per read.
    pub const fn run(mut self, run: u32) -> Self {
        self.run = Some(run);
        self
    }

    fn id(&self) -> PipelineId {
        (
            self.shader.id,
            self.entry,
            self.weights,
            self.rows,
            self.tokens,
            self.run,
        )
    }
}

/// The full WGSL text the host compiles for a kernel file: its `enable` directives
/// (which must come first), common.wgsl, one weight accessor per array the file names
/// in a `//! weights: a, b` line, then the rest of the file with each `//! part: NAME`
/// line replaced by the shader's part of that name.
pub fn compose(shader: &Shader) -> String {
    let (directives, body): (Vec<&str>, Vec<&str>) = shader.source.lines().partition(|l| l.starts_with("enable "));
    let accessors: String = shader
        .source
        .lines()
        .filter_map(|l| l.strip_prefix("//! weights:"))
        .flat_map(|names| names.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| WEIGHT_ACCESS_WGSL.replace("WEIGHTS", name))
        .collect::<Vec<_>>()
        .join("\n");
    let body: Vec<&str> = body
        .into_iter()
        .map(|line| match line.strip_prefix("//! part:").map(str::trim) {
            Some(name) => {
                shader
                    .parts
                    .iter()
                    .find(|p| p.name == name)
                    .unwrap_or_else(|| panic!("{}: no part {name:?}", shader.name))
                    .source
            }
            None => line,
        })
        .collect();
    format!(
        "{}\n{COMMON_WGSL}\n{accessors}\n{}",
        directives.join("\n"),
        body.join("\n")
    )
}

/// Marks "no expert / no row" in index buffers (dropped or padded entries).
pub const SENTINEL: u32 = u32::MAX;

/// Largest workgroup count per grid dimension that every WebGPU device allows.
const MAX_GRID_DIM: u32 = 65535;

/// The identity of a compiled pipeline (a [`KernelKey`] without the shader source).
type PipelineId = (
    ShaderId,
    &'static str,
    Option<WeightFormat>,
    Option<u32>,
    Option<u32>,
    Option<u32>,
);

/// Compiled shader modules and pipelines.
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<ShaderId, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineId, wgpu::ComputePipeline>>,
}

impl GpuContext {
    /// The compute pipeline of `key` (compiled once per key).
    pub fn pipeline(&self, key: KernelKey) -> wgpu::ComputePipeline {
        if let Some(p) = self.pipelines.pipelines.lock().unwrap().get(&key.id()) {
            return p.clone();
        }
        let shader = key.shader;
        debug_assert!(
            !shader.subgroups || self.features.contains(wgpu::Features::SUBGROUP),
            "{} needs the SUBGROUP feature",
            shader.name
        );
        let module = {
            let mut modules = self.pipelines.modules.lock().unwrap();
            modules
                .entry(shader.id)
                .or_insert_with(|| {
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(compose(&shader).into()),
                    })
                })
                .clone()
        };
        let mut constants: Vec<(&str, f64)> = Vec::new();
        if let Some(f) = key.weights {
            constants.push(("WEIGHT_DTYPE", f.kernel_code() as f64));
        }
        if let Some(rows) = key.rows {
            constants.push(("WG_ROWS", rows as f64));
        }
        if let Some(tokens) = key.tokens {
            constants.push(("TOKENS", tokens as f64));
        }
        if let Some(run) = key.run {
            constants.push(("RUN", run as f64));
        }
        let label = format!(
            "{}::{}::{:?}::{:?}::{:?}::{:?}",
            shader.name, key.entry, key.weights, key.rows, key.tokens, key.run
        );
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        self.pipelines
            .pipelines
            .lock()
            .unwrap()
            .insert(key.id(), pipeline.clone());
        pipeline
    }

    /// How many pipelines this context has compiled so far.
    pub fn compiled_pipelines(&self) -> usize {
        self.pipelines.pipelines.lock().unwrap().len()
    }

    /// A bind group for group 0 of `pipeline` from (binding number, buffer) pairs.
    pub fn bind(&self, pipeline: &wgpu::ComputePipeline, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// A small uniform buffer holding `value`.
    pub fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(value);
        let buffer = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (bytes.len() as u64).next_multiple_of(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        if let Ok(mut view) = buffer.get_mapped_range_mut(..) {
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buffer.unmap();
        buffer
    }
}

/// Splits a 1-D workgroup count into an (x, y) grid within the per-dimension limit.
/// Kernels recover the linear index with `linear_workgroup` (common.wgsl) and
/// return when it is past the real count.
pub fn grid_for(workgroups: u32) -> (u32, u32) {
    if workgroups <= MAX_GRID_DIM {
        (workgroups.max(1), 1)
    } else {
        (MAX_GRID_DIM, workgroups.div_ceil(MAX_GRID_DIM))
    }
}

/// One recorded piece of GPU work.
enum Step {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        grid: (u32, u32),
        /// The recorder's section and the kernel's file and entry, for profiles.
        section: &'static str,
        file: &'static str,
        entry: &'static str,
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
    Clear(wgpu::Buffer),
}

/// A list of dispatches and copies, recorded once and encoded any number of times.
/// Ops record into it (creating their parameter buffers and bind groups then); a
/// whole forward recorded once per shape is replayed every step with no new buffers
/// or bind groups. Consecutive dispatches share one compute pass.
#[derive(Default)]
pub struct Recorder {
    steps: Vec<Step>,
    section: &'static str,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the part of the forward the next dispatches belong to (e.g. "attention",
    /// "moe", "lm head"), so profiles can tell apart the uses of one kernel.
    pub fn section(&mut self, name: &'static str) {
        self.section = name;
    }

    /// Records `workgroups` workgroups of `key` with `params` in binding 0 and `buffers`
    /// in the other bindings of group 0.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        ctx: &GpuContext,
        key: KernelKey,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        workgroups: u32,
    ) {
        let pipeline = ctx.pipeline(key);
        let uniform = ctx.uniform(params);
        let mut entries = vec![(0, &uniform)];
        entries.extend_from_slice(buffers);
        let bind_group = ctx.bind(&pipeline, &entries);
        self.steps.push(Step::Dispatch {
            pipeline,
            bind_group,
            grid: grid_for(workgroups),
            section: self.section,
            file: key.shader.name,
            entry: key.entry,
        });
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) {
        self.steps.push(Step::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Zeroes `buffer`.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.steps.push(Step::Clear(buffer.clone()));
    }

    /// Encodes every recorded step into `encoder`, dispatches in shared compute passes.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        self.encode_passes(encoder, None);
    }

    /// Encodes the steps like [`Self::encode`], but each dispatch in its own compute
    /// pass that writes its start and end into `timestamps` (dispatch d into queries
    /// 2d and 2d + 1; dispatches past the set's `queries` go untimed).
    pub fn encode_timed(&self, encoder: &mut wgpu::CommandEncoder, timestamps: &wgpu::QuerySet, queries: u32) {
        self.encode_passes(encoder, Some((timestamps, queries)));
    }

    fn encode_passes(&self, encoder: &mut wgpu::CommandEncoder, timed: Option<(&wgpu::QuerySet, u32)>) {
        let (mut i, mut dispatch) = (0, 0u32);
        while i < self.steps.len() {
            match &self.steps[i] {
                Step::Dispatch { .. } => {
                    let timestamp_writes =
                        timed
                            .filter(|(_, queries)| 2 * dispatch + 1 < *queries)
                            .map(|(query_set, _)| wgpu::ComputePassTimestampWrites {
                                query_set,
                                beginning_of_pass_write_index: Some(2 * dispatch),
                                end_of_pass_write_index: Some(2 * dispatch + 1),
                            });
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    });
                    // Untimed, the dispatches up to the next copy share the pass.
                    while let Some(Step::Dispatch {
                        pipeline,
                        bind_group,
                        grid,
                        ..
                    }) = self.steps.get(i)
                    {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind_group, &[]);
                        pass.dispatch_workgroups(grid.0, grid.1, 1);
                        i += 1;
                        dispatch += 1;
                        if timed.is_some() {
                            break;
                        }
                    }
                }
                Step::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Step::Clear(buffer) => {
                    encoder.clear_buffer(buffer, 0, None);
                    i += 1;
                }
            }
        }
    }

    /// Encodes the steps into a new command encoder and submits it.
    pub fn submit(&self, ctx: &GpuContext) {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut encoder);
        ctx.queue.submit([encoder.finish()]);
    }

    /// The section and kernel (`file::entry`) of each recorded dispatch, in order.
    pub fn kernels(&self) -> Vec<(&'static str, String)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Dispatch {
                    section, file, entry, ..
                } => Some((*section, format!("{file}::{entry}"))),
                _ => None,
            })
            .collect()
    }
}

//! Shader sources, the pipeline cache, and helpers to bind and dispatch kernels.

use std::collections::HashMap;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::gpu::context::GpuContext;

/// Helpers prepended to every kernel file (weight decoding, grid indexing).
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// One WGSL file of `shaders/`. The host compiles `common.wgsl` + the file.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($name:literal) => {
        Shader {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
        }
    };
}

pub const ROUTER: Shader = shader!("router");
pub const ROUTING: Shader = shader!("routing");
pub const CAPACITY: Shader = shader!("capacity");
pub const PERMUTE: Shader = shader!("permute");
pub const EXPERT_MATMUL: Shader = shader!("expert_matmul");
pub const EXPERT_GEMV: Shader = shader!("expert_gemv");
pub const COMBINE: Shader = shader!("combine");
pub const NORM: Shader = shader!("norm");
pub const ELEMENTWISE: Shader = shader!("elementwise");
pub const ROPE: Shader = shader!("rope");
pub const ATTENTION: Shader = shader!("attention");
pub const EMBEDDING: Shader = shader!("embedding");
pub const SAMPLING: Shader = shader!("sampling");
pub const BENCH: Shader = shader!("bench");
/// Needs the SHADER_F16 feature.
pub const BENCH_F16: Shader = shader!("bench_f16");

/// Every kernel file, for validation tests and tools.
pub const ALL_SHADERS: &[Shader] = &[
    ROUTER,
    ROUTING,
    CAPACITY,
    PERMUTE,
    EXPERT_MATMUL,
    EXPERT_GEMV,
    COMBINE,
    NORM,
    ELEMENTWISE,
    ROPE,
    ATTENTION,
    EMBEDDING,
    SAMPLING,
    BENCH,
    BENCH_F16,
];

/// The full WGSL text the host compiles for a kernel file: its `enable` directives
/// (which must come first), common.wgsl, then the rest of the file.
pub fn compose(shader: &Shader) -> String {
    let (directives, body): (Vec<&str>, Vec<&str>) = shader.source.lines().partition(|l| l.starts_with("enable "));
    format!("{}\n{COMMON_WGSL}\n{}", directives.join("\n"), body.join("\n"))
}

/// Marks "no expert / no row" in index buffers (dropped or padded entries).
pub const SENTINEL: u32 = u32::MAX;

/// Largest workgroup count per grid dimension that every WebGPU device allows.
const MAX_GRID_DIM: u32 = 65535;

/// Compiled shader modules and pipelines, keyed by shader, entry point and constants.
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
}

impl GpuContext {
    /// The compute pipeline for `entry` of `shader` with the given override constants.
    pub fn pipeline(&self, shader: &Shader, entry: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        let key = format!("{}::{entry}::{constants:?}", shader.name);
        if let Some(p) = self.pipelines.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = {
            let mut modules = self.pipelines.modules.lock().unwrap();
            modules
                .entry(shader.name)
                .or_insert_with(|| {
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(compose(shader).into()),
                    })
                })
                .clone()
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        self.pipelines.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
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
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// A small uniform buffer holding `value`.
    pub fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM,
        })
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

/// Records one dispatch of `workgroups` workgroups in its own compute pass.
pub fn dispatch(
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    workgroups: u32,
) {
    let (x, y) = grid_for(workgroups);
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: None,
        timestamp_writes: None,
    });
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(x, y, 1);
}

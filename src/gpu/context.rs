//! GPU context: adapter choice, device creation with the optional features the
//! kernels can use, the adapter's limits, and GPU errors turned into `Result`s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::gpu::kernel::PipelineCache;

/// Optional features the engine asks for when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// How to choose the adapter. `from_env` reads the usual overrides.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Backends to consider (`WGPU_BACKEND`, e.g. "vulkan", "metal", "dx12", "gl").
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name (`WEBMOE_ADAPTER` or `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Lower the largest storage binding the engine will use below the adapter's
    /// own limit, to emulate a smaller device or exercise weight chunking.
    pub max_binding_bytes: Option<u64>,
    /// Pick kernels as for this kind of device (`WEBMOE_KERNELS=gpu|cpu`); by default
    /// the adapter's own kind. Tests use it to run the GPU choices on lavapipe.
    pub kernel_target: Option<KernelTarget>,
    /// Whether kernels may reduce with subgroup operations where the device has them
    /// (`WEBMOE_SUBGROUPS=0` turns them off, e.g. to compare); default yes.
    pub subgroups: Option<bool>,
    /// Whether steps of few tokens split attention over the context
    /// (`WEBMOE_ATTENTION_SPLITS=0|1`, e.g. to compare); default on the GPU target only.
    pub attention_splits: Option<bool>,
    /// Whether query heads that share a kv head share an attention workgroup and its
    /// key and value loads (`WEBMOE_ATTENTION_GROUPS=0|1`, e.g. to compare); default yes.
    pub attention_groups: Option<bool>,
}

/// The kind of device kernel choices are made for: where a GPU and a CPU driver
/// (lavapipe, SwiftShader) want different kernels, the same results either way up to
/// summation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTarget {
    /// Coalesced reads and workgroup reductions; tiles from 5 tokens on.
    Gpu,
    /// No barriers on hot paths (a CPU driver pays for each); GEMVs for short prompts.
    Cpu,
}

impl KernelTarget {
    /// The target for an adapter: `Cpu` for CPU drivers (in a browser, the fallback
    /// adapter), else `Gpu`.
    pub fn of_adapter(info: &wgpu::AdapterInfo) -> Self {
        if info.device_type == wgpu::DeviceType::Cpu {
            KernelTarget::Cpu
        } else {
            KernelTarget::Gpu
        }
    }

    /// `gpu` or `cpu`, as `WEBMOE_KERNELS` takes it.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "gpu" => Some(KernelTarget::Gpu),
            "cpu" => Some(KernelTarget::Cpu),
            _ => None,
        }
    }
}

impl ContextOptions {
    pub fn from_env() -> Self {
        let adapter_name = std::env::var("WEBMOE_ADAPTER")
            .or_else(|_| std::env::var("WGPU_ADAPTER_NAME"))
            .ok()
            .filter(|s| !s.is_empty());
        let kernel_target = std::env::var("WEBMOE_KERNELS")
            .ok()
            .and_then(|v| KernelTarget::parse(&v));
        let switch = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| !matches!(v.trim(), "0" | "off" | "false" | "no"))
        };
        Self {
            backends: wgpu::Backends::from_env(),
            adapter_name,
            max_binding_bytes: None,
            kernel_target,
            subgroups: switch("WEBMOE_SUBGROUPS"),
            attention_splits: switch("WEBMOE_ATTENTION_SPLITS"),
            attention_groups: switch("WEBMOE_ATTENTION_GROUPS"),
        }
    }
}

/// A short description of an adapter, for listings and error messages.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}, driver {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

/// The device plus what the engine needs to know about it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    /// Features enabled on the device (a subset of [`WANTED_FEATURES`]).
    pub features: wgpu::Features,
    /// Limits of the device (the adapter's own limits).
    pub limits: wgpu::Limits,
    /// The kind of device kernels are picked for.
    pub kernel_target: KernelTarget,
    /// Kernels reduce with subgroup operations (the device has SUBGROUP, and the
    /// options allow them).
    pub subgroup_reductions: bool,
    /// Steps of few tokens (those that take the GEMV) split attention over the context
    /// (flash decoding): on the GPU target unless the options say otherwise.
    pub split_attention: bool,
    /// Query heads that share a kv head share an attention workgroup (see
    /// `ops::attention::group_lanes`) unless the options say otherwise.
    pub group_attention: bool,
    max_binding_bytes: u64,
    failure: Arc<Mutex<Option<Error>>>,
    pub(crate) pipelines: PipelineCache,
    buffers_created: AtomicU64,
    bind_groups_created: AtomicU64,
    unread_binding: OnceLock<wgpu::Buffer>,
}

/// How many GPU buffers and bind groups the engine has created on a context (tests
/// check that a decode step creates none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceCounts {
    pub buffers: u64,
    pub bind_groups: u64,
}

impl GpuContext {
    /// Creates a context from the environment's overrides (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new(ContextOptions::from_env()))
    }

    pub async fn new(options: ContextOptions) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(backends) = options.backends {
            desc.backends = backends;
        }
        let instance = wgpu::Instance::new(desc);
        let adapter = choose_adapter(&instance, &options).await?;
        Self::from_adapter(adapter, &options).await
    }

    async fn from_adapter(adapter: wgpu::Adapter, options: &ContextOptions) -> Result<Self> {
        let adapter_info = adapter.get_info();
        let features = adapter.features() & WANTED_FEATURES;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webmoe"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: describe_adapter(&adapter_info),
                reason: e.to_string(),
            })?;

        let failure: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let lost = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = lost.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(Error::DeviceLost(format!("{reason:?}: {message}")));
        });
        let uncaptured = failure.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            log::error!("uncaptured GPU error: {error}");
            let mut slot = uncaptured.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(gpu_error("an operation outside an error scope", error));
        }));

        let kernel_target = options
            .kernel_target
            .unwrap_or_else(|| KernelTarget::of_adapter(&adapter_info));
        let adapter_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let max_binding_bytes = options
            .max_binding_bytes
            .map_or(adapter_binding, |m| m.min(adapter_binding));
        let subgroup_reductions = features.contains(wgpu::Features::SUBGROUP) && options.subgroups != Some(false);
        let split_attention = options.attention_splits.unwrap_or(kernel_target == KernelTarget::Gpu);
        let group_attention = options.attention_groups != Some(false);
        Ok(Self {
            device,
            queue,
            adapter_info,
            features,
            limits,
            kernel_target,
            subgroup_reductions,
            split_attention,
            group_attention,
            max_binding_bytes,
            failure,
            pipelines: PipelineCache::default(),
            buffers_created: AtomicU64::new(0),
            bind_groups_created: AtomicU64::new(0),
            unread_binding: Default::default(),
        })
    }

    /// This context's device, picking kernels for `target` instead (its own pipeline
    /// cache and resource counts): the self-test runs both targets' kernels on one
    /// adapter.
    pub fn for_kernel_target(&self, target: KernelTarget) -> GpuContext {
        GpuContext {
            device: self.device.clone(),
            queue: self.queue.clone(),
            adapter_info: self.adapter_info.clone(),
            features: self.features,
            limits: self.limits.clone(),
            kernel_target: target,
            subgroup_reductions: self.subgroup_reductions,
            split_attention: target == KernelTarget::Gpu,
            group_attention: self.group_attention,
            max_binding_bytes: self.max_binding_bytes,
            failure: self.failure.clone(),
            pipelines: PipelineCache::default(),
            buffers_created: AtomicU64::new(0),
            bind_groups_created: AtomicU64::new(0),
            unread_binding: Default::default(),
        }
    }

    /// The kernel choices this context makes: its target, on the GPU target how the
    /// split GEMV reduces, and whether decode attention is split over the context (for
    /// reports and messages).
    pub fn kernel_choices(&self) -> String {
        let gemv = match (self.kernel_target, self.subgroup_reductions) {
            (KernelTarget::Cpu, _) => "CPU target (serial GEMV, barrier-free tiles",
            (KernelTarget::Gpu, true) => "GPU target (split GEMV, subgroup reductions",
            (KernelTarget::Gpu, false) => "GPU target (split GEMV, shared-memory reductions",
        };
        let attention = if self.split_attention {
            "decode attention split over the context"
        } else {
            "attention in one pass"
        };
        let heads = if self.group_attention {
            "query heads sharing their kv head's workgroup"
        } else {
            "a workgroup per query head"
        };
        format!("{gemv}, {attention}, {heads})")
    }

    /// The largest storage binding the engine may use, in bytes: the adapter's
    /// `max_storage_buffer_binding_size` (and `max_buffer_size`), or a lower override.
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding_bytes
    }

    /// Fails with a clear error when a storage binding of `bytes` would not fit.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_binding_bytes {
            return Err(Error::ExceedsLimit {
                what: what.to_string(),
                bytes,
                limit: "max_storage_buffer_binding_size",
                max: self.max_binding_bytes,
            });
        }
        Ok(())
    }

    /// Returns the first device-lost or uncaptured error seen, if any.
    pub fn check_healthy(&self) -> Result<()> {
        let slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            None => Ok(()),
            Some(Error::DeviceLost(m)) => Err(Error::DeviceLost(m.clone())),
            Some(Error::OutOfMemory { context, message }) => Err(Error::OutOfMemory {
                context: context.clone(),
                message: message.clone(),
            }),
            Some(other) => Err(Error::Validation {
                context: "earlier GPU work".into(),
                message: other.to_string(),
            }),
        }
    }

    /// Runs `work` (pipeline creation, encoding, submission) inside validation and
    /// out-of-memory error scopes and turns what they caught into an `Err`.
    pub async fn scoped<T>(&self, context: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_healthy()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        let validation_error = validation.pop().await;
        let oom_error = oom.pop().await;
        let value = result?;
        if let Some(e) = validation_error.or(oom_error) {
            return Err(gpu_error(context, e));
        }
        self.check_healthy()?;
        Ok(value)
    }

    /// Blocking form of [`GpuContext::scoped`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scoped_blocking<T>(&self, context: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        pollster::block_on(self.scoped(context, work))
    }

    /// Creates a buffer (every buffer of the engine is made here, so it is counted).
    pub fn create_buffer(&self, desc: &wgpu::BufferDescriptor) -> wgpu::Buffer {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(desc)
    }

    /// A small storage buffer for read-only bindings a kernel declares but, with the
    /// parameters given, never reads (e.g. an absent bias), where no other read-only
    /// buffer of the dispatch can stand in.
    pub fn unread_binding(&self) -> &wgpu::Buffer {
        self.unread_binding.get_or_init(|| {
            self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unread binding"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
    }

    /// Creates a bind group (counted like buffers).
    pub fn create_bind_group(&self, desc: &wgpu::BindGroupDescriptor) -> wgpu::BindGroup {
        self.bind_groups_created.fetch_add(1, Ordering::Relaxed);
        self.device.create_bind_group(desc)
    }

    /// Buffers and bind groups created so far.
    pub fn resource_counts(&self) -> ResourceCounts {
        ResourceCounts {
            buffers: self.buffers_created.load(Ordering::Relaxed),
            bind_groups: self.bind_groups_created.load(Ordering::Relaxed),
        }
    }

    /// Whether the device can store and compute with f16 in shaders.
    pub fn has_shader_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }
}

fn gpu_error(context: &str, error: wgpu::Error) -> Error {
    match error {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
            context: context.to_string(),
            message: error.to_string(),
        },
        other => Error::Validation {
            context: context.to_string(),
            message: other.to_string(),
        },
    }
}

/// Lists every adapter wgpu can see for the given backends (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::AdapterInfo> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = backends {
        desc.backends = b;
    }
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends.unwrap_or(wgpu::Backends::all())));
    adapters.iter().map(|a| a.get_info()).collect()
}

/// Ranks adapters: real GPUs before CPU ones, native APIs before GL.
#[cfg(not(target_arch = "wasm32"))]
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (device, backend)
}

#[cfg(not(target_arch = "wasm32"))]
async fn choose_adapter(instance: &wgpu::Instance, options: &ContextOptions) -> Result<wgpu::Adapter> {
    let backends = options.backends.unwrap_or(wgpu::Backends::all());
    let mut adapters = instance.enumerate_adapters(backends).await;
    if adapters.is_empty() {
        return Err(Error::NoAdapter(format!("backends {backends:?}")));
    }
    if let Some(name) = &options.adapter_name {
        let wanted = name.to_lowercase();
        let available = adapters
            .iter()
            .map(|a| describe_adapter(&a.get_info()))
            .collect::<Vec<_>>()
            .join("; ");
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or(Error::AdapterNotFound {
                requested: name.clone(),
                available,
            });
    }
    adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
    Ok(adapters.swap_remove(0))
}

#[cfg(target_arch = "wasm32")]
async fn choose_adapter(instance: &wgpu::Instance, _options: &ContextOptions) -> Result<wgpu::Adapter> {
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(format!("WebGPU: {e}")))
}

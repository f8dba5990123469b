fn main() {
    let ctx = webmoe::GpuContext::new_blocking().unwrap();
    println!("{}", webmoe::gpu::context::describe_adapter(&ctx.adapter_info));
    println!("{:?}", ctx.features);
}

//! GPU errors become `Err` values, not panics.

mod common;

use webmoe::Error;

#[test]
fn validation_errors_inside_a_scope_become_errors() {
    let ctx = common::context();
    let result = ctx.scoped_blocking("a deliberately invalid bind group", || {
        // A map-read buffer cannot be bound as storage.
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("not storage"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pipeline = ctx.pipeline(
            webmoe::gpu::kernel::ROUTING
                .entry("router_logits")
                .weights(webmoe::WeightFormat::F32),
        );
        let _ = ctx.bind(&pipeline, &[(0, &buffer), (1, &buffer), (2, &buffer), (3, &buffer)]);
        Ok(())
    });
    let err = result.expect_err("invalid binding accepted");
    assert!(
        matches!(&err, Error::Validation { context, .. } if context.contains("deliberately invalid")),
        "{err}"
    );
    // The context stays usable afterwards.
    ctx.check_healthy().unwrap();
}

#[test]
fn adapter_name_that_matches_nothing_lists_the_adapters() {
    let options = webmoe::ContextOptions {
        adapter_name: Some("no-such-adapter-xyz".into()),
        ..webmoe::ContextOptions::from_env()
    };
    let err = pollster::block_on(webmoe::GpuContext::new(options))
        .err()
        .expect("matched a bogus name");
    assert!(
        matches!(&err, Error::AdapterNotFound { available, .. } if !available.is_empty()),
        "{err}"
    );
}

#[test]
fn self_test_passes_natively() {
    let ctx = common::context();
    let report = pollster::block_on(webmoe::selftest::run(&ctx));
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(report.passed > 40, "only {} checks ran", report.passed);
}

//! Parses and validates every WGSL file of shaders/ with naga, as the host composes
//! it (common.wgsl + weight accessors + kernel file), and checks that the list of
//! kernels is complete.

use webmoe::gpu::kernel::{compose, ALL_SHADERS, COMMON_WGSL};

fn validate(name: &str, source: &str, subgroups: bool) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: WGSL parse error:\n{}", e.emit_to_string(source)));
    // unpack2x16float (every kernel) and f16 arithmetic (bench_f16.wgsl, built only where
    // the adapter has shader-f16); subgroup operations only in the modules built where
    // the device has SUBGROUP.
    let mut capabilities =
        naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32 | naga::valid::Capabilities::SHADER_FLOAT16;
    if subgroups {
        capabilities |= naga::valid::Capabilities::SUBGROUP;
    }
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation error:\n{}", e.emit_to_string(source)));
}

#[test]
fn every_shader_file_validates() {
    validate("common.wgsl", COMMON_WGSL, false);
    for shader in ALL_SHADERS {
        validate(shader.name, &compose(shader), shader.subgroups);
    }
}

#[test]
fn every_file_in_shaders_dir_is_known() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // The two helper files are composed into every kernel, not compiled alone.
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl" && n != "weight_access.wgsl")
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = ALL_SHADERS
        .iter()
        .flat_map(|s| std::iter::once(s.file).chain(s.parts.iter().map(|p| p.file)))
        .map(|file| format!("{file}.wgsl"))
        .collect();
    known.sort();
    known.dedup();
    assert_eq!(on_disk, known, "shaders/ and kernel::ALL_SHADERS disagree");
}

//! `cargo bench`: the quick benchmark suite on the selected adapter (see `webmoe bench`).

fn main() {
    let ctx = match webmoe::GpuContext::new_blocking() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("no benchmark: {e}");
            return;
        }
    };
    let options = webmoe::bench::BenchOptions::new(true);
    match pollster::block_on(webmoe::bench::run_bench(&ctx, &options, &[])) {
        Ok(report) => print!("{}", webmoe::bench::markdown(&report)),
        Err(e) => eprintln!("benchmark failed: {e}"),
    }
}

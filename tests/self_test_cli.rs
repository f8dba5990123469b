//! `webmoe self-test`: the browser's kernel self-test as a command, for adapters the
//! test suite cannot be built on (a GPU machine lent without a Rust toolchain).

#[test]
fn self_test_command_checks_every_op_on_both_kernel_targets() {
    let dir = std::env::temp_dir().join(format!("webmoe-self-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webmoe"))
        .arg("self-test")
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 200, "{} checks", checks.len());
    assert_eq!(report["failed"], 0);
    assert!(checks
        .iter()
        .all(|c| c["passed"] == true && c["error"].as_f64().unwrap() <= c["tolerance"].as_f64().unwrap()));
    // The layer cases run on this adapter's kernels and again on the other target's.
    let other = checks
        .iter()
        .filter(|c| c["name"].as_str().unwrap().contains(" kernels]"))
        .count();
    assert!(other >= 20, "{other} checks on the other kernel target");
    assert!(
        stdout.contains(&format!("{} of {} checks passed", checks.len(), checks.len())),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

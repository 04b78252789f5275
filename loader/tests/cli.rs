//! The binary starts and lists its scenarios. Having an integration test also makes
//! `cargo test --workspace` build `target/<profile>/herald-load` itself, which the hub's
//! `tests/load.rs` runs from beside the herald binary.

use std::process::Command;

#[test]
fn help_lists_every_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-load"))
        .arg("--help")
        .output()
        .expect("herald-load runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for scenario in ["idle", "broadcast", "addressed", "storm", "replay", "soak"] {
        assert!(help.contains(scenario), "{scenario} missing from:\n{help}");
    }
}

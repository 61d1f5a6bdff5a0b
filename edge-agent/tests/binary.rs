//! The stand-alone `veil-edge-agent` binary, as a gateway runs it (the
//! deployment test, tests/deploy-recipe.sh, installs this build of it):
//! it explains itself, and a configuration it cannot read stops it with
//! one line naming the file.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::process::Command;

#[test]
fn the_agent_binary_explains_itself_and_names_an_unreadable_config() {
    let help = Command::new(env!("CARGO_BIN_EXE_veil-edge-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in ["--config", "--csv", "--output"] {
        assert!(text.contains(option), "--help lacks {option}:\n{text}");
    }

    let missing = Command::new(env!("CARGO_BIN_EXE_veil-edge-agent"))
        .args(["--config", "/nonexistent/veil/edge-agent.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("error: ") && stderr.contains("/nonexistent/veil/edge-agent.toml"),
        "{stderr}"
    );
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
}

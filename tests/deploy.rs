//! deploy/ stays valid: YAML and JSON parse, the dashboard and alert rules use only metrics the
//! binary exports, promtool accepts the rules, systemd-analyze accepts the unit, and the container
//! configuration passes `modgate config check` (deploy/validate.py does the checking).

use std::process::Command;

#[test]
fn deploy_files_validate_against_the_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let names = dir.path().join("metrics.txt");
    std::fs::write(
        &names,
        modgate::telemetry::metrics::Metrics::new()
            .names()
            .join("\n"),
    )
    .unwrap();
    let python = std::path::Path::new("/usr/bin/python3");
    assert!(
        python.is_file(),
        "/usr/bin/python3 is required (Debian python3 with python3-yaml)"
    );
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/validate.py"))
        .arg(&names)
        .arg(env!("CARGO_BIN_EXE_modgate"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("checked "), "{text}");
}

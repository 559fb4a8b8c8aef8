//! test/kind/run.sh is for machines with Docker, kind and kubectl; without
//! them it must say so and exit 77 (skipped), never pass or fail silently.

use std::path::Path;

#[test]
fn the_kind_test_skips_with_code_77_without_docker() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/kind/run.sh");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(syntax.success(), "run.sh has a syntax error");
    // A PATH with only what the script needs before its check: no
    // docker, kind or kubectl, whatever this machine has installed.
    let bin = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/usr/bin/dirname", bin.path().join("dirname")).expect("link");
    let out = std::process::Command::new("/bin/bash")
        .arg(&script)
        .env("PATH", bin.path())
        .output()
        .expect("run run.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains(
            "SKIP: the kind test needs Docker, kind and kubectl; missing: docker kind kubectl"
        ),
        "{stderr}"
    );
}

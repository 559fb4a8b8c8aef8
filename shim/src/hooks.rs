//! OCI runtime hooks of a Wasm container: `prestart` and `createRuntime`,
//! run by the daemon once the container's process exists (before it
//! starts), with the container's state on stdin, as runc runs them.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shimkit::sandbox::Error;
use oci_spec::runtime::{Hook, Spec};

/// Runs the spec's `prestart` and `createRuntime` hooks in order; the first
/// that fails (or outlives its timeout) fails the container's creation.
pub fn prestart(spec: &Spec, id: &str, pid: u32, bundle: &Path) -> Result<(), Error> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    let state = serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": "created",
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
    .to_string();
    #[allow(deprecated)]
    let prestart = hooks.prestart().iter().flatten();
    for (kind, hook) in prestart.map(|h| ("prestart", h)).chain(
        hooks
            .create_runtime()
            .iter()
            .flatten()
            .map(|h| ("createRuntime", h)),
    ) {
        run(hook, &state)
            .map_err(|e| Error::Others(format!("{kind} hook {}: {e}", hook.path().display())))?;
    }
    Ok(())
}

fn run(hook: &Hook, state: &str) -> Result<(), String> {
    let mut cmd = Command::new(hook.path());
    match hook.args().as_deref() {
        Some([arg0, rest @ ..]) => {
            cmd.arg0(arg0).args(rest);
        }
        _ => {
            cmd.arg0(hook.path());
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is fine.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(status.to_string()),
            None if deadline.is_some_and(|d| Instant::now() > d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out".to_string());
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{HookBuilder, HooksBuilder, SpecBuilder};

    use super::*;

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default().path("/bin/sh").args(vec![
            "sh".to_string(),
            "-c".to_string(),
            script.to_string(),
        ]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().expect("hook")
    }

    fn spec(prestart: Vec<Hook>, create_runtime: Vec<Hook>) -> Spec {
        #[allow(deprecated)]
        let hooks = HooksBuilder::default()
            .prestart(prestart)
            .create_runtime(create_runtime)
            .build()
            .expect("hooks");
        SpecBuilder::default().hooks(hooks).build().expect("spec")
    }

    #[test]
    fn hooks_run_in_order_with_the_containers_state_on_stdin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let o = out.display();
        let spec = spec(
            vec![sh(&format!("cat > {o}.1"), None)],
            vec![sh(&format!("test -e {o}.1 && cat > {o}.2"), None)],
        );
        prestart(&spec, "c1", 4242, Path::new("/b/c1")).expect("hooks run");
        for n in ["1", "2"] {
            let state: serde_json::Value = serde_json::from_slice(
                &std::fs::read(format!("{o}.{n}")).expect("the hook wrote its stdin"),
            )
            .expect("json");
            assert_eq!(state["id"], "c1");
            assert_eq!(state["pid"], 4242);
            assert_eq!(state["status"], "created");
            assert_eq!(state["bundle"], "/b/c1");
        }
    }

    #[test]
    fn a_failing_or_slow_hook_fails_with_its_kind_and_path() {
        let failing = spec(vec![sh("exit 3", None)], vec![]);
        let e = prestart(&failing, "c", 1, Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prestart hook /bin/sh") && e.contains('3'),
            "{e}"
        );
        let slow = spec(vec![], vec![sh("sleep 5", Some(1))]);
        let e = prestart(&slow, "c", 1, Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("createRuntime hook") && e.contains("timed out"),
            "{e}"
        );
        assert!(prestart(&spec(vec![], vec![]), "c", 1, Path::new("/b")).is_ok());
    }
}

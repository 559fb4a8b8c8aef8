//! The launcher containerd runs (`containerd-shim-wasmhybrid-v1`) and the
//! daemon binary beside it (`wasmhybrid`).

use std::path::Path;
use std::process::Command;

use wasmhybrid_harness::client::TaskCreateError;
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_harness::fixtures::is_static_executable;
use wasmhybrid_harness::image::ImageSpec;

use crate::common::{P1_ROOTFS, TestEnv, shim_dir};

const LAUNCHER: &str = "containerd-shim-wasmhybrid-v1";

/// What the tests run is what ships: in CI (`scripts/test.sh`), the static
/// launcher of `scripts/build-shim.sh`; everywhere, the launcher passes
/// what it does not handle (`-v`, `cache`) to the daemon binary.
#[test]
fn the_launcher_is_static_in_ci_and_passes_the_rest_to_the_daemon_binary() {
    let dir = shim_dir();
    let launcher = dir.join(LAUNCHER);
    let is_static = is_static_executable(&launcher).expect("read the launcher");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(
            is_static,
            "{} is not the static launcher scripts/build-shim.sh builds",
            launcher.display()
        );
    }
    let out = Command::new(&launcher).arg("-v").output().expect("run -v");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with(&format!("{LAUNCHER}:")) && stdout.contains("Runtime: wasmhybrid"),
        "{stdout}"
    );
    let out = Command::new(&launcher)
        .args(["cache", "--help"])
        .output()
        .expect("run cache --help");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("warm"),
        "{out:?}"
    );
}

/// A shared daemon is named as containerd started its shim, so the usual
/// ways of finding shim processes find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_the_daemon_binary_under_the_shims_name() {
    let env = TestEnv::new("launcher-names").await;
    env.import_cmd_images();
    let opts = env.opts("named", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]);
    let running = env.start_ready(&opts, "sleeping").await;
    let daemons = env.shim_daemons();
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", daemons[0])).expect("exe");
    assert_eq!(exe.file_name(), Some(std::ffi::OsStr::new("wasmhybrid")));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemons[0])).expect("cmdline");
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    assert!(
        Path::new(std::str::from_utf8(argv0).expect("utf-8")).ends_with(LAUNCHER),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    running.kill(9).await.expect("kill");
    let _ = running.wait_and_delete().await;
}

/// A launcher installed without its daemon binary fails Wasm containers
/// with a message naming the missing file; native images, which never need
/// the daemon, still run; containerd keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_without_its_daemon_binary_fails_wasm_containers_clearly() {
    let lonely = tempfile::tempdir().expect("tempdir");
    std::fs::copy(shim_dir().join(LAUNCHER), lonely.path().join(LAUNCHER)).expect("copy");
    let mut daemon = PrivateContainerd::start(DaemonOptions {
        shim_dir: lonely.path().to_path_buf(),
        ..Default::default()
    })
    .expect("containerd");
    let ns = daemon.namespace("launcher-alone");
    let env = TestEnv::attach(daemon, &ns).await;
    env.import_cmd_images();
    env.import(&ImageSpec::busybox("localhost/wh/busybox:alone").expect("busybox"));

    let opts = env.opts("alone-wasm", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]);
    let err = match env.ctrd.run(&opts).await {
        Ok(done) => panic!("a Wasm container ran without the daemon binary: {done:?}"),
        Err(e) => e,
    };
    let refused = err
        .downcast_ref::<TaskCreateError>()
        .unwrap_or_else(|| panic!("not a refused create: {err:#}"))
        .0
        .clone();
    let missing = lonely.path().join("wasmhybrid");
    assert!(
        refused.contains(&missing.display().to_string()) && refused.contains("not found"),
        "{refused}"
    );
    env.ctrd.cleanup("alone-wasm").await;

    let native = env.opts(
        "alone-native",
        "localhost/wh/busybox:alone",
        &["/bin/echo", "native"],
    );
    let done = env.ctrd.run(&native).await.expect("a native container");
    assert_eq!((done.exit_code, done.stdout.trim()), (0, "native"));
}

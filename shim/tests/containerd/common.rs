//! Shared set-up for the containerd tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmhybrid_harness::client::{Ctrd, RunOpts, Running, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_harness::fixtures::{Fixture, import_image, shim_dir_for};
use wasmhybrid_harness::image::ImageSpec;

pub const P1_ROOTFS: &str = "localhost/wh/cmd-p1:rootfs";
pub const P2_ROOTFS: &str = "localhost/wh/cmd-p2:rootfs";
pub const HTTP_ARTIFACT: &str = "localhost/wh/http:artifact";

/// One test's private containerd, namespace and client.
pub struct TestEnv {
    pub daemon: PrivateContainerd,
    pub ns: String,
    pub ctrd: Ctrd,
}

/// The directory of the shim these tests run: the launcher and daemon
/// binary that `scripts/build-shim.sh` assembled for this profile
/// (`target/shim/debug`, as shipped; `scripts/test.sh` builds it), else
/// cargo's build of both for these tests ([`shim_dir_for`]).
pub fn shim_dir() -> PathBuf {
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-wasmhybrid-v1"))
        .parent()
        .expect("shim dir");
    shim_dir_for(profile_dir).unwrap_or_else(|e| panic!("{e:#}"))
}

impl TestEnv {
    /// Starts containerd for test `name`; panics with containerd's log if
    /// it cannot start.
    pub async fn new(name: &str) -> Self {
        Self::with_env(name, &[]).await
    }

    /// A containerd (and so its shims) with extra environment.
    pub async fn with_env(name: &str, env: &[(&str, &str)]) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the containerd tests need root (run scripts/test.sh as root)"
        );
        let mut daemon = PrivateContainerd::start(DaemonOptions {
            shim_dir: shim_dir(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("containerd did not start: {e:#}"));
        let ns = daemon.namespace(name);
        let ctrd = Ctrd::connect(&daemon.address(), &ns)
            .await
            .expect("connect to containerd");
        Self { daemon, ns, ctrd }
    }

    /// A test environment on a containerd the test started itself, in
    /// namespace `ns` (from [`PrivateContainerd::namespace`]).
    pub async fn attach(daemon: PrivateContainerd, ns: &str) -> Self {
        let ctrd = Ctrd::connect(&daemon.address(), ns)
            .await
            .expect("connect to containerd");
        Self {
            daemon,
            ns: ns.to_string(),
            ctrd,
        }
    }

    /// Reconnects after [`PrivateContainerd::restart`].
    pub async fn reconnect(&mut self) {
        self.ctrd = Ctrd::connect(&self.daemon.address(), &self.ns)
            .await
            .expect("reconnect to containerd");
    }

    pub fn import(&self, spec: &ImageSpec) {
        import_image(&self.daemon, &self.ns, spec)
            .unwrap_or_else(|e| panic!("import {}: {e:#}", spec.name));
    }

    /// Imports the standard command images.
    pub fn import_cmd_images(&self) {
        self.import(&ImageSpec::rootfs(
            P1_ROOTFS,
            "wh-cmd.wasm",
            bytes(Fixture::CmdP1),
        ));
        self.import(&ImageSpec::rootfs(
            P2_ROOTFS,
            "wh-cmd.wasm",
            bytes(Fixture::CmdP2),
        ));
    }

    /// Starts a container and waits (bounded) until its stdout shows `needle`.
    pub async fn start_ready(&self, opts: &RunOpts, needle: &str) -> Running {
        let running = self
            .ctrd
            .start(opts)
            .await
            .unwrap_or_else(|e| panic!("start {}: {e:#}", opts.id));
        running
            .wait_for_stdout(needle, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        running
    }

    pub fn opts(&self, id: &str, image: &str, args: &[&str]) -> RunOpts {
        RunOpts::new(id, image, WASMHYBRID_RUNTIME).args(args)
    }

    /// What is left of container `id` after it was deleted: shim processes,
    /// mounts, cgroups and shim state. Waits a little for shims to exit.
    pub fn leftovers(&self, id: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left;
        loop {
            left = Vec::new();
            for pid in self.daemon.shim_pids() {
                // A shim started for this container (`-id <id>`); a shared
                // daemon's id is its group's.
                let cmdline =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline.split('\0').any(|arg| arg == id) {
                    left.push(format!("shim process {pid}"));
                }
            }
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            for line in mounts.lines().filter(|l| l.contains(id)) {
                left.push(format!("mount {line}"));
            }
            for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
                let cg = Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(&self.ns)
                    .join(id);
                if cg.exists() {
                    left.push(format!("cgroup {}", cg.display()));
                }
            }
            let state = Path::new("/run/containerd/wasmhybrid")
                .join(&self.ns)
                .join(id);
            if state.exists() {
                left.push(format!("shim state {}", state.display()));
            }
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The shim daemons among the shim's processes (the others, zygotes
    /// and the containers' processes, are their children).
    pub fn shim_daemons(&self) -> Vec<i32> {
        let pids = self.daemon.shim_pids();
        let ppid = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                .unwrap_or(0)
        };
        pids.iter()
            .copied()
            .filter(|p| !pids.contains(&ppid(*p)))
            .collect()
    }

    /// Polls until no shim process of this containerd is left (or
    /// `within` passes); returns what is left.
    pub async fn shims_gone_within(&self, within: Duration) -> Vec<i32> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.daemon.shim_pids();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts the shim logged no panic through containerd.
    pub fn assert_no_panic_logged(&self) {
        let log = self.daemon.log();
        assert!(
            !log.contains("panicked"),
            "a panic reached containerd's log:\n{log}"
        );
    }
}

pub fn bytes(f: Fixture) -> Vec<u8> {
    f.bytes().unwrap_or_else(|e| panic!("fixture {f:?}: {e:#}"))
}

/// Sends `signal` and waits (bounded) for the exit status.
pub async fn stop(running: &mut Running, signal: u32) -> u32 {
    running.kill(signal).await.expect("kill");
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap_or_else(|_| panic!("{} did not stop after signal {signal}", running.id))
        .expect("wait")
}

//! A private containerd for tests, the demo and benchmarks: its own
//! `--root`, `--state` and `--address` under a temporary directory, the
//! shim's directory first on its `PATH`, stopped and cleaned up on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Removes the AOT cache entry (code and record) of the module whose
/// SHA-256 is `hex`, for every target and engine key under the cache `aot`;
/// returns how many files it removed.
pub fn remove_aot_entry(aot: &Path, hex: &str) -> Result<usize> {
    let Ok(targets) = std::fs::read_dir(aot) else {
        return Ok(0);
    };
    let mut removed = 0;
    for t in targets.flatten() {
        for k in std::fs::read_dir(t.path())?.flatten() {
            for ext in ["cwasm", "json"] {
                let file = k.path().join(format!("{hex}.{ext}"));
                removed += usize::from(std::fs::remove_file(file).is_ok());
            }
        }
    }
    Ok(removed)
}

/// Options for [`PrivateContainerd::start`].
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Directory holding `containerd-shim-wasmhybrid-v1`, put first on PATH.
    pub shim_dir: PathBuf,
    /// Keep containerd's CRI plugin (needed only by CRI tests), configured
    /// by [`crate::cri::config_toml`] from `cri`.
    pub with_cri: bool,
    /// CRI plugin settings, used when `with_cri`.
    pub cri: crate::cri::CriSettings,
    /// Extra TOML appended to the generated config.
    pub extra_config: String,
    /// A whole config to use instead of the generated one (root, state and
    /// address still come from the command line).
    pub config_override: Option<String>,
    /// Run on this config file instead of one in the temp dir: written with
    /// the generated config if it does not exist, otherwise used as it is,
    /// at every (re)start, so that an edit followed by
    /// [`PrivateContainerd::restart`] takes effect (as node-setup does).
    pub config_file: Option<PathBuf>,
    /// Extra environment of containerd, which its shims inherit (e.g. the
    /// shim's `WASMHYBRID_SHIM_*` settings).
    pub env: Vec<(String, String)>,
    /// containerd's `--state` here instead of in the temp dir (e.g. on a
    /// tmpfs, as `/run/containerd` is on a node).
    pub state_dir: Option<PathBuf>,
}

/// A running private containerd.
pub struct PrivateContainerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    opts: DaemonOptions,
    namespaces: Vec<String>,
}

/// Where runwasi-based shims keep per-namespace container state.
pub const SHIM_STATE_ROOT: &str = "/run/containerd/wasmhybrid";

impl PrivateContainerd {
    /// Starts containerd and waits until its API answers.
    pub fn start(opts: DaemonOptions) -> Result<Self> {
        which("containerd").context(
            "containerd is not installed: run `apt-get install containerd runc` \
             (scripts/ci-deps.sh does it for you)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("wasmhybrid-ctrd-")
            .tempdir()
            .context("create temp dir for containerd")?;
        let mut daemon = Self {
            child: None,
            dir,
            opts,
            namespaces: Vec::new(),
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        let config = self
            .opts
            .config_file
            .clone()
            .unwrap_or_else(|| self.dir.path().join("config.toml"));
        let mut toml = String::from("version = 2\n");
        let mut disabled = vec![
            "\"io.containerd.snapshotter.v1.aufs\"",
            "\"io.containerd.snapshotter.v1.btrfs\"",
            "\"io.containerd.snapshotter.v1.zfs\"",
            "\"io.containerd.snapshotter.v1.devmapper\"",
            "\"io.containerd.tracing.processor.v1.otlp\"",
        ];
        if !self.opts.with_cri {
            disabled.push("\"io.containerd.grpc.v1.cri\"");
        }
        toml.push_str(&format!("disabled_plugins = [{}]\n", disabled.join(", ")));
        if self.opts.with_cri {
            let cni_conf = self.opts.cri.conf_dir(self.dir.path());
            std::fs::create_dir_all(&cni_conf).context("create CNI config dir")?;
            toml.push_str(&crate::cri::config_toml(&self.opts.cri, self.dir.path()));
        }
        toml.push_str(&self.opts.extra_config);
        if let Some(whole) = &self.opts.config_override {
            toml = whole.clone();
        }
        if self.opts.config_file.is_none() || !config.exists() {
            std::fs::write(&config, toml).context("write containerd config")?;
        }

        let path = format!(
            "{}:{}",
            self.opts.shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("open containerd log")?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--address")
            .arg(self.address())
            .arg("--log-level")
            .arg("info")
            .env("PATH", path)
            // Shims inherit containerd's environment: a private AOT cache.
            .env("WASMHYBRID_CACHE_DIR", self.aot_cache_dir())
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn containerd")?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// The AOT cache of this containerd's shims (`WASMHYBRID_CACHE_DIR`).
    pub fn aot_cache_dir(&self) -> PathBuf {
        self.dir.path().join("aot")
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "containerd exited during start-up ({status}); its log:\n{}",
                    self.log()
                );
            }
            if self.address().exists()
                && Command::new("ctr")
                    .args(["--address"])
                    .arg(self.address())
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 30 s; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd (SIGTERM) and starts it again on the same dirs.
    /// Running shims and their containers survive, as in production.
    pub fn restart(&mut self) -> Result<()> {
        self.restart_after(|| ())
    }

    /// Stops containerd, runs `down` while it is stopped, and starts it
    /// again on the same dirs.
    pub fn restart_after(&mut self, down: impl FnOnce()) -> Result<()> {
        self.stop();
        down();
        self.spawn()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A containerd namespace unique to this daemon, named after `name`;
    /// its shim state is removed on drop.
    pub fn namespace(&mut self, name: &str) -> String {
        let suffix = self
            .dir
            .path()
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .rsplit('-')
                    .next()
                    .unwrap_or("x")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let ns = format!("{name}-{suffix}");
        self.namespaces.push(ns.clone());
        ns
    }

    /// PIDs of shim processes started by this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let address = self.address().to_string_lossy().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(address.as_str()) {
                pids.push(pid);
            }
        }
        pids
    }

    fn kill_shims(&self) {
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.opts
            .state_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("state"))
    }
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }
    /// containerd's log so far, including what shims logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `ctr --address <ours> --namespace <ns> args...`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<std::process::Output> {
        ctr(&self.address(), namespace, args)
    }
}

/// Runs `ctr --address <address> --namespace <ns> args...`.
pub fn ctr(address: &Path, namespace: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("ctr")
        .arg("--address")
        .arg(address)
        .arg("--namespace")
        .arg(namespace)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run ctr {args:?}"))
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
        // Shims outlive containerd by design; reap the ones serving ours
        // (and their containers) so nothing is left behind.
        self.kill_shims();
        for ns in &self.namespaces {
            let _ = std::fs::remove_dir_all(Path::new(SHIM_STATE_ROOT).join(ns));
            remove_namespace_cgroups(ns);
        }
        // Unmount anything left under our root (e.g. after a failed test)
        // so the temp dir can be removed.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let ours = self.dir.path().to_string_lossy().to_string();
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&ours))
                .collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Removes the cgroups of containerd namespace `ns` (the harness's specs
/// put a container at `/<ns>/<id>`), in every hierarchy: kills what is
/// still in a container's cgroup (e.g. after a failed test killed its
/// shim), then removes the containers' and the namespace's directories.
pub fn remove_namespace_cgroups(ns: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns)];
    for h in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(h.path().join(ns));
    }
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let child = child.path();
            if !child.is_dir() {
                continue;
            }
            for _ in 0..50 {
                let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if std::fs::remove_dir(&child).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// Finds `bin` on PATH.
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").ok()?;
    path.split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

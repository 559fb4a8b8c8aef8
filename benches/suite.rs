//! The end-to-end suite: wasmhybrid against runc (and optionally an older
//! wasmhybrid), all on one private containerd in one run, as ratios:
//!
//! 1. start-to-exit latency of each case (interleaved rounds);
//! 2. throughput (tasks/s) at concurrency 1, 5 and 10;
//! 3. density: the memory of idle long-running containers;
//! 4. HTTP: create -> first 200 and request latency, Wasm vs native.
//!
//! Run with `bash benches/run.sh suite`. Settings (environment):
//! `WASMHYBRID_BENCH_ITERATIONS` (60), `_TASKS` (300), `_DENSITY` (20),
//! `_REQUESTS` (2000), `_HTTP_STARTS` (10), `_WARMUP` (3), `_BASELINE`
//! (a directory holding an older `containerd-shim-wasmhybrid-v1`),
//! `_BASELINE_THROUGHPUT` (0: the baseline only in the latency section),
//! `_SECTIONS` (`latency,throughput,density,http`), `_SHIM_DIR`.
//! Writes `target/bench/suite.{json,md,svg}`.

#[path = "suite/cases.rs"]
mod cases;
#[path = "common.rs"]
mod common;
#[path = "suite/density.rs"]
mod density;
#[path = "suite/http.rs"]
mod http;
#[path = "suite/latency.rs"]
mod latency;
#[path = "suite/report.rs"]
mod report;
#[path = "suite/throughput.rs"]
mod throughput;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use cases::Env;
use common::{env_usize, out_dir, release_shim_dir};
use report::Results;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd, ctr, remove_namespace_cgroups};
use wasmhybrid_harness::fixtures::repo_root;

/// Kills and deletes every container left in the namespace, then removes
/// the namespace's (empty) cgroup directories; on drop, so that a failed
/// or interrupted run leaves nothing behind. Declared after the daemon, so
/// dropped before it.
struct Sweep {
    address: PathBuf,
    namespaces: Vec<String>,
}

impl Sweep {
    /// `(namespace, id)` of every container left.
    fn containers(&self) -> Vec<(String, String)> {
        let mut all = vec![];
        for ns in &self.namespaces {
            if let Ok(o) = ctr(&self.address, ns, &["containers", "ls", "-q"]) {
                all.extend(
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(|id| (ns.clone(), id.to_string())),
                );
            }
        }
        all
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let left = self.containers();
        if !left.is_empty() {
            eprintln!("removing {} leftover containers", left.len());
        }
        for (ns, id) in &left {
            let _ = ctr(&self.address, ns, &["tasks", "rm", "-f", id]);
            let _ = ctr(&self.address, ns, &["containers", "rm", id]);
        }
        for ns in &self.namespaces {
            remove_namespace_cgroups(ns);
        }
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("{cmd}: {e}"))
}

fn binary_info(bin: &Path) -> Value {
    let sha = std::fs::read(bin)
        .map(|b| format!("{:x}", Sha256::digest(&b)))
        .unwrap_or_default();
    json!({
        "path": bin.display().to_string(),
        "sha256": sha,
        "version": command_line(&bin.display().to_string(), &["-v"]),
    })
}

fn machine_info(shim_dir: &Path, baseline: Option<&Path>) -> Value {
    let root = repo_root().display().to_string();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "containerd": command_line("containerd", &["--version"]),
        "runc": command_line("runc", &["--version"]).lines().next().unwrap_or_default(),
        "cgroup": density::cgroup_kind(),
        "repo_revision": command_line("git", &["-C", &root, "describe", "--always", "--dirty", "--abbrev=12"]),
        "shim": binary_info(&shim_dir.join("containerd-shim-wasmhybrid-v1")),
        "baseline": baseline.map(|d| binary_info(&d.join("containerd-shim-wasmhybrid-v1"))),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// The suite's sections, in the order they run.
const SECTIONS: [&str; 4] = ["latency", "throughput", "density", "http"];

/// Whether `section` runs: all do unless `WASMHYBRID_BENCH_SECTIONS` lists
/// some (an unknown name there ends the bench with an error).
fn enabled(section: &str) -> bool {
    let Ok(list) = std::env::var("WASMHYBRID_BENCH_SECTIONS") else {
        return true;
    };
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = names.iter().find(|n| !SECTIONS.contains(n)) {
        eprintln!(
            "WASMHYBRID_BENCH_SECTIONS: no section {bad:?} (sections: {})",
            SECTIONS.join(", ")
        );
        std::process::exit(2);
    }
    names.contains(&section)
}

async fn measure(env: &Arc<Env>, daemon: &PrivateContainerd, res: &mut Results) -> Result<()> {
    if enabled("latency") {
        res.latency = latency::run(env, res.warmup, res.iterations).await;
    }
    if enabled("throughput") {
        let with_baseline = env_usize("WASMHYBRID_BENCH_BASELINE_THROUGHPUT", 1) == 1;
        let concurrency = throughput::concurrencies()?;
        res.throughput = throughput::run(env, res.tasks, with_baseline, &concurrency).await;
    }
    if enabled("density") {
        let n = env_usize("WASMHYBRID_BENCH_DENSITY", 20);
        for kind in ["wasm", "runc"] {
            let d = density::measure(env, daemon, kind, n).await?;
            eprintln!(
                "density: {kind}: {:.2} MiB PSS, {:.2} MiB cgroup per container",
                d.pss_mib_per_container(),
                d.cgroup_mib_per_container()
            );
            res.density.push(d);
        }
    }
    if enabled("http") {
        let starts = env_usize("WASMHYBRID_BENCH_HTTP_STARTS", 10);
        let requests = env_usize("WASMHYBRID_BENCH_REQUESTS", 2000);
        res.http = http::run(env, starts, requests).await?;
    }
    Ok(())
}

/// No container, shim process or container cgroup of ours left (waits a
/// little for shims to exit).
async fn leftovers(daemon: &PrivateContainerd, sweep: &Sweep) -> Vec<String> {
    let mut left = vec![];
    // A namespace's shim daemon stays up 10 s (WASMHYBRID_SHIM_LINGER's
    // default) after its last container.
    for _ in 0..150 {
        left = sweep
            .containers()
            .into_iter()
            .map(|(ns, id)| format!("container {ns}/{id}"))
            .collect();
        left.extend(
            daemon
                .shim_pids()
                .iter()
                .map(|p| format!("shim process {p}")),
        );
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    left
}

/// Returns on SIGINT or SIGTERM (so that the guards clean up).
async fn interrupted() -> anyhow::Error {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => anyhow!("interrupted (SIGINT)"),
                _ = term.recv() => anyhow!("terminated (SIGTERM)"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot handle signals: {e}");
            std::future::pending().await
        }
    }
}

/// Where containerd's state and the shims' runtime files are on a node:
/// `/run/containerd`, a tmpfs. Unless `WASMHYBRID_BENCH_NODE_RUN=0`, the
/// suite runs in a mount namespace of its own with a tmpfs there (and on
/// the AOT check memo's directory) and containerd's `--state` in it, and
/// the containers' stdio FIFOs under its `fifo` (as `ctr` makes them), for
/// runc and wasmhybrid alike; containerd's root (content, snapshots) stays
/// on disk. (A VM whose `/run` is on its disk otherwise has every
/// container's bundle, shim and runc state files created and removed on
/// ext4, whose inode allocation slows down as a run deletes files.) Must
/// run before any thread exists: a mount namespace is per thread.
fn node_like_run() -> Result<Option<PathBuf>> {
    use nix::mount::{MsFlags, mount};
    match std::env::var("WASMHYBRID_BENCH_NODE_RUN").as_deref() {
        Err(_) | Ok("1") => {}
        Ok("0") => return Ok(None),
        Ok(other) => anyhow::bail!("WASMHYBRID_BENCH_NODE_RUN={other:?}: expected 0 or 1"),
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| anyhow!("a mount namespace for the suite (needs root): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    for dir in ["/run/containerd", "/run/wasmhybrid-aot-memo"] {
        std::fs::create_dir_all(dir)?;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0711"),
        )
        .map_err(|e| anyhow!("tmpfs on {dir}: {e}"))?;
    }
    let state = PathBuf::from("/run/containerd/bench-state");
    std::fs::create_dir_all(&state)?;
    Ok(Some(state))
}

fn main() -> Result<()> {
    let state_dir = node_like_run()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(state_dir))
}

async fn run(state_dir: Option<PathBuf>) -> Result<()> {
    let shim_dir = release_shim_dir()?;
    let baseline = std::env::var_os("WASMHYBRID_BENCH_BASELINE").map(PathBuf::from);
    let mut machine = machine_info(&shim_dir, baseline.as_deref());
    machine["node_like_run"] = json!(state_dir.is_some());
    if state_dir.is_some() {
        eprintln!(
            "node-like run: tmpfs on /run/containerd (containerd's state) in a mount namespace of the suite's own"
        );
    }
    // Containers' stdio FIFOs where `ctr` makes them on a node (CRI's are
    // under `/run/containerd` too), not in the VM's disk-backed /tmp.
    let fifo_dir = match &state_dir {
        Some(_) => {
            let dir = PathBuf::from("/run/containerd/fifo");
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            Some(dir)
        }
        None => None,
    };
    let mut daemon = PrivateContainerd::start(DaemonOptions {
        shim_dir,
        state_dir,
        ..Default::default()
    })?;
    let ns = daemon.namespace("bench-suite");
    // The baseline shim's containers get a namespace of their own: shims in
    // one namespace share a group's daemon, whichever binary spawned it.
    let baseline_ns = baseline
        .as_ref()
        .map(|_| daemon.namespace("bench-baseline"));
    let sweep = Sweep {
        address: daemon.address(),
        namespaces: [Some(ns.clone()), baseline_ns.clone()]
            .into_iter()
            .flatten()
            .collect(),
    };
    let env = Arc::new(
        Env::prepare(
            &daemon,
            &ns,
            baseline.as_deref().zip(baseline_ns.as_deref()),
            fifo_dir.as_deref(),
        )
        .await?,
    );
    let mut res = Results {
        warmup: env_usize("WASMHYBRID_BENCH_WARMUP", 3),
        iterations: common::iterations(60),
        tasks: env_usize("WASMHYBRID_BENCH_TASKS", 300),
        ..Default::default()
    };
    let measured = tokio::select! {
        r = measure(&env, &daemon, &mut res) => r,
        e = interrupted() => Err(e),
    };
    measured?;
    res.failures = env.failures.all();
    res.daemon_log = daemon
        .log()
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warning"))
        .map(String::from)
        .collect();

    let md = res.markdown();
    println!("\n{md}");
    let out = out_dir()?;
    std::fs::write(out.join("suite.md"), &md)?;
    std::fs::write(out.join("suite.svg"), res.svg())?;
    std::fs::write(
        out.join("suite.json"),
        serde_json::to_vec_pretty(&res.json(machine))?,
    )?;
    println!("results: {}/suite.{{json,md,svg}}", out.display());

    let left = leftovers(&daemon, &sweep).await;
    if left.is_empty() {
        println!("left behind: no container, no shim process");
    } else {
        println!("left behind after the run: {left:?}");
    }
    if !res.failures.is_empty() {
        anyhow::bail!(
            "{} runs failed (in suite.json), first: {}",
            res.failures.len(),
            res.failures[0]
        );
    }
    Ok(())
}

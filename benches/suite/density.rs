//! Density: the memory of `n` idle long-running containers of one kind,
//! all running at once.
//!
//! - Wasm: the `wasi:http` component served by wasmhybrid;
//! - runc: `busybox httpd` under the plain runc runtime;
//!
//! each in a network namespace of its own (loopback only), checked to
//! answer `GET /` before anything is measured. Two numbers, reported
//! separately:
//! - PSS: the union of every process involved (all of this containerd's
//!   shim processes, by command line, and those named by the bundles'
//!   `shim.pid`; the tasks' processes; all their descendants), each
//!   counted once, from `/proc/PID/smaps_rollup`;
//! - cgroup: the sum over the containers' memory cgroups (found from
//!   `/proc/<task pid>/cgroup`) of what `memory.stat` (and on v1
//!   `memory.kmem.usage_in_bytes`) says is charged, see [`cgroup_memory`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use wasmhybrid_harness::client::Running;
use wasmhybrid_harness::daemon::PrivateContainerd;
use wasmhybrid_harness::netns::NetNs;

use crate::cases::Env;
use crate::http::{start_serving, stop, warm_up};

const ADDR: &str = "127.0.0.1:8080";

/// The measured memory of one kind of container.
#[derive(Debug, Clone)]
pub struct Density {
    pub kind: String,
    pub containers: usize,
    /// Every process counted: (pid, command name, PSS KiB).
    pub processes: Vec<(i32, String, u64)>,
    pub pss_kib: u64,
    /// Each container's cgroup file and its value in bytes.
    pub cgroups: Vec<(String, u64)>,
    pub cgroup_bytes: u64,
}

impl Density {
    pub fn pss_mib_per_container(&self) -> f64 {
        self.pss_kib as f64 / 1024.0 / self.containers as f64
    }
    pub fn cgroup_mib_per_container(&self) -> f64 {
        self.cgroup_bytes as f64 / (1024.0 * 1024.0) / self.containers as f64
    }
}

/// Starts `n` containers of `kind`, measures them idle, then stops and
/// deletes them (also when measuring failed).
pub async fn measure(
    env: &Env,
    daemon: &PrivateContainerd,
    kind: &str,
    n: usize,
) -> Result<Density> {
    let addr: SocketAddr = ADDR.parse()?;
    // One untimed start first, so that the measured ones start warm (the
    // Wasm one compiles into the AOT cache, in its shim).
    let net = NetNs::new()?;
    warm_up(env, kind, &format!("density-{kind}-warm"), net.path(), addr).await?;
    let mut nets = vec![];
    let mut running: Vec<Running> = vec![];
    let result = async {
        for i in 0..n {
            let net = NetNs::new()?;
            let id = format!("density-{kind}-{i}");
            let (r, ok) = start_serving(env, kind, &id, net.path(), addr).await?;
            running.push(r);
            nets.push(net);
            ok?;
        }
        // Let start-up work (and the first request's) settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sampled = sample(env, daemon, kind, &running);
        let hold = crate::common::env_usize("WASMHYBRID_BENCH_DENSITY_HOLD", 0);
        if hold > 0 {
            eprintln!(
                "density: {kind}: holding {n} idle containers for {hold} s (task pids {:?})",
                running.iter().map(|r| r.pid).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_secs(hold as u64)).await;
        }
        sampled
    }
    .await;
    for r in running {
        let id = r.id.clone();
        if let Err(e) = stop(r).await {
            env.failures.record(&format!("density stop {id}"), &e);
        }
    }
    drop(nets);
    result
}

fn sample(
    env: &Env,
    daemon: &PrivateContainerd,
    kind: &str,
    running: &[Running],
) -> Result<Density> {
    let table = proc_table();
    let mut roots: BTreeSet<i32> = daemon.shim_pids().into_iter().collect();
    let mut cgroups = vec![];
    for r in running {
        // Go shims (runc's) write `shim.pid`; wasmhybrid's Wasm shims do
        // not, and are found by `shim_pids` (their command lines).
        if let Ok(pid) = std::fs::read_to_string(env.bundle(&r.id).join("shim.pid")) {
            roots.insert(pid.trim().parse()?);
        }
        roots.insert(r.pid as i32);
        let (file, bytes) = cgroup_memory(r.pid)?;
        cgroups.push((file.display().to_string(), bytes));
    }
    let mut processes = vec![];
    for pid in descendants(&table, &roots) {
        // A process may have exited since the table was read.
        if let Some(kib) = pss_kib(pid) {
            let comm = table.get(&pid).map(|(_, c)| c.clone()).unwrap_or_default();
            processes.push((pid, comm, kib));
        }
    }
    Ok(Density {
        kind: kind.to_string(),
        containers: running.len(),
        pss_kib: processes.iter().map(|p| p.2).sum(),
        processes,
        cgroup_bytes: cgroups.iter().map(|c| c.1).sum(),
        cgroups,
    })
}

/// pid -> (ppid, command name) of every process.
fn proc_table() -> BTreeMap<i32, (i32, String)> {
    let mut table = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        table.insert(pid, (ppid, comm));
    }
    table
}

/// `roots` and all their descendants.
fn descendants(table: &BTreeMap<i32, (i32, String)>, roots: &BTreeSet<i32>) -> BTreeSet<i32> {
    let mut all = roots.clone();
    loop {
        let before = all.len();
        for (pid, (ppid, _)) in table {
            if all.contains(ppid) {
                all.insert(*pid);
            }
        }
        if all.len() == before {
            return all;
        }
    }
}

/// The PSS of process `pid` in KiB.
fn pss_kib(pid: i32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The memory cgroup of process `pid` and the memory charged to it.
///
/// Not `memory.usage_in_bytes` (v1) or `memory.current` (v2): those
/// include charges each CPU takes in advance in batches of 64 pages, so an
/// idle container's value is rounded up by up to 256 KiB per CPU (the
/// kernel's cgroup v1 documentation says to use `memory.stat` instead).
/// v1: `total_rss + total_cache + total_swap` of `memory.stat` plus
/// `memory.kmem.usage_in_bytes`; v2: `anon + file + kernel` of
/// `memory.stat`.
pub fn cgroup_memory(pid: u32) -> Result<(PathBuf, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("cgroup of {pid}"))?;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let path = path.trim_start_matches('/');
            if v2 && controllers.is_empty() {
                Some(Path::new("/sys/fs/cgroup").join(path))
            } else if controllers.split(',').any(|c| c == "memory") {
                Some(Path::new("/sys/fs/cgroup/memory").join(path))
            } else {
                None
            }
        })
        .ok_or_else(|| anyhow!("no memory cgroup for {pid} in {text:?}"))?;
    let stat_file = dir.join("memory.stat");
    let stat = std::fs::read_to_string(&stat_file)
        .with_context(|| format!("read {}", stat_file.display()))?;
    let field = |name: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    };
    let value = if v2 {
        field("anon") + field("file") + field("kernel")
    } else {
        let kmem = dir.join("memory.kmem.usage_in_bytes");
        let kmem: u64 = std::fs::read_to_string(&kmem)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        field("total_rss") + field("total_cache") + field("total_swap") + kmem
    };
    Ok((stat_file, value))
}

/// What [`cgroup_memory`] adds up.
pub fn cgroup_kind() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2 memory.stat anon+file+kernel"
    } else {
        "cgroup v1 memory.stat total_rss+total_cache+total_swap + memory.kmem.usage_in_bytes"
    }
}

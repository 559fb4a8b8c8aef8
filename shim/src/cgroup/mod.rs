//! A Wasm container's cgroup, made directly in cgroupfs (v1 or v2): created,
//! joined, limited and removed with a few writes.
//!
//! A general-purpose cgroup manager (youki's `libcgroups`, which this shim
//! used before) re-reads the mount table for every hierarchy and writes
//! every controller's files; on a cgroup v1 host that took 10-20 ms of a
//! container's start. A Wasm process needs accounting and limits for what
//! it can use: memory, CPU (with `cpuacct` and `cpuset` on v1), pids, block
//! I/O accounting and the freezer; devices need no cgroup because no device
//! node is reachable (every mount is `nodev`, see [`crate::isolation`]).
//!
//! A systemd cgroup path (`slice:prefix:name`, the kubelet's systemd
//! driver) needs a transient unit from systemd; that case still goes through
//! `libcgroups` ([`Cgroup::Managed`]).

use std::path::{Path, PathBuf};

use nix::unistd::Pid;

#[cfg(feature = "daemon")]
mod manage;
#[cfg(feature = "daemon")]
pub use manage::*;
#[cfg(feature = "daemon")]
mod oom;
#[cfg(feature = "daemon")]
pub use oom::{OomWatch, memory_cgroup_of};

pub(crate) const ROOT: &str = "/sys/fs/cgroup";

/// v1 hierarchies a Wasm process joins (`cpuset` only when limited, since
/// a new cpuset must be filled in from its parent before it can be used).
pub(crate) const V1_CONTROLLERS: [&str; 6] =
    ["memory", "cpu", "cpuacct", "pids", "blkio", "freezer"];

pub(crate) fn is_v2() -> bool {
    nix::sys::statfs::statfs(ROOT)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// After a shim daemon died: kills whatever is left in a container's
/// (cgroupfs) cgroup and removes it. Returns what it removed.
pub fn remove_leftover(path: Option<&Path>, id: &str) -> Vec<PathBuf> {
    // Relative and systemd paths are never made by this module.
    let Some(rel) = relative_path(path, id) else {
        return vec![];
    };
    let dirs: Vec<PathBuf> = if is_v2() {
        vec![Path::new(ROOT).join(&rel)]
    } else {
        V1_CONTROLLERS
            .iter()
            .chain(&["cpuset"])
            .map(|c| Path::new(ROOT).join(c).join(&rel))
            .collect()
    };
    let mut removed = vec![];
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        for _ in 0..100 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            for pid in &pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), nix::sys::signal::SIGKILL);
            }
            if std::fs::remove_dir(&dir).is_ok() {
                removed.push(dir);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    removed
}

/// A container's cgroup below each hierarchy's root: the spec's absolute
/// `cgroupsPath`, or `wasmhybrid/<id>`; `None` for a relative path.
pub(crate) fn relative_path(path: Option<&Path>, id: &str) -> Option<PathBuf> {
    match path {
        Some(p) if p.is_absolute() => Some(p.strip_prefix("/").unwrap_or(p).to_path_buf()),
        Some(_) => None,
        None => Some(PathBuf::from("wasmhybrid").join(id)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Whether this test process may make cgroups (root); elsewhere than in
    /// CI, which runs as root, a test that needs them is skipped.
    pub(crate) fn can_make_cgroups() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        eprintln!("skipped: making cgroups needs root");
        false
    }
}

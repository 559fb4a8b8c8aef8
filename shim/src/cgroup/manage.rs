//! The cgroup a Wasm container is created in (the daemon's part).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt, FreezerState,
};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::{ROOT, V1_CONTROLLERS, is_v2, relative_path};

/// v2 controllers enabled down to the container's cgroup.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// Why a cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path}: {message}")]
    Managed { path: PathBuf, message: String },
    #[error("relative cgroup path {0}: give an absolute path (or a systemd slice:prefix:name)")]
    Relative(PathBuf),
    #[error("cgroup {path}: {message}")]
    Freezer { path: PathBuf, message: String },
}

/// How long [`Cgroup::freeze`] waits for the kernel to report the new state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The container's cgroup, held by the shim daemon.
pub enum Cgroup {
    /// Directories made by this module: one per v1 hierarchy, or one (v2).
    Direct { dirs: Vec<PathBuf>, v2: bool },
    /// Made through systemd by `libcgroups`.
    Managed {
        manager: Box<AnyCgroupManager>,
        path: PathBuf,
    },
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

impl Cgroup {
    /// Creates the cgroup named by the spec's `cgroupsPath` (or
    /// `/wasmhybrid/<id>`), with `systemd` the runtime's cgroup driver.
    pub fn create(
        path: Option<&Path>,
        id: &str,
        systemd: bool,
        resources: Option<&LinuxResources>,
    ) -> Result<Self, CgroupError> {
        if systemd {
            let path = path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(format!(":wasmhybrid:{id}")));
            let managed = |message: String| CgroupError::Managed {
                path: path.clone(),
                message,
            };
            let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
                cgroup_path: path.clone(),
                systemd_cgroup: true,
                container_name: id.to_string(),
            })
            .map_err(|e| managed(e.to_string()))?;
            return Ok(Self::Managed {
                manager: Box::new(manager),
                path,
            });
        }
        let rel = relative_path(path, id)
            .ok_or_else(|| CgroupError::Relative(path.unwrap_or(Path::new("")).to_path_buf()))?;
        let cpuset = resources.is_some_and(wants_cpuset);
        if is_v2() {
            let root = Path::new(ROOT);
            enable_v2_controllers(root, &rel, cpuset)?;
            let dir = root.join(&rel);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            if let Some(r) = resources {
                apply_v2(&dir, r)?;
            }
            return Ok(Self::Direct {
                dirs: vec![dir],
                v2: true,
            });
        }
        let mut dirs = vec![];
        let names = V1_CONTROLLERS
            .iter()
            .copied()
            .chain(cpuset.then_some("cpuset"));
        for name in names {
            let hierarchy = Path::new(ROOT).join(name);
            if !hierarchy.is_dir() {
                continue;
            }
            let dir = hierarchy.join(&rel);
            if name == "cpuset" {
                create_cpuset(&hierarchy, &rel)?;
            } else {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            }
            dirs.push(dir);
        }
        if let Some(r) = resources {
            apply_v1(&dirs, r)?;
        }
        Ok(Self::Direct { dirs, v2: false })
    }

    /// What the container's process needs to know of its cgroup.
    pub fn for_child(&self) -> ChildCgroup {
        match self {
            Self::Direct { dirs, v2 } => ChildCgroup {
                dirs: dirs.clone(),
                v2: *v2,
                joined_by_daemon: false,
            },
            Self::Managed { .. } => ChildCgroup {
                joined_by_daemon: true,
                ..ChildCgroup::default()
            },
        }
    }

    /// Whether the daemon puts the process into this cgroup ([`Cgroup::join`])
    /// and the process waits for that before it sets itself up.
    pub fn joined_by_daemon(&self) -> bool {
        matches!(self, Self::Managed { .. })
    }

    /// Called by the shim daemon after the clone: puts `pid` into a cgroup
    /// made through systemd and applies its limits (direct cgroups were
    /// limited at [`Cgroup::create`] and are joined at birth or by
    /// [`Cgroup::join_self`]).
    pub fn join(&self, pid: Pid, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let Self::Managed { manager, path } = self else {
            return Ok(());
        };
        let managed = |e: &dyn std::fmt::Display| CgroupError::Managed {
            path: path.clone(),
            message: e.to_string(),
        };
        manager
            .add_task(nix_cgroups::unistd::Pid::from_raw(pid.as_raw()))
            .map_err(|e| managed(&e))?;
        if let Some(resources) = resources {
            let opt = ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            };
            manager.apply(&opt).map_err(|e| managed(&e))?;
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws the container's processes, through the v1
    /// `freezer` hierarchy or the v2 `cgroup.freeze`, and waits until the
    /// kernel reports the new state. A freeze that does not complete within
    /// 2 s is undone and reported.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        match self {
            Self::Direct { dirs, v2: true } => {
                let dir = dirs.first().ok_or_else(|| CgroupError::Freezer {
                    path: PathBuf::from(ROOT),
                    message: "no cgroup".into(),
                })?;
                freeze_v2(dir, frozen)
            }
            Self::Direct { dirs, v2: false } => {
                let freezer = Path::new(ROOT).join("freezer");
                let dir = dirs
                    .iter()
                    .find(|d| d.starts_with(&freezer))
                    .ok_or_else(|| CgroupError::Freezer {
                        path: freezer.clone(),
                        message: "this host mounts no v1 freezer hierarchy, which pause needs"
                            .into(),
                    })?;
                freeze_v1(dir, frozen)
            }
            Self::Managed { manager, path } => {
                let state = if frozen {
                    FreezerState::Frozen
                } else {
                    FreezerState::Thawed
                };
                manager.freeze(state).map_err(|e| CgroupError::Managed {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// `Tasks.Update`: applies new limits to the running container `pid`
    /// (on v1, a CPU set given for the first time moves it into a new
    /// `cpuset` cgroup, which [`Cgroup::create`] makes only when limited).
    pub fn update(&mut self, pid: Pid, r: &LinuxResources) -> Result<(), CgroupError> {
        match self {
            Self::Direct { dirs, v2: true } => {
                let Some(dir) = dirs.first() else {
                    return Ok(());
                };
                if wants_cpuset(r) && !dir.join("cpuset.cpus").exists() {
                    let rel = dir.strip_prefix(ROOT).unwrap_or(dir);
                    enable_v2_controllers(Path::new(ROOT), rel, true)?;
                }
                apply_v2(dir, r)
            }
            Self::Direct { dirs, v2: false } => {
                let cpuset = Path::new(ROOT).join("cpuset");
                if wants_cpuset(r)
                    && cpuset.is_dir()
                    && !dirs.iter().any(|d| d.starts_with(&cpuset))
                {
                    let rel = dirs
                        .first()
                        .and_then(|d| d.strip_prefix(ROOT).ok())
                        .map(|d| d.iter().skip(1).collect::<PathBuf>())
                        .ok_or_else(|| CgroupError::Relative(PathBuf::new()))?;
                    create_cpuset(&cpuset, &rel)?;
                    let dir = cpuset.join(&rel);
                    apply_v1(std::slice::from_ref(&dir), r)?;
                    write(&dir.join("cgroup.procs"), &pid.to_string())?;
                    dirs.push(dir);
                }
                apply_v1(dirs, r)
            }
            Self::Managed { manager, path } => {
                let opt = ControllerOpt {
                    resources: r,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                };
                manager.apply(&opt).map_err(|e| CgroupError::Managed {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// The container's memory cgroup (its directory, and whether v2), for
    /// [`super::OomWatch`]; `pid` is the container's process, whose
    /// `/proc` entry names a systemd-made one.
    pub fn memory_dir(&self, pid: Pid) -> Option<(PathBuf, bool)> {
        match self {
            Self::Direct { dirs, v2: true } => dirs.first().map(|d| (d.clone(), true)),
            Self::Direct { dirs, v2: false } => {
                let memory = Path::new(ROOT).join("memory");
                dirs.iter()
                    .find(|d| d.starts_with(&memory))
                    .map(|d| (d.clone(), false))
            }
            Self::Managed { .. } => super::memory_cgroup_of(pid.as_raw()),
        }
    }

    /// Removes the cgroup; fails with `EBUSY` while a process is in it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        match self {
            Self::Direct { dirs, .. } => {
                for dir in dirs {
                    match std::fs::remove_dir(dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(dir)(e)),
                    }
                }
                Ok(())
            }
            Self::Managed { manager, path } => manager.remove().map_err(|e| CgroupError::Managed {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// A cgroup as the container's process sees it (sent to the zygote
/// process that clones it): the directories of a direct one, which it
/// joins itself or is born in; for a systemd-made one, nothing to join:
/// it waits until the daemon has put it there.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ChildCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    pub joined_by_daemon: bool,
}

impl ChildCgroup {
    /// For a v2 cgroup, a descriptor of it for `clone3(CLONE_INTO_CGROUP)`:
    /// the process is born in it, with no migration.
    pub fn clone_into(&self) -> Result<Option<OwnedFd>, CgroupError> {
        if !self.v2 || self.dirs.is_empty() {
            return Ok(None);
        }
        let fd = nix::fcntl::open(
            &self.dirs[0],
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(&self.dirs[0])(e.into()))?;
        Ok(Some(fd))
    }

    /// Called by the container's process itself, while it has one thread:
    /// joins each v1 hierarchy through its `tasks` file. Moving only the
    /// calling thread skips the kernel's global threadgroup lock, whose
    /// RCU grace period made a `cgroup.procs` write from outside cost
    /// 6-20 ms on a v1 host.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        if !self.v2 {
            for dir in &self.dirs {
                write(&dir.join("tasks"), "0")?;
            }
        }
        Ok(())
    }
}

/// v1: writes `freezer.state` until it reads back as wanted (a freeze goes
/// through `FREEZING`; writing again retries it, as runc does).
fn freeze_v1(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let file = dir.join("freezer.state");
    let (want, thawed) = (if frozen { "FROZEN" } else { "THAWED" }, "THAWED");
    settle(&file, frozen, thawed, || {
        write(&file, want)?;
        let now = std::fs::read_to_string(&file).map_err(io(&file))?;
        Ok((now.trim() != want).then(|| now.trim().to_string()))
    })
}

/// v2: writes `cgroup.freeze` and waits for `frozen 1` (or `0`) in
/// `cgroup.events`.
fn freeze_v2(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.freeze");
    write(&file, if frozen { "1" } else { "0" })?;
    let events = dir.join("cgroup.events");
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    settle(&file, frozen, "0", || {
        let now = std::fs::read_to_string(&events).map_err(io(&events))?;
        let done = now.lines().any(|l| l.trim() == want);
        Ok((!done).then(|| format!("no {want:?} in cgroup.events")))
    })
}

/// Polls `pending` (what is still not as wanted, or `None`) every
/// millisecond for up to [`FREEZE_TIMEOUT`]; a freeze that does not settle
/// is undone by writing `thaw` to `file`.
fn settle(
    file: &Path,
    frozen: bool,
    thaw: &str,
    mut pending: impl FnMut() -> Result<Option<String>, CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        let Some(now) = pending()? else {
            return Ok(());
        };
        if Instant::now() > deadline {
            if frozen {
                let _ = write(file, thaw);
            }
            return Err(CgroupError::Freezer {
                path: file.to_path_buf(),
                message: format!("{now} after {} s, left thawed", FREEZE_TIMEOUT.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Enables the controllers a Wasm container uses (`cpuset` only when its
/// CPUs or memory nodes are limited) in every ancestor's
/// `cgroup.subtree_control` (written only where one is missing).
fn enable_v2_controllers(root: &Path, rel: &Path, cpuset: bool) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for (i, part) in rel.components().enumerate() {
        // `dir` is an ancestor of the container's cgroup.
        if i > 0 {
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(io(&dir)(e));
                }
                _ => {}
            }
        }
        let available =
            std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(io(&dir))?;
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).map_err(io(&dir))?;
        let missing: Vec<String> = V2_CONTROLLERS
            .iter()
            .chain(cpuset.then_some(&"cpuset"))
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write(&dir.join("cgroup.subtree_control"), &missing.join(" "))?;
        }
        dir.push(part);
    }
    Ok(())
}

/// Whether `r` limits CPUs or memory nodes (the `cpuset` controller).
fn wants_cpuset(r: &LinuxResources) -> bool {
    r.cpu()
        .as_ref()
        .is_some_and(|c| c.cpus().is_some() || c.mems().is_some())
}

/// A v1 cpuset cgroup with its CPUs and memory nodes copied from its
/// parent (an empty cpuset cannot take a process).
fn create_cpuset(hierarchy: &Path, rel: &Path) -> Result<(), CgroupError> {
    let mut dir = hierarchy.to_path_buf();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        if dir.is_dir() {
            continue;
        }
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let v = std::fs::read_to_string(parent.join(f)).map_err(io(&parent))?;
            write(&dir.join(f), v.trim())?;
        }
    }
    Ok(())
}

/// Writes `value` into `file` of the first dir of `dirs` that has it.
fn set_v1(dirs: &[PathBuf], file: &str, value: &str) -> Result<(), CgroupError> {
    match dirs.iter().map(|d| d.join(file)).find(|p| p.exists()) {
        Some(p) => write(&p, value),
        None => {
            log::warn!("cgroup: {file} is not available on this host; not set");
            Ok(())
        }
    }
}

fn apply_v1(dirs: &[PathBuf], r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        // memory + swap can never be below memory: in an update that
        // raises it, swap goes first (runc's order and rules).
        // The current limit is read only when both are given.
        let memsw = "memory.memsw.limit_in_bytes";
        let swap = match (m.limit(), m.swap()) {
            (Some(-1), None) if dirs.iter().any(|d| d.join(memsw).exists()) => Some(-1),
            (_, swap) => swap,
        };
        let current = || {
            dirs.iter()
                .map(|d| d.join("memory.limit_in_bytes"))
                .find_map(|p| std::fs::read_to_string(p).ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let swap_first = match (m.limit(), swap) {
            (Some(_), Some(-1)) => true,
            (Some(_), Some(swap)) => current().is_some_and(|current| current < swap),
            _ => false,
        };
        let set_swap = || match swap {
            Some(swap) => set_v1(dirs, memsw, &swap.to_string()),
            None => Ok(()),
        };
        if swap_first {
            set_swap()?;
        }
        if let Some(limit) = m.limit() {
            set_v1(dirs, "memory.limit_in_bytes", &limit.to_string()).map_err(|e| match e {
                CgroupError::Io { path, source }
                    if source.raw_os_error() == Some(libc::EINVAL) && swap.is_none() =>
                {
                    CgroupError::Io {
                        path,
                        source: std::io::Error::other(format!(
                            "memory limit {limit} refused (EINVAL): above the memory+swap \
                             limit; give the swap limit too"
                        )),
                    }
                }
                e => e,
            })?;
        }
        if !swap_first {
            set_swap()?;
        }
        if let Some(res) = m.reservation() {
            set_v1(dirs, "memory.soft_limit_in_bytes", &res.to_string())?;
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares() {
            set_v1(dirs, "cpu.shares", &shares.to_string())?;
        }
        if let Some(period) = c.period() {
            set_v1(dirs, "cpu.cfs_period_us", &period.to_string())?;
        }
        if let Some(quota) = c.quota() {
            set_v1(dirs, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        if let Some(cpus) = c.cpus() {
            set_v1(dirs, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = c.mems() {
            set_v1(dirs, "cpuset.mems", mems)?;
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        set_v1(dirs, "pids.max", &v)?;
    }
    warn_unsupported(r);
    Ok(())
}

/// runc's conversion of CPU shares (2..262144) to a v2 weight (1..10000).
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

fn apply_v2(dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let set = |file: &str, value: &str| write(&dir.join(file), value);
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            let v = if limit < 0 {
                "max".to_string()
            } else {
                limit.to_string()
            };
            set("memory.max", &v)?;
            if let Some(swap) = m.swap() {
                // v1 counts memory + swap; v2 only swap.
                let v = if swap < 0 || limit < 0 {
                    "max".to_string()
                } else {
                    (swap - limit).max(0).to_string()
                };
                set("memory.swap.max", &v)?;
            }
        }
        if let Some(res) = m.reservation() {
            set("memory.low", &res.to_string())?;
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s > 0) {
            set("cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            set(
                "cpu.max",
                &format!("{quota} {}", c.period().unwrap_or(100_000)),
            )?;
        }
        if let Some(cpus) = c.cpus() {
            set("cpuset.cpus", cpus)?;
        }
        if let Some(mems) = c.mems() {
            set("cpuset.mems", mems)?;
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        set("pids.max", &v)?;
    }
    if let Some(unified) = r.unified() {
        for (k, v) in unified {
            if k.contains('/') || k.starts_with('.') {
                return Err(CgroupError::Managed {
                    path: dir.join(k),
                    message: "not a cgroup file name".into(),
                });
            }
            set(k, v)?;
        }
    }
    warn_unsupported(r);
    Ok(())
}

/// Limits of resources a Wasm process cannot use, or that this shim does
/// not set: said once per container rather than silently dropped.
fn warn_unsupported(r: &LinuxResources) {
    let mut ignored = vec![];
    if r.block_io().is_some() {
        ignored.push("blockIO");
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        ignored.push("hugepageLimits");
    }
    if r.network().is_some() {
        ignored.push("network");
    }
    if r.rdma().as_ref().is_some_and(|h| !h.is_empty()) {
        ignored.push("rdma");
    }
    if !ignored.is_empty() {
        log::warn!(
            "cgroup: {} not applied to a Wasm container",
            ignored.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2_dir(dir: &Path, controllers: &str) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("cgroup.controllers"), controllers).expect("controllers");
        std::fs::write(dir.join("cgroup.subtree_control"), "").expect("subtree");
    }

    #[test]
    fn v2_controllers_are_enabled_down_to_the_parent_only_where_missing() {
        let root = tempfile::tempdir().expect("tempdir");
        fake_v2_dir(root.path(), "cpuset cpu io memory pids");
        fake_v2_dir(&root.path().join("ns"), "cpu io memory pids");
        std::fs::write(
            root.path().join("ns/cgroup.subtree_control"),
            "cpu memory pids io",
        )
        .expect("enabled");
        enable_v2_controllers(root.path(), Path::new("ns/container"), false).expect("enable");
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).expect("read");
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids +io");
        // Already enabled in `ns`: not written again.
        assert_eq!(read("ns/cgroup.subtree_control"), "cpu memory pids io");
        // The container's own directory is made by the caller.
        assert!(!root.path().join("ns/container").exists());
    }

    #[test]
    fn v2_cpuset_is_enabled_only_when_limited() {
        let root = tempfile::tempdir().expect("tempdir");
        let rel = Path::new("ns/container");
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).expect("read");
        for cpuset in [false, true] {
            fake_v2_dir(root.path(), "cpuset cpu io memory pids");
            fake_v2_dir(&root.path().join("ns"), "cpuset cpu io memory pids");
            enable_v2_controllers(root.path(), rel, cpuset).expect("enable");
            for dir in ["", "ns/"] {
                let enabled = read(&format!("{dir}cgroup.subtree_control"));
                assert_eq!(enabled.contains("+cpuset"), cpuset, "{dir}: {enabled}");
            }
        }
    }

    #[test]
    fn v2_limits_are_written_as_runc_writes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = oci_spec::runtime::LinuxResourcesBuilder::default()
            .memory(
                oci_spec::runtime::LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(96 << 20)
                    .reservation(32 << 20)
                    .build()
                    .expect("memory"),
            )
            .cpu(
                oci_spec::runtime::LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .build()
                    .expect("cpu"),
            )
            .pids(
                oci_spec::runtime::LinuxPidsBuilder::default()
                    .limit(64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources");
        apply_v2(dir.path(), &r).expect("apply");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect(f);
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), (32u64 << 20).to_string());
        assert_eq!(read("memory.low"), (32u64 << 20).to_string());
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "64");
    }

    #[test]
    fn v1_limits_go_to_the_hierarchy_that_has_the_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let memory = root.path().join("memory/ns/c");
        let pids = root.path().join("pids/ns/c");
        for (d, f) in [(&memory, "memory.limit_in_bytes"), (&pids, "pids.max")] {
            std::fs::create_dir_all(d).expect("dir");
            std::fs::write(d.join(f), "").expect("file");
        }
        let r = oci_spec::runtime::LinuxResourcesBuilder::default()
            .memory(
                oci_spec::runtime::LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .build()
                    .expect("memory"),
            )
            .pids(
                oci_spec::runtime::LinuxPidsBuilder::default()
                    .limit(0)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources");
        apply_v1(&[memory.clone(), pids.clone()], &r).expect("apply");
        assert_eq!(
            std::fs::read_to_string(memory.join("memory.limit_in_bytes")).expect("read"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(pids.join("pids.max")).expect("read"),
            "max"
        );
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0);
    }

    use wasmhybrid_harness::cpu_ticks;

    fn runs(pid: u32) -> bool {
        wasmhybrid_harness::uses_cpu_within(pid, Duration::from_secs(5))
    }

    /// A spinning process in a fresh cgroup; killed and the cgroup removed
    /// on drop (thawed first, so that the kill lands).
    struct Spinner {
        child: std::process::Child,
        dir: PathBuf,
        v2: bool,
    }

    impl Drop for Spinner {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = if self.v2 {
                freeze_v2(&self.dir, false)
            } else {
                freeze_v1(&self.dir, false)
            };
            let _ = self.child.wait();
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    #[test]
    fn freeze_stops_and_thaw_restarts_a_process_in_a_real_cgroup() {
        if !crate::cgroup::tests::can_make_cgroups() {
            return;
        }
        // Every freezer this host has: v2 (the root or the hybrid
        // `unified` mount) and the v1 `freezer` hierarchy.
        let root = Path::new(ROOT);
        let is_cgroup2 = |p: &Path| {
            nix::sys::statfs::statfs(p)
                .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                .unwrap_or(false)
        };
        let mut freezers = vec![];
        if is_cgroup2(root) {
            freezers.push((root.to_path_buf(), true));
        } else {
            if root.join("freezer").is_dir() {
                freezers.push((root.join("freezer"), false));
            }
            if is_cgroup2(&root.join("unified")) {
                freezers.push((root.join("unified"), true));
            }
        }
        assert!(!freezers.is_empty(), "no cgroup freezer on this host");
        for (base, v2) in freezers {
            let dir = base.join(format!("wasmhybrid-freeze-test-{}", std::process::id()));
            std::fs::create_dir(&dir).expect("cgroup dir");
            let child = std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("spawn");
            let spinner = Spinner { child, dir, v2 };
            let pid = spinner.child.id();
            write(&spinner.dir.join("cgroup.procs"), &pid.to_string()).expect("join");
            let freeze = if v2 { freeze_v2 } else { freeze_v1 };
            assert!(runs(pid), "{base:?}: spins before the freeze");

            freeze(&spinner.dir, true).expect("freeze");
            let before = cpu_ticks(pid);
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(cpu_ticks(pid), before, "{base:?}: frozen, uses no CPU");
            // Freezing again is a no-op.
            freeze(&spinner.dir, true).expect("freeze again");

            freeze(&spinner.dir, false).expect("thaw");
            assert!(runs(pid), "{base:?}: spins again after the thaw");
            eprintln!("{base:?}: frozen and thawed");
        }
    }
}

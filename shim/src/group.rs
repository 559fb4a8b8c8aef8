//! Which shim daemon serves a Wasm container, and handing it out.
//!
//! containerd runs the shim's `start` action for every container and talks
//! to whichever daemon address it prints. A group's containers share one
//! daemon ([`Group`]):
//!
//! - a pod's Wasm containers (the daemon leaves with the pod's last
//!   container);
//! - by default, every other Wasm container of a containerd namespace
//!   ([`Sharing::Namespace`]); that daemon stays up [`ENV_LINGER`] seconds
//!   after its last container, so the next container needs no new process;
//! - with `WASMHYBRID_SHIM_SHARING=container`, each container alone.
//!
//! A daemon never leaves while a `start` has handed out its address and
//! the container's `Tasks.Create` has not arrived: `start` ([`lease`]) and
//! the daemon's retirement take the same lock ([`Group::lock`]), `start`
//! leaves a pending mark for its container there, and a daemon retires only
//! with no containers and no fresh marks, removing its socket first.
//!
//! Whether a group's daemon is up is read from the process it records
//! ([`DAEMON_FILE`]: pid and start time, written by the `start` that spawned
//! it), not by connecting to it: a connection costs the daemon a ttrpc
//! session, and `start` runs for every container.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// Seconds a namespace's daemon stays up with no container (default 10;
/// `0`: it leaves with its last container).
pub const ENV_LINGER: &str = "WASMHYBRID_SHIM_LINGER";
/// `namespace` (default) or `container`: which containers outside pods
/// share a daemon.
pub const ENV_SHARING: &str = "WASMHYBRID_SHIM_SHARING";
/// The daemon's linger, from `start` to the daemon (milliseconds).
pub const ENV_DAEMON_LINGER_MS: &str = "WASMHYBRID_DAEMON_LINGER_MS";
const DEFAULT_LINGER: Duration = Duration::from_secs(10);
/// A pending mark older than this is a `start` whose `Tasks.Create` never
/// came (containerd failed in between).
pub const PENDING_FRESH: Duration = Duration::from_secs(60);
/// Where groups keep their lock, pending marks and daemon's working dir.
pub const GROUPS_DIR: &str = "/run/containerd/wasmhybrid-daemons";
/// In a group's directory: `<pid> <start time>` of its daemon.
pub const DAEMON_FILE: &str = "daemon";
/// The grouping key of a namespace's shared daemon.
pub const NAMESPACE_GROUP: &str = "wasmhybrid-namespace";
/// Prefix of the grouping key of Wasm containers in a pod, so that they
/// never share a socket address with the pod's runc shim (which groups by
/// the bare sandbox id).
pub const POD_GROUP_PREFIX: &str = "wasmhybrid-";
/// Where containerd's shims keep their sockets (`/run/containerd/s/<hash>`).
const SOCKET_ROOT: &str = "/run/containerd";
/// The descriptor of the listening socket in a spawned daemon, as
/// containerd's shims expect it.
pub const SOCKET_FD: i32 = 3;
/// The daemon binary's name: the shim's launcher finds it beside itself.
pub const DAEMON_BINARY: &str = "wasmhybrid";

/// Which containers outside pods share a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Namespace,
    Container,
}

/// The shim's sharing settings, from containerd's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub sharing: Sharing,
    pub linger: Duration,
}

impl Settings {
    /// Reads [`ENV_SHARING`] and [`ENV_LINGER`]; a bad value is an error
    /// naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(
            std::env::var(ENV_SHARING).ok().as_deref(),
            std::env::var(ENV_LINGER).ok().as_deref(),
        )
    }

    fn parse(sharing: Option<&str>, linger: Option<&str>) -> Result<Self, String> {
        let sharing = match sharing.map(str::trim) {
            None | Some("") | Some("namespace") => Sharing::Namespace,
            Some("container") => Sharing::Container,
            Some(other) => {
                return Err(format!(
                    "{ENV_SHARING}={other:?}: expected \"namespace\" or \"container\""
                ));
            }
        };
        let linger = match linger.map(str::trim) {
            None | Some("") => DEFAULT_LINGER,
            Some(s) => match s.parse::<u32>() {
                Ok(secs) if secs <= 3600 => Duration::from_secs(secs.into()),
                _ => {
                    return Err(format!(
                        "{ENV_LINGER}={s:?}: expected whole seconds from 0 to 3600"
                    ));
                }
            },
        };
        Ok(Self { sharing, linger })
    }

    /// The grouping key and linger of a container (`pod`: its sandbox id).
    pub fn group_of(&self, id: &str, pod: Option<&str>) -> (String, Duration) {
        match (pod, self.sharing) {
            (Some(pod), _) => (format!("{POD_GROUP_PREFIX}{pod}"), Duration::ZERO),
            (None, Sharing::Namespace) => (NAMESPACE_GROUP.to_string(), self.linger),
            (None, Sharing::Container) => (id.to_string(), Duration::ZERO),
        }
    }
}

/// The socket address of a shim serving `id` in `namespace` for the
/// containerd at `containerd_address`, as containerd's shims compute it.
pub fn socket_address(containerd_address: &str, namespace: &str, id: &str) -> String {
    let path = Path::new(containerd_address).join(namespace).join(id);
    let hash = Sha256::digest(path.display().to_string());
    format!("unix://{SOCKET_ROOT}/s/{hash:x}")
}

/// A group's daemon socket and its lock directory.
#[derive(Debug, Clone)]
pub struct Group {
    key: String,
    address: String,
    socket: PathBuf,
    dir: PathBuf,
}

/// The exclusive lock of a group, held while handing out or retiring its
/// daemon.
pub struct GroupLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl GroupLock {
    /// Keeps the lock until the process exits, so that no `start` finds
    /// a daemon on its way out.
    pub fn hold_until_exit(self) {
        std::mem::forget(self);
    }
}

/// What the `start` that spawns a daemon passes it.
#[derive(Debug, Clone, Default)]
pub struct SpawnOpts {
    /// The container the daemon is spawned for (its bundle is the cwd).
    pub id: String,
    pub namespace: String,
    /// containerd's gRPC address.
    pub address: String,
    pub debug: bool,
}

impl Group {
    pub fn new(containerd_address: &str, namespace: &str, key: &str) -> Self {
        let address = socket_address(containerd_address, namespace, key);
        let socket = PathBuf::from(address.strip_prefix("unix://").unwrap_or(&address));
        let name = socket
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| key.to_string());
        Self {
            key: key.to_string(),
            address,
            dir: Path::new(GROUPS_DIR).join(name),
            socket,
        }
    }

    /// A group whose files live under `dir` (tests).
    #[cfg(test)]
    pub(crate) fn at(dir: &Path, key: &str) -> Self {
        Self {
            key: key.into(),
            address: format!("unix://{}", dir.join("sock").display()),
            socket: dir.join("sock"),
            dir: dir.join("group"),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The group's directory: lock, pending marks, daemon record, and the
    /// daemon's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the group's lock (blocking while another holder has it). A
    /// lock file that its holder unlinked meanwhile (a retiring daemon
    /// removing the group's directory, [`Group::remove_dir`]) is not the
    /// group's lock any more: the lock is taken again on a new one.
    pub fn lock(&self) -> std::io::Result<GroupLock> {
        use std::os::unix::fs::MetadataExt as _;
        loop {
            // Root only: nothing in a group's directory is for anybody else.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.dir.join("pending"))?;
            let path = self.dir.join("lock");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| std::io::Error::from(e))?;
            let held = locked.metadata()?;
            let current = std::fs::metadata(&path).ok();
            if held.nlink() > 0 && current.is_some_and(|c| c.ino() == held.ino()) {
                return Ok(GroupLock(locked));
            }
        }
    }

    /// Removes the group's directory (its daemon is retiring, under the
    /// lock `_held`): the next `start` makes it again. The lock file goes
    /// last, so that a `start` waiting for it retries on a new one.
    pub fn remove_dir(&self, _held: &GroupLock) {
        let _ = std::fs::remove_dir_all(self.dir.join("pending"));
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name() != "lock" {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.join("lock"));
        let _ = std::fs::remove_dir(&self.dir);
    }

    fn pending(&self, id: &str) -> PathBuf {
        self.dir.join("pending").join(id)
    }

    /// Marks `id` as handed this group's daemon (under the lock).
    /// containerd's ids are `[A-Za-z0-9][A-Za-z0-9_.-]*`; anything else is
    /// refused rather than used as a file name.
    fn mark_pending(&self, id: &str) -> std::io::Result<()> {
        let valid = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("container id {id:?} is not a containerd identifier"),
            ));
        }
        std::fs::write(self.pending(id), b"")
    }

    /// The container's `Tasks.Create` has arrived (or failed).
    pub fn unmark_pending(&self, id: &str) {
        let _ = std::fs::remove_file(self.pending(id));
    }

    /// Whether a `start` handed out the daemon for a container that has
    /// not arrived yet (stale marks are removed).
    pub fn has_pending(&self) -> bool {
        let mut fresh = false;
        for entry in std::fs::read_dir(self.dir.join("pending"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            if age < PENDING_FRESH {
                fresh = true;
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        fresh
    }

    /// What the group's daemon record says: `None` without a record, else
    /// whether the process it names still runs (same pid and start time)
    /// and its socket is there.
    fn recorded_alive(&self) -> Option<bool> {
        let record = std::fs::read_to_string(self.dir.join(DAEMON_FILE)).ok()?;
        let mut parts = record.split_whitespace();
        let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
        let started = parts.next().and_then(|s| s.parse::<u64>().ok());
        Some(match (pid, started) {
            (Some(pid), Some(started)) => start_time(pid) == Some(started) && self.socket.exists(),
            _ => false,
        })
    }

    /// Whether the group's daemon is up (under the lock). A group without a
    /// record (a daemon of an older release) is asked by connecting.
    fn daemon_alive(&self) -> bool {
        self.recorded_alive()
            .unwrap_or_else(|| std::os::unix::net::UnixStream::connect(&self.socket).is_ok())
    }

    /// Whether the group's daemon is up, from its record alone (without
    /// the lock: a hint, e.g. for [`crate::route::ask`]).
    pub fn daemon_running(&self) -> bool {
        self.recorded_alive() == Some(true)
    }

    /// Records the daemon `pid` (under the lock).
    pub(crate) fn record_daemon(&self, pid: i32) -> std::io::Result<()> {
        let started = start_time(pid).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the daemon (pid {pid}) exited at once"),
            )
        })?;
        let path = self.dir.join(DAEMON_FILE);
        let tmp = self.dir.join(format!(".{DAEMON_FILE}"));
        std::fs::write(&tmp, format!("{pid} {started}\n"))?;
        std::fs::rename(tmp, path)
    }
}

/// The start time of a live process `pid` (clock ticks after boot, field 22
/// of `/proc/<pid>/stat`), which tells it from a later process with its pid;
/// `None` if there is none, or only its zombie (a killed daemon whose
/// parent has not reaped it yet).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // `rest` starts at field 3, the state; the start time is field 22.
    if matches!(rest.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    rest.nth(18)?.parse().ok()
}

/// The daemon binary: [`DAEMON_BINARY`] beside the running one (which is
/// either the launcher, `containerd-shim-wasmhybrid-v1`, or the daemon
/// binary itself).
pub fn daemon_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe
        .parent()
        .map(|d| d.join(DAEMON_BINARY))
        .unwrap_or_else(|| PathBuf::from(DAEMON_BINARY));
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found: the shim daemon binary is installed beside {} \
                 (wasmhybrid-node-setup install installs both)",
                beside.display(),
                exe.display()
            ),
        ))
    }
}

/// The `start` action's side: the address of the group's daemon for
/// container `opts.id`, spawning one if none is up.
pub fn lease(group: &Group, opts: SpawnOpts, linger: Duration) -> Result<String, String> {
    let lock = group
        .lock()
        .map_err(|e| format!("cannot lock {}: {e}", group.dir.display()))?;
    group
        .mark_pending(&opts.id)
        .map_err(|e| format!("cannot mark {} pending: {e}", opts.id))?;
    if group.daemon_alive() {
        drop(lock);
        write_address(group.address()).map_err(|e| e.to_string())?;
        return Ok(group.address().to_string());
    }
    let spawned = spawn(group, &opts, linger).and_then(|pid| {
        group
            .record_daemon(pid)
            .and_then(|()| write_address(group.address()))
            .map_err(|e| e.to_string())
    });
    if spawned.is_err() {
        group.unmark_pending(&opts.id);
    }
    drop(lock);
    spawned
        .map(|()| group.address().to_string())
        .map_err(|e| format!("cannot start the shim daemon: {e}"))
}

/// Binds the group's socket and starts a daemon on it (its fd
/// [`SOCKET_FD`]), from the container's bundle (the cwd). Returns its pid.
fn spawn(group: &Group, opts: &SpawnOpts, linger: Duration) -> Result<i32, String> {
    use command_fds::{CommandFdExt as _, FdMapping};
    // A socket left by a daemon that died: nobody is listening on it.
    let _ = std::fs::remove_file(&group.socket);
    if let Some(parent) = group.socket.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let listener = UnixListener::bind(&group.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", group.socket.display()))?;
    let binary = daemon_binary().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&binary);
    // Named as containerd started this process (`containerd-shim-...`), as
    // every shim daemon is: `ps`, `pgrep containerd-shim` and the like find it.
    if let Some(argv0) = std::env::args_os().next() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
    }
    cmd.args([
        "-namespace",
        &opts.namespace,
        "-id",
        &group.key,
        "-address",
        &opts.address,
    ]);
    if opts.debug {
        cmd.arg("-debug");
    }
    cmd.arg("daemon")
        .env(ENV_DAEMON_LINGER_MS, linger.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .fd_mappings(vec![FdMapping {
            parent_fd: listener.into(),
            child_fd: SOCKET_FD,
        }])
        .map_err(|e| format!("cannot pass the socket to the daemon: {e}"))?;
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    // The daemon is not waited for: it outlives this process and is
    // reparented (to containerd's subreaper or init) when this one exits.
    Ok(child.id() as i32)
}

/// Writes `address` to the `address` file of the cwd (the bundle), where
/// containerd and the shim's own exit path read it.
pub fn write_address(address: &str) -> std::io::Result<()> {
    std::fs::write(".address", address)?;
    std::fs::rename(".address", "address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_a_namespace_daemon_lingering_10_s() {
        let s = Settings::parse(None, None).expect("defaults");
        assert_eq!(s.sharing, Sharing::Namespace);
        assert_eq!(s.linger, Duration::from_secs(10));
        let s = Settings::parse(Some("container"), Some(" 0 ")).expect("valid");
        assert_eq!(s.sharing, Sharing::Container);
        assert_eq!(s.linger, Duration::ZERO);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let e = Settings::parse(Some("pod"), None).unwrap_err();
        assert!(e.contains(ENV_SHARING) && e.contains("\"pod\""), "{e}");
        for bad in ["-1", "1.5", "ten", "3601"] {
            let e = Settings::parse(None, Some(bad)).unwrap_err();
            assert!(e.contains(ENV_LINGER), "{e}");
        }
    }

    #[test]
    fn groups_pods_namespaces_and_lone_containers() {
        let ns = Settings::parse(None, Some("5")).expect("valid");
        assert_eq!(
            ns.group_of("c1", Some("pod1")),
            ("wasmhybrid-pod1".to_string(), Duration::ZERO)
        );
        assert_eq!(
            ns.group_of("c1", None),
            (NAMESPACE_GROUP.to_string(), Duration::from_secs(5))
        );
        let alone = Settings::parse(Some("container"), Some("5")).expect("valid");
        assert_eq!(
            alone.group_of("c1", None),
            ("c1".to_string(), Duration::ZERO)
        );
    }

    #[test]
    fn socket_addresses_are_containerds() {
        // containerd's Go shims: sha256 of "<address>/<namespace>/<id>".
        let a = socket_address("/run/containerd/containerd.sock", "default", "c1");
        let want = format!(
            "unix:///run/containerd/s/{:x}",
            Sha256::digest("/run/containerd/containerd.sock/default/c1")
        );
        assert_eq!(a, want);
    }

    #[test]
    fn pending_marks_hold_a_group_until_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = Group::at(dir.path(), "k");
        let lock = group.lock().expect("lock");
        assert!(!group.has_pending());
        group.mark_pending("c1").expect("mark");
        assert!(group.has_pending());
        let old = SystemTime::now() - PENDING_FRESH - Duration::from_secs(1);
        File::options()
            .write(true)
            .open(group.pending("c1"))
            .and_then(|f| f.set_modified(old))
            .expect("age the mark");
        assert!(!group.has_pending(), "a stale mark does not count");
        assert!(!group.pending("c1").exists(), "and is removed");
        group.mark_pending("c2").expect("mark");
        group.unmark_pending("c2");
        assert!(!group.has_pending());
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(group.mark_pending(bad).is_err(), "{bad:?}");
        }
        drop(lock);
    }

    #[test]
    fn a_start_waiting_on_a_removed_groups_lock_takes_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = Group::at(dir.path(), "k");
        let held = group.lock().expect("lock");
        group.mark_pending("c1").expect("mark");
        let waiter = {
            let group = group.clone();
            std::thread::spawn(move || {
                let lock = group.lock().expect("lock after removal");
                // Its lock is the group's current lock file.
                use std::os::unix::fs::MetadataExt as _;
                let held = lock.0.metadata().expect("held");
                let now = std::fs::metadata(group.dir.join("lock")).expect("lock file");
                assert_eq!(held.ino(), now.ino());
                group.mark_pending("c2").expect("mark in the new directory");
                assert!(group.has_pending());
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        group.remove_dir(&held);
        assert!(!group.dir.exists(), "removed");
        drop(held);
        waiter.join().expect("waiter");
    }

    #[test]
    fn a_daemon_is_alive_while_its_recorded_process_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = Group::at(dir.path(), "k");
        let _lock = group.lock().expect("lock");
        assert!(!group.daemon_alive(), "no record, no socket");
        let _listener = UnixListener::bind(&group.socket).expect("bind");
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        group.record_daemon(child.id() as i32).expect("record");
        assert!(group.daemon_alive());
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!group.daemon_alive(), "its process is gone");
        // A record of another process under the same pid: start times differ.
        std::fs::write(
            group.dir.join(DAEMON_FILE),
            format!("{} 1\n", std::process::id()),
        )
        .expect("forge");
        assert!(!group.daemon_alive());
        std::fs::write(group.dir.join(DAEMON_FILE), "garbage").expect("garbage");
        assert!(!group.daemon_alive());
    }

    #[test]
    fn start_time_is_of_live_processes_only() {
        let me = start_time(std::process::id() as i32).expect("own start time");
        assert!(me > 0);
        assert_eq!(start_time(i32::MAX), None);
        let mut child = Command::new("true").spawn().expect("true");
        let pid = child.id() as i32;
        // Unreaped: a zombie, which is no daemon.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while start_time(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(start_time(pid), None, "a zombie has no start time here");
        child.wait().expect("reap");
    }
}

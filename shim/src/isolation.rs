//! The process a Wasm container runs in, made with one `clone3` from a
//! zygote process (its module's template) and given the isolation a Wasm workload
//! needs: the spec's namespaces, its cgroup, its user, capabilities,
//! rlimits and seccomp profile, `no_new_privs`, and a root filesystem of
//! its rootfs plus its bind and tmpfs mounts (`pivot_root`; nothing else of
//! the host is reachable).
//!
//! What a native container also gets and a Wasm guest cannot use is left
//! out: `/proc`, `/sys`, `/dev` and the other kernel filesystems are not
//! mounted (WASI has no way to reach them), so neither are the masked and
//! read-only paths over them. That, and a single process where a general
//! container runtime forks and re-executes several, is where
//! [`clone_container`] saves most of youki's container creation time.
//!
//! Sequence (shim daemon `D`, the zygote process `Z` holding the module's
//! code, the container process `C`):
//! 1. `D` makes the container's cgroup with its limits ([`make_cgroup`]);
//! 2. `Z` plans the namespaces (joining a pod's PID namespace for the clone,
//!    so that `C` is born in it, then returning to its own) and clones `C`
//!    as a sibling (`CLONE_PARENT`: `D` reaps it) in its new namespaces
//!    ([`clone_container`]) and hands `D` the pipes to `C`;
//! 3. `C` joins its direct cgroup itself (v1) or was born in it (v2); a
//!    systemd-made one `D` puts it into, and `C` waits for that
//!    ([`Container::finish`]);
//! 4. `C` joins the namespaces given by path, builds its root filesystem,
//!    sets hostname, rlimits, user and capabilities, `no_new_privs` and
//!    seccomp, and reports success or the error, which `D` waits for;
//! 5. at `Tasks.Start`, `D` tells `C` to run the workload.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libcontainer::capabilities::CapabilityExt as _;
use libcontainer::syscall::Syscall;
use libcontainer::syscall::linux::LinuxSyscall;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Mount, Spec};

use crate::cgroup::{Cgroup, CgroupError, ChildCgroup};

/// Why a Wasm container's process could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("not supported for a Wasm container: {0}")]
    Unsupported(String),
    #[error("cannot open namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> IsolationError {
    move |source| IsolationError::Sys { what, source }
}

/// A created Wasm container: its process waits for [`Container::start`].
pub struct Container {
    pid: Pid,
    control: Option<File>,
    cgroup: Cgroup,
    /// Frozen by [`Container::pause`].
    paused: bool,
}

/// What the spec's namespaces come to.
struct Namespaces {
    /// New namespaces, made by `clone3`.
    clone: CloneFlags,
    /// Namespaces joined by `C` (network, IPC, UTS, cgroup by path).
    join: Vec<(OwnedFd, CloneFlags)>,
    /// A PID namespace to join, by `Z` before the clone.
    pid: Option<OwnedFd>,
    /// A new cgroup namespace, made by `C` once it is in its cgroup.
    new_cgroup: bool,
}

fn plan_namespaces(spec: &Spec) -> Result<Namespaces, IsolationError> {
    // A mount namespace of its own always: the root filesystem is built in it.
    let mut ns = Namespaces {
        clone: CloneFlags::CLONE_NEWNS,
        join: vec![],
        pid: None,
        new_cgroup: false,
    };
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for n in list {
        let open = |p: &Path| {
            File::open(p)
                .map(OwnedFd::from)
                .map_err(|source| IsolationError::Namespace {
                    path: p.to_path_buf(),
                    source,
                })
        };
        let flag = match n.typ() {
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Mount => {
                if n.path().is_some() {
                    return Err(IsolationError::Unsupported(
                        "joining another mount namespace".into(),
                    ));
                }
                continue;
            }
            other => {
                return Err(IsolationError::Unsupported(format!(
                    "a {other:?} namespace"
                )));
            }
        };
        match (n.path(), flag) {
            (Some(p), CloneFlags::CLONE_NEWPID) => ns.pid = Some(open(p)?),
            (Some(p), _) => ns.join.push((open(p)?, flag)),
            (None, CloneFlags::CLONE_NEWCGROUP) => ns.new_cgroup = true,
            (None, _) => ns.clone |= flag,
        }
    }
    Ok(ns)
}

/// clone3's flag to start the child in the cgroup `cgroup` names (5.7+).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3` with `flags`, fork-like (no new stack). Returns 0 in the child.
fn clone3(flags: CloneFlags, cgroup: Option<&OwnedFd>) -> Result<i32, IsolationError> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut args = CloneArgs {
        flags: (flags | CloneFlags::CLONE_PARENT).bits() as u64,
        // With CLONE_PARENT the child signals the daemon as its sibling
        // does (SIGCHLD); clone3 refuses an explicit exit signal.
        exit_signal: 0,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: fork-like clone3 (no CLONE_VM, no stack): the child gets a
    // copy of this single-purpose zygote process and continues here.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(IsolationError::Sys {
            what: "clone3",
            source: nix::Error::last(),
        });
    }
    Ok(ret as i32)
}

fn pipe() -> Result<(File, File), IsolationError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    Ok((File::from(r), File::from(w)))
}

/// The container's stdio, opened by `Z` (FIFOs containerd created).
pub struct Stdio {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// A container process just cloned (in the zygote process), setting
/// itself up: the shim daemon finishes it with [`Container::finish`].
pub struct Cloned {
    pub pid: i32,
    /// Write end of the process's control pipe (`c`: in its systemd-made
    /// cgroup; `s`: start).
    pub control: File,
    /// Read end of its report pipe (success, or the error of its setup).
    pub report: File,
}

/// Clones the container's process (in the zygote process `Z`); it sets
/// itself up at once (in a systemd-made cgroup once the daemon has put it
/// there), then runs `run` (which returns the exit code) when told to start.
pub fn clone_container(
    bundle: &Path,
    spec: &Spec,
    cgroup: &ChildCgroup,
    stdio: Stdio,
    run: impl FnOnce() -> i32,
) -> Result<Cloned, IsolationError> {
    let ns = plan_namespaces(spec)?;
    // A pod's PID namespace is joined here so that `C` is born in it; the
    // zygote process goes back to its own afterwards (it makes the next
    // container too).
    let own_pid_ns = match &ns.pid {
        Some(fd) => {
            let own = File::open("/proc/self/ns/pid")
                .map_err(|e| IsolationError::Setup(format!("open own PID namespace: {e}")))?;
            setns(fd.as_fd(), CloneFlags::CLONE_NEWPID).map_err(sys("join the PID namespace"))?;
            Some(own)
        }
        None => None,
    };
    let cloned = (|| {
        let (control_r, control_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let into = cgroup.clone_into()?;
        let pid = clone3(ns.clone, into.as_ref())?;
        Ok::<_, IsolationError>((pid, control_r, control_w, report_r, report_w))
    })();
    if let Some(own) = own_pid_ns
        && !matches!(&cloned, Ok((0, ..)))
    {
        setns(own.as_fd(), CloneFlags::CLONE_NEWPID)
            .map_err(sys("return to the zygote's PID namespace"))?;
    }
    let (pid, control_r, control_w, report_r, report_w) = cloned?;
    if pid == 0 {
        drop((control_w, report_r));
        let target = Target {
            bundle,
            spec,
            ns: &ns,
            cgroup,
        };
        child(target, stdio, control_r, report_w, run);
    }
    Ok(Cloned {
        pid,
        control: control_w,
        report: report_r,
    })
}

/// The cgroup of container `id` as its spec names it, for the runtime's
/// cgroup driver (made by the shim daemon while the zygote process loads
/// the code).
pub fn make_cgroup(id: &str, spec: &Spec, systemd: bool) -> Result<Cgroup, IsolationError> {
    let linux = spec.linux().as_ref();
    Ok(Cgroup::create(
        linux.and_then(|l| l.cgroups_path().as_deref()),
        id,
        systemd,
        linux.and_then(|l| l.resources().as_ref()),
    )?)
}

impl Container {
    /// In the shim daemon: puts a cloned process into its cgroup (if the
    /// process cannot do it itself), lets it set itself up and waits for its
    /// report. On an error the process is killed and the cgroup removed.
    pub fn finish(cloned: Cloned, cgroup: Cgroup, spec: &Spec) -> Result<Self, IsolationError> {
        let mut container = Container {
            pid: Pid::from_raw(cloned.pid),
            control: Some(cloned.control),
            cgroup,
            paused: false,
        };
        match container.finish_setup(spec, cloned.report) {
            Ok(()) => Ok(container),
            Err(e) => {
                let _ = container.delete();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    fn finish_setup(&mut self, spec: &Spec, mut report_r: File) -> Result<(), IsolationError> {
        self.join_cgroup(spec)?;
        if self.cgroup.joined_by_daemon() {
            self.send(b'c')?;
        }
        let mut report = Vec::new();
        let _ = report_r.read_to_end(&mut report);
        match report.split_first() {
            Some((0, _)) => Ok(()),
            Some((_, msg)) => Err(IsolationError::Setup(
                String::from_utf8_lossy(msg).into_owned(),
            )),
            None => Err(IsolationError::Setup(
                "the container process exited during setup".into(),
            )),
        }
    }

    fn join_cgroup(&mut self, spec: &Spec) -> Result<(), IsolationError> {
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        self.cgroup.join(self.pid, resources)?;
        if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
            std::fs::write(format!("/proc/{}/oom_score_adj", self.pid), adj.to_string())
                .map_err(|e| IsolationError::Setup(format!("set oom_score_adj {adj}: {e}")))?;
        }
        Ok(())
    }

    fn send(&mut self, byte: u8) -> Result<(), IsolationError> {
        let control = self
            .control
            .as_mut()
            .ok_or_else(|| IsolationError::Setup("the container was already started".into()))?;
        control
            .write_all(&[byte])
            .map_err(|e| IsolationError::Setup(format!("container process gone: {e}")))
    }

    /// Lets the process run the workload.
    pub fn start(&mut self) -> Result<(), IsolationError> {
        self.send(b's')?;
        self.control = None;
        Ok(())
    }

    /// Signals the container's process (its only process: Wasm threads
    /// are threads of it). A paused one gets other signals when it is
    /// resumed; SIGKILL thaws it, so that it dies now (as under runc).
    pub fn kill(&mut self, signal: Signal) -> Result<(), IsolationError> {
        match kill(self.pid, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => {
                return Err(IsolationError::Sys {
                    what: "kill",
                    source: e,
                });
            }
        }
        if signal == Signal::SIGKILL && self.paused {
            self.resume()?;
        }
        Ok(())
    }

    /// The container's memory cgroup: its directory, and whether v2.
    pub fn memory_cgroup(&self) -> Option<(PathBuf, bool)> {
        self.cgroup.memory_dir(self.pid)
    }

    /// Applies new cgroup limits (`Tasks.Update`).
    pub fn update(&mut self, resources: &LinuxResources) -> Result<(), IsolationError> {
        self.cgroup.update(self.pid, resources)?;
        Ok(())
    }

    /// Freezes the container's process in its cgroup.
    pub fn pause(&mut self) -> Result<(), IsolationError> {
        self.cgroup.freeze(true)?;
        self.paused = true;
        Ok(())
    }

    /// Thaws a paused container's process.
    pub fn resume(&mut self) -> Result<(), IsolationError> {
        self.cgroup.freeze(false)?;
        self.paused = false;
        Ok(())
    }

    /// Kills what is left and removes the cgroup.
    pub fn delete(&mut self) -> Result<(), IsolationError> {
        self.control = None;
        let _ = kill(self.pid, Signal::SIGKILL);
        if self.paused {
            let _ = self.resume();
        }
        // The process leaves its cgroup as it exits (reaped or not).
        let mut tries = 0;
        loop {
            match self.cgroup.remove() {
                Ok(()) => return Ok(()),
                Err(_) if tries < 400 && Path::new(&format!("/proc/{}", self.pid)).exists() => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.control.is_some() {
            // Never started: do not leave the process waiting.
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

/// `C`: finishes its isolation, reports, waits for start, runs.
/// What the container process sets up.
struct Target<'a> {
    bundle: &'a Path,
    spec: &'a Spec,
    ns: &'a Namespaces,
    cgroup: &'a ChildCgroup,
}

fn child(
    target: Target<'_>,
    stdio: Stdio,
    mut control: File,
    mut report: File,
    run: impl FnOnce() -> i32,
) -> ! {
    let mut byte = [0u8];
    // A systemd-made cgroup: wait until the daemon has put this process
    // there. A direct one it joins itself, without waiting for anybody.
    if target.cgroup.joined_by_daemon && (control.read_exact(&mut byte).is_err() || byte[0] != b'c')
    {
        std::process::exit(crate::exit::NOT_RUNNABLE);
    }
    if let Err(e) = setup(&target, stdio) {
        let mut msg = vec![1u8];
        msg.extend_from_slice(e.to_string().as_bytes());
        let _ = report.write_all(&msg);
        std::process::exit(crate::exit::NOT_RUNNABLE);
    }
    let _ = report.write_all(&[0]);
    drop(report);
    if control.read_exact(&mut byte).is_err() || byte[0] != b's' {
        // Deleted before it was started.
        std::process::exit(crate::exit::NOT_RUNNABLE);
    }
    drop(control);
    std::process::exit(run())
}

fn setup(target: &Target<'_>, stdio: Stdio) -> Result<(), IsolationError> {
    let Target {
        bundle,
        spec,
        ns,
        cgroup,
    } = *target;
    cgroup.join_self()?;
    for (fd, flag) in &ns.join {
        setns(fd.as_fd(), *flag).map_err(sys("join a namespace"))?;
    }
    if ns.new_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("new cgroup namespace"))?;
    }
    if ns.clone.contains(CloneFlags::CLONE_NEWUTS)
        && let Some(name) = spec.hostname()
    {
        // SAFETY: a pointer and length of a live byte string.
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            return Err(IsolationError::Sys {
                what: "sethostname",
                source: nix::Error::last(),
            });
        }
    }
    if ns.clone.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up()?;
    }
    root_filesystem(bundle, spec)?;
    redirect_stdio(stdio)?;
    if crate::tty::requested(spec) {
        // Its terminal (stdin) becomes its controlling terminal, so that
        // Ctrl-C reaches it as SIGINT, as under runc.
        nix::unistd::setsid().map_err(sys("setsid"))?;
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(IsolationError::Sys {
                what: "make the terminal the controlling terminal",
                source: nix::Error::last(),
            });
        }
    }

    let syscall = LinuxSyscall;
    let process = spec.process().as_ref();
    if let Some(rlimits) = process.and_then(|p| p.rlimits().as_ref()) {
        for rl in rlimits {
            syscall
                .set_rlimit(rl)
                .map_err(|e| IsolationError::Setup(format!("rlimit {:?}: {e}", rl.typ())))?;
        }
    }
    let caps = process.and_then(|p| p.capabilities().clone());
    if let Some(bounding) = caps.as_ref().and_then(|c| c.bounding().as_ref()) {
        let set = bounding.iter().map(|c| c.to_cap()).collect();
        syscall
            .set_capability(caps::CapSet::Bounding, &set)
            .map_err(|e| IsolationError::Setup(format!("bounding capabilities: {e}")))?;
    }
    if let Some(user) = process.map(|p| p.user()) {
        let keep = |on: bool| nix::sys::prctl::set_keepcaps(on).map_err(sys("PR_SET_KEEPCAPS"));
        keep(true)?;
        let groups: Vec<Gid> = user
            .additional_gids()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(Gid::from_raw)
            .collect();
        nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
        let gid = Gid::from_raw(user.gid());
        nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
        let uid = Uid::from_raw(user.uid());
        nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
        keep(false)?;
        if let Some(mask) = user.umask() {
            nix::sys::stat::umask(Mode::from_bits_truncate(mask));
        }
    }
    match &caps {
        Some(c) => libcontainer::capabilities::drop_privileges(c, &syscall)
            .map_err(|e| IsolationError::Setup(format!("capabilities: {e}")))?,
        None => {
            for set in [
                caps::CapSet::Ambient,
                caps::CapSet::Inheritable,
                caps::CapSet::Effective,
                caps::CapSet::Permitted,
            ] {
                caps::clear(None, set)
                    .map_err(|e| IsolationError::Setup(format!("capabilities: {e}")))?;
            }
        }
    }
    // A Wasm process never executes anything: no privilege to gain.
    nix::sys::prctl::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        if seccomp.listener_path().is_some() {
            return Err(IsolationError::Unsupported(
                "a seccomp notify listener".into(),
            ));
        }
        libcontainer::seccomp::initialize_seccomp(seccomp)
            .map_err(|e| IsolationError::Setup(format!("seccomp: {e}")))?;
    }
    Ok(())
}

/// Brings `lo` up in a new network namespace, as runc does.
fn loopback_up() -> Result<(), IsolationError> {
    // SAFETY: a new socket, owned by `sock` from here on.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(IsolationError::Sys {
            what: "socket for lo",
            source: nix::Error::last(),
        });
    }
    // SAFETY: `raw` is a descriptor this function just opened.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: an ifreq naming "lo", zeroed otherwise, used by two ioctls
    // on a socket this function owns.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(IsolationError::Sys {
                what: "read lo's flags",
                source: nix::Error::last(),
            });
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(IsolationError::Sys {
                what: "bring lo up",
                source: nix::Error::last(),
            });
        }
    }
    Ok(())
}

fn redirect_stdio(stdio: Stdio) -> Result<(), IsolationError> {
    for (file, target) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
        if let Some(f) = file {
            // SAFETY: dup2 onto a standard descriptor this process owns.
            if unsafe { libc::dup2(f.as_raw_fd(), target) } < 0 {
                return Err(IsolationError::Sys {
                    what: "dup2",
                    source: nix::Error::last(),
                });
            }
        }
    }
    Ok(())
}

/// The rootfs as `/`, with the spec's bind and tmpfs mounts on it.
fn root_filesystem(bundle: &Path, spec: &Spec) -> Result<(), IsolationError> {
    let root_spec = spec.root().as_ref();
    let root = match root_spec.map(|r| r.path().clone()) {
        Some(p) if p.is_absolute() => p,
        Some(p) => bundle.join(p),
        None => bundle.join("rootfs"),
    };
    let none: Option<&str> = None;
    // Nothing this process mounts propagates to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)
        .map_err(sys("make / a slave mount"))?;
    mount(
        Some(&root),
        &root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(sys("bind the rootfs"))?;
    // No device node or set-id file of the image is usable: a Wasm guest
    // gets its stdio as descriptors and never executes anything.
    let mut root_flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | SAFE;
    if root_spec.and_then(|r| r.readonly()).unwrap_or(false) {
        root_flags |= MsFlags::MS_RDONLY;
    }
    mount(none, &root, none, root_flags, none).map_err(sys("remount the rootfs nodev"))?;
    let root_fd = nix::fcntl::open(
        &root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open the rootfs"))?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(&root_fd, m)?;
    }
    nix::unistd::chdir(&root).map_err(sys("chdir to the rootfs"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Flags of every mount of a Wasm container.
const SAFE: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

/// Mount flags and the rest of the options (the data) of a spec mount.
fn mount_options(m: &Mount) -> (MsFlags, bool, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut recursive = false;
    let mut data = vec![];
    for o in m.options().as_deref().unwrap_or_default() {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "bind" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            "rbind" => recursive = true,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            other => data.push(other.to_string()),
        }
    }
    (flags, recursive, data)
}

fn mount_one(root: &OwnedFd, m: &Mount) -> Result<(), IsolationError> {
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = m.options().as_deref().unwrap_or_default();
    let is_bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
    let none: Option<&str> = None;
    let dest = m.destination();
    if is_bind {
        let Some(source) = m.source() else {
            return Err(IsolationError::Setup(format!(
                "bind mount {} has no source",
                dest.display()
            )));
        };
        let is_dir = std::fs::metadata(source)
            .map_err(|e| IsolationError::Setup(format!("mount source {}: {e}", source.display())))?
            .is_dir();
        let target = target_in_root(root, dest, is_dir)?;
        let (flags, recursive, _) = mount_options(m);
        let mut bind = MsFlags::MS_BIND;
        if recursive {
            bind |= MsFlags::MS_REC;
        }
        mount(Some(source), &target, none, bind, none).map_err(sys("bind mount"))?;
        mount(
            none,
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | SAFE | flags,
            none,
        )
        .map_err(sys("remount a bind mount"))?;
    } else if typ == "tmpfs" {
        let target = target_in_root(root, dest, true)?;
        let (flags, _, data) = mount_options(m);
        let data = data.join(",");
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            flags | SAFE,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(sys("mount tmpfs"))?;
    } else {
        // proc, sysfs, devpts, mqueue, cgroup...: nothing a Wasm guest can use.
        log::debug!(
            "not mounting {typ} at {} for a Wasm container",
            dest.display()
        );
    }
    Ok(())
}

/// `dest` inside `root`, symlinks resolved as if `root` were `/`, created
/// (a directory, or an empty file when `dir` is false) if missing; returns
/// its real path on the host.
fn target_in_root(root: &OwnedFd, dest: &Path, dir: bool) -> Result<PathBuf, IsolationError> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let parts: Vec<&OsStr> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut sofar = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        let parent = openat2(root, &sofar, how()).map_err(|e| {
            IsolationError::Setup(format!(
                "mount point {}: cannot resolve {} in the rootfs: {e}",
                dest.display(),
                sofar.display()
            ))
        })?;
        sofar.push(part);
        if openat2(root, &sofar, how()).is_ok() {
            continue;
        }
        let last = i + 1 == parts.len();
        let created = if last && !dir {
            nix::fcntl::openat(
                &parent,
                *part,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            mkdirat(&parent, *part, Mode::from_bits_truncate(0o755))
        };
        match created {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => {
                return Err(IsolationError::Setup(format!(
                    "create mount point {}: {e}",
                    dest.display()
                )));
            }
        }
    }
    let fd = openat2(root, &sofar, how()).map_err(sys("open a mount point"))?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| IsolationError::Setup(format!("resolve {}: {e}", dest.display())))?;
    // A path with a newline or similar is still a path; only refuse what
    // the kernel's readlink marks as gone.
    if real.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(IsolationError::Setup(format!(
            "mount point {} vanished",
            dest.display()
        )));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    use super::*;

    fn spec_with(ns: Vec<(LinuxNamespaceType, Option<&str>)>) -> Spec {
        let list = ns
            .into_iter()
            .map(|(typ, path)| {
                let mut b = LinuxNamespaceBuilder::default().typ(typ);
                if let Some(p) = path {
                    b = b.path(p);
                }
                b.build().expect("namespace")
            })
            .collect::<Vec<_>>();
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(list)
                    .build()
                    .expect("linux"),
            )
            .build()
            .expect("spec")
    }

    #[test]
    fn new_namespaces_are_cloned_and_paths_joined() {
        let ns = plan_namespaces(&spec_with(vec![
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Ipc, None),
            (LinuxNamespaceType::Network, Some("/proc/self/ns/net")),
            (LinuxNamespaceType::Cgroup, None),
        ]))
        .expect("plan");
        assert!(
            ns.clone
                .contains(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
        );
        assert!(ns.clone.contains(CloneFlags::CLONE_NEWIPC));
        assert!(!ns.clone.contains(CloneFlags::CLONE_NEWNET));
        assert_eq!(ns.join.len(), 1);
        assert_eq!(ns.join[0].1, CloneFlags::CLONE_NEWNET);
        assert!(ns.new_cgroup && ns.pid.is_none());
    }

    #[test]
    fn user_and_foreign_mount_namespaces_are_refused() {
        for spec in [
            spec_with(vec![(LinuxNamespaceType::User, None)]),
            spec_with(vec![(LinuxNamespaceType::Mount, Some("/proc/self/ns/mnt"))]),
        ] {
            assert!(matches!(
                plan_namespaces(&spec),
                Err(IsolationError::Unsupported(_))
            ));
        }
        assert!(matches!(
            plan_namespaces(&spec_with(vec![(
                LinuxNamespaceType::Network,
                Some("/nonexistent/netns")
            )])),
            Err(IsolationError::Namespace { .. })
        ));
    }

    #[test]
    fn mount_points_resolve_and_are_created_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        // An image's symlinks may point anywhere; they resolve in the root.
        std::os::unix::fs::symlink("/", root.join("up")).expect("symlink");
        std::os::unix::fs::symlink("../../../../data", root.join("etc/esc")).expect("symlink");
        let fd: OwnedFd = File::open(&root).expect("open").into();

        let t = target_in_root(&fd, Path::new("/up/data/cache"), true).expect("dir");
        assert_eq!(t, root.join("data/cache"));
        assert!(root.join("data/cache").is_dir());

        let t = target_in_root(&fd, Path::new("/etc/esc/hosts"), false).expect("file");
        assert_eq!(t, root.join("data/hosts"));
        assert!(root.join("data/hosts").is_file());
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let m = oci_spec::runtime::MountBuilder::default()
            .destination("/data")
            .typ("tmpfs")
            .options(vec![
                "ro".into(),
                "nosuid".into(),
                "rbind".into(),
                "size=64k".into(),
                "mode=755".into(),
            ])
            .build()
            .expect("mount");
        let (flags, recursive, data) = mount_options(&m);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert!(recursive);
        assert_eq!(data, vec!["size=64k", "mode=755"]);
    }
}

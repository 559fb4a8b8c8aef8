//! OOM kills in a Wasm container's memory cgroup, for containerd's
//! `TaskOOM` event (from which the CRI plugin reports a container's
//! `OOMKilled` reason), as runc's shim watches a runc container's.
//!
//! The kernel's notification wakes the watcher: on v1 an eventfd registered
//! for `memory.oom_control` through `cgroup.event_control`, on v2 an
//! inotify watch on `memory.events`. What counts is the cgroup's `oom_kill`
//! counter (in `memory.oom_control` since Linux 4.13, in `memory.events`):
//! one report per kill, none for the other wake-ups (an OOM the kernel
//! resolved without a kill, a v1 cgroup's removal). Where v1 lacks the
//! counter, every wake-up is reported, as containerd's v1 watcher does.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::manage::io;
use super::{CgroupError, ROOT, is_v2};

/// The memory cgroup a process is in, from `/proc/<pid>/cgroup`: its
/// directory and whether it is a v2 one.
pub fn memory_cgroup_of(pid: i32) -> Option<(PathBuf, bool)> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    memory_cgroup_in(&table, is_v2())
}

fn memory_cgroup_in(table: &str, v2: bool) -> Option<(PathBuf, bool)> {
    let rel = |p: &str| Path::new(ROOT).join(p.trim_start_matches('/'));
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if v2 && controllers.is_empty() {
            return Some((rel(path), true));
        }
        if !v2 && controllers.split(',').any(|c| c == "memory") {
            return Some((
                Path::new(ROOT)
                    .join("memory")
                    .join(path.trim_start_matches('/')),
                false,
            ));
        }
    }
    None
}

/// The `oom_kill` counter of `memory.oom_control` (v1) or `memory.events`
/// (v2).
fn kills_in(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// A container's memory cgroup, watched for OOM kills.
pub struct OomWatch {
    dir: PathBuf,
    wake: AsyncFd<OwnedFd>,
    /// `memory.oom_control` (v1) or `memory.events` (v2), read again at
    /// every check.
    counter: File,
    /// Kills reported so far; the lock orders reports.
    reported: Mutex<u64>,
}

impl OomWatch {
    /// Starts watching the memory cgroup `dir` (v2 when `v2`); the caller
    /// is in a Tokio runtime.
    pub fn new(dir: &Path, v2: bool) -> Result<Self, CgroupError> {
        let counter_path = dir.join(if v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        });
        let counter = File::open(&counter_path).map_err(io(&counter_path))?;
        let wake: OwnedFd = if v2 {
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                .map_err(|e| io(&counter_path)(e.into()))?;
            inotify
                .add_watch(&counter_path, AddWatchFlags::IN_MODIFY)
                .map_err(|e| io(&counter_path)(e.into()))?;
            inotify.into()
        } else {
            let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| io(dir)(e.into()))?;
            let control = dir.join("cgroup.event_control");
            let line = format!("{} {}", efd.as_raw_fd(), counter.as_raw_fd());
            std::fs::write(&control, line).map_err(io(&control))?;
            efd.into()
        };
        let reported = kills_in(&read(&counter)).unwrap_or(0);
        // SAFETY: the AsyncFd owns the descriptor, which nothing else closes
        // or registers.
        let wake = unsafe { AsyncFd::register_with_interest(wake, Interest::READABLE) }
            .map_err(|e| io(dir)(e.into()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            wake,
            counter,
            reported: Mutex::new(reported),
        })
    }

    /// Waits for the kernel's next notification (and takes it).
    pub async fn notified(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.wake.readable().await?;
            let mut buf = [0u8; 4096];
            match nix::unistd::read(self.wake.get_ref(), &mut buf) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Calls `report` for each OOM kill since the last call (`woken`: after
    /// a notification, which counts as one kill where the kernel keeps no
    /// counter). Reports are made under a lock, so one made here is in
    /// order before whatever the caller sends after this returns.
    pub fn report_kills(&self, woken: bool, mut report: impl FnMut()) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let new = match kills_in(&read(&self.counter)) {
            Some(now) => {
                let new = now.saturating_sub(*reported);
                *reported = now.max(*reported);
                new
            }
            // v1 before Linux 4.13; a removed cgroup wakes the eventfd too.
            None => u64::from(woken && self.dir.exists()),
        };
        for _ in 0..new {
            report();
        }
    }
}

/// The counter file's text: a few short lines, which cgroupfs returns
/// whole from one read at offset 0.
fn read(file: &File) -> String {
    let mut buf = [0u8; 4096];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cgroup_is_found_in_a_v1_and_a_v2_table() {
        let v1 = "12:pids:/a\n5:memory:/kubepods/pod1/c1\n1:name=systemd:/x\n0::/y\n";
        assert_eq!(
            memory_cgroup_in(v1, false),
            Some((
                PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1/c1"),
                false
            ))
        );
        let v2 = "0::/kubepods.slice/cri-c1.scope\n";
        assert_eq!(
            memory_cgroup_in(v2, true),
            Some((
                PathBuf::from("/sys/fs/cgroup/kubepods.slice/cri-c1.scope"),
                true
            ))
        );
        assert_eq!(memory_cgroup_in("3:cpu,cpuacct:/a\n", false), None);
    }

    #[test]
    fn kills_are_read_from_either_counter_file() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(kills_in(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(kills_in(v2), Some(2));
        assert_eq!(kills_in("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn an_oom_kill_in_a_real_memory_cgroup_is_reported_once() {
        use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
        if !crate::cgroup::tests::can_make_cgroups() {
            return;
        }
        let v2 = is_v2();
        let base = if v2 {
            PathBuf::from(ROOT)
        } else {
            Path::new(ROOT).join("memory")
        };
        assert!(base.is_dir(), "no memory cgroup hierarchy on this host");
        let dir = base.join(format!("wasmhybrid-oom-test-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("cgroup dir");
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _remove = Remove(dir.clone());
        let (limit, swap) = if v2 {
            ("memory.max", "memory.swap.max")
        } else {
            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        };
        std::fs::write(dir.join(limit), "16777216").expect("limit");
        // No swap to escape to, where the host has the file.
        let _ = std::fs::write(dir.join(swap), if v2 { "0" } else { "16777216" });

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let watch = OomWatch::new(&dir, v2).expect("watch");
            let mut reports = 0;
            watch.report_kills(false, || reports += 1);
            assert_eq!(reports, 0, "no kill yet");

            // The child joins the cgroup between fork and exec, then grows a
            // shell variable until the limit's OOM killer ends it.
            let procs = File::options()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .expect("cgroup.procs");
            let fd = procs.as_raw_fd();
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "x=0123456789abcdef; while :; do x=\"$x$x\"; done"]);
            // SAFETY: only write(2), async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            let mut child = cmd.spawn().expect("spawn");
            drop(procs);
            tokio::time::timeout(std::time::Duration::from_secs(30), watch.notified())
                .await
                .expect("notified within 30 s")
                .expect("notified");
            let status = child.wait().expect("wait");
            assert_eq!(status.signal(), Some(9), "killed by the OOM killer");
            watch.report_kills(true, || reports += 1);
            assert_eq!(reports, 1, "one kill reported");
            watch.report_kills(true, || reports += 1);
            assert_eq!(reports, 1, "and only once");
        });
    }
}

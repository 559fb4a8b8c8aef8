//! A terminal for a Wasm container whose task asks for one (`terminal:
//! true`: `ctr run -t`, `kubectl run -it`, `kubectl debug`), as runc's shim
//! gives a runc container its console.
//!
//! The daemon opens a pseudo-terminal; the container's process gets its
//! slave as stdin, stdout and stderr (so a WASI guest sees a terminal, and
//! the kernel's line discipline echoes, turns `\n` into `\r\n` and sends
//! SIGINT on Ctrl-C) and makes it its controlling terminal. The daemon
//! copies the client's stdin FIFO into the master and the master into the
//! stdout FIFO (a terminal has no separate stderr), and `Tasks.ResizePty`
//! sets the master's window size. After the process exits, its output is
//! drained from the master before the task's exit is published, so nothing
//! it wrote is lost.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd as _, IntoRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{Winsize, grantpt, posix_openpt, ptsname_r, unlockpt};
use oci_spec::runtime::Spec;
use tokio::sync::watch;

/// How long a task's exit waits for its terminal's output to end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the spec asks for a terminal (`process.terminal`).
pub fn requested(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// A container's pseudo-terminal, held by the shim daemon.
pub struct Tty {
    master: File,
    slave: PathBuf,
    /// Closed (its sender dropped) once the output is copied to its end.
    output_end: OnceLock<watch::Receiver<()>>,
    /// Dropping it stops the input copy.
    stop_input: Mutex<Option<OwnedFd>>,
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

impl Tty {
    /// Opens a new pseudo-terminal (its slave is opened by the container's
    /// process, by [`Tty::slave`]).
    pub fn open() -> std::io::Result<Self> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave = PathBuf::from(ptsname_r(&master)?);
        // SAFETY: the descriptor comes from the PtyMaster, which gives it up.
        let master = unsafe { File::from_raw_fd(master.into_raw_fd()) };
        Ok(Self {
            master,
            slave,
            output_end: OnceLock::new(),
            stop_input: Mutex::new(None),
        })
    }

    /// The slave's path (`/dev/pts/N`), the container's stdio.
    pub fn slave(&self) -> &Path {
        &self.slave
    }

    /// Starts copying: the stdin FIFO (if any) into the terminal, and the
    /// terminal's output into the stdout FIFO (if any; otherwise it is read
    /// and dropped, so the guest never blocks on a full terminal). Called
    /// once the container's process holds the slave.
    pub fn start(&self, stdin: &Path, stdout: &Path) -> std::io::Result<()> {
        let output = if stdout.as_os_str().is_empty() {
            None
        } else {
            Some(crate::stdio::open_output(stdout)?)
        };
        let mut master = self.master.try_clone()?;
        let (end, output_end) = watch::channel(());
        std::thread::Builder::new()
            .name("tty-out".into())
            .spawn(move || {
                copy_output(&mut master, output);
                drop(end);
            })?;
        let _ = self.output_end.set(output_end);
        if !stdin.as_os_str().is_empty() {
            let input = File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(stdin)?;
            let (stop_r, stop_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let mut master = self.master.try_clone()?;
            std::thread::Builder::new()
                .name("tty-in".into())
                .spawn(move || copy_input(input, &mut master, stop_r))?;
            *self.stop_input.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop_w);
        }
        Ok(())
    }

    /// `Tasks.ResizePty`.
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let size = Winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one Winsize, which outlives the call.
        unsafe { set_winsize(self.master.as_raw_fd(), &size) }?;
        Ok(())
    }

    /// After the process exited: stops the input copy and waits (up to 2 s)
    /// until the output is copied to its end. Any number of callers (the
    /// exit's publication, `Tasks.Wait`) may wait.
    pub async fn drained(&self) {
        self.stop_input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(end) = self.output_end.get() else {
            return;
        };
        let mut end = end.clone();
        // Nothing is ever sent: `changed` fails once the sender is dropped.
        let ended = async { while end.changed().await.is_ok() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, ended).await.is_err() {
            log::warn!(
                "{}: the terminal's output did not end within {DRAIN_TIMEOUT:?}",
                self.slave.display()
            );
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        self.stop_input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// Master -> stdout FIFO, until the last slave descriptor is closed (the
/// master then reads `EIO`).
fn copy_output(master: &mut File, mut output: Option<File>) {
    let mut buf = [0u8; 8192];
    let mut copied = 0usize;
    let end = loop {
        match master.read(&mut buf) {
            Ok(0) => break "end of file".to_string(),
            Ok(n) => {
                copied += n;
                if let Some(out) = output.as_mut()
                    && let Err(e) = out.write_all(&buf[..n])
                {
                    log::warn!("terminal output: {e}");
                    output = None;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // EIO: no slave left open.
            Err(e) => break e.to_string(),
        }
    };
    log::info!("terminal output: {copied} bytes, ended by {end}");
}

/// stdin FIFO -> master, until the FIFO ends (every writer gone: the
/// daemon's at `Tasks.CloseIO`) or `stop` is closed.
fn copy_input(mut input: File, master: &mut File, stop: OwnedFd) {
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = [
            PollFd::new(input.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if master.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_on_the_slave_is_copied_out_to_its_end_and_resized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("stdout");
        std::fs::write(&out, "").expect("stdout file");
        let tty = Tty::open().expect("pty");
        tty.resize(120, 33).expect("resize");
        let slave = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(tty.slave())
            .expect("slave");
        let mut size = Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one Winsize into `size`.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!((rc, size.ws_col, size.ws_row), (0, 120, 33));

        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo one; sleep 0.2; echo two >&2"])
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave)
            .spawn()
            .expect("spawn");
        tty.start(Path::new(""), &out).expect("start");
        assert!(child.wait().expect("wait").success());
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(tty.drained());
        assert_eq!(
            std::fs::read_to_string(&out).expect("output"),
            "one\r\ntwo\r\n"
        );
    }
}

//! Where a Wasm container's stdout and stderr go, from what containerd
//! gives `Tasks.Create`: a FIFO's path (the CRI plugin, `ctr run`), or a
//! logging URI (`ctr run --log-uri`, `nerdctl run -d`), which runc's shim
//! also takes:
//! - `file:///path`: both streams appended to the file (its directory is
//!   made if missing);
//! - `binary:///path/to/logger?key=value`: the logging binary is started
//!   as containerd's shims start it (arguments `key value` from the query,
//!   only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment, the
//!   read ends of a stdout and a stderr pipe as descriptors 3 and 4, a
//!   readiness pipe as 5, waited for), and the container writes into the
//!   pipes;
//! - `fifo:///path` or a plain path: the FIFO.
//!
//! The container's process opens its stdio by path in the zygote process
//! (see [`crate::executor`]); a logger's pipes are handed over as the
//! daemon's `/proc/<pid>/fd/<n>`.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How long a logging binary may take to say it is ready, and to exit
/// after the container's output ends.
const LOGGER_TIMEOUT: Duration = Duration::from_secs(10);

/// The container's stdout and stderr as paths its process opens, and the
/// logging binary behind them, if any.
pub struct Outputs {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub logger: Option<Logger>,
}

/// What `stdout`/`stderr` (as containerd sent them) come to; the empty
/// string is no stream.
pub fn resolve(stdout: &str, stderr: &str, id: &str, namespace: &str) -> Result<Outputs, String> {
    if let Some(uri) = stdout.strip_prefix("binary://") {
        if stderr != stdout && !stderr.is_empty() {
            return Err(format!(
                "stdout goes to the logging binary {stdout:?} but stderr to {stderr:?}"
            ));
        }
        let logger = Logger::start(uri, id, namespace)?;
        let fd = |f: &Option<OwnedFd>| {
            let n = f.as_ref().map(AsRawFd::as_raw_fd).unwrap_or(-1);
            PathBuf::from(format!("/proc/{}/fd/{n}", std::process::id()))
        };
        return Ok(Outputs {
            stdout: fd(&logger.pipes[0]),
            stderr: fd(&logger.pipes[1]),
            logger: Some(logger),
        });
    }
    Ok(Outputs {
        stdout: plain(stdout)?,
        stderr: plain(stderr)?,
        logger: None,
    })
}

/// A FIFO or file path from a plain path, `fifo://` or `file://` URI.
fn plain(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() || s.starts_with('/') {
        return Ok(PathBuf::from(s));
    }
    let url = url::Url::parse(s).map_err(|e| format!("stdio {s:?}: {e}"))?;
    match url.scheme() {
        "fifo" => Ok(PathBuf::from(url.path())),
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| format!("stdio {s:?}: not a local file path"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("stdio {s:?}: create {}: {e}", dir.display()))?;
            }
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                File::options()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(&path)
                    .map_err(|e| format!("stdio {s:?}: {e}"))?;
            }
            Ok(path)
        }
        other => Err(format!(
            "stdio {s:?}: unsupported scheme {other:?} (fifo, file and binary are)"
        )),
    }
}

/// Opens a container's stdout or stderr with one `open`: read-write, so
/// that opening a FIFO (or a logger's pipe) never waits for a reader, and
/// appending, which a `file://` log needs (the daemon made the file) and a
/// FIFO ignores.
pub fn open_output(path: &Path) -> std::io::Result<File> {
    File::options().read(true).append(true).open(path)
}

/// A logging binary (`binary://`), fed by the container through two pipes.
pub struct Logger {
    child: Child,
    /// The write ends of its stdout and stderr pipes, until the container's
    /// process holds them.
    pipes: [Option<OwnedFd>; 2],
    done: bool,
}

impl Logger {
    fn start(uri: &str, id: &str, namespace: &str) -> Result<Self, String> {
        let url = url::Url::parse(&format!("binary://{uri}"))
            .map_err(|e| format!("logging binary {uri:?}: {e}"))?;
        let binary = PathBuf::from(url.path());
        if !binary.is_absolute() {
            return Err(format!("logging binary {uri:?}: not an absolute path"));
        }
        let mut args = vec![];
        for (k, v) in url.query_pairs() {
            args.push(k.into_owned());
            if !v.is_empty() {
                args.push(v.into_owned());
            }
        }
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let given = [
            stdout_r.as_raw_fd(),
            stderr_r.as_raw_fd(),
            ready_w.as_raw_fd(),
        ];
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .env_clear()
            .env("CONTAINER_ID", id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only dup2 (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Above 5 first, so that placing one does not overwrite
                // another still to be placed.
                let mut high = [0; 3];
                for (i, fd) in given.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("start the logging binary {}: {e}", binary.display()))?;
        drop((stdout_r, stderr_r, ready_w));
        let mut logger = Self {
            child,
            pipes: [Some(stdout_w), Some(stderr_w)],
            done: false,
        };
        // Ready: it wrote to or closed descriptor 5 (or exited).
        let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(LOGGER_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => Ok(logger),
            Ok(_) => {
                logger.kill();
                Err(format!(
                    "the logging binary {} was not ready within {LOGGER_TIMEOUT:?}",
                    binary.display()
                ))
            }
            Err(e) => {
                logger.kill();
                Err(format!("waiting for the logging binary: {e}"))
            }
        }
    }

    /// Once the container's process holds the pipes: the daemon's write
    /// ends are closed, so that the logger sees the end when it exits.
    pub fn handed_over(&mut self) {
        self.pipes = [None, None];
    }

    /// After the container's process is gone: waits (bounded) for the
    /// logger to take the rest of the output and exit.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.handed_over();
        let deadline = Instant::now() + LOGGER_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        log::warn!("the logging binary did not exit within {LOGGER_TIMEOUT:?}: killed");
        self.kill();
    }

    fn kill(&mut self) {
        self.done = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_uris_resolve_as_containerd_means_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(plain("").expect("none"), PathBuf::new());
        assert_eq!(
            plain("/run/x/1-stdout").expect("path"),
            Path::new("/run/x/1-stdout")
        );
        assert_eq!(
            plain("fifo:///run/x/f").expect("fifo"),
            Path::new("/run/x/f")
        );
        let log = dir.path().join("made/c.log");
        let uri = format!("file://{}", log.display());
        assert_eq!(plain(&uri).expect("file"), log);
        assert!(log.parent().expect("dir").is_dir(), "the directory is made");
        let err = plain("http://example/x").expect_err("unsupported");
        assert!(err.contains("unsupported scheme \"http\""), "{err}");
        let err = resolve("binary:///bin/true", "/run/x/err", "c", "ns")
            .err()
            .expect("split");
        assert!(err.contains("stderr to"), "{err}");
        let err = resolve("binary:///nonexistent/logger", "", "c", "ns")
            .err()
            .expect("missing");
        assert!(
            err.contains("start the logging binary /nonexistent/logger"),
            "{err}"
        );
    }

    #[test]
    fn a_file_is_appended_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        std::fs::write(&log, "").expect("made by resolve");
        for line in ["one\n", "two\n"] {
            std::io::Write::write_all(&mut open_output(&log).expect("open"), line.as_bytes())
                .expect("write");
        }
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "one\ntwo\n");
    }
}

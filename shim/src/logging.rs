//! The shim's log, written into containerd's own log.
//!
//! containerd reads a shim's log from the `log` FIFO in each container's
//! bundle, and stops reading it (and removes the bundle) when that
//! container is deleted. One daemon serves many containers
//! ([`crate::daemon`]), so it keeps a FIFO per live container and writes
//! each line to the newest one still read: a line is lost only when no
//! container of the daemon is left. A container's process logs only to
//! that container's FIFO ([`for_container`], set by its zygote process
//! for the clone and dropped there after it, [`detach`]).
//!
//! Lines are containerd's logfmt (`time=… level=… msg=…`), as the
//! `containerd-shim` crate writes them.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Mutex;

/// A log FIFO and the container it belongs to (empty: the FIFO of the
/// container whose `start` spawned the daemon, opened before the daemon
/// knows it; that container has a sink of its own too).
struct Sink {
    id: String,
    fifo: File,
}

struct State {
    /// Oldest first; lines go to the last one.
    sinks: Vec<Sink>,
    /// ` key="value"` pairs added to every line (the container's id, pod).
    fields: String,
}

static STATE: Mutex<State> = Mutex::new(State {
    sinks: Vec::new(),
    fields: String::new(),
});

struct Logger;

static LOGGER: Logger = Logger;

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens `bundle/log` for writing without blocking: containerd has it open
/// for reading from before the shim's `start` until the container is gone.
fn open_fifo(bundle: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(bundle.join("log"))
}

/// Installs the logger, writing to `bundle/log` (the FIFO of the container
/// whose `start` spawned this process). The level is `RUST_LOG`, else
/// `info`, at least `debug` with containerd's `-debug`.
pub fn init(bundle: &Path, debug: bool) {
    if let Ok(fifo) = open_fifo(bundle) {
        state().sinks.push(Sink {
            id: String::new(),
            fifo,
        });
    }
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| log::LevelFilter::from_str(&l).ok())
        .unwrap_or(log::LevelFilter::Info);
    let level = if debug {
        level.max(log::LevelFilter::Debug)
    } else {
        level
    };
    log::set_max_level(level);
    let _ = log::set_logger(&LOGGER);
}

/// The daemon takes on a container: its lines may now go to its FIFO.
pub fn add_container(id: &str, bundle: &Path) {
    match open_fifo(bundle) {
        Ok(fifo) => state().sinks.push(Sink {
            id: id.to_string(),
            fifo,
        }),
        Err(e) => log::warn!("cannot open the log FIFO of {id}: {e}"),
    }
}

/// The daemon is done with a container: containerd stops reading its FIFO.
pub fn remove_container(id: &str) {
    state().sinks.retain(|s| s.id != id);
}

/// In a zygote process between containers: log nowhere (no container's
/// FIFO stays open in it).
pub fn detach() {
    let mut state = state();
    state.sinks.clear();
    state.fields.clear();
}

/// In a zygote process, for the container it clones next: log only to that
/// container's FIFO,
/// every line tagged with its id (and pod).
pub fn for_container(bundle: &Path, id: &str, pod: Option<&str>) {
    let fifo = open_fifo(bundle);
    let mut state = state();
    state.sinks.clear();
    if let Ok(fifo) = fifo {
        state.sinks.push(Sink {
            id: id.to_string(),
            fifo,
        });
    }
    state.fields = format!(" instance=\"{id}\"");
    if let Some(pod) = pod {
        let _ = write!(state.fields, " pod=\"{pod}\"");
    }
}

/// One logfmt line, as containerd's Go logger writes them.
fn format_line(level: log::Level, fields: &str, msg: &str) -> String {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let msg = msg.replace('\\', "\\\\").replace('"', "\\\"");
    let level = level.as_str().to_ascii_lowercase();
    format!("time=\"{time}\" level={level}{fields} msg=\"{msg}\"\n")
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut state = state();
        let line = format_line(record.level(), &state.fields, &record.args().to_string());
        // The newest FIFO first. A full pipe (containerd not keeping up)
        // drops the line instead of stalling the daemon. A FIFO without a
        // reader (EPIPE) is skipped: a live container's is kept, as
        // containerd reads it again once it restarts; the daemon's first,
        // which outlives its container, is dropped.
        let mut i = state.sinks.len();
        while i > 0 {
            i -= 1;
            match state.sinks[i].fifo.write(line.as_bytes()) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) if state.sinks[i].id.is_empty() => {
                    state.sinks.remove(i);
                }
                Err(_) => {}
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd stops (its reader of a container's FIFO is gone) and
    /// starts again (it opens the FIFO again): the container's lines reach
    /// it again; only those written in between are lost.
    #[test]
    fn a_containers_fifo_is_written_again_after_containerd_restarts() {
        use log::Log as _;
        use std::io::Read as _;
        let bundle = tempfile::tempdir().expect("tempdir");
        let fifo = bundle.path().join("log");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
        let open_reader = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .expect("open the reader")
        };
        log::set_max_level(log::LevelFilter::Info);
        let line = |text: &str| {
            LOGGER.log(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .args(format_args!("{text}"))
                    .build(),
            );
        };
        let read_all = |reader: &mut File| {
            let mut out = String::new();
            let _ = reader.read_to_string(&mut out);
            out
        };

        let mut reader = open_reader();
        add_container("restart-test", bundle.path());
        line("before");
        assert!(read_all(&mut reader).contains("msg=\"before\""));
        drop(reader);
        line("while containerd is down");
        let mut reader = open_reader();
        line("after");
        let out = read_all(&mut reader);
        remove_container("restart-test");
        assert!(out.contains("msg=\"after\""), "{out:?}");
        assert!(!out.contains("down"), "{out:?}");
    }

    #[test]
    fn lines_are_logfmt_with_quotes_escaped() {
        let line = format_line(log::Level::Warn, " instance=\"a\"", "say \"hi\"");
        assert!(line.starts_with("time=\""), "{line}");
        assert!(
            line.ends_with(" level=warn instance=\"a\" msg=\"say \\\"hi\\\"\"\n"),
            "{line}"
        );
    }
}

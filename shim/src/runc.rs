//! Delegation to runc: containers that are not Wasm (native images, the pod
//! sandbox) and those tagged heavy-I/O run under containerd's own
//! `containerd-shim-runc-v2` and Debian's `runc`.
//!
//! Design: the choice is made at shim `start`, where the bundle's
//! `config.json` and the image metadata in containerd are available. For a
//! delegated container this process then *becomes* the runc shim
//! (`execve` with the same argv, environment and stdin, which carries the
//! runtime options), so the runc shim starts its own daemon and prints its
//! own socket address, and containerd talks to it directly for the rest of
//! the container's life: create, start, exec, kill, pause, metrics, OOM
//! events, delete, and reconnecting after a containerd restart. There is no
//! proxy and no extra hop, so fidelity is runc's own. The decision is
//! recorded in the bundle ([`DECISION_FILE`]) so that the `delete` action
//! (which containerd runs to clean up after a dead shim) goes to the same
//! shim.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dispatch::{Route, Runtime};

/// containerd's runc shim, looked up on `PATH`.
pub const RUNC_SHIM: &str = "containerd-shim-runc-v2";
/// The decision, written into the container's bundle directory.
pub const DECISION_FILE: &str = "wasmhybrid-dispatch.json";

/// What [`DECISION_FILE`] holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recorded {
    pub runtime: String,
    pub reason: String,
}

/// Why delegation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error(
        "{RUNC_SHIM} not found on PATH ({path}); install containerd's runc shim (Debian: apt-get install containerd runc)"
    )]
    ShimNotFound { path: String },
    #[error("cannot exec {shim}: {source}")]
    Exec { shim: PathBuf, source: nix::Error },
    #[error("cannot record the decision in {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the decision into `bundle`.
pub fn record(bundle: &Path, route: &Route) -> Result<(), RuncError> {
    let path = bundle.join(DECISION_FILE);
    let rec = Recorded {
        runtime: route.runtime.to_string(),
        reason: route.reason.clone(),
    };
    let json = serde_json::to_vec(&rec).unwrap_or_default();
    std::fs::write(&path, json).map_err(|source| RuncError::Record { path, source })
}

/// Whether `bundle` holds a container that was delegated to runc.
pub fn is_delegated(bundle: &Path) -> bool {
    std::fs::read(bundle.join(DECISION_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Recorded>(&b).ok())
        .is_some_and(|r| r.runtime == Runtime::Runc.to_string())
}

/// Finds the runc shim on `PATH`.
pub fn find_shim() -> Result<PathBuf, RuncError> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(RUNC_SHIM))
        .find(|p| p.is_file())
        .ok_or(RuncError::ShimNotFound { path })
}

/// Replaces this process with the runc shim, passing `args` (without
/// argv[0]) unchanged. Returns only on failure.
pub fn exec_shim(args: &[OsString]) -> RuncError {
    let shim = match find_shim() {
        Ok(s) => s,
        Err(e) => return e,
    };
    let cstr = |s: &[u8]| CString::new(s).unwrap_or_default();
    let mut argv = vec![cstr(shim.as_os_str().as_bytes())];
    argv.extend(args.iter().map(|a| cstr(a.as_bytes())));
    match nix::unistd::execv(&cstr(shim.as_os_str().as_bytes()), &argv) {
        Err(source) => RuncError::Exec { shim, source },
        Ok(never) => match never {},
    }
}

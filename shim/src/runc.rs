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
//! goes to the same shim.
//!
//! containerd 1.6 runs the runtime binary's `delete` action after every
//! task deletion, not only after a dead shim. When runc's state for the
//! container is already gone and its rootfs is unmounted, runc's shim would
//! find nothing to do and print "exited 137"; [`already_cleaned`] detects
//! that and [`cleaned_response`] answers the same without starting a Go
//! process and `runc delete`. Anything left (a dead shim's container) goes
//! to runc's shim.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dispatch::{ImageMeta, LayerInfo, Route, Runtime};

/// containerd's runc shim, looked up on `PATH`.
pub const RUNC_SHIM: &str = "containerd-shim-runc-v2";
/// The decision, written into the container's bundle directory.
pub const DECISION_FILE: &str = "wasmhybrid-dispatch.json";

/// What [`DECISION_FILE`] holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recorded {
    pub runtime: String,
    pub reason: String,
    /// The container's image (`namespace/name`), if it has one.
    #[serde(default)]
    pub image: Option<String>,
    /// The image's Wasm layers, so that the Wasm daemon need not ask
    /// containerd again.
    #[serde(default)]
    pub wasm_layers: Option<Vec<LayerInfo>>,
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

/// Writes the decision into `bundle`, with what the Wasm daemon needs of
/// the image (`meta` is `None` for a pod sandbox, which has no image).
pub fn record(
    bundle: &Path,
    route: &Route,
    namespace: &str,
    meta: Option<&ImageMeta>,
) -> Result<(), RuncError> {
    let path = bundle.join(DECISION_FILE);
    let rec = Recorded {
        runtime: route.runtime.to_string(),
        reason: route.reason.clone(),
        image: meta.map(|m| format!("{namespace}/{}", m.name)),
        wasm_layers: Some(meta.map(|m| m.wasm_layers.clone()).unwrap_or_default()),
    };
    let json = serde_json::to_vec(&rec).unwrap_or_default();
    std::fs::write(&path, json).map_err(|source| RuncError::Record { path, source })
}

/// Reads back what [`record`] wrote, if anything.
pub fn read_record(bundle: &Path) -> Option<Recorded> {
    std::fs::read(bundle.join(DECISION_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether `bundle` holds a container that was delegated to runc.
pub fn is_delegated(bundle: &Path) -> bool {
    read_record(bundle).is_some_and(|r| r.runtime == Runtime::Runc.to_string())
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

/// runc's state root used by `containerd-shim-runc-v2` unless the runtime
/// options set another.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// runc's state root for this bundle: the `root` runtime option recorded in
/// `options.json`, or [`DEFAULT_RUNC_ROOT`].
fn runc_root(bundle: &Path) -> PathBuf {
    std::fs::read(bundle.join("options.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            ["root", "Root"]
                .iter()
                .find_map(|k| v.get(k).and_then(|r| r.as_str()).map(PathBuf::from))
        })
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNC_ROOT))
}

/// Whether a delegated container is already fully cleaned up: no runc
/// state for it and nothing mounted on the bundle's rootfs.
pub fn already_cleaned(bundle: &Path, namespace: &str, id: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let state = runc_root(bundle).join(namespace).join(id);
    if state.exists() {
        return false;
    }
    match (
        std::fs::metadata(bundle),
        std::fs::symlink_metadata(bundle.join("rootfs")),
    ) {
        (Ok(b), Ok(r)) => b.dev() == r.dev(),
        (Ok(_), Err(e)) => e.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// The shim API's `DeleteResponse` (containerd
/// `api/runtime/task/v2/shim.proto`), as the `delete` action prints it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(uint32, tag = "2")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "3")]
    pub exited_at: Option<prost_types::Timestamp>,
}

/// What `containerd-shim-runc-v2 delete` answers for a cleaned-up
/// container: exit status 137, exited now, and the init pid if recorded.
pub fn cleaned(bundle: &Path) -> DeleteResponse {
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    DeleteResponse {
        pid,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
    }
}

/// [`cleaned`], encoded for stdout.
pub fn cleaned_response(bundle: &Path) -> Vec<u8> {
    prost::Message::encode_to_vec(&cleaned(bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_runc_state_or_mount_is_cleaned() {
        let bundle = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(bundle.path().join("rootfs")).expect("rootfs");
        std::fs::write(
            bundle.path().join("options.json"),
            r#"{"root":"/nonexistent-runc-root"}"#,
        )
        .expect("options");
        assert!(already_cleaned(bundle.path(), "ns", "id"));
        std::fs::write(bundle.path().join("init.pid"), "4242").expect("pid");
        let resp = cleaned(bundle.path());
        assert_eq!((resp.pid, resp.exit_status), (4242, 137));
        let decoded: DeleteResponse =
            prost::Message::decode(cleaned_response(bundle.path()).as_slice()).expect("decode");
        assert_eq!(decoded.pid, 4242);
        assert!(decoded.exited_at.is_some_and(|t| t.seconds > 0));
    }

    #[test]
    fn remaining_runc_state_is_not_cleaned() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("ns/id")).expect("state");
        let bundle = tempfile::tempdir().expect("tempdir");
        let opts = serde_json::json!({"root": root.path()});
        std::fs::write(bundle.path().join("options.json"), opts.to_string()).expect("options");
        assert!(!already_cleaned(bundle.path(), "ns", "id"));
    }

    #[test]
    fn decision_round_trips_through_the_bundle() {
        let bundle = tempfile::tempdir().expect("tempdir");
        assert!(!is_delegated(bundle.path()));
        let route = Route {
            runtime: Runtime::Runc,
            reason: "native image".into(),
        };
        record(bundle.path(), &route, "ns", None).expect("record");
        assert!(is_delegated(bundle.path()));
        let rec = read_record(bundle.path()).expect("read");
        assert_eq!(rec.image, None);
        assert_eq!(rec.wasm_layers, Some(vec![]));
    }
}

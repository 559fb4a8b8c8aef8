//! The binary containerd runs, `containerd-shim-wasmhybrid-v1`: a small
//! launcher for containerd's per-container actions. containerd runs it twice
//! for every container, so it is built small and static (no Wasmtime, no
//! dynamic loader; see `scripts/build-shim.sh`):
//!
//! - `start` (cwd = the bundle): decide the runtime ([`dispatch::route`]);
//!   for runc, hand over to `containerd-shim-runc-v2` ([`crate::runc`]);
//!   for Wasm, print the address of the group's daemon ([`group::lease`]),
//!   spawning one if none is up;
//! - `delete`: clean up after a container's shim connection closed, by
//!   whichever shim owned it;
//! - anything else (`-v`, `-info`, `cache ...`, no action): the daemon
//!   binary, `wasmhybrid`, beside this one, with the same arguments.
//!
//! `start` must print nothing but the address on stdout and stderr
//! (containerd reads both as one), so its decision is logged through the
//! bundle's `log` FIFO, which containerd copies into its own log.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dispatch::{self, Route, Runtime};
use crate::group::{self, Group, SpawnOpts};
use crate::{image, route, runc};

/// The flags containerd passes a shim (its Go shims' `flag` set).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub debug: bool,
    pub namespace: String,
    pub id: String,
    pub socket: String,
    pub bundle: String,
    /// containerd's gRPC address.
    pub address: String,
    pub publish_binary: String,
    /// `start`, `delete`, or empty for the daemon.
    pub action: String,
    pub version: bool,
    pub info: bool,
}

/// Parses containerd's shim command line (without argv\[0\]), Go-style
/// (`-flag value`, `-flag=value`, then the action).
pub fn parse<S: AsRef<OsStr>>(args: &[S]) -> Result<Flags, String> {
    let mut f = Flags::default();
    let rest: Vec<String> = go_flag::parse_args(args, |p| {
        p.add_flag("debug", &mut f.debug);
        p.add_flag("v", &mut f.version);
        p.add_flag("namespace", &mut f.namespace);
        p.add_flag("id", &mut f.id);
        p.add_flag("socket", &mut f.socket);
        p.add_flag("bundle", &mut f.bundle);
        p.add_flag("address", &mut f.address);
        p.add_flag("publish-binary", &mut f.publish_binary);
        p.add_flag("info", &mut f.info);
    })
    .map_err(|e| e.to_string())?;
    if let Some(action) = rest.first() {
        f.action = action.clone();
    }
    Ok(f)
}

/// The launcher's entry point.
pub fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let code = match parse(&args[1..]) {
        Ok(flags) if flags.action == "start" && !flags.version && !flags.info => {
            start(&flags, &args[1..])
        }
        Ok(flags) if flags.action == "delete" && !flags.version && !flags.info => {
            delete(&flags, &args[1..])
        }
        _ => {
            let err = exec_daemon_binary(&args);
            eprintln!("wasmhybrid: {err}");
            1
        }
    };
    std::process::exit(code);
}

/// Replaces this process with the daemon binary, same argv (argv\[0\]
/// included) and environment. Returns only on failure.
fn exec_daemon_binary(args: &[OsString]) -> String {
    let binary = match group::daemon_binary() {
        Ok(b) => b,
        Err(e) => return e.to_string(),
    };
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).unwrap_or_default();
    let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect();
    match nix::unistd::execv(&cstr(binary.as_os_str()), &argv) {
        Err(e) => format!("cannot exec {}: {e}", binary.display()),
        Ok(never) => match never {},
    }
}

/// What `start` and `delete` read of the bundle's `config.json`.
#[derive(Debug, Default, Deserialize)]
struct BundleSpec {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    linux: Option<BundleLinux>,
}

#[derive(Debug, Default, Deserialize)]
struct BundleLinux {
    #[serde(rename = "cgroupsPath", default)]
    cgroups_path: Option<String>,
}

fn load_spec(bundle: &Path) -> Result<BundleSpec, String> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `start` action; returns the process exit code.
pub fn start(flags: &Flags, args: &[OsString]) -> i32 {
    let bundle = std::env::current_dir().unwrap_or_default();
    match decide(flags, &bundle) {
        Ok(Decided {
            route,
            meta,
            from_daemon,
            group,
        }) => {
            let via = match from_daemon {
                Some(route::Source::Containerd) => " (image facts from the group's shim daemon)",
                Some(route::Source::Events) => {
                    " (image facts from the group's shim daemon, known from containerd's events)"
                }
                None => "",
            };
            log_to_containerd(
                &bundle,
                flags,
                &format!("dispatch: {}: {}{via}", route.runtime, route.reason),
            );
            if let Err(e) = runc::record(&bundle, &route, &flags.namespace, meta.as_ref()) {
                eprintln!("wasmhybrid: {e}");
                return 1;
            }
            match route.runtime {
                Runtime::Runc => {
                    let err = runc::exec_shim(args);
                    eprintln!("wasmhybrid: {err}");
                    1
                }
                Runtime::Wasm => start_wasm(flags, group),
            }
        }
        Err(msg) => {
            log_to_containerd(&bundle, flags, &format!("cannot start container: {msg}"));
            eprintln!("wasmhybrid: {msg}");
            1
        }
    }
}

/// What `start` decided, and what it needs to hand a Wasm container out.
struct Decided {
    route: Route,
    meta: Option<dispatch::ImageMeta>,
    /// The image facts came from the group's daemon (and how it knew).
    from_daemon: Option<route::Source>,
    /// The group a Wasm container goes to and its linger, or why the
    /// sharing settings are bad (reported only for a Wasm container).
    group: Result<(Group, Duration), String>,
}

fn decide(flags: &Flags, bundle: &Path) -> Result<Decided, String> {
    let spec = load_spec(bundle).map_err(|e| format!("cannot read the bundle's spec: {e}"))?;
    let annotations = spec.annotations.unwrap_or_default();
    let group = group_of(flags, &annotations);
    let (meta, from_daemon) = if dispatch::is_pod_sandbox(&annotations) {
        (None, None)
    } else {
        let routed = group
            .as_ref()
            .ok()
            .and_then(|(g, _)| route::ask(g, &flags.id));
        let from_daemon = routed.as_ref().map(|(_, source)| *source);
        let meta = match routed {
            Some((answer, _)) => answer,
            None => image::lookup(&flags.address, &flags.namespace, &flags.id)
                .map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("cannot read the image's metadata: {e}"))?;
        (meta, from_daemon)
    };
    let route = dispatch::route(&annotations, meta.as_ref()).map_err(|e| e.to_string())?;
    Ok(Decided {
        route,
        meta,
        from_daemon,
        group,
    })
}

/// The `delete` action: containerd runs it after every task's shim
/// connection closes. A delegated container's goes to runc's shim unless
/// runc has nothing left; a Wasm container's daemon normally removed
/// everything already, so this only answers; after a daemon died, it kills
/// and removes what is left in the container's cgroup (containerd unmounts
/// the rootfs itself).
pub fn delete(flags: &Flags, args: &[OsString]) -> i32 {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        PathBuf::from(&flags.bundle)
    };
    if runc::is_delegated(&bundle) {
        if !runc::already_cleaned(&bundle, &flags.namespace, &flags.id) {
            log_to_containerd(
                &bundle,
                flags,
                "delete: runc state remains, handing cleanup to containerd-shim-runc-v2",
            );
            let err = runc::exec_shim(args);
            eprintln!("wasmhybrid: {err}");
            return 1;
        }
    } else {
        let cgroup = load_spec(&bundle)
            .ok()
            .and_then(|s| s.linux)
            .and_then(|l| l.cgroups_path)
            .map(PathBuf::from);
        let removed = crate::cgroup::remove_leftover(cgroup.as_deref(), &flags.id);
        if !removed.is_empty() {
            log_to_containerd(
                &bundle,
                flags,
                &format!("delete: removed the cgroup left by a dead shim: {removed:?}"),
            );
        }
    }
    let resp = runc::cleaned_response(&bundle);
    let mut out = std::io::stdout().lock();
    if out.write_all(&resp).is_ok() && out.flush().is_ok() {
        0
    } else {
        1
    }
}

/// The group a container goes to if it is Wasm (a pod's, the namespace's,
/// or its own: [`group::Settings`]) and its linger.
fn group_of(
    flags: &Flags,
    annotations: &HashMap<String, String>,
) -> Result<(Group, Duration), String> {
    let settings = group::Settings::from_env()?;
    let pod = annotations
        .get(dispatch::SANDBOX_ID_ANNOTATION)
        .map(String::as_str);
    let (key, linger) = settings.group_of(&flags.id, pod);
    Ok((Group::new(&flags.address, &flags.namespace, &key), linger))
}

/// Hands a Wasm container to its group's daemon, starting one if none is
/// up, and prints the daemon's address.
fn start_wasm(flags: &Flags, group: Result<(Group, Duration), String>) -> i32 {
    let (group, linger) = match group {
        Ok(g) => g,
        Err(e) => {
            eprintln!("wasmhybrid: {e}");
            return 1;
        }
    };
    let opts = SpawnOpts {
        id: flags.id.clone(),
        namespace: flags.namespace.clone(),
        address: flags.address.clone(),
        debug: flags.debug,
    };
    match group::lease(&group, opts, linger) {
        Ok(address) => {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{address}");
            let _ = out.flush();
            0
        }
        Err(e) => {
            eprintln!("wasmhybrid: {e}");
            1
        }
    }
}

/// Writes one info line into containerd's log through the bundle's `log`
/// FIFO (best effort: without a reader there is nobody to tell).
fn log_to_containerd(bundle: &Path, flags: &Flags, msg: &str) {
    let Ok(mut fifo) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"))
    else {
        return;
    };
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let msg = msg.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(
        fifo,
        "time=\"{time}\" level=info msg=\"{msg}\" id={} namespace={} runtime=io.containerd.wasmhybrid.v1",
        flags.id, flags.namespace
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerds_shim_command_lines() {
        let f = parse(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ])
        .expect("start");
        assert_eq!(
            (f.namespace.as_str(), f.id.as_str(), f.action.as_str()),
            ("k8s.io", "c1", "start")
        );
        assert!(f.debug && !f.version);
        let f = parse(&["-namespace=ns", "-id=c2", "-bundle", "/b", "delete"]).expect("delete");
        assert_eq!((f.bundle.as_str(), f.action.as_str()), ("/b", "delete"));
        assert!(parse(&["-v"]).expect("version").version);
        assert!(parse(&["-nope", "start"]).is_err());
    }

    #[test]
    fn bundle_spec_reads_annotations_and_cgroup_path_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["x"]},
                "annotations":{"io.kubernetes.cri.sandbox-id":"p1"},
                "linux":{"cgroupsPath":"/kubepods/x","namespaces":[]}}"#,
        )
        .expect("write");
        let s = load_spec(dir.path()).expect("spec");
        assert_eq!(
            s.annotations.expect("annotations")["io.kubernetes.cri.sandbox-id"],
            "p1"
        );
        assert_eq!(
            s.linux.and_then(|l| l.cgroups_path).as_deref(),
            Some("/kubepods/x")
        );
        std::fs::write(dir.path().join("config.json"), "{").expect("write");
        let e = load_spec(dir.path()).unwrap_err();
        assert!(e.contains("config.json"), "{e}");
    }
}

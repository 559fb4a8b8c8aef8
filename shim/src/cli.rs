//! The binary's entry point. containerd runs the shim with an action:
//!
//! - `start` (cwd = the bundle): decide the runtime ([`dispatch::route`]);
//!   for runc, hand over to `containerd-shim-runc-v2` ([`crate::runc`]);
//!   for Wasm, print the address of the group's daemon ([`daemon::lease`]),
//!   spawning it if none is up;
//! - `delete`: clean up after a dead shim, by whichever shim owned it;
//! - no action: the long-running shim daemon ([`daemon`]), shared by a
//!   group of containers;
//! - `cache ...` (or run as `wasmhybrid`): the operator tool ([`tool`]).
//!
//! `start` must print nothing but the address on stdout and stderr
//! (containerd reads both as one), so its decision is logged through the
//! bundle's `log` FIFO, which containerd copies into its own log.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use containerd_shim::{Flags, StartOpts};
use oci_spec::runtime::Spec;

use crate::dispatch::{self, Route, Runtime};
use crate::{daemon, image, runc, tool};

/// Environment variable containerd sets with its TTRPC address.
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// Runs the shim binary.
pub fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if tool::is_tool_invocation(&args) {
        std::process::exit(tool::main(args));
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        // Let the framework report bad flags the way containerd expects.
        Err(_) => return daemon::run(),
    };
    match flags.action.as_str() {
        "start" => std::process::exit(start(&flags, &args[1..])),
        "delete" => {
            let bundle = if flags.bundle.is_empty() {
                std::env::current_dir().unwrap_or_default()
            } else {
                PathBuf::from(&flags.bundle)
            };
            if runc::is_delegated(&bundle) {
                if runc::already_cleaned(&bundle, &flags.namespace, &flags.id) {
                    use containerd_shim::protos::protobuf::Message;
                    let resp = runc::cleaned_response(&bundle);
                    let mut out = std::io::stdout().lock();
                    let written = resp.write_to_writer(&mut out).is_ok() && out.flush().is_ok();
                    std::process::exit(if written { 0 } else { 1 });
                }
                log_to_containerd(
                    &bundle,
                    &flags,
                    "delete: runc state remains, handing cleanup to containerd-shim-runc-v2",
                );
                let err = runc::exec_shim(&args[1..]);
                eprintln!("wasmhybrid: {err}");
                std::process::exit(1);
            }
            std::process::exit(delete_wasm(&bundle, &flags))
        }
        _ => daemon::run(),
    }
}

/// The `start` action; returns the process exit code.
fn start(flags: &Flags, args: &[OsString]) -> i32 {
    let bundle = std::env::current_dir().unwrap_or_default();
    match decide(flags, &bundle) {
        Ok((route, annotations, meta)) => {
            log_to_containerd(
                &bundle,
                flags,
                &format!("dispatch: {}: {}", route.runtime, route.reason),
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
                Runtime::Wasm => start_wasm(flags, &annotations),
            }
        }
        Err(msg) => {
            log_to_containerd(&bundle, flags, &format!("cannot start container: {msg}"));
            eprintln!("wasmhybrid: {msg}");
            1
        }
    }
}

type Decided = (Route, HashMap<String, String>, Option<dispatch::ImageMeta>);

fn decide(flags: &Flags, bundle: &Path) -> Result<Decided, String> {
    let spec = Spec::load(bundle.join("config.json"))
        .map_err(|e| format!("cannot read the bundle's config.json: {e}"))?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let meta = if dispatch::is_pod_sandbox(&annotations) {
        None
    } else {
        image::lookup(&flags.address, &flags.namespace, &flags.id)
            .map_err(|e| format!("cannot read the image's metadata: {e}"))?
    };
    let route = dispatch::route(&annotations, meta.as_ref()).map_err(|e| e.to_string())?;
    Ok((route, annotations, meta))
}

/// The `delete` action for a Wasm container. containerd runs it after every
/// task's shim connection closes: normally the daemon has already removed
/// everything and this only answers (without starting a daemon's
/// machinery); after a daemon died, it kills and removes what is left in
/// the container's cgroup (containerd unmounts the rootfs itself).
fn delete_wasm(bundle: &Path, flags: &Flags) -> i32 {
    use containerd_shim::protos::protobuf::Message;
    let cgroup = Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()));
    let removed = crate::cgroup::remove_leftover(cgroup.as_deref(), &flags.id);
    if !removed.is_empty() {
        log_to_containerd(
            bundle,
            flags,
            &format!("delete: removed the cgroup left by a dead shim: {removed:?}"),
        );
    }
    let resp = runc::cleaned_response(bundle);
    let mut out = std::io::stdout().lock();
    let written = resp.write_to_writer(&mut out).is_ok() && out.flush().is_ok();
    if written { 0 } else { 1 }
}

/// Hands a Wasm container to its group's daemon (a pod's, the namespace's,
/// or its own: [`daemon::Settings`]), starting one if none is up, and
/// prints the daemon's address.
fn start_wasm(flags: &Flags, annotations: &HashMap<String, String>) -> i32 {
    let settings = match daemon::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wasmhybrid: {e}");
            return 1;
        }
    };
    let pod = annotations
        .get(dispatch::SANDBOX_ID_ANNOTATION)
        .map(String::as_str);
    let (key, linger) = settings.group_of(&flags.id, pod);
    let group = daemon::Group::new(&flags.address, &flags.namespace, &key);
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var(TTRPC_ADDRESS).unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
    };
    match daemon::lease(&group, opts, linger) {
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

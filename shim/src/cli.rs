//! The `wasmhybrid` binary: the shim daemon, the operator tool, and
//! everything the launcher (`containerd-shim-wasmhybrid-v1`, see
//! [`crate::launcher`]) passes on.
//!
//! - with containerd's shim flags: the action `daemon` (or none) is the
//!   long-running shim daemon ([`daemon`]), spawned by the launcher for a
//!   group of containers; `-v` and `-info` answer containerd;
//!   `start` and `delete` do what the launcher does (so this binary also
//!   works as the shim on its own);
//! - otherwise (`cache ...`, `--help`): the operator tool ([`tool`]).

use std::ffi::OsString;

use crate::{daemon, launcher, tool};

/// Flags of containerd's shim command line: an argument list starting with
/// one of them is a shim invocation, anything else the tool's.
const SHIM_FLAGS: [&str; 9] = [
    "debug",
    "v",
    "namespace",
    "id",
    "socket",
    "bundle",
    "address",
    "publish-binary",
    "info",
];

/// Whether `args` (argv\[0\] first) are a shim command line.
fn is_shim_invocation(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| {
        let a = a.to_string_lossy();
        a.strip_prefix('-').is_some_and(|f| {
            let name = f.trim_start_matches('-').split('=').next().unwrap_or("");
            SHIM_FLAGS.contains(&name)
        })
    })
}

/// Runs the `wasmhybrid` binary.
pub fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if !is_shim_invocation(&args) {
        std::process::exit(tool::main(args));
    }
    match launcher::parse(&args[1..]) {
        Ok(f) if f.action == "start" && !f.version && !f.info => {
            std::process::exit(launcher::start(&f, &args[1..]))
        }
        Ok(f) if f.action == "delete" && !f.version && !f.info => {
            std::process::exit(launcher::delete(&f, &args[1..]))
        }
        Ok(f) if f.action.is_empty() || f.action == "daemon" || f.version || f.info => {
            daemon::run(&f, &args[0])
        }
        Ok(f) => {
            eprintln!("wasmhybrid: unknown shim action {:?}", f.action);
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("wasmhybrid: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn shim_command_lines_are_told_from_the_tools() {
        assert!(is_shim_invocation(&args(&[
            "wasmhybrid",
            "-namespace",
            "ns",
            "daemon"
        ])));
        assert!(is_shim_invocation(&args(&["x", "-v"])));
        assert!(is_shim_invocation(&args(&["x", "--info"])));
        assert!(is_shim_invocation(&args(&["x", "-id=c1", "start"])));
        assert!(!is_shim_invocation(&args(&["wasmhybrid", "cache", "list"])));
        assert!(!is_shim_invocation(&args(&["wasmhybrid", "--help"])));
        assert!(!is_shim_invocation(&args(&["wasmhybrid"])));
    }
}

//! wasmhybrid: a containerd shim that runs WebAssembly workloads in Wasmtime
//! from a per-architecture AOT cache, and hands everything else to runc.
//!
//! Two binaries come out of this crate:
//!
//! - `containerd-shim-wasmhybrid-v1`, the [`launcher`] containerd runs for
//!   every container's `start` and `delete`: [`dispatch`] routes each
//!   container to Wasmtime or to runc ([`runc`]), using the image metadata
//!   read by [`image`] (asked of the group's running daemon when there is
//!   one, [`route`]); a Wasm container goes to its group's daemon
//!   ([`group`]). It is built from the modules above only (the crate
//!   without its `daemon` feature), small and static;
//! - `wasmhybrid` ([`cli`]), with the `daemon` feature: the shim
//!   [`daemon`] that serves a group's Wasm containers, and the operator
//!   tool `wasmhybrid cache ...` ([`tool`]; AOT bundles in [`bundle`]).
//!
//! In the daemon:
//!
//! - [`instance`] is the daemon's side of a Wasm container: it decides what
//!   to run, reads the entrypoint ([`source`]) and gets native code from
//!   the AOT [`cache`] on the host, before the container exists;
//! - [`executor`] runs in the zygote and container processes: maps the
//!   code (a template process per cached module, [`templates`]), creates
//!   the container ([`isolation`], [`cgroup`]), runs the workload;
//! - [`engine`] holds every Wasmtime call (compile, precompile, load, run,
//!   serve);
//! - [`http`] is the HTTP serving path (listener and request dispatch) that
//!   `wasi:http/proxy` components plug into as a backend;
//! - [`config`] parses the few knobs a workload can set;
//! - [`signals`] gives the Wasm process container-like signal semantics.

pub mod cgroup;
pub mod dispatch;
pub mod exit;
pub mod group;
pub mod image;
pub mod launcher;
pub mod route;
pub mod runc;

#[cfg(feature = "daemon")]
pub mod bundle;
#[cfg(feature = "daemon")]
pub mod cache;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod engine;
#[cfg(feature = "daemon")]
pub mod executor;
#[cfg(feature = "daemon")]
pub mod hooks;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(feature = "daemon")]
pub mod instance;
#[cfg(feature = "daemon")]
pub mod isolation;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod rootfs;
#[cfg(feature = "daemon")]
pub mod signals;
#[cfg(feature = "daemon")]
pub mod source;
#[cfg(feature = "daemon")]
pub mod stdio;
#[cfg(feature = "daemon")]
pub mod templates;
#[cfg(feature = "daemon")]
pub mod tool;
#[cfg(feature = "daemon")]
pub mod tty;
#[cfg(feature = "daemon")]
pub mod watch;

#[cfg(feature = "daemon")]
pub use daemon::run as run_shim;

//! wasmhybrid: a containerd shim that runs WebAssembly workloads in Wasmtime
//! from a per-architecture AOT cache, and hands everything else to runc.
//!
//! The shim is built on runwasi's shim framework (`containerd-shimkit`: the
//! containerd task service and the zygote process that containers are
//! forked from) and youki's libcontainer, which creates the container
//! (namespaces, cgroups, mounts, rootfs). From there:
//!
//! - [`cli`] handles containerd's `start`/`delete` actions: [`dispatch`]
//!   routes each container to Wasmtime or to runc ([`runc`]), using the
//!   image metadata read by [`image`]; `wasmhybrid cache ...` is [`tool`],
//!   and the AOT bundles it writes and imports are [`bundle`];
//! - [`instance`] is the daemon's side of a Wasm container: it decides what
//!   to run, reads the entrypoint ([`source`]) and gets native code from
//!   the AOT [`cache`] on the host, before the container exists;
//! - [`executor`] runs in the container's processes: maps the code, creates
//!   the container, runs the workload in its init process;
//! - [`dispatch`] decides, as pure functions, the runtime and what Wasm to
//!   run, with the reason;
//! - [`engine`] holds every Wasmtime call (compile, precompile, load, run,
//!   serve);
//! - [`http`] is the HTTP serving path (listener and request dispatch) that
//!   `wasi:http/proxy` components plug into as a backend;
//! - [`config`] parses the few knobs a workload can set;
//! - [`signals`] gives the Wasm process container-like signal semantics.

pub mod bundle;
pub mod cache;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod engine;
pub mod executor;
pub mod exit;
pub mod hooks;
pub mod http;
pub mod image;
pub mod instance;
pub mod isolation;
pub mod logging;
pub mod rootfs;
pub mod runc;
pub mod signals;
pub mod source;
pub mod tool;

pub use daemon::run as run_shim;

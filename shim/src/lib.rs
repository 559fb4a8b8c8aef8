//! wasmhybrid: a containerd shim that runs WebAssembly workloads in Wasmtime.
//!
//! The shim is built on runwasi's `containerd-shim-wasm` framework, which
//! creates the container (namespaces, cgroups, mounts, rootfs) with youki's
//! libcontainer and then hands the container's init process to
//! [`sandbox::WasmHybridSandbox`]. From there:
//!
//! - [`dispatch`] decides, as a pure function, what Wasm to run and why;
//! - [`engine`] holds every Wasmtime call (compile, link, run, serve);
//! - [`http`] is the HTTP serving path (listener and request dispatch) that
//!   `wasi:http/proxy` components plug into as a backend;
//! - [`config`] parses the few knobs a workload can set;
//! - [`signals`] gives the Wasm process container-like signal semantics.

pub mod config;
pub mod dispatch;
pub mod engine;
pub mod exit;
pub mod http;
pub mod sandbox;
pub mod signals;

pub use sandbox::{WasmHybridSandbox, WasmHybridShim, run_shim};

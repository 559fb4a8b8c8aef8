//! wasmhybrid: a containerd shim that runs WebAssembly workloads in Wasmtime.
//!
//! The shim is built on runwasi's `containerd-shim-wasm` framework, which
//! creates the container (namespaces, cgroups, mounts, rootfs) with youki's
//! libcontainer and then hands the container's init process to
//! [`sandbox::WasmHybridSandbox`]. From there:
//!
//! - [`cli`] handles containerd's `start`/`delete` actions: [`dispatch`]
//!   routes each container to Wasmtime or to runc ([`runc`]), using the
//!   image metadata read by [`image`];
//! - [`dispatch`] decides, as pure functions, the runtime and what Wasm to
//!   run, with the reason;
//! - [`engine`] holds every Wasmtime call (compile, link, run, serve);
//! - [`http`] is the HTTP serving path (listener and request dispatch) that
//!   `wasi:http/proxy` components plug into as a backend;
//! - [`config`] parses the few knobs a workload can set;
//! - [`signals`] gives the Wasm process container-like signal semantics.

pub mod cli;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod exit;
pub mod http;
pub mod image;
pub mod runc;
pub mod sandbox;
pub mod signals;

pub use sandbox::{WasmHybridSandbox, WasmHybridShim, run_shim};

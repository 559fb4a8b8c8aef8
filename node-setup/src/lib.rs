//! wasmhybrid's node installer: registers the shim with containerd.
//!
//! [`config`] edits a containerd config (version 2 for containerd 1.6/1.7,
//! version 3 for 2.x) as a pure text-to-text function that preserves
//! everything else byte for byte; [`files`] applies it to a file with a
//! backup, atomically, and undoes it exactly; [`node`] finds the node's
//! containerd (plain, k3s, rke2, MicroK8s, k0s); [`setup`] runs the whole
//! installation (binary, config, restart, cache warm-up, node label).

pub mod config;
pub mod files;
pub mod node;
pub mod setup;

//! Tier 2: the shim under a real containerd (Debian's `containerd` and
//! `runc`), started per test by the harness with a private root, state and
//! socket in a temp dir, its own namespace, and images built from the
//! repo's fixtures. Everything is torn down on drop.
//!
//! These tests need root and containerd; `scripts/test.sh` installs what is
//! missing. They fail, never skip, when containerd cannot start.

mod aot;
mod commands;
mod common;
mod cri;
mod ctr_cli;
mod delegation;
mod errors;
mod http;
mod isolation;
mod launcher;
mod lifecycle;
mod sharing;
mod templates;

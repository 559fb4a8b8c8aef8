//! Test, demo and benchmark harness for wasmhybrid: a private containerd
//! ([`daemon`]), OCI images built from the repo's fixtures ([`image`],
//! [`fixtures`]) and a containerd API driver ([`client`]).

pub mod client;
pub mod daemon;
pub mod fixtures;
pub mod image;
pub mod netns;

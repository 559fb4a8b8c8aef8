//! Test, demo and benchmark harness for wasmhybrid: a private containerd
//! ([`daemon`]), OCI images built from the repo's fixtures ([`image`],
//! [`fixtures`]), a containerd API driver ([`client`]) and the kubelet's
//! path through containerd's CRI plugin ([`cri`]).

pub mod client;
pub mod cri;
pub mod daemon;
pub mod fixtures;
pub mod image;
pub mod netns;

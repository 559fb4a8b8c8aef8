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

/// CPU time (utime + stime, in clock ticks) process `pid` has used so far.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    let after = stat.rsplit_once(')').expect("/proc/PID/stat").1;
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse::<u64>().expect("clock ticks"))
        .sum()
}

/// Whether `pid` uses CPU within `within` (polls; bounded, not a timing
/// claim). Blocks the calling thread.
pub fn uses_cpu_within(pid: u32, within: std::time::Duration) -> bool {
    let before = cpu_ticks(pid);
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if cpu_ticks(pid) > before {
            return true;
        }
    }
    false
}

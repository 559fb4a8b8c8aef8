//! Helpers shared by the benchmarks (each includes this file as a module).

use std::path::PathBuf;
use std::time::Duration;

use wasmhybrid_harness::fixtures::repo_root;

/// `WASMHYBRID_BENCH_ITERATIONS`, or `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("WASMHYBRID_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of already sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

/// `target/release`, where the release shim must have been built.
pub fn release_shim_dir() -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("target/release");
    anyhow::ensure!(
        dir.join("containerd-shim-wasmhybrid-v1").is_file(),
        "build the shim first: cargo build --release -p wasmhybrid-shim"
    );
    Ok(dir)
}

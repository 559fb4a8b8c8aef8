//! Helpers shared by the benchmarks (each includes this file as a module
//! and uses part of it).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use wasmhybrid_harness::fixtures::repo_root;

/// A `usize` from environment variable `name`, or `default` when it is not
/// set. A value that is not a whole number ends the bench with an error
/// naming the variable (a misspelt setting is never silently ignored).
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?}: expected a whole number");
            std::process::exit(2);
        }),
    }
}

/// `WASMHYBRID_BENCH_ITERATIONS`, or `default`.
pub fn iterations(default: usize) -> usize {
    env_usize("WASMHYBRID_BENCH_ITERATIONS", default)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of already sorted samples (NaN if none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

pub fn median(v: &[f64]) -> f64 {
    percentile(&sorted(v), 0.5)
}

/// The directory holding the shim under test: `WASMHYBRID_BENCH_SHIM_DIR`,
/// else the release build next to the bench (`target/shim/release`, as
/// `scripts/build-shim.sh --release` assembles it; see
/// [`wasmhybrid_harness::fixtures::shim_dir_for`]).
pub fn release_shim_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMHYBRID_BENCH_SHIM_DIR") {
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            dir.join("containerd-shim-wasmhybrid-v1").is_file(),
            "WASMHYBRID_BENCH_SHIM_DIR={}: no containerd-shim-wasmhybrid-v1 there",
            dir.display()
        );
        return Ok(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| repo_root().join(t))
        .unwrap_or_else(|| repo_root().join("target"));
    wasmhybrid_harness::fixtures::shim_dir_for(&target.join("release"))
}

/// Where the benchmarks write their results: `target/bench`.
pub fn out_dir() -> anyhow::Result<PathBuf> {
    let out = repo_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    Ok(out)
}

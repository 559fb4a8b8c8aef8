//! The AOT cache, measured: start-to-exit of the same module under three
//! conditions, interleaved in one run on a private containerd:
//!
//! - cold: the module's entry removed first (the start compiles and stores);
//! - warm: the entry present (the start maps native code);
//! - uncached: the cache unusable (its directory handed to another owner,
//!   which the shim refuses), so the start compiles without storing: the
//!   reference cost of compiling.
//!
//! For a tiny module (`fixtures/wat/hello.wat`, ~100 bytes) and a large one
//! (`fixtures/wh-big`, an unoptimized build of a real program: over 5 MB).
//! Goal from the issue: warm starts of the large module no slower than 1.1x
//! the warm starts of the tiny one.
//!
//! Run with `bash benches/run.sh aot` (release build).

#[path = "common.rs"]
mod common;

use std::path::Path;

use anyhow::{Context, Result};
use common::{iterations, median, ms, percentile, release_shim_dir};
use sha2::{Digest, Sha256};
use wasmhybrid_harness::client::{Ctrd, Phases, RunOpts, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::daemon::remove_aot_entry;
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_harness::fixtures::{Fixture, import_image, repo_root};
use wasmhybrid_harness::image::ImageSpec;

const WARMUP: usize = 3;
const MAX_RATIO: f64 = 1.1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cond {
    Cold,
    Warm,
    Uncached,
}

struct Module {
    name: &'static str,
    image: &'static str,
    arg0: &'static str,
    args: &'static [&'static str],
    hex: String,
    wasm_size: usize,
}

struct Series {
    module: &'static str,
    cond: Cond,
    totals: Vec<f64>,
    creates: Vec<f64>,
}

fn set_owner(aot: &Path, uid: u32) -> Result<()> {
    std::fs::create_dir_all(aot)?;
    std::os::unix::fs::chown(aot, Some(uid), None).context("chown the cache dir")
}

async fn once(ctrd: &Ctrd, aot: &Path, m: &Module, cond: Cond, n: usize) -> Result<Phases> {
    match cond {
        Cond::Cold => {
            remove_aot_entry(aot, &m.hex)?;
        }
        Cond::Warm => {}
        Cond::Uncached => set_owner(aot, 65534)?,
    }
    let mut args = vec![m.arg0];
    args.extend_from_slice(m.args);
    let opts = RunOpts::new(
        &format!("aot-{}-{cond:?}-{n}", m.name).to_lowercase(),
        m.image,
        WASMHYBRID_RUNTIME,
    )
    .args(&args);
    let done = ctrd.run(&opts).await;
    if cond == Cond::Uncached {
        set_owner(aot, 0)?;
    }
    let done = done?;
    anyhow::ensure!(
        done.exit_code == 0,
        "{} {cond:?}: exit {} {}",
        m.name,
        done.exit_code,
        done.stderr
    );
    Ok(done.phases)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let shim_dir = release_shim_dir()?;
    let mut daemon = PrivateContainerd::start(DaemonOptions {
        shim_dir,
        ..Default::default()
    })?;
    let ns = daemon.namespace("bench-aot");
    let aot = daemon.aot_cache_dir();

    let tiny = Fixture::HelloWat.bytes()?;
    let big = Fixture::Big.bytes()?;
    anyhow::ensure!(big.len() >= 5 << 20, "wh-big is only {} bytes", big.len());
    let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    let modules = [
        Module {
            name: "tiny",
            image: "localhost/bench/aot:tiny",
            arg0: "hello.wasm",
            args: &[],
            hex: hex(&tiny),
            wasm_size: tiny.len(),
        },
        Module {
            name: "large",
            image: "localhost/bench/aot:large",
            arg0: "wh-big.wasm",
            args: &["hello"],
            hex: hex(&big),
            wasm_size: big.len(),
        },
    ];
    import_image(
        &daemon,
        &ns,
        &ImageSpec::rootfs(modules[0].image, "hello.wasm", tiny),
    )?;
    import_image(
        &daemon,
        &ns,
        &ImageSpec::rootfs(modules[1].image, "wh-big.wasm", big),
    )?;
    let ctrd = Ctrd::connect(&daemon.address(), &ns).await?;

    let conds = [Cond::Cold, Cond::Warm, Cond::Uncached];
    for m in &modules {
        for (n, c) in conds.iter().enumerate().take(WARMUP) {
            once(&ctrd, &aot, m, *c, 1000 + n).await?;
        }
    }
    let mut series: Vec<Series> = modules
        .iter()
        .flat_map(|m| {
            conds.iter().map(|c| Series {
                module: m.name,
                cond: *c,
                totals: vec![],
                creates: vec![],
            })
        })
        .collect();
    let n = iterations(20);
    for i in 0..n {
        for m in &modules {
            // Rotate the order so that drift and page-cache state hit all
            // three conditions alike.
            for k in 0..conds.len() {
                let cond = conds[(i + k) % conds.len()];
                let p = once(&ctrd, &aot, m, cond, i)
                    .await
                    .with_context(|| format!("iteration {i}"))?;
                let s = series
                    .iter_mut()
                    .find(|s| s.module == m.name && s.cond == cond)
                    .context("series")?;
                s.totals.push(ms(p.total()));
                s.creates.push(ms(p.task_created));
            }
        }
    }

    println!(
        "start-to-exit through wasmhybrid, {n} interleaved runs per cell (after {WARMUP} warm-up runs)"
    );
    for m in &modules {
        println!("- {}: {} bytes of Wasm", m.name, m.wasm_size);
    }
    println!("\n| module | condition | p50 ms | p95 ms | Tasks.Create p50 ms |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for s in &series {
        let mut sorted = s.totals.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "| {} | {:?} | {:.1} | {:.1} | {:.1} |",
            s.module,
            s.cond,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.95),
            median(&s.creates)
        );
    }
    let med = |module: &str, cond: Cond| {
        series
            .iter()
            .find(|s| s.module == module && s.cond == cond)
            .map(|s| median(&s.totals))
            .unwrap_or(f64::NAN)
    };
    let ratio = med("large", Cond::Warm) / med("tiny", Cond::Warm);
    let verdict = if ratio <= MAX_RATIO {
        "within"
    } else {
        "NOT within"
    };
    println!(
        "\nwarm large / warm tiny median: {ratio:.3} ({verdict} the {MAX_RATIO:.1} goal); \
         large: uncached / warm {:.1}x, cold / warm {:.1}x",
        med("large", Cond::Uncached) / med("large", Cond::Warm),
        med("large", Cond::Cold) / med("large", Cond::Warm),
    );

    let out = repo_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let json = serde_json::json!({
        "bench": "aot",
        "iterations": n,
        "series": series.iter().map(|s| serde_json::json!({
            "module": s.module,
            "condition": format!("{:?}", s.cond).to_lowercase(),
            "total_ms": s.totals,
            "tasks_create_ms": s.creates,
        })).collect::<Vec<_>>(),
        "warm_large_over_warm_tiny": ratio,
    });
    std::fs::write(out.join("aot.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("raw samples: {}", out.join("aot.json").display());
    // The shim's own account of the last warm start of each module.
    let log = daemon.log();
    for m in &modules {
        if let Some(line) = log
            .lines()
            .rfind(|l| l.contains(&format!("AOT cache hit: sha256:{}", m.hex)))
        {
            println!("{}: {}", m.name, line.split("msg=").nth(1).unwrap_or(line));
        }
    }
    if let Some(line) = log.lines().rfind(|l| l.contains("mapped precompiled")) {
        println!("{}", line.split("msg=").nth(1).unwrap_or(line));
    }
    Ok(())
}

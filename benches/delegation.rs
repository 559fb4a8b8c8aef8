//! Start-to-exit of a delegated container (a native busybox image through
//! wasmhybrid, which hands it to `containerd-shim-runc-v2`) against the same
//! image under containerd's plain runc runtime, interleaved in one run on a
//! private containerd.
//!
//! Start-to-exit = create container and snapshot -> `Tasks.Create` ->
//! `Tasks.Start` -> exited -> task, snapshot and container deleted.
//! Run with `bash benches/run.sh delegation` (release build).

#[path = "common.rs"]
mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{iterations, median, ms, percentile, release_shim_dir};
use wasmhybrid_harness::client::{Ctrd, Phases, RUNC_RUNTIME, RunOpts, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_harness::fixtures::{import_image, repo_root};
use wasmhybrid_harness::image::ImageSpec;

const IMAGE: &str = "localhost/bench/busybox:latest";
const WARMUP: usize = 5;
/// Goal from the issue: the delegated median within 5% of runc's.
const MAX_RATIO: f64 = 1.05;

struct Series {
    name: &'static str,
    totals: Vec<f64>,
    phases: Vec<Phases>,
}

impl Series {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.totals.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    fn median(&self) -> f64 {
        median(&self.totals)
    }
    fn phase_median(&self, f: impl Fn(&Phases) -> Duration) -> f64 {
        median(&self.phases.iter().map(|p| ms(f(p))).collect::<Vec<_>>())
    }
}

async fn once(ctrd: &Ctrd, runtime: &str, n: usize) -> Result<Phases> {
    let opts = RunOpts::new(
        &format!("bench-{}-{n}", runtime.rsplit('.').nth(1).unwrap_or("x")),
        IMAGE,
        runtime,
    )
    .args(&["/bin/true"]);
    let done = ctrd.run(&opts).await?;
    anyhow::ensure!(done.exit_code == 0, "{runtime}: exit {}", done.exit_code);
    Ok(done.phases)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let shim_dir = release_shim_dir()?;
    let mut daemon = PrivateContainerd::start(DaemonOptions {
        shim_dir,
        ..Default::default()
    })?;
    let ns = daemon.namespace("bench");
    import_image(&daemon, &ns, &ImageSpec::busybox(IMAGE)?)?;
    let ctrd = Ctrd::connect(&daemon.address(), &ns).await?;

    for n in 0..WARMUP {
        once(&ctrd, RUNC_RUNTIME, 1000 + n).await?;
        once(&ctrd, WASMHYBRID_RUNTIME, 1000 + n).await?;
    }
    let mut runc = Series {
        name: "runc (io.containerd.runc.v2)",
        totals: vec![],
        phases: vec![],
    };
    let mut deleg = Series {
        name: "wasmhybrid -> runc (delegated)",
        totals: vec![],
        phases: vec![],
    };
    let n = iterations(60);
    for i in 0..n {
        // Alternate which goes first so that drift hits both alike.
        let order = if i % 2 == 0 {
            [RUNC_RUNTIME, WASMHYBRID_RUNTIME]
        } else {
            [WASMHYBRID_RUNTIME, RUNC_RUNTIME]
        };
        for runtime in order {
            let p = once(&ctrd, runtime, i)
                .await
                .with_context(|| format!("iteration {i}"))?;
            let series = if runtime == RUNC_RUNTIME {
                &mut runc
            } else {
                &mut deleg
            };
            series.totals.push(ms(p.total()));
            series.phases.push(p);
        }
    }

    println!(
        "start-to-exit of busybox /bin/true, {n} interleaved runs each (after {WARMUP} warm-up runs)"
    );
    println!(
        "| runtime | p50 ms | p95 ms | p99 ms | created | Tasks.Create | Tasks.Start | ran | deleted |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in [&runc, &deleg] {
        let sorted = s.sorted();
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.name,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.95),
            percentile(&sorted, 0.99),
            s.phase_median(|p| p.container_created),
            s.phase_median(|p| p.task_created),
            s.phase_median(|p| p.task_started),
            s.phase_median(|p| p.ran),
            s.phase_median(|p| p.deleted),
        );
    }
    let ratio = deleg.median() / runc.median();
    let verdict = if ratio <= MAX_RATIO {
        "within"
    } else {
        "NOT within"
    };
    println!("\ndelegated / runc median: {ratio:.3} ({verdict} the {MAX_RATIO:.2} goal)");

    let out = repo_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let json = serde_json::json!({
        "bench": "delegation",
        "iterations": n,
        "runc_ms": runc.totals,
        "delegated_ms": deleg.totals,
        "runc_median_ms": runc.median(),
        "delegated_median_ms": deleg.median(),
        "ratio": ratio,
    });
    std::fs::write(
        out.join("delegation.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    println!("raw samples: {}", out.join("delegation.json").display());
    Ok(())
}

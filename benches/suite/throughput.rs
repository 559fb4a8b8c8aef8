//! Throughput: `tasks` runs of a case with `concurrency` in flight, split
//! into rounds that alternate over the cases; tasks/s = successful runs /
//! wall time of the case's bursts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::cases::{Case, Env};

/// The concurrencies measured unless `WASMHYBRID_BENCH_CONCURRENCY` (e.g.
/// `5` or `5,10`) names others.
pub const CONCURRENCY: [usize; 3] = [1, 5, 10];

/// [`CONCURRENCY`], or the positive integers in `WASMHYBRID_BENCH_CONCURRENCY`
/// (anything else there is an error).
pub fn concurrencies() -> anyhow::Result<Vec<usize>> {
    let Ok(list) = std::env::var("WASMHYBRID_BENCH_CONCURRENCY") else {
        return Ok(CONCURRENCY.to_vec());
    };
    list.split(',')
        .map(|c| match c.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!(
                "WASMHYBRID_BENCH_CONCURRENCY={list:?}: expected positive integers, e.g. 5,10"
            )),
        })
        .collect()
}
const ROUNDS: usize = 3;

/// One case at one concurrency.
#[derive(Debug, Clone)]
pub struct Cell {
    pub case: String,
    pub concurrency: usize,
    pub tasks: usize,
    pub failures: usize,
    pub secs: f64,
    /// CPU time of the whole machine (every process and the kernel) during
    /// the bursts, in seconds.
    pub cpu_secs: f64,
    /// (tasks, seconds) of each burst.
    pub bursts: Vec<(usize, f64)>,
}

impl Cell {
    pub fn tasks_per_sec(&self) -> f64 {
        (self.tasks - self.failures) as f64 / self.secs
    }

    /// Machine CPU per task, ms: steadier than tasks/s when the machine is
    /// saturated, and what a node pays per container.
    pub fn cpu_ms_per_task(&self) -> f64 {
        self.cpu_secs * 1e3 / self.tasks.max(1) as f64
    }
}

/// Busy CPU time of the machine so far (all CPUs, `/proc/stat`: user, nice,
/// system, irq, softirq; not steal, which is other guests' time), in
/// seconds.
fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    busy / hz
}

/// Runs `n` tasks of `case`, `conc` at a time; returns (seconds, machine
/// CPU seconds, failures).
async fn burst(env: &Arc<Env>, case: &Case, conc: usize, n: usize, tag: &str) -> (f64, f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let cpu0 = busy_cpu_secs();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc.min(n) {
        let (env, case, next, failed) = (env.clone(), case.clone(), next.clone(), failed.clone());
        let tag = tag.to_string();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = format!("tp-{}-{tag}-{i}", case.name);
                if let Err(e) = env.once(&case, &id).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    env.failures.record(&format!("throughput {id}"), &e);
                }
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined {
            failed.fetch_add(1, Ordering::Relaxed);
            env.failures
                .record(&format!("throughput {tag}"), &anyhow::anyhow!("{e}"));
        }
    }
    (
        t0.elapsed().as_secs_f64(),
        busy_cpu_secs() - cpu0,
        failed.load(Ordering::Relaxed),
    )
}

/// Every case but the cold one (and the baseline's unless
/// `with_baseline`) at each concurrency.
pub async fn run(
    env: &Arc<Env>,
    tasks: usize,
    with_baseline: bool,
    concurrency: &[usize],
) -> Vec<Cell> {
    let cases: Vec<Case> = env
        .cases
        .iter()
        .filter(|c| !c.cold && (with_baseline || !c.baseline))
        .cloned()
        .collect();
    let rounds = ROUNDS.min(tasks).max(1);
    let mut cells = vec![];
    for &conc in concurrency {
        let mut row: Vec<Cell> = cases
            .iter()
            .map(|c| Cell {
                case: c.name.clone(),
                concurrency: conc,
                tasks: 0,
                failures: 0,
                secs: 0.0,
                cpu_secs: 0.0,
                bursts: vec![],
            })
            .collect();
        for r in 0..rounds {
            let n = tasks / rounds + usize::from(r < tasks % rounds);
            let mut order: Vec<usize> = (0..cases.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let (secs, cpu, failed) =
                    burst(env, &cases[k], conc, n, &format!("c{conc}-r{r}")).await;
                let cell = &mut row[k];
                cell.tasks += n;
                cell.failures += failed;
                cell.secs += secs;
                cell.cpu_secs += cpu;
                cell.bursts.push((n, secs));
            }
        }
        for c in &row {
            eprintln!(
                "throughput: {} c={conc}: {:.1} tasks/s, {:.1} ms CPU per task ({} failed)",
                c.case,
                c.tasks_per_sec(),
                c.cpu_ms_per_task(),
                c.failures
            );
        }
        cells.extend(row);
    }
    cells
}

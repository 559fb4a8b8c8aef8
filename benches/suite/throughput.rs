//! Throughput: `tasks` runs of a case with `concurrency` in flight, split
//! into rounds that alternate over the cases; tasks/s = successful runs /
//! wall time of the case's bursts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::cases::{Case, Env};

pub const CONCURRENCY: [usize; 3] = [1, 5, 10];
const ROUNDS: usize = 3;

/// One case at one concurrency.
#[derive(Debug, Clone)]
pub struct Cell {
    pub case: String,
    pub concurrency: usize,
    pub tasks: usize,
    pub failures: usize,
    pub secs: f64,
    /// (tasks, seconds) of each burst.
    pub bursts: Vec<(usize, f64)>,
}

impl Cell {
    pub fn tasks_per_sec(&self) -> f64 {
        (self.tasks - self.failures) as f64 / self.secs
    }
}

/// Runs `n` tasks of `case`, `conc` at a time; returns (seconds, failures).
async fn burst(env: &Arc<Env>, case: &Case, conc: usize, n: usize, tag: &str) -> (f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
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
    (t0.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed))
}

/// Every case but the cold one (and the baseline's unless
/// `with_baseline`) at each concurrency.
pub async fn run(env: &Arc<Env>, tasks: usize, with_baseline: bool) -> Vec<Cell> {
    let cases: Vec<Case> = env
        .cases
        .iter()
        .filter(|c| !c.cold && (with_baseline || !c.baseline))
        .cloned()
        .collect();
    let rounds = ROUNDS.min(tasks).max(1);
    let mut cells = vec![];
    for conc in CONCURRENCY {
        let mut row: Vec<Cell> = cases
            .iter()
            .map(|c| Cell {
                case: c.name.clone(),
                concurrency: conc,
                tasks: 0,
                failures: 0,
                secs: 0.0,
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
                let (secs, failed) = burst(env, &cases[k], conc, n, &format!("c{conc}-r{r}")).await;
                let cell = &mut row[k];
                cell.tasks += n;
                cell.failures += failed;
                cell.secs += secs;
                cell.bursts.push((n, secs));
            }
        }
        for c in &row {
            eprintln!(
                "throughput: {} c={conc}: {:.1} tasks/s ({} failed)",
                c.case,
                c.tasks_per_sec(),
                c.failures
            );
        }
        cells.extend(row);
    }
    cells
}

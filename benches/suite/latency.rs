//! Start-to-exit latency: every case run in turn (the order reversed every
//! other round) so that drift on a noisy machine hits all cases alike.

use std::time::Duration;

use wasmhybrid_harness::client::Phases;

use crate::cases::{Case, Env};
use crate::common::{median, ms, percentile, sorted};

/// The samples of one case.
#[derive(Debug, Clone)]
pub struct Series {
    pub case: Case,
    pub totals: Vec<f64>,
    pub phases: Vec<Phases>,
    pub failures: usize,
}

/// Reads one phase of a run.
pub type Phase = fn(&Phases) -> Duration;

/// The phases, as (label, accessor), in order.
pub const PHASES: [(&str, Phase); 5] = [
    ("created", |p| p.container_created),
    ("Tasks.Create", |p| p.task_created),
    ("Tasks.Start", |p| p.task_started),
    ("start->exit", |p| p.ran),
    ("exit->deleted", |p| p.deleted),
];

impl Series {
    pub fn p(&self, q: f64) -> f64 {
        percentile(&sorted(&self.totals), q)
    }
    pub fn phase_median(&self, f: Phase) -> f64 {
        median(&self.phases.iter().map(|p| ms(f(p))).collect::<Vec<_>>())
    }
    pub fn phase_samples(&self, f: Phase) -> Vec<f64> {
        self.phases.iter().map(|p| ms(f(p))).collect()
    }
}

/// `warmup` runs of each case, then `n` interleaved rounds over all.
pub async fn run(env: &Env, warmup: usize, n: usize) -> Vec<Series> {
    for case in &env.cases {
        for k in 0..warmup {
            let id = format!("warm-{}-{k}", case.name);
            if let Err(e) = env.once(case, &id).await {
                env.failures.record(&format!("latency warm-up {id}"), &e);
            }
        }
    }
    let mut series: Vec<Series> = env
        .cases
        .iter()
        .map(|c| Series {
            case: c.clone(),
            totals: vec![],
            phases: vec![],
            failures: 0,
        })
        .collect();
    for i in 0..n {
        let mut order: Vec<usize> = (0..series.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let s = &mut series[k];
            let id = format!("lat-{}-{i}", s.case.name);
            match env.once(&s.case, &id).await {
                Ok(p) => {
                    s.totals.push(ms(p.total()));
                    s.phases.push(p);
                }
                Err(e) => {
                    s.failures += 1;
                    env.failures.record(&format!("latency {id}"), &e);
                }
            }
        }
        if (i + 1) % 10 == 0 || i + 1 == n {
            eprintln!("latency: {}/{n} rounds", i + 1);
        }
    }
    series
}

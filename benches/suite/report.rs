//! The suite's outputs: Markdown tables, goal checks (facts, never a
//! failure), a hand-written SVG bar chart and the JSON of every sample.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::common::{median, percentile, sorted};
use crate::density::{Density, cgroup_kind};
use crate::http::{CLIENTS, HttpSeries};
use crate::latency::{PHASES, Series};
use crate::throughput::Cell;

/// Everything measured (a section not run stays empty).
#[derive(Debug, Default)]
pub struct Results {
    pub warmup: usize,
    pub iterations: usize,
    pub tasks: usize,
    pub latency: Vec<Series>,
    pub throughput: Vec<Cell>,
    pub density: Vec<Density>,
    pub http: Vec<HttpSeries>,
    pub failures: Vec<String>,
    /// containerd's log lines at level error or warning (shims log there).
    pub daemon_log: Vec<String>,
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

impl Results {
    /// The concurrencies the throughput section measured, in order.
    fn concurrencies(&self) -> Vec<usize> {
        let mut seen = vec![];
        for c in &self.throughput {
            if !seen.contains(&c.concurrency) {
                seen.push(c.concurrency);
            }
        }
        seen
    }

    fn runc_p50(&self) -> f64 {
        self.latency
            .iter()
            .find(|s| s.case.name == "runc")
            .map(|s| s.p(0.5))
            .unwrap_or(f64::NAN)
    }

    pub fn tput(&self, case: &str, conc: usize) -> f64 {
        self.throughput
            .iter()
            .find(|c| c.case == case && c.concurrency == conc)
            .map(Cell::tasks_per_sec)
            .unwrap_or(f64::NAN)
    }

    fn cpu_per_task(&self, case: &str, conc: usize) -> f64 {
        self.throughput
            .iter()
            .find(|c| c.case == case && c.concurrency == conc)
            .map(Cell::cpu_ms_per_task)
            .unwrap_or(f64::NAN)
    }

    /// The throughput section's cases, in order.
    fn throughput_cases(&self) -> Vec<&str> {
        let mut cases: Vec<&str> = vec![];
        for c in &self.throughput {
            if !cases.contains(&c.case.as_str()) {
                cases.push(&c.case);
            }
        }
        cases
    }

    fn density(&self, kind: &str) -> Option<&Density> {
        self.density.iter().find(|d| d.kind == kind)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        if !self.latency.is_empty() {
            let _ = writeln!(
                md,
                "### Start-to-exit latency\n\n{} interleaved runs per case after {} warm-up runs each; \
                 phase columns are medians in ms.\n",
                self.iterations, self.warmup
            );
            md.push_str("| case | runtime | p50 ms | p95 ms | p99 ms | p50 / runc |");
            for (label, _) in PHASES {
                let _ = write!(md, " {label} |");
            }
            md.push_str(" failures |\n| --- | --- | ---: | ---: | ---: | ---: |");
            md.push_str(&" ---: |".repeat(PHASES.len() + 1));
            md.push('\n');
            let runc = self.runc_p50();
            for s in &self.latency {
                let _ = write!(
                    md,
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {} |",
                    s.case.name,
                    s.case.runtime_label(),
                    s.p(0.5),
                    s.p(0.95),
                    s.p(0.99),
                    ratio(s.p(0.5), runc)
                );
                for (_, f) in PHASES {
                    let _ = write!(md, " {:.1} |", s.phase_median(f));
                }
                let _ = writeln!(md, " {} |", s.failures);
            }
            md.push('\n');
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(
                md,
                "### Throughput\n\n{} tasks per case and concurrency (start-to-exit each, \
                 exit 0 and stdout checked), in rounds alternating over the cases; tasks/s.\n",
                self.tasks
            );
            let concurrency = self.concurrencies();
            concurrency_header(&mut md, &concurrency, true);
            for case in self.throughput_cases() {
                let _ = write!(md, "| {case} |");
                let mut failures = 0;
                for &conc in &concurrency {
                    let t = self.tput(case, conc);
                    let _ = write!(md, " {t:.1} | {} |", ratio(t, self.tput("runc", conc)));
                    failures += self
                        .throughput
                        .iter()
                        .filter(|c| c.case == case && c.concurrency == conc)
                        .map(|c| c.failures)
                        .sum::<usize>();
                }
                let _ = writeln!(md, " {failures} |");
            }
            let _ = writeln!(
                md,
                "\nMachine CPU per task (every process and the kernel, from /proc/stat, \
                 during the same bursts), ms:\n"
            );
            concurrency_header(&mut md, &concurrency, false);
            for case in self.throughput_cases() {
                let _ = write!(md, "| {case} |");
                for &conc in &concurrency {
                    let cpu = self.cpu_per_task(case, conc);
                    let _ = write!(
                        md,
                        " {cpu:.1} | {} |",
                        ratio(cpu, self.cpu_per_task("runc", conc))
                    );
                }
                md.push('\n');
            }
            md.push('\n');
        }
        if !self.density.is_empty() {
            let n = self.density[0].containers;
            let _ = writeln!(
                md,
                "### Density\n\n{n} idle HTTP servers at once per runtime (Wasm: the wasi:http \
                 component; runc: busybox httpd), each in its own network namespace. PSS: every \
                 shim and container process, each once; cgroup: the containers' {}. MiB.\n",
                cgroup_kind()
            );
            md.push_str(
                "| runtime | containers | processes | PSS total | PSS / container | x runc \
                 | cgroup total | cgroup / container | x runc |\n\
                 | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
            let runc = self.density("runc");
            for d in &self.density {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1} | {:.2} | {} | {:.1} | {:.2} | {} |",
                    d.kind,
                    d.containers,
                    d.processes.len(),
                    d.pss_kib as f64 / 1024.0,
                    d.pss_mib_per_container(),
                    ratio(
                        d.pss_mib_per_container(),
                        runc.map_or(f64::NAN, Density::pss_mib_per_container)
                    ),
                    d.cgroup_bytes as f64 / (1024.0 * 1024.0),
                    d.cgroup_mib_per_container(),
                    ratio(
                        d.cgroup_mib_per_container(),
                        runc.map_or(f64::NAN, Density::cgroup_mib_per_container)
                    ),
                );
            }
            md.push('\n');
        }
        if !self.http.is_empty() {
            let _ = writeln!(
                md,
                "### HTTP\n\nIn a private network namespace over loopback. create -> first 200: \
                 median of {} starts; requests: one connection each, {CLIENTS} client threads.\n",
                self.http[0].first_200_ms.len()
            );
            md.push_str(
                "| server | create -> first 200 ms | x runc | requests | p50 ms | p99 ms | x runc (p50) \
                 | req/s | failures |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
            let runc = self.http.iter().find(|h| h.kind == "runc");
            let p50 = |h: &HttpSeries| percentile(&sorted(&h.latencies_ms), 0.5);
            for h in &self.http {
                let label = if h.kind == "wasm" {
                    "wasi:http component (wasmhybrid)"
                } else {
                    "busybox httpd (runc)"
                };
                let first = median(&h.first_200_ms);
                let _ = writeln!(
                    md,
                    "| {label} | {first:.1} | {} | {} | {:.2} | {:.2} | {} | {:.0} | {} |",
                    ratio(first, runc.map_or(f64::NAN, |r| median(&r.first_200_ms))),
                    h.latencies_ms.len(),
                    p50(h),
                    percentile(&sorted(&h.latencies_ms), 0.99),
                    ratio(p50(h), runc.map_or(f64::NAN, p50)),
                    h.latencies_ms.len() as f64 / h.secs,
                    h.failures
                );
            }
            md.push('\n');
        }
        md.push_str("### Goal checks\n\n");
        for line in self.goals() {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md, "- failed runs: {}", self.failures.len());
        let _ = writeln!(
            md,
            "- containerd log lines at level error or warning: {}",
            self.daemon_log.len()
        );
        md
    }

    /// The goals, as facts.
    pub fn goals(&self) -> Vec<String> {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let mut out = vec![];
        let runc = self.runc_p50();
        for case in ["wasm-artifact", "wasm-rootfs"] {
            if let Some(s) = self.latency.iter().find(|s| s.case.name == case) {
                let r = s.p(0.5) / runc;
                out.push(format!(
                    "{case} p50 start-to-exit {:.1} ms = {r:.2}x runc's {runc:.1} ms (goal <= 0.25x): {}",
                    s.p(0.5),
                    verdict(r <= 0.25)
                ));
            }
            let t = self.tput(case, 5);
            if t.is_finite() {
                let r = t / self.tput("runc", 5);
                out.push(format!(
                    "{case} tasks/s at c=5 {t:.1} = {r:.2}x runc's (goal >= 4x): {}",
                    verdict(r >= 4.0)
                ));
            }
        }
        if let (Some(w), Some(r)) = (self.density("wasm"), self.density("runc")) {
            for (what, a, b) in [
                ("PSS", w.pss_mib_per_container(), r.pss_mib_per_container()),
                (
                    "cgroup memory",
                    w.cgroup_mib_per_container(),
                    r.cgroup_mib_per_container(),
                ),
            ] {
                out.push(format!(
                    "idle {what} per container: Wasm {a:.2} MiB vs runc {b:.2} MiB (goal Wasm <= runc): {}",
                    verdict(a <= b)
                ));
            }
        }
        out
    }

    pub fn json(&self, machine: Value) -> Value {
        let latency: Vec<Value> = self
            .latency
            .iter()
            .map(|s| {
                let mut phases = serde_json::Map::new();
                for (label, f) in PHASES {
                    phases.insert(label.into(), json!(s.phase_samples(f)));
                }
                json!({
                    "case": s.case.name, "runtime": s.case.runtime, "image": s.case.image,
                    "p50_ms": s.p(0.5), "p95_ms": s.p(0.95), "p99_ms": s.p(0.99),
                    "p50_over_runc": s.p(0.5) / self.runc_p50(),
                    "failures": s.failures, "total_ms": s.totals, "phases_ms": phases,
                })
            })
            .collect();
        let throughput: Vec<Value> = self
            .throughput
            .iter()
            .map(|c| {
                json!({
                    "case": c.case, "concurrency": c.concurrency, "tasks": c.tasks,
                    "failures": c.failures, "seconds": c.secs,
                    "tasks_per_sec": c.tasks_per_sec(),
                    "cpu_seconds": c.cpu_secs, "cpu_ms_per_task": c.cpu_ms_per_task(),
                    "over_runc": c.tasks_per_sec() / self.tput("runc", c.concurrency),
                    "bursts": c.bursts.iter().map(|(n, s)| json!({"tasks": n, "seconds": s})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let density: Vec<Value> = self
            .density
            .iter()
            .map(|d| {
                json!({
                    "kind": d.kind, "containers": d.containers,
                    "pss_kib_total": d.pss_kib, "pss_mib_per_container": d.pss_mib_per_container(),
                    "cgroup_bytes_total": d.cgroup_bytes,
                    "cgroup_mib_per_container": d.cgroup_mib_per_container(),
                    "cgroup_source": cgroup_kind(),
                    "processes": d.processes.iter().map(|(pid, comm, kib)| json!({"pid": pid, "comm": comm, "pss_kib": kib})).collect::<Vec<_>>(),
                    "cgroups": d.cgroups.iter().map(|(f, b)| json!({"file": f, "bytes": b})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let http: Vec<Value> = self
            .http
            .iter()
            .map(|h| {
                let s = sorted(&h.latencies_ms);
                json!({
                    "kind": h.kind, "first_200_ms": h.first_200_ms,
                    "first_200_median_ms": median(&h.first_200_ms),
                    "requests": h.latencies_ms.len(), "failures": h.failures,
                    "p50_ms": percentile(&s, 0.5), "p99_ms": percentile(&s, 0.99),
                    "requests_per_sec": h.latencies_ms.len() as f64 / h.secs,
                    "latency_ms": h.latencies_ms,
                })
            })
            .collect();
        json!({
            "bench": "suite", "machine": machine,
            "config": {"iterations": self.iterations, "warmup": self.warmup, "tasks": self.tasks,
                        "concurrency": self.concurrencies(), "http_clients": CLIENTS},
            "latency": latency, "throughput": throughput, "density": density, "http": http,
            "goals": self.goals(), "failures": self.failures,
            "containerd_log_errors_and_warnings": self.daemon_log,
        })
    }

    /// Two labelled horizontal bar charts: p50 start-to-exit per case and
    /// tasks/s at c=5 per case.
    pub fn svg(&self) -> String {
        let runc = self.runc_p50();
        let lat: Vec<(String, f64, f64)> = self
            .latency
            .iter()
            .map(|s| (s.case.name.clone(), s.p(0.5), s.p(0.5) / runc))
            .collect();
        let tput: Vec<(String, f64, f64)> = self
            .throughput
            .iter()
            .filter(|c| c.concurrency == 5)
            .map(|c| {
                let t = c.tasks_per_sec();
                (c.case.clone(), t, t / self.tput("runc", 5))
            })
            .collect();
        let (w, bar, gap, left, right) = (800.0, 22.0, 8.0, 150.0, 190.0);
        let chart_h = |n: usize| 40.0 + n as f64 * (bar + gap) + 10.0;
        let height = chart_h(lat.len()) + chart_h(tput.len()) + 20.0;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" \
             viewBox=\"0 0 {w} {height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let mut y = 10.0;
        for (title, unit, rows) in [
            (
                "p50 start-to-exit per case (ms, lower is better)",
                "ms",
                &lat,
            ),
            (
                "tasks/s at concurrency 5 per case (higher is better)",
                "/s",
                &tput,
            ),
        ] {
            let _ = writeln!(
                svg,
                "<text x=\"10\" y=\"{}\" font-weight=\"bold\" font-size=\"15\">{title}</text>",
                y + 18.0
            );
            let max = rows
                .iter()
                .map(|r| r.1)
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let scale = if max > 0.0 {
                (w - left - right) / max
            } else {
                0.0
            };
            for (i, (name, v, x)) in rows.iter().enumerate() {
                let by = y + 40.0 + i as f64 * (bar + gap);
                let len = if v.is_finite() { v * scale } else { 0.0 };
                let color = if name == "runc" {
                    "#888888"
                } else if name.starts_with("baseline") {
                    "#9ecae1"
                } else if name == "heavy-io" {
                    "#fdae6b"
                } else {
                    "#3182bd"
                };
                let _ = writeln!(
                    svg,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\n\
                     <rect x=\"{left}\" y=\"{by}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"{color}\"/>\n\
                     <text x=\"{:.1}\" y=\"{}\">{v:.1} {unit} ({x:.2}x runc)</text>",
                    left - 8.0,
                    by + bar * 0.7,
                    left + len + 6.0,
                    by + bar * 0.7,
                );
            }
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" y1=\"{}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
                y + 36.0,
                y + 40.0 + rows.len() as f64 * (bar + gap)
            );
            y += chart_h(rows.len()) + 10.0;
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// The header of a table with a value and its ratio to runc per
/// concurrency (and a failures column).
fn concurrency_header(md: &mut String, concurrency: &[usize], failures: bool) {
    md.push_str("| case |");
    for c in concurrency {
        let _ = write!(md, " c={c} | x runc |");
    }
    if failures {
        md.push_str(" failures |");
    }
    md.push_str("\n| --- |");
    md.push_str(&" ---: | ---: |".repeat(concurrency.len()));
    if failures {
        md.push_str(" ---: |");
    }
    md.push('\n');
}

//! HTTP: the `wasi:http` hello component (wasmhybrid) against `busybox
//! httpd` (runc), both in one network namespace the bench creates
//! (loopback only), with the client on threads inside it.
//!
//! - create -> first 200: from creating the container to the first `GET /`
//!   answered 200 with the expected body (polled every millisecond once
//!   `Tasks.Start` returned), repeated, servers alternating;
//! - request latency: `requests` requests per server, one connection each
//!   (`Connection: close`), from `CLIENTS` threads, in chunks that
//!   alternate between the two servers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use wasmhybrid_harness::client::{RUNC_RUNTIME, RunOpts, Running, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::netns::{NetNs, http_get_here, in_netns};

use crate::cases::{Env, HTTP_WASM, HTTPD, HTTPD_INDEX};
use crate::common::ms;

pub const CLIENTS: usize = 4;
const CHUNKS: usize = 4;
pub const KINDS: [&str; 2] = ["wasm", "runc"];

/// One server's results.
#[derive(Debug, Clone, Default)]
pub struct HttpSeries {
    pub kind: String,
    pub first_200_ms: Vec<f64>,
    pub latencies_ms: Vec<f64>,
    pub failures: usize,
    /// Wall time of the request chunks.
    pub secs: f64,
}

fn addr(kind: &str) -> SocketAddr {
    let port = if kind == "wasm" { 8080 } else { 8081 };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A long-running server of `kind` (`wasm`: the wasi:http component;
/// `runc`: busybox httpd) listening on `addr` inside `netns`.
pub fn server_opts(kind: &str, id: &str, netns: PathBuf, addr: SocketAddr) -> RunOpts {
    let a = addr.to_string();
    let mut o = if kind == "wasm" {
        RunOpts::new(id, HTTP_WASM, WASMHYBRID_RUNTIME).env(&[&format!("WASMHYBRID_HTTP_ADDR={a}")])
    } else {
        RunOpts::new(id, HTTPD, RUNC_RUNTIME).args(&[
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            &a,
            "-h",
            "/www",
        ])
    };
    o.netns = Some(netns);
    o
}

/// The body a kind's server answers `GET /` with (prefix).
pub fn expected_body(kind: &str) -> &'static str {
    if kind == "wasm" {
        "hello from wasi:http GET /"
    } else {
        HTTPD_INDEX
    }
}

/// One `GET /` from the calling thread (no retry): Ok if 200 with a body
/// starting with `expect`.
fn get_once(addr: SocketAddr, expect: &str) -> Result<()> {
    let resp = http_get_here(addr, "/", Duration::ZERO)?;
    if resp.status != 200 || !resp.body.starts_with(expect) {
        bail!("GET / on {addr}: {} {:?}", resp.status, resp.body);
    }
    Ok(())
}

/// Polls `GET /` on `addr` inside `netns` every millisecond until it
/// answers 200 with `expect` (bounded by `timeout`).
pub async fn get_ok(
    netns: PathBuf,
    addr: SocketAddr,
    expect: &'static str,
    timeout: Duration,
) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        in_netns(netns, move || {
            let deadline = Instant::now() + timeout;
            loop {
                match get_once(addr, expect) {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    })
    .await?
}

/// Stops (SIGKILL) and deletes a container.
pub async fn stop(mut r: Running) -> Result<()> {
    r.kill(9).await?;
    tokio::time::timeout(Duration::from_secs(10), r.wait())
        .await
        .map_err(|_| anyhow!("{} did not exit after SIGKILL", r.id))??;
    r.delete().await.map(|_| ())
}

/// Starts server `kind` as container `id` on `addr` inside `netns` and
/// polls it until it answers; the container comes back also when it does
/// not answer, to be stopped.
pub async fn start_serving(
    env: &Env,
    kind: &str,
    id: &str,
    netns: PathBuf,
    addr: SocketAddr,
) -> Result<(Running, Result<()>)> {
    let r = env
        .ctrd
        .start(&server_opts(kind, id, netns.clone(), addr))
        .await?;
    let ok = get_ok(netns, addr, expected_body(kind), Duration::from_secs(30))
        .await
        .with_context(|| format!("{id} does not serve on {addr}"));
    Ok((r, ok))
}

/// One untimed start, serve and stop (page cache, AOT cache).
pub async fn warm_up(
    env: &Env,
    kind: &str,
    id: &str,
    netns: PathBuf,
    addr: SocketAddr,
) -> Result<()> {
    let (r, ok) = start_serving(env, kind, id, netns, addr).await?;
    stop(r).await?;
    ok
}

/// Runs `n` requests on `CLIENTS` threads inside `netns`; returns each
/// successful one's latency and the number of failures.
async fn load(netns: PathBuf, kind: &'static str, n: usize) -> Result<(Vec<f64>, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (netns, next) = (netns.clone(), next.clone());
            tokio::task::spawn_blocking(move || {
                in_netns(netns, move || {
                    let (mut lat, mut failed, mut first_err) = (vec![], 0usize, None);
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let t = Instant::now();
                        match get_once(addr(kind), expected_body(kind)) {
                            Ok(()) => lat.push(ms(t.elapsed())),
                            Err(e) => {
                                failed += 1;
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    Ok((lat, failed, first_err))
                })
            })
        })
        .collect();
    let (mut all, mut failed) = (vec![], 0);
    for h in handles {
        let (lat, f, err) = h.await??;
        if let Some(e) = err {
            eprintln!("FAILED http {kind}: {f} requests, e.g. {e:#}");
        }
        all.extend(lat);
        failed += f;
    }
    Ok((all, failed))
}

pub async fn run(env: &Env, starts: usize, requests: usize) -> Result<Vec<HttpSeries>> {
    let net = NetNs::new()?;
    let mut series: Vec<HttpSeries> = KINDS
        .iter()
        .map(|k| HttpSeries {
            kind: k.to_string(),
            ..Default::default()
        })
        .collect();
    for kind in KINDS {
        let id = format!("http-warm-{kind}");
        warm_up(env, kind, &id, net.path(), addr(kind)).await?;
    }
    for k in 0..starts {
        let order: Vec<usize> = if k % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let kind = KINDS[i];
            let id = format!("http-{kind}-{k}");
            let t0 = Instant::now();
            let (r, ok) = start_serving(env, kind, &id, net.path(), addr(kind)).await?;
            let elapsed = ms(t0.elapsed());
            stop(r).await?;
            match ok {
                Ok(()) => series[i].first_200_ms.push(elapsed),
                Err(e) => {
                    series[i].failures += 1;
                    env.failures.record(&format!("http first 200 {id}"), &e);
                }
            }
        }
    }
    // Both servers up for the request latency.
    let mut servers = vec![];
    let result = async {
        for kind in KINDS {
            let id = format!("http-load-{kind}");
            let (r, ok) = start_serving(env, kind, &id, net.path(), addr(kind)).await?;
            servers.push(r);
            ok?;
        }
        for c in 0..CHUNKS {
            let n = requests / CHUNKS + usize::from(c < requests % CHUNKS);
            let order: Vec<usize> = if c % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
            for i in order {
                let t = Instant::now();
                let (lat, failed) = load(net.path(), KINDS[i], n).await?;
                let s = &mut series[i];
                s.secs += t.elapsed().as_secs_f64();
                s.latencies_ms.extend(lat);
                s.failures += failed;
                if failed > 0 {
                    env.failures.record(
                        &format!("http requests to {}", KINDS[i]),
                        &anyhow!("{failed} of {n} requests failed"),
                    );
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    for r in servers {
        stop(r).await?;
    }
    result?;
    Ok(series)
}

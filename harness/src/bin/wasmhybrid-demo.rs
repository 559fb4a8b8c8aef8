//! The main job: runs wasmhybrid's demo workloads through a containerd and
//! prints what each did and its start-to-exit time.
//!
//! Starts a private containerd (its own root, state and socket in a temp
//! dir) unless `--address` names a running containerd that already has the
//! shim on its PATH.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmhybrid_harness::client::{Ctrd, RunOpts, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_harness::fixtures::{Fixture, import_image, shim_dir_next_to_exe};
use wasmhybrid_harness::image::{ImageSpec, WASM_COMPONENT_LAYER};
use wasmhybrid_harness::netns::{NetNs, http_get};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let shim_dir = shim_dir_next_to_exe()?;
    println!("shim: {}/containerd-shim-wasmhybrid-v1", shim_dir.display());
    let mut daemon = PrivateContainerd::start(DaemonOptions {
        shim_dir,
        ..Default::default()
    })
    .context("start a private containerd")?;
    println!(
        "containerd: private instance at {}",
        daemon.address().display()
    );

    let ns = daemon.namespace("demo");
    let images = [
        ImageSpec::rootfs(
            "localhost/wasmhybrid/demo-cmd:p1",
            "wh-cmd.wasm",
            Fixture::CmdP1.bytes()?,
        ),
        ImageSpec::artifact(
            "localhost/wasmhybrid/demo-cmd:p2",
            WASM_COMPONENT_LAYER,
            Fixture::CmdP2.bytes()?,
        ),
        ImageSpec::artifact(
            "localhost/wasmhybrid/demo-http:latest",
            WASM_COMPONENT_LAYER,
            Fixture::Http.bytes()?,
        ),
    ];
    for image in &images {
        import_image(&daemon, &ns, image)?;
        println!("imported {}", image.name);
    }
    let ctrd = Ctrd::connect(&daemon.address(), &ns).await?;
    println!();

    let cases = [
        (
            "WASI p1 module, rootfs image",
            "localhost/wasmhybrid/demo-cmd:p1",
            vec!["/wh-cmd.wasm", "hello", "--", "env", "GREETING"],
        ),
        (
            "WASI p2 component, OCI artifact",
            "localhost/wasmhybrid/demo-cmd:p2",
            vec!["/main.wasm", "hello", "--", "env", "GREETING"],
        ),
    ];
    for (i, (what, image, args)) in cases.iter().enumerate() {
        let opts = RunOpts::new(&format!("demo-cmd-{i}"), image, WASMHYBRID_RUNTIME)
            .args(args)
            .env(&["GREETING=hi"]);
        let done = ctrd
            .run(&opts)
            .await
            .with_context(|| format!("run {what}"))?;
        println!("== {what}");
        println!("   stdout: {}", done.stdout.trim().replace('\n', " | "));
        println!("   exit code: {}", done.exit_code);
        println!(
            "   start-to-exit: {:.1} ms (Tasks.Create {:.1} ms)",
            ms(done.phases.total()),
            ms(done.phases.task_created)
        );
    }

    // The HTTP service: start it, time the first answer, then stop it.
    // A pod-like network namespace with loopback up, as CNI would make it.
    let netns = NetNs::new()?;
    let mut opts = RunOpts::new(
        "demo-http",
        "localhost/wasmhybrid/demo-http:latest",
        WASMHYBRID_RUNTIME,
    )
    .env(&[
        "WH_GREETING=from the demo",
        "WASMHYBRID_HTTP_ADDR=127.0.0.1:8080",
    ]);
    opts.netns = Some(netns.path());
    let t0 = Instant::now();
    let mut running = ctrd.start(&opts).await?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let resp = http_get(netns.path(), addr, "/demo", Duration::from_secs(10))?;
    let first = t0.elapsed();
    running.kill(15).await?;
    let code = running.wait().await?;
    let (_, _, phases) = running.delete().await?;
    println!("== wasi:http/proxy component, OCI artifact");
    println!(
        "   GET /demo -> {} {}",
        resp.status,
        resp.body.trim().replace('\n', " | ")
    );
    println!("   create-to-first-response: {:.1} ms", ms(first));
    println!(
        "   stopped with SIGTERM: exit code {code}; start-to-deleted {:.1} ms",
        ms(phases.total())
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

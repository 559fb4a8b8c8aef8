//! The main job: runs wasmhybrid's demo workloads through a containerd and
//! prints what each did and its start-to-exit time.
//!
//! Starts a private containerd (its own root, state and socket in a temp
//! dir) unless `--address` names a running containerd that already has
//! `containerd-shim-wasmhybrid-v1` on its PATH.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use wasmhybrid_harness::client::{Ctrd, RunOpts, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_harness::fixtures::{Fixture, import_image_at, shim_dir_next_to_exe};
use wasmhybrid_harness::image::{ImageSpec, WASM_COMPONENT_LAYER};
use wasmhybrid_harness::netns::{NetNs, http_get};

#[derive(Parser)]
#[command(about = "Run wasmhybrid's demo workloads through containerd")]
struct Args {
    /// Use the containerd at this socket instead of starting a private one.
    #[arg(long)]
    address: Option<PathBuf>,
    /// containerd namespace for the demo's images and containers.
    #[arg(long, default_value = "wasmhybrid-demo")]
    namespace: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let workdir = tempfile::Builder::new()
        .prefix("wasmhybrid-demo-")
        .tempdir()?;
    let mut private = None;
    let (address, ns) = match &args.address {
        Some(address) => {
            println!("containerd: {}", address.display());
            (address.clone(), args.namespace.clone())
        }
        None => {
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
            let ns = daemon.namespace(&args.namespace);
            let address = daemon.address();
            private = Some(daemon);
            (address, ns)
        }
    };

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
        ImageSpec::busybox("localhost/wasmhybrid/demo-native:latest")?,
    ];
    for image in &images {
        import_image_at(&address, workdir.path(), &ns, image)?;
        println!("imported {}", image.name);
    }
    let ctrd = Ctrd::connect(&address, &ns).await?;
    println!();

    let suffix = std::process::id();
    let cases = [
        (
            "WASI p1 module, rootfs image (wasi/wasm)",
            "localhost/wasmhybrid/demo-cmd:p1",
            ["/wh-cmd.wasm", "hello", "--", "env", "GREETING"],
        ),
        (
            "WASI p2 component, OCI Wasm artifact",
            "localhost/wasmhybrid/demo-cmd:p2",
            ["/main.wasm", "hello", "--", "env", "GREETING"],
        ),
    ];
    for (i, (what, image, cmd)) in cases.iter().enumerate() {
        let opts = RunOpts::new(&format!("demo-cmd-{i}-{suffix}"), image, WASMHYBRID_RUNTIME)
            .args(cmd)
            .env(&["GREETING=hi"]);
        // The first start of a module compiles it; show a second, too.
        let first = ctrd
            .run(&opts)
            .await
            .with_context(|| format!("run {what}"))?;
        let again = ctrd
            .run(&opts)
            .await
            .with_context(|| format!("run {what}"))?;
        println!("== {what}");
        println!("   stdout: {}", first.stdout.trim().replace('\n', " | "));
        println!("   exit code: {}", first.exit_code);
        for (label, done) in [("first", &first), ("second", &again)] {
            let p = &done.phases;
            println!(
                "   start-to-exit ({label} run): {:.1} ms  [created {:.1}, Tasks.Create {:.1}, Tasks.Start {:.1}, ran {:.1}, deleted {:.1}]",
                ms(p.total()),
                ms(p.container_created),
                ms(p.task_created),
                ms(p.task_started),
                ms(p.ran),
                ms(p.deleted)
            );
        }
    }

    // A native image through the same runtime: handed to runc.
    let opts = RunOpts::new(
        &format!("demo-native-{suffix}"),
        "localhost/wasmhybrid/demo-native:latest",
        WASMHYBRID_RUNTIME,
    )
    .args(&[
        "/bin/sh",
        "-c",
        "echo hello from busybox under runc; uname -s",
    ]);
    let done = ctrd.run(&opts).await.context("run the native image")?;
    println!("== native busybox image through io.containerd.wasmhybrid.v1 (delegated to runc)");
    println!("   stdout: {}", done.stdout.trim().replace('\n', " | "));
    println!("   exit code: {}", done.exit_code);
    println!("   start-to-exit: {:.1} ms", ms(done.phases.total()));

    // The HTTP service, in a pod-like network namespace (loopback up, as
    // CNI makes it): time to the first answer, then stop it with SIGTERM.
    let netns = NetNs::new()?;
    let mut opts = RunOpts::new(
        &format!("demo-http-{suffix}"),
        "localhost/wasmhybrid/demo-http:latest",
        WASMHYBRID_RUNTIME,
    )
    .env(&["WH_GREETING=from the demo"]);
    opts.netns = Some(netns.path());
    let t0 = Instant::now();
    let mut running = ctrd.start(&opts).await?;
    let addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let resp = http_get(netns.path(), addr, "/demo", Duration::from_secs(20))?;
    let first = t0.elapsed();
    running.kill(15).await?;
    let code = running.wait().await?;
    let (_, _, phases) = running.delete().await?;
    println!("== wasi:http/proxy component, OCI Wasm artifact (serving on 0.0.0.0:8080)");
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
    drop(private);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

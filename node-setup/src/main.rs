//! `wasmhybrid-node-setup`: installs the wasmhybrid shim on a node and
//! registers it with the node's containerd, or undoes that.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use wasmhybrid_node_setup::node::{Flavor, Node};
use wasmhybrid_node_setup::setup::{self, Options, Restart};

#[derive(Parser)]
#[command(
    about = "Install the wasmhybrid shim on this node and register it with containerd",
    long_about = "Install the wasmhybrid shim on this node and register it with containerd.\n\n\
        install: copies the shim to --bin-dir, registers the `wasmhybrid` runtime in \
        containerd's config (keeping a backup), restarts containerd if the config changed, \
        precompiles the node's Wasm images and labels the node wasmhybrid.io/ready=true. \
        uninstall undoes it (the config is restored byte for byte). A second run changes \
        nothing.\n\nPaths given as options are as this process sees them; --host-root only \
        changes the defaults (the DaemonSet mounts the host's / at /host)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the shim and register it.
    Install(Args),
    /// Unregister and remove the shim.
    Uninstall(Args),
}

#[derive(clap::Args)]
struct Args {
    /// The host's root directory as seen by this process.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// How containerd runs on the node [default: detected].
    #[arg(long, value_enum)]
    flavor: Option<Flavor>,
    /// The containerd config to edit [default: the flavor's].
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's socket [default: the flavor's].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The shim binary to install, with the daemon binary `wasmhybrid`
    /// beside it [default: beside this installer].
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Where to install the shim [default: <host-root>/usr/local/bin].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// After a config change: `auto` (systemctl restart of the flavor's
    /// service, through nsenter when --host-root is not /), `none`, or a
    /// shell command to run.
    #[arg(long, default_value = "auto")]
    restart: String,
    /// Do not precompile the node's Wasm images.
    #[arg(long)]
    no_warm: bool,
    /// containerd namespaces to warm (repeat for several).
    #[arg(long = "namespace", default_value = "k8s.io")]
    namespaces: Vec<String>,
    /// The AOT cache [default: <host-root>/var/lib/wasmhybrid/aot].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The Kubernetes node to label wasmhybrid.io/ready=true [default: $NODE_NAME; none: no label].
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The kubectl to label with.
    #[arg(long, default_value = "kubectl")]
    kubectl: String,
    /// Seconds to wait for containerd after a restart.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("wasmhybrid-node-setup: {e:#}");
        std::process::exit(1);
    }
}

fn options(a: Args) -> Result<Options> {
    let mut node = match (&a.config, a.flavor) {
        // An explicit config without a flavor: plain containerd semantics.
        (Some(_), None) => Node::detect(&a.host_root, Some(Flavor::Containerd))?,
        _ => Node::detect(&a.host_root, a.flavor)?,
    };
    if let Some(config) = a.config {
        node.config = config;
        node.seed = None;
    }
    if let Some(socket) = a.socket {
        node.socket = socket;
    }
    let restart = match a.restart.as_str() {
        "auto" => Restart::Auto,
        "none" => Restart::Never,
        cmd => Restart::Command(cmd.to_string()),
    };
    Ok(Options {
        bin_dir: a
            .bin_dir
            .unwrap_or_else(|| a.host_root.join("usr/local/bin")),
        node,
        shim: a.shim,
        restart,
        warm: !a.no_warm,
        namespaces: a.namespaces,
        cache_dir: a.cache_dir,
        node_name: a.node_name.filter(|n| !n.is_empty()),
        kubectl: a.kubectl,
        dry_run: a.dry_run,
        wait: Duration::from_secs(a.wait),
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Install(a) => setup::install(&options(a)?),
        Cmd::Uninstall(a) => setup::uninstall(&options(a)?),
    }
}

//! `wasmhybrid-node-setup`: registers (or unregisters) the wasmhybrid shim
//! in a node's containerd config.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use wasmhybrid_node_setup::files::{self, DEFAULT_CONFIG, Outcome};

#[derive(Parser)]
#[command(about = "Register the wasmhybrid shim with containerd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add the `wasmhybrid` runtime (keeps a backup of the original).
    Install(Target),
    /// Restore the original config (byte for byte from the backup).
    Uninstall(Target),
}

#[derive(clap::Args)]
struct Target {
    /// The containerd config to edit.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print the diff and change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("wasmhybrid-node-setup: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let (verb, target) = match cli.command {
        Command::Install(t) => ("install", t),
        Command::Uninstall(t) => ("uninstall", t),
    };
    let outcome = match verb {
        "install" => files::install(&target.config, target.dry_run)?,
        _ => files::uninstall(&target.config, target.dry_run)?,
    };
    match outcome {
        Outcome::Unchanged => println!("{}: nothing to {verb}", target.config.display()),
        Outcome::Changed { diff } => {
            print!("{diff}");
            if target.dry_run {
                println!("(dry run: {} not changed)", target.config.display());
            } else {
                println!(
                    "{} updated; restart containerd to apply (e.g. systemctl restart containerd)",
                    target.config.display()
                );
            }
        }
    }
    Ok(())
}

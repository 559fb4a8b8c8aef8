//! The whole installation on a node, in order: shim binary, containerd
//! config, containerd restart, AOT cache warm-up, node label; and its
//! reverse. Every step says what it did; a step with nothing to do does
//! nothing, so a second run changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::files::{self, Outcome};
use crate::node::Node;

/// The shim binary's name; containerd finds it on its `PATH` from the
/// runtime type `io.containerd.wasmhybrid.v1`.
pub const SHIM: &str = "containerd-shim-wasmhybrid-v1";
/// The shim daemon and operator tool, installed beside [`SHIM`] (which
/// starts it from there).
pub const TOOL: &str = "wasmhybrid";
/// The node label that the RuntimeClass schedules on.
pub const LABEL: &str = "wasmhybrid.io/ready";

/// How to restart containerd after its config changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// The node's service manager ([`Node::restart_command`]).
    Auto,
    /// Leave it to the operator (printed).
    Never,
    /// A shell command run by the installer.
    Command(String),
}

/// Everything one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub node: Node,
    /// The shim binary to install (with [`TOOL`] beside it); `None`:
    /// beside this installer.
    pub shim: Option<PathBuf>,
    /// Where the shim goes (as the installer sees it).
    pub bin_dir: PathBuf,
    pub restart: Restart,
    /// Precompile the node's Wasm images after installing.
    pub warm: bool,
    pub namespaces: Vec<String>,
    /// The AOT cache (as the installer sees it); `None`: the host's default.
    pub cache_dir: Option<PathBuf>,
    /// The Kubernetes node to label; `None`: no label.
    pub node_name: Option<String>,
    pub kubectl: String,
    pub dry_run: bool,
    /// How long containerd may take to answer after a restart.
    pub wait: Duration,
}

impl Options {
    fn shim_dest(&self) -> PathBuf {
        self.bin_dir.join(SHIM)
    }

    fn shim_source(&self) -> Result<PathBuf> {
        match &self.shim {
            Some(p) => Ok(p.clone()),
            None => {
                let exe = std::env::current_exe().context("locate the installer")?;
                let beside = exe.with_file_name(SHIM);
                if !beside.exists() {
                    bail!(
                        "no shim binary: {} does not exist; pass --shim PATH",
                        beside.display()
                    );
                }
                Ok(beside)
            }
        }
    }
}

fn say(dry_run: bool, line: &str) {
    if dry_run {
        println!("(dry run) {line}");
    } else {
        println!("{line}");
    }
}

/// Installs the shim and registers it; see the module doc for the order.
pub fn install(o: &Options) -> Result<()> {
    let n = &o.node;
    println!(
        "node: {:?} containerd, config {}, socket {}",
        n.flavor,
        n.config.display(),
        n.socket.display()
    );
    // Check the config first: a bad one stops the run before anything
    // is written.
    let config = files::install_seeded(&n.config, n.seed.as_deref(), true)?;

    let source = o.shim_source()?;
    let tool_source = source.with_file_name(TOOL);
    // Both or neither: the launcher starts the daemon binary beside it.
    for from in [&source, &tool_source] {
        if !from.is_file() {
            bail!(
                "{} does not exist: the shim's two binaries, {SHIM} and {TOOL}, are installed \
                 from one directory",
                from.display()
            );
        }
    }
    for (from, to) in [
        (&source, o.shim_dest()),
        (&tool_source, o.bin_dir.join(TOOL)),
    ] {
        let changed = install_binary(from, &to, o.dry_run)?;
        say(
            o.dry_run,
            &format!(
                "shim: {} {}",
                to.display(),
                if changed {
                    "installed"
                } else {
                    "already up to date"
                }
            ),
        );
    }

    let config_changed = match config {
        Outcome::Unchanged => {
            println!(
                "config: {} already registers wasmhybrid",
                n.config.display()
            );
            false
        }
        Outcome::Changed { diff } => {
            print!("{diff}");
            if !o.dry_run {
                files::install_seeded(&n.config, n.seed.as_deref(), false)?;
            }
            say(
                o.dry_run,
                &format!("config: {} updated", n.config.display()),
            );
            true
        }
    };
    if config_changed {
        restart(o)?;
    }
    if o.warm {
        warm(o);
    }
    if let Some(name) = &o.node_name {
        kubectl(
            o,
            &[
                "label",
                "node",
                name,
                &format!("{LABEL}=true"),
                "--overwrite",
            ],
        )?;
    }
    Ok(())
}

/// Undoes [`install`]: the label first (no new pods are scheduled here),
/// then the config (restored byte for byte), restart, and the binaries.
/// The AOT cache stays (`wasmhybrid cache prune` empties it).
pub fn uninstall(o: &Options) -> Result<()> {
    if let Some(name) = &o.node_name {
        kubectl(o, &["label", "node", name, &format!("{LABEL}-")])?;
    }
    let n = &o.node;
    let config_changed = match files::uninstall(&n.config, o.dry_run) {
        Ok(Outcome::Unchanged) => {
            println!(
                "config: {} has no wasmhybrid registration",
                n.config.display()
            );
            false
        }
        Ok(Outcome::Changed { diff }) => {
            print!("{diff}");
            say(
                o.dry_run,
                &format!("config: {} restored", n.config.display()),
            );
            true
        }
        Err(files::FileError::Missing { .. }) => {
            println!("config: {} does not exist", n.config.display());
            false
        }
        Err(e) => return Err(e.into()),
    };
    if config_changed {
        restart(o)?;
    }
    for path in [o.bin_dir.join(TOOL), o.shim_dest()] {
        if path.symlink_metadata().is_ok() {
            if !o.dry_run {
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
            }
            say(o.dry_run, &format!("shim: removed {}", path.display()));
        }
    }
    Ok(())
}

/// Copies a binary to `dest` (atomically, 0755) unless it is already there
/// byte for byte (a symlink there, as releases before 0.2 installed the
/// tool, is replaced). Returns whether anything changed.
fn install_binary(source: &Path, dest: &Path, dry_run: bool) -> Result<bool> {
    let bytes = std::fs::read(source).with_context(|| {
        format!(
            "read {} (the shim's two binaries, {SHIM} and {TOOL}, are installed from one directory)",
            source.display()
        )
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an executable (no ELF header)", source.display());
    }
    let is_file = dest
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_file());
    let same = is_file && std::fs::read(dest).is_ok_and(|old| old == bytes);
    if same || dry_run {
        return Ok(!same);
    }
    let dir = dest.parent().context("shim destination has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dest.with_extension("wasmhybrid-tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, dest))
        .with_context(|| format!("install {}", dest.display()))?;
    Ok(true)
}

/// Restarts containerd and waits for its socket to answer.
fn restart(o: &Options) -> Result<()> {
    let argv: Vec<String> = match &o.restart {
        Restart::Never => {
            println!(
                "restart: not restarting containerd (--restart none); restart it to apply \
                 (e.g. systemctl restart {})",
                o.node.service
            );
            return Ok(());
        }
        Restart::Auto => o.node.restart_command(),
        Restart::Command(cmd) => vec!["sh".into(), "-c".into(), cmd.clone()],
    };
    let shown = argv.join(" ");
    if o.dry_run {
        say(true, &format!("restart: would run `{shown}`"));
        return Ok(());
    }
    let started = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("run `{shown}`"))?;
    if !status.success() {
        bail!("restarting containerd failed: `{shown}` exited with {status}");
    }
    wait_for_socket(&o.node.socket, o.wait, o.node.service)?;
    println!(
        "restart: `{shown}`; containerd answers on {} after {:.1} s",
        o.node.socket.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn wait_for_socket(socket: &Path, wait: Duration, service: &str) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "containerd did not answer on {} within {} s after the restart; \
                 check its log (journalctl -u {})",
                socket.display(),
                wait.as_secs(),
                service
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Precompiles the node's Wasm images with the installed shim. A failure
/// is reported but does not fail the installation: a start then compiles.
fn warm(o: &Options) {
    let shim = o.bin_dir.join(TOOL);
    let cache_dir = o
        .cache_dir
        .clone()
        .unwrap_or_else(|| o.node.root.join("var/lib/wasmhybrid/aot"));
    let mut cmd = Command::new(&shim);
    cmd.args(["cache", "warm", "--address"])
        .arg(&o.node.socket)
        .arg("--dir")
        .arg(&cache_dir);
    for ns in &o.namespaces {
        cmd.args(["--namespace", ns]);
    }
    if o.dry_run {
        say(true, &format!("warm: would run {cmd:?}"));
        return;
    }
    if std::os::unix::net::UnixStream::connect(&o.node.socket).is_err() {
        println!(
            "warm: skipped, containerd does not answer on {}",
            o.node.socket.display()
        );
        return;
    }
    match cmd.status() {
        Ok(s) if s.success() => println!("warm: AOT cache {} warmed", cache_dir.display()),
        Ok(s) => println!(
            "warm: warning: `wasmhybrid cache warm` exited with {s}; starts compile instead"
        ),
        Err(e) => println!("warm: warning: cannot run {}: {e}", shim.display()),
    }
}

fn kubectl(o: &Options, args: &[&str]) -> Result<()> {
    let shown = format!("{} {}", o.kubectl, args.join(" "));
    if o.dry_run {
        say(true, &format!("label: would run `{shown}`"));
        return Ok(());
    }
    let out = Command::new(&o.kubectl)
        .args(args)
        .output()
        .with_context(|| format!("run `{shown}` (is kubectl installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("label: {}", String::from_utf8_lossy(&out.stdout).trim());
    Ok(())
}

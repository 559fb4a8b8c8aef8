//! What runs in the container's processes.
//!
//! The shim daemon ([`crate::instance`]) creates each container's process
//! from a zygote (a copy of the shim taken at start-up, before any thread
//! existed), on the host:
//!
//! 1. [`load`] maps a module's native code from the AOT cache (or, if the
//!    cache is unusable, compiles the Wasm) into [`TEMPLATE`], in a zygote
//!    process of its own: for cached code, a *template* that the daemon
//!    keeps for every later container of that module;
//! 2. [`build`] clones the container's process from it
//!    ([`crate::isolation`]): namespaces, cgroup, root filesystem, user,
//!    capabilities and seccomp. The clone holds a copy of [`TEMPLATE`]:
//!    the code is already loaded, nothing of the host's filesystem is
//!    needed inside, and the template's pages are shared until written.
//!
//! A template holds only the module's code: a container's spec, stdio and
//! plan come with its [`build`] request and leave the template with its
//! clone, so nothing of one container reaches the next.
//!
//! At `Tasks.Start`, that process runs the workload ([`run_init`]) and
//! exits with its code. Errors are reported once,
//! there: to the shim log and to the container's stderr (what `ctr` and the
//! kubelet show), with a documented exit code ([`crate::exit`]).

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use containerd_shimkit::sandbox::InstanceConfig;
use containerd_shimkit::zygote::WireFd;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroup::ChildCgroup;
use crate::dispatch::WasmForm;
use crate::engine::{EngineError, GuestEnv, Linked, Outcome, WasmEngine, Workload};
use crate::isolation;
use crate::{exit, http, signals};

/// The shim's name: runtime type `io.containerd.wasmhybrid.v1`, state
/// under `/run/containerd/wasmhybrid`.
pub const SHIM_NAME: &str = "wasmhybrid";

/// What the daemon decided a container runs (sent with its [`build`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum Plan {
    Run(RunPlan),
    /// Nothing runnable: the init process reports `message` and exits.
    Fail {
        code: i32,
        message: String,
    },
}

/// How a container runs the code its zygote process loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunPlan {
    /// The export a core module's command calls.
    pub func: String,
    /// argv[0] for the guest when the container has no args.
    pub default_arg0: String,
    pub http_addr: SocketAddr,
    /// One line for the log: what runs and from where.
    pub reason: String,
}

/// Where the native code comes from (sent to [`load`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum Code {
    /// An entry of the AOT cache, verified by the daemon.
    Cached { path: PathBuf, kind: Workload },
    /// The Wasm itself, compiled in a zygote process for this container (the
    /// cache could not be used; the daemon logged why).
    Wasm {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        component: bool,
    },
}

/// A module's loaded and linked code, in a zygote process.
struct Template {
    linked: Linked,
    engine: WasmEngine,
}

/// Set in a zygote process by [`load`]; each container process [`build`]
/// clones from it has a copy.
static TEMPLATE: Mutex<Option<Template>> = Mutex::new(None);

fn engine() -> Result<WasmEngine, EngineError> {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let e = WasmEngine::new()?;
    Ok(ENGINE.get_or_init(|| e).clone())
}

/// Zygote task, once in the daemon's global zygote process: creates the
/// Wasmtime engine there, so that every template and zygote process (a
/// fork of it) starts with it instead of building its own. Engine creation
/// starts no thread, so the global zygote stays safe to fork.
pub fn prewarm(_: ()) {
    if let Err(e) = engine() {
        log::warn!("cannot create the Wasmtime engine ahead of time: {e}");
    }
}

/// Why [`load`] failed.
#[derive(Debug, Serialize, Deserialize)]
pub enum LoadError {
    /// Wasmtime refused a cache entry (the daemon removes and rebuilds it).
    Rejected(String),
    /// The Wasm does not compile: the container reports it.
    Invalid(String),
}

/// Zygote task: loads `code` into [`TEMPLATE`]. The zygote process logs
/// nowhere: the daemon reports the outcome.
pub fn load(code: Code) -> Result<(), LoadError> {
    crate::logging::detach();
    let engine = engine().map_err(|e| LoadError::Invalid(e.to_string()))?;
    let loaded = match &code {
        Code::Cached { path, kind } => engine
            .load_precompiled(path, *kind)
            .map_err(|e| LoadError::Rejected(e.to_string()))?,
        Code::Wasm { bytes, component } => engine
            .load(
                bytes,
                if *component {
                    WasmForm::Component
                } else {
                    WasmForm::CoreModule
                },
            )
            .map_err(|e| LoadError::Invalid(e.to_string()))?,
    };
    // Linked here, once: every container cloned from this process shares
    // the linker's work instead of redoing (and holding) its own.
    let linked = engine
        .link(loaded)
        .map_err(|e| LoadError::Invalid(e.to_string()))?;
    *TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Template { linked, engine });
    Ok(())
}

/// The container process's pid and its pipes, sent back to the daemon.
pub type Built = (i32, WireFd<File>, WireFd<File>);

/// Zygote task: clones the container's process (it waits for the daemon)
/// with `plan`. The zygote process keeps its [`TEMPLATE`] for the next
/// container and nothing of this one (its stdio, namespaces and log sink
/// are closed here once the clone has them).
pub fn build(
    (id, cfg, cgroup, plan): (String, InstanceConfig, ChildCgroup, Plan),
) -> Result<Built, String> {
    let result = build_container(&id, &cfg, &cgroup, plan);
    crate::logging::detach();
    let cloned = result.map_err(|e| format!("{e:#}"))?;
    Ok((
        cloned.pid,
        WireFd::new(cloned.control),
        WireFd::new(cloned.report),
    ))
}

fn build_container(
    id: &str,
    cfg: &InstanceConfig,
    cgroup: &ChildCgroup,
    plan: Plan,
) -> anyhow::Result<isolation::Cloned> {
    let spec = Spec::load(cfg.bundle.join("config.json"))?;
    let pod = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::dispatch::SANDBOX_ID_ANNOTATION));
    crate::logging::for_container(&cfg.bundle, id, pod.map(String::as_str));
    let stdio = if crate::tty::requested(&spec) {
        // The daemon's pseudo-terminal slave, for all three.
        terminal_stdio(&cfg.stdout)?
    } else {
        isolation::Stdio {
            stdin: open_stdin(&cfg.stdin),
            stdout: open_output(&cfg.stdout),
            stderr: open_output(&cfg.stderr),
        }
    };
    let run_spec = spec.clone();
    Ok(isolation::clone_container(
        &cfg.bundle,
        &spec,
        cgroup,
        stdio,
        move || {
            let template = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()).take();
            run_init(plan, template, &run_spec)
        },
    )?)
}

/// stdout or stderr (a FIFO, a file or a logger's pipe: [`crate::stdio`]).
fn open_output(path: &std::path::Path) -> Option<File> {
    if path.as_os_str().is_empty() {
        return None;
    }
    crate::stdio::open_output(path)
        .map_err(|e| log::warn!("output {}: {e}", path.display()))
        .ok()
}

/// A terminal's slave as stdin, stdout and stderr (not made this
/// process's controlling terminal: the container's process does that).
fn terminal_stdio(slave: &std::path::Path) -> anyhow::Result<isolation::Stdio> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(slave)
        .map_err(|e| anyhow::anyhow!("terminal {}: {e}", slave.display()))?;
    Ok(isolation::Stdio {
        stdin: Some(file.try_clone()?),
        stdout: Some(file.try_clone()?),
        stderr: Some(file),
    })
}

/// The container's stdin: the FIFO's read end only, so that the guest sees
/// end-of-file once every writer is gone (the client's, and the daemon's
/// until `Tasks.CloseIO`). Opened without waiting for a writer, then made
/// blocking again for the guest.
fn open_stdin(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.as_os_str().is_empty() {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| log::warn!("stdin {}: {e}", path.display()))
        .ok()?;
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
    Some(file)
}

/// Reports an error to the shim log and the container's stderr.
fn report(message: &str) {
    log::error!("cannot run container: {message}");
    eprintln!("wasmhybrid: {message}");
}

fn run_init(plan: Plan, template: Option<Template>, spec: &Spec) -> i32 {
    if let Err(e) = signals::exit_on_termination_signals() {
        log::warn!("cannot install signal handlers: {e}");
    }
    let (Template { linked, engine }, plan) = match (plan, template) {
        (Plan::Run(plan), Some(template)) => (template, plan),
        (Plan::Fail { code, message }, _) => {
            report(&message);
            return code;
        }
        (Plan::Run(_), None) => {
            report("internal error: the workload's code was not loaded");
            return exit::NOT_RUNNABLE;
        }
    };
    log::info!("running {}", plan.reason);
    // One thread: a Wasm instance runs on one thread anyway, and every
    // extra worker costs the container a stack and a malloc arena (its
    // idle memory was about twice a runc container's in benches/suite's
    // density run with the default one worker per core). Blocking WASI
    // calls still go to tokio's blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("cannot start the async runtime: {e}"));
            return exit::NOT_RUNNABLE;
        }
    };
    let env = guest_env(spec, &plan);
    match rt.block_on(run(&engine, &linked, &plan, env)) {
        Ok(code) => code,
        Err(e) => {
            report(&e.to_string());
            exit::NOT_RUNNABLE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

async fn run(
    engine: &WasmEngine,
    linked: &Linked,
    plan: &RunPlan,
    env: GuestEnv,
) -> Result<i32, RunError> {
    let outcome = match linked {
        Linked::Module { module, pre } => engine.run_module(module, pre, &plan.func, &env).await?,
        Linked::Command(pre) => engine.run_command(pre, &env).await?,
        Linked::HttpProxy(pre) => {
            let backend = Arc::new(engine.proxy_backend(pre, env)?);
            let addr = plan.http_addr;
            let listener = http::bind(addr)
                .await
                .map_err(|source| EngineError::Bind { addr, source })?;
            log::info!("serving wasi:http on {addr}");
            http::serve(listener, backend, release_free_memory)
                .await
                .map_err(RunError::Serve)?;
            Outcome::Exited(0)
        }
    };
    match outcome {
        Outcome::Exited(code) => {
            log::info!("{} exited with code {code}", linked.kind());
            Ok(code)
        }
        Outcome::Trapped(msg) => {
            log::error!("{} trapped: {msg}", linked.kind());
            eprintln!("wasmhybrid: Wasm trap: {msg}");
            Ok(exit::TRAP)
        }
    }
}

/// Gives the heap's free memory back to the kernel. glibc keeps what a
/// finished request freed (its store, instance and buffers) in the heap,
/// dirty, and so charged to the container's cgroup while it idles: about
/// 0.2 MiB of an idle HTTP container's 0.3 MiB in `benches/suite`.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists under
    // its locks; it may be called at any time, from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// argv (with `#func` removed from argv[0]), env and the preopened root.
fn guest_env(spec: &Spec, plan: &RunPlan) -> GuestEnv {
    let process = spec.process().as_ref();
    let mut args: Vec<String> = process.and_then(|p| p.args().clone()).unwrap_or_default();
    match args.first_mut() {
        Some(arg0) => *arg0 = crate::dispatch::parse_entrypoint(arg0).path,
        None => args.push(plan.default_arg0.clone()),
    }
    let envs: Vec<String> = process.and_then(|p| p.env().clone()).unwrap_or_default();
    GuestEnv {
        args,
        envs: GuestEnv::parse_envs(&envs),
        // After pivot_root, `/` is the container's rootfs with the spec's
        // mounts at their destinations; nothing else of the host is there.
        preopens: vec![(PathBuf::from("/"), "/".to_string())],
    }
}

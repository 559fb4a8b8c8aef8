//! What runs in the container's processes.
//!
//! The shim daemon ([`crate::instance`]) gives each container a process of
//! its own, forked from runwasi's zygote (a copy of the shim taken at
//! start-up, before any thread existed). In that process, on the host:
//!
//! 1. [`load`] maps the container's native code from the AOT cache (or, if
//!    the cache is unusable, compiles the Wasm) into [`PREPARED`];
//! 2. [`build`] creates the container's process ([`crate::isolation`]):
//!    namespaces, cgroup, root filesystem, user, capabilities and seccomp.
//!    It is a clone of the zygote process, so it holds a copy of
//!    [`PREPARED`]: the code is already loaded, nothing of the host's
//!    filesystem is needed inside.
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
use crate::engine::{EngineError, GuestEnv, Loaded, Outcome, WasmEngine, Workload};
use crate::isolation;
use crate::{exit, http, signals};

/// The shim's name: runtime type `io.containerd.wasmhybrid.v1`, state
/// under `/run/containerd/wasmhybrid`.
pub const SHIM_NAME: &str = "wasmhybrid";

/// What the daemon decided a container runs (sent to its zygote process).
#[derive(Debug, Serialize, Deserialize)]
pub enum Plan {
    Run(RunPlan),
    /// Nothing runnable: the init process reports `message` and exits.
    Fail {
        code: i32,
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunPlan {
    pub code: Code,
    /// The export a core module's command calls.
    pub func: String,
    /// argv[0] for the guest when the container has no args.
    pub default_arg0: String,
    pub http_addr: SocketAddr,
    /// One line for the log: what runs and from where.
    pub reason: String,
}

/// Where the native code comes from.
#[derive(Debug, Serialize, Deserialize)]
pub enum Code {
    /// An entry of the AOT cache, verified by the daemon.
    Cached { path: PathBuf, kind: Workload },
    /// The Wasm itself, compiled in the container's process (the cache
    /// could not be used; the daemon logged why).
    Wasm {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        component: bool,
    },
}

/// A plan with its code loaded, ready for the init process.
enum Prepared {
    Run {
        loaded: Loaded,
        engine: WasmEngine,
        plan: RunPlan,
    },
    Fail {
        code: i32,
        message: String,
    },
}

/// Set in the container's zygote process by [`load`]; the init process
/// inherits it when [`build`] forks it.
static PREPARED: Mutex<Option<Prepared>> = Mutex::new(None);

fn engine() -> Result<WasmEngine, EngineError> {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let e = WasmEngine::new()?;
    Ok(ENGINE.get_or_init(|| e).clone())
}

/// Zygote task, once in the daemon's global zygote process: creates the
/// Wasmtime engine there, so that every container's zygote process (a
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
}

/// Zygote task: loads the plan's code into [`PREPARED`].
pub fn load(plan: Plan) -> Result<(), LoadError> {
    let prepared = match plan {
        Plan::Fail { code, message } => Prepared::Fail { code, message },
        Plan::Run(plan) => {
            let loaded = engine().and_then(|engine| {
                let loaded = match &plan.code {
                    Code::Cached { path, kind } => engine.load_precompiled(path, *kind),
                    Code::Wasm { bytes, component } => engine.load(
                        bytes,
                        if *component {
                            WasmForm::Component
                        } else {
                            WasmForm::CoreModule
                        },
                    ),
                };
                loaded.map(|l| (l, engine))
            });
            match (loaded, &plan.code) {
                (Ok((loaded, engine)), _) => Prepared::Run {
                    loaded,
                    engine,
                    plan,
                },
                (Err(e), Code::Cached { .. }) => return Err(LoadError::Rejected(e.to_string())),
                (Err(e), Code::Wasm { .. }) => Prepared::Fail {
                    code: exit::NOT_RUNNABLE,
                    message: e.to_string(),
                },
            }
        }
    };
    *PREPARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(prepared);
    Ok(())
}

/// The container process's pid and its pipes, sent back to the daemon.
pub type Built = (i32, WireFd<File>, WireFd<File>);

/// Zygote task: clones the container's process (it waits for the daemon).
pub fn build((id, cfg, cgroup): (String, InstanceConfig, ChildCgroup)) -> Result<Built, String> {
    let result = build_container(&id, &cfg, &cgroup);
    // The container's process has its own copy now.
    PREPARED.lock().unwrap_or_else(|e| e.into_inner()).take();
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
) -> anyhow::Result<isolation::Cloned> {
    let spec = Spec::load(cfg.bundle.join("config.json"))?;
    let pod = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::dispatch::SANDBOX_ID_ANNOTATION));
    crate::logging::for_container(&cfg.bundle, id, pod.map(String::as_str));
    let stdio = isolation::Stdio {
        stdin: cfg.open_stdin().ok(),
        stdout: cfg.open_stdout().ok(),
        stderr: cfg.open_stderr().ok(),
    };
    let run_spec = spec.clone();
    Ok(isolation::clone_container(
        &cfg.bundle,
        &spec,
        cgroup,
        stdio,
        move || {
            let prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner()).take();
            run_init(prepared, &run_spec)
        },
    )?)
}

/// Reports an error to the shim log and the container's stderr.
fn report(message: &str) {
    log::error!("cannot run container: {message}");
    eprintln!("wasmhybrid: {message}");
}

fn run_init(prepared: Option<Prepared>, spec: &Spec) -> i32 {
    if let Err(e) = signals::exit_on_termination_signals() {
        log::warn!("cannot install signal handlers: {e}");
    }
    let (loaded, engine, plan) = match prepared {
        Some(Prepared::Run {
            loaded,
            engine,
            plan,
        }) => (loaded, engine, plan),
        Some(Prepared::Fail { code, message }) => {
            report(&message);
            return code;
        }
        None => {
            report("internal error: the workload was not prepared");
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
    match rt.block_on(run(&engine, &loaded, &plan, env)) {
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
    loaded: &Loaded,
    plan: &RunPlan,
    env: GuestEnv,
) -> Result<i32, RunError> {
    let outcome = match loaded {
        Loaded::Module(module) => engine.run_module(module, &plan.func, &env).await?,
        Loaded::Command(component) => engine.run_command(component, &env).await?,
        Loaded::HttpProxy(component) => {
            let backend = Arc::new(engine.proxy_backend(component, env)?);
            let addr = plan.http_addr;
            let listener = http::bind(addr)
                .await
                .map_err(|source| EngineError::Bind { addr, source })?;
            log::info!("serving wasi:http on {addr}");
            http::serve(listener, backend)
                .await
                .map_err(RunError::Serve)?;
            Outcome::Exited(0)
        }
    };
    match outcome {
        Outcome::Exited(code) => {
            log::info!("{} exited with code {code}", loaded.kind());
            Ok(code)
        }
        Outcome::Trapped(msg) => {
            log::error!("{} trapped: {msg}", loaded.kind());
            eprintln!("wasmhybrid: Wasm trap: {msg}");
            Ok(exit::TRAP)
        }
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

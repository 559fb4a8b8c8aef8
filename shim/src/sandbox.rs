//! The glue between runwasi's `containerd-shim-wasm` framework and our
//! engine: the [`Shim`] (name, version, supported layer types) and the
//! [`Sandbox`] that runs inside the container's init process, after the
//! framework has set up namespaces, cgroups and the rootfs (`pivot_root`).
//!
//! Errors are reported once, here, where they are handled: to the shim log
//! (which containerd collects) and to the container's stderr (which `ctr`
//! and the kubelet show), and turned into a documented exit code
//! ([`crate::exit`]).

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};
use containerd_shim_wasm::shim::{Cli, Config, Shim, Version, version};

use crate::config::WorkloadConfig;
use crate::dispatch::{self, Decision, DispatchError, LayerInfo, WasmSource};
use crate::engine::{EngineError, GuestEnv, Loaded, Outcome, WasmEngine};
use crate::{exit, http, signals};

/// The shim's name: runtime type `io.containerd.wasmhybrid.v1`.
pub const SHIM_NAME: &str = "wasmhybrid";

/// Entry point of the `containerd-shim-wasmhybrid-v1` binary.
pub fn run_shim() {
    WasmHybridShim::run(Config::default());
}

/// The containerd shim.
pub struct WasmHybridShim;

impl Shim for WasmHybridShim {
    fn name() -> &'static str {
        SHIM_NAME
    }

    fn version() -> Version {
        version!()
    }

    type Sandbox = WasmHybridSandbox;

    fn supported_layers_types() -> &'static [&'static str] {
        dispatch::WASM_LAYER_MEDIA_TYPES
    }
}

/// Runs one Wasm container inside its (already isolated) init process.
#[derive(Default, Clone)]
pub struct WasmHybridSandbox;

/// Why a container could not run, with its exit code.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error("entrypoint {path} not found in the container: {source}")]
    NotFound {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the image lists a Wasm layer but containerd returned no bytes for it")]
    LayerMissing,
    #[error("cannot read entrypoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

impl RunError {
    fn exit_code(&self) -> i32 {
        match self {
            RunError::NotFound { .. } => exit::NOT_FOUND,
            RunError::Config(_) => exit::BAD_CONFIG,
            _ => exit::NOT_RUNNABLE,
        }
    }
}

/// Reports an error to the shim log and the container's stderr.
fn report(err: &RunError) {
    log::error!("cannot run container: {err}");
    eprintln!("wasmhybrid: {err}");
}

impl Sandbox for WasmHybridSandbox {
    /// Accepts every container the framework did not already recognise as
    /// native: whether it holds runnable Wasm is decided in `run_wasi`,
    /// which reports a bad entrypoint on the container's stderr (what
    /// `kubectl logs` shows) with a documented exit code. A refusal here
    /// would only surface as containerd's generic "can't handle spec".
    async fn can_handle(&self, _ctx: &impl RuntimeContext) -> Result<()> {
        Ok(())
    }

    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> Result<i32> {
        if let Err(e) = signals::exit_on_termination_signals() {
            log::warn!("cannot install signal handlers: {e}");
        }
        match run(ctx).await {
            Ok(code) => Ok(code),
            Err(err) => {
                report(&err);
                Ok(err.exit_code())
            }
        }
    }
}

/// Decides what to run and reads its bytes.
fn plan<'a>(ctx: &'a impl RuntimeContext) -> Result<(Decision, Cow<'a, [u8]>), RunError> {
    let args = ctx.args();
    let entry = ctx.entrypoint();
    let (layers, bytes): (Vec<LayerInfo>, Option<Cow<'a, [u8]>>) = match entry.source {
        Source::Oci(layers) => (
            layers
                .iter()
                .map(|l| LayerInfo {
                    media_type: l.config.media_type().to_string(),
                    digest: l.config.digest().to_string(),
                })
                .collect(),
            match layers {
                [one] => Some(Cow::Borrowed(one.layer.as_slice())),
                _ => None,
            },
        ),
        Source::File(_) => (vec![], None),
    };
    let source = dispatch::choose_source(args, &layers)?;
    let bytes = match (&source, bytes) {
        (WasmSource::OciLayer { .. }, Some(bytes)) => bytes,
        (WasmSource::Rootfs(path), _) => {
            let path = resolve(path, ctx.envs());
            let bytes = read_entrypoint(&path)?;
            Cow::Owned(bytes)
        }
        (WasmSource::OciLayer { .. }, None) => {
            return Err(RunError::LayerMissing);
        }
    };
    let decision = dispatch::decide(args, source, &bytes)?;
    Ok((decision, bytes))
}

async fn run(ctx: &impl RuntimeContext) -> Result<i32, RunError> {
    let config = WorkloadConfig::from_env(ctx.envs())?;
    let (decision, bytes) = plan(ctx)?;
    log::info!("running {}", decision.reason());

    let engine = WasmEngine::new()?;
    let loaded = engine.load(&bytes, decision.form)?;
    drop(bytes);
    let env = guest_env(ctx, &decision);

    let outcome = match &loaded {
        Loaded::Module(module) => engine.run_module(module, &decision.func, &env).await?,
        Loaded::Command(component) => engine.run_command(component, &env).await?,
        Loaded::HttpProxy(component) => {
            let backend = Arc::new(engine.proxy_backend(component, env)?);
            let addr = config.http_addr;
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
fn guest_env(ctx: &impl RuntimeContext, decision: &Decision) -> GuestEnv {
    let mut args = ctx.args().to_vec();
    match args.first_mut() {
        Some(arg0) => *arg0 = dispatch::parse_entrypoint(arg0).path,
        None => args.push(match &decision.source {
            WasmSource::Rootfs(p) => p.display().to_string(),
            WasmSource::OciLayer { .. } => "main.wasm".to_string(),
        }),
    }
    GuestEnv {
        args,
        envs: GuestEnv::parse_envs(ctx.envs()),
        // After pivot_root, `/` is the container's rootfs with the spec's
        // mounts at their destinations; nothing else of the host is there.
        preopens: vec![(PathBuf::from("/"), "/".to_string())],
    }
}

/// Resolves a relative entrypoint like a shell: in `PATH`, then the cwd.
fn resolve(path: &Path, envs: &[String]) -> PathBuf {
    if path.is_absolute() || path.components().count() > 1 {
        return path.to_path_buf();
    }
    let search = envs
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    search
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(path))
        .find(|p| p.is_file())
        .unwrap_or_else(|| path.to_path_buf())
}

fn read_entrypoint(path: &Path) -> Result<Vec<u8>, RunError> {
    let mut file = std::fs::File::open(path).map_err(|source| RunError::NotFound {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| RunError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

//! Every Wasmtime call of the shim lives under this module; its API moves
//! between releases, so the rest of the crate only sees the types below.
//!
//! - [`WasmEngine`]: the Wasmtime engine and its configuration;
//! - [`WasmEngine::load`]: compile bytes into a [`Loaded`] workload;
//! - [`command`]: run WASI preview 1 modules and `wasi:cli/run` components;
//! - [`proxy`]: a `wasi:http/proxy` component as a [`crate::http::Backend`].

pub mod command;
pub mod proxy;
mod wasi;

use std::path::PathBuf;
use std::time::Instant;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, Module};

use crate::dispatch::WasmForm;

/// Interface name prefixes that identify a component's world.
const CLI_RUN_EXPORT: &str = "wasi:cli/run@0.2";
const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2";

/// Errors from compiling, linking or running Wasm.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("failed to configure Wasmtime: {0:#}")]
    Setup(wasmtime::Error),
    #[error("invalid {form}: {source:#}")]
    Compile {
        form: WasmForm,
        source: wasmtime::Error,
    },
    #[error(
        "the component exports neither wasi:cli/run nor wasi:http/incoming-handler \
         (exports: {exports})"
    )]
    UnknownWorld { exports: String },
    #[error("the module has no export `{name}`{hint}")]
    UnknownExport { name: String, hint: String },
    #[error("failed to link: {0:#}")]
    Link(wasmtime::Error),
    #[error("cannot open preopen {path}: {source:#}")]
    Preopen {
        path: PathBuf,
        source: wasmtime::Error,
    },
    #[error("failed to bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A compiled workload, ready to instantiate.
pub enum Loaded {
    /// A WASI preview 1 core module.
    Module(Module),
    /// A WASI preview 2 command component (`wasi:cli/run`).
    Command(Component),
    /// A `wasi:http/proxy` component.
    HttpProxy(Component),
}

impl Loaded {
    pub fn kind(&self) -> &'static str {
        match self {
            Loaded::Module(_) => "WASI preview 1 module",
            Loaded::Command(_) => "wasi:cli/run component",
            Loaded::HttpProxy(_) => "wasi:http/proxy component",
        }
    }
}

/// What the guest sees: its argv, environment and directories.
#[derive(Debug, Clone, Default)]
pub struct GuestEnv {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// `(host path, guest path)` pairs opened as WASI preopens.
    pub preopens: Vec<(PathBuf, String)>,
}

impl GuestEnv {
    /// Splits `KEY=VALUE` strings as found in an OCI spec.
    pub fn parse_envs<S: AsRef<str>>(envs: &[S]) -> Vec<(String, String)> {
        envs.iter()
            .map(|e| {
                let (k, v) = e.as_ref().split_once('=').unwrap_or((e.as_ref(), ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest returned or called `exit` with this code.
    Exited(i32),
    /// The guest trapped; the message includes the Wasm backtrace.
    Trapped(String),
}

/// The Wasmtime engine shared by every workload of this process.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
}

impl WasmEngine {
    /// Creates the engine with the shim's settings.
    pub fn new() -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(EngineError::Setup)?;
        Ok(Self { engine })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` of the given form and classifies components by the
    /// world they export.
    pub fn load(&self, bytes: &[u8], form: WasmForm) -> Result<Loaded, EngineError> {
        let started = Instant::now();
        let loaded = match form {
            WasmForm::CoreModule => Module::new(&self.engine, bytes)
                .map(Loaded::Module)
                .map_err(|source| EngineError::Compile { form, source })?,
            WasmForm::Component => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|source| EngineError::Compile { form, source })?;
                self.classify_component(component)?
            }
        };
        log::info!(
            "compiled {} ({} bytes) in {:.1} ms",
            loaded.kind(),
            bytes.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(loaded)
    }

    fn classify_component(&self, component: Component) -> Result<Loaded, EngineError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if exports.iter().any(|n| n.starts_with(HTTP_HANDLER_EXPORT)) {
            Ok(Loaded::HttpProxy(component))
        } else if exports.iter().any(|n| n.starts_with(CLI_RUN_EXPORT)) {
            Ok(Loaded::Command(component))
        } else {
            Err(EngineError::UnknownWorld {
                exports: if exports.is_empty() {
                    "none".to_string()
                } else {
                    exports.join(", ")
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_42: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 42)))
        (func (export "other")))"#;

    fn module(engine: &WasmEngine, wat: &str) -> Module {
        match engine.load(&wat::parse_str(wat).expect("wat"), WasmForm::CoreModule) {
            Ok(Loaded::Module(m)) => m,
            Ok(other) => panic!("loaded a {}", other.kind()),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn proc_exit_code_is_the_outcome() {
        let engine = WasmEngine::new().expect("engine");
        let m = module(&engine, EXIT_42);
        let outcome = engine
            .run_module(&m, "_start", &GuestEnv::default())
            .await
            .expect("run");
        assert_eq!(outcome, Outcome::Exited(42));
        let outcome = engine
            .run_module(&m, "other", &GuestEnv::default())
            .await
            .expect("run");
        assert_eq!(outcome, Outcome::Exited(0));
    }

    #[tokio::test]
    async fn trap_is_reported_with_its_reason() {
        let engine = WasmEngine::new().expect("engine");
        let m = module(&engine, r#"(module (func (export "_start") unreachable))"#);
        match engine
            .run_module(&m, "_start", &GuestEnv::default())
            .await
            .expect("run")
        {
            Outcome::Trapped(msg) => assert!(msg.contains("unreachable"), "{msg}"),
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_export_names_the_exports() {
        let engine = WasmEngine::new().expect("engine");
        let m = module(&engine, EXIT_42);
        let err = engine
            .run_module(&m, "nosuch", &GuestEnv::default())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no export `nosuch`") && msg.contains("_start, other"),
            "{msg}"
        );
    }

    #[test]
    fn component_without_a_known_world_is_rejected() {
        let engine = WasmEngine::new().expect("engine");
        let bytes = wat::parse_str("(component)").expect("wat");
        let err = engine
            .load(&bytes, WasmForm::Component)
            .err()
            .expect("rejected");
        assert!(matches!(err, EngineError::UnknownWorld { .. }), "{err}");
        assert!(err.to_string().contains("exports: none"), "{err}");
    }

    #[test]
    fn invalid_bytes_are_a_compile_error() {
        let engine = WasmEngine::new().expect("engine");
        let err = engine
            .load(b"\0asm\x01\0\0\0\x01\xff", WasmForm::CoreModule)
            .err()
            .expect("rejected");
        assert!(err.to_string().starts_with("invalid core module"), "{err}");
    }
}

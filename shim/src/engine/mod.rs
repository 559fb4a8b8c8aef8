//! Every Wasmtime call of the shim lives under this module; its API moves
//! between releases, so the rest of the crate only sees the types below.
//!
//! - [`WasmEngine`]: the Wasmtime engine and its configuration;
//! - [`WasmEngine::load`]: compile bytes into a [`Loaded`] workload;
//! - [`WasmEngine::precompile`] and [`WasmEngine::load_precompiled`]: the
//!   native code kept by the AOT cache ([`crate::cache`]);
//! - [`command`]: run WASI preview 1 modules and `wasi:cli/run` components;
//! - [`proxy`]: a `wasi:http/proxy` component as a [`crate::http::Backend`].

pub mod command;
pub mod proxy;
mod wasi;

pub use wasi::Host;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

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
    #[error("cannot serialize the compiled code: {0:#}")]
    Serialize(wasmtime::Error),
    #[error("Wasmtime rejected precompiled code {path}: {source:#}")]
    Precompiled {
        path: PathBuf,
        source: wasmtime::Error,
    },
    #[error("failed to bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A workload linked against the shim's host (WASI, and `wasi:http` for
/// components), ready to instantiate: made once in a template process and
/// shared, copy-on-write, by every container cloned from it.
pub enum Linked {
    /// A WASI preview 1 core module (its export is chosen per container).
    Module {
        module: Module,
        pre: wasmtime::InstancePre<wasmtime_wasi::p1::WasiP1Ctx>,
    },
    /// A `wasi:cli/run` component.
    Command(wasmtime::component::InstancePre<wasi::Host>),
    /// A `wasi:http/proxy` component.
    HttpProxy(wasmtime_wasi_http::p2::bindings::ProxyPre<wasi::Host>),
}

impl Linked {
    pub fn kind(&self) -> &'static str {
        match self {
            Linked::Module { .. } => Workload::Module,
            Linked::Command(_) => Workload::Command,
            Linked::HttpProxy(_) => Workload::HttpProxy,
        }
        .describe()
    }
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
        self.workload().describe()
    }

    /// What kind of workload this is, as recorded in the AOT cache.
    pub fn workload(&self) -> Workload {
        match self {
            Loaded::Module(_) => Workload::Module,
            Loaded::Command(_) => Workload::Command,
            Loaded::HttpProxy(_) => Workload::HttpProxy,
        }
    }

    /// The native code, in Wasmtime's precompiled (`.cwasm`) format.
    pub fn serialize(&self) -> Result<Vec<u8>, EngineError> {
        match self {
            Loaded::Module(m) => m.serialize(),
            Loaded::Command(c) | Loaded::HttpProxy(c) => c.serialize(),
        }
        .map_err(EngineError::Serialize)
    }
}

/// The kind of a [`Loaded`] workload, without its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Module,
    Command,
    HttpProxy,
}

impl Workload {
    pub fn describe(self) -> &'static str {
        match self {
            Workload::Module => "WASI preview 1 module",
            Workload::Command => "wasi:cli/run component",
            Workload::HttpProxy => "wasi:http/proxy component",
        }
    }
}

/// The target triple this shim was built for, and compiles for.
pub const TARGET: &str = env!("WASMHYBRID_TARGET");

/// Feeds `Hash` output into SHA-256, for a key that is stable for a build.
struct Sha256Hasher(sha2::Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
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

    /// An engine that compiles for `target` (e.g. `aarch64-unknown-linux-gnu`)
    /// with that architecture's baseline CPU features and otherwise the
    /// shim's settings. Its code runs on any CPU of the architecture; it is
    /// what bundles hold (`wasmhybrid cache bundle`). Its [`Self::cache_key`]
    /// is the same on every machine, which is how a node checks a bundle.
    pub fn for_target(target: &str) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.target(target).map_err(EngineError::Setup)?;
        let engine = Engine::new(&config).map_err(EngineError::Setup)?;
        Ok(Self { engine })
    }

    /// Compiles `bytes` for this engine's target without loading the code
    /// (which may be for another architecture). Components are classified
    /// by their exports.
    pub fn precompile_for_target(
        &self,
        bytes: &[u8],
        form: WasmForm,
    ) -> Result<(Workload, Vec<u8>), EngineError> {
        let compile = |source| EngineError::Compile { form, source };
        match form {
            WasmForm::CoreModule => Ok((
                Workload::Module,
                self.engine.precompile_module(bytes).map_err(compile)?,
            )),
            WasmForm::Component => {
                let kind = classify_exports(bytes)?;
                Ok((
                    kind,
                    self.engine.precompile_component(bytes).map_err(compile)?,
                ))
            }
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The key under which this engine's precompiled code is filed: the
    /// shim version and a hash of everything Wasmtime requires to match to
    /// load code (its version, the target, CPU features, engine settings).
    pub fn cache_key(&self) -> String {
        let mut h = Sha256Hasher(sha2::Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let digest = h.0.finalize();
        let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{short}", env!("CARGO_PKG_VERSION"))
    }

    /// Compiles `bytes` and returns the workload kind and its native code.
    pub fn precompile(
        &self,
        bytes: &[u8],
        form: WasmForm,
    ) -> Result<(Workload, Vec<u8>), EngineError> {
        let loaded = self.load(bytes, form)?;
        Ok((loaded.workload(), loaded.serialize()?))
    }

    /// Links `loaded` against the shim's host functions (an import the host
    /// does not provide is an error here, before any container runs it).
    pub fn link(&self, loaded: Loaded) -> Result<Linked, EngineError> {
        match loaded {
            Loaded::Module(module) => {
                let mut linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx> =
                    wasmtime::Linker::new(&self.engine);
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |t| t)
                    .map_err(EngineError::Link)?;
                let pre = linker.instantiate_pre(&module).map_err(EngineError::Link)?;
                Ok(Linked::Module { module, pre })
            }
            Loaded::Command(component) => wasi::component_linker(&self.engine)?
                .instantiate_pre(&component)
                .map(Linked::Command)
                .map_err(EngineError::Link),
            Loaded::HttpProxy(component) => wasi::component_linker(&self.engine)?
                .instantiate_pre(&component)
                .and_then(wasmtime_wasi_http::p2::bindings::ProxyPre::new)
                .map(Linked::HttpProxy)
                .map_err(EngineError::Link),
        }
    }

    /// Maps native code that this shim compiled and stored in its AOT cache.
    ///
    /// This is the one place where the shim turns bytes from disk into
    /// executable code. Callers pass only entries of [`crate::cache::Cache`],
    /// which writes files root-only under its own directory and checks each
    /// entry's SHA-256 against its record before handing out its path.
    pub fn load_precompiled(&self, path: &Path, kind: Workload) -> Result<Loaded, EngineError> {
        let started = Instant::now();
        let err = |source| EngineError::Precompiled {
            path: path.to_path_buf(),
            source,
        };
        // SAFETY: Wasmtime requires that the file holds code produced by
        // `Engine::precompile_*`/`serialize` (which Wasmtime cannot verify,
        // beyond its header checks of version, target and settings) and is
        // not modified while mapped. `path` is an AOT cache entry: written
        // by this shim from `Loaded::serialize`, root-only, replaced only by
        // rename (never rewritten in place), and checked by digest just
        // before this call. Bytes from an image never reach this function.
        let loaded = unsafe {
            match kind {
                Workload::Module => {
                    Module::deserialize_file(&self.engine, path).map(Loaded::Module)
                }
                Workload::Command => {
                    Component::deserialize_file(&self.engine, path).map(Loaded::Command)
                }
                Workload::HttpProxy => {
                    Component::deserialize_file(&self.engine, path).map(Loaded::HttpProxy)
                }
            }
        }
        .map_err(err)?;
        log::info!(
            "mapped precompiled {} in {:.2} ms",
            kind.describe(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(loaded)
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
        Ok(match world_of(&exports)? {
            Workload::HttpProxy => Loaded::HttpProxy(component),
            _ => Loaded::Command(component),
        })
    }
}

/// A component's world, read from the names of its top-level exports
/// (what [`WasmEngine::load`] learns from the compiled component's type).
fn classify_exports(bytes: &[u8]) -> Result<Workload, EngineError> {
    use wasmtime::wasmparser::{Parser, Payload};
    let invalid = |e: wasmtime::wasmparser::BinaryReaderError| EngineError::Compile {
        form: WasmForm::Component,
        source: wasmtime::Error::new(e),
    };
    let mut exports = Vec::new();
    // Nested modules and components are flattened by `parse_all`; only
    // the outermost component's exports count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.map_err(invalid)?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    world_of(&exports)
}

/// The kind of component whose top-level exports are `exports`.
fn world_of(exports: &[String]) -> Result<Workload, EngineError> {
    if exports.iter().any(|n| n.starts_with(HTTP_HANDLER_EXPORT)) {
        Ok(Workload::HttpProxy)
    } else if exports.iter().any(|n| n.starts_with(CLI_RUN_EXPORT)) {
        Ok(Workload::Command)
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

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_42: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 42)))
        (func (export "other")))"#;

    type P1Pre = wasmtime::InstancePre<wasmtime_wasi::p1::WasiP1Ctx>;

    /// A core module, loaded and linked as a template process holds it.
    fn module(engine: &WasmEngine, wat: &str) -> (Module, P1Pre) {
        let loaded = engine
            .load(&wat::parse_str(wat).expect("wat"), WasmForm::CoreModule)
            .unwrap_or_else(|e| panic!("{e}"));
        match engine.link(loaded) {
            Ok(Linked::Module { module, pre }) => (module, pre),
            Ok(other) => panic!("linked a {}", other.kind()),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn proc_exit_code_is_the_outcome() {
        let engine = WasmEngine::new().expect("engine");
        let m = module(&engine, EXIT_42);
        let outcome = engine
            .run_module(&m.0, &m.1, "_start", &GuestEnv::default())
            .await
            .expect("run");
        assert_eq!(outcome, Outcome::Exited(42));
        let outcome = engine
            .run_module(&m.0, &m.1, "other", &GuestEnv::default())
            .await
            .expect("run");
        assert_eq!(outcome, Outcome::Exited(0));
    }

    #[tokio::test]
    async fn trap_is_reported_with_its_reason() {
        let engine = WasmEngine::new().expect("engine");
        let m = module(&engine, r#"(module (func (export "_start") unreachable))"#);
        match engine
            .run_module(&m.0, &m.1, "_start", &GuestEnv::default())
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
            .run_module(&m.0, &m.1, "nosuch", &GuestEnv::default())
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
    fn exports_classify_components_as_compiling_them_does() {
        let engine = WasmEngine::new().expect("engine");
        let command = wat::parse_str(
            r#"(component
                (core module $m (func (export "run") (result i32) i32.const 0))
                (core instance $i (instantiate $m))
                (func $run (result (result)) (canon lift (core func $i "run")))
                (instance $inst (export "run" (func $run)))
                (component $inner
                    (import "x" (instance $x (export "run" (func (result (result))))))
                    (export "wasi:http/incoming-handler@0.2.0" (instance $x)))
                (export "wasi:cli/run@0.2.0" (instance $inst)))"#,
        )
        .expect("wat");
        let compiled = engine.load(&command, WasmForm::Component).expect("compile");
        assert_eq!(compiled.workload(), Workload::Command);
        assert_eq!(
            classify_exports(&command).expect("classify"),
            Workload::Command,
            "a nested component's exports do not count"
        );
        let none = wat::parse_str("(component)").expect("wat");
        assert!(matches!(
            classify_exports(&none),
            Err(EngineError::UnknownWorld { .. })
        ));
    }

    #[test]
    fn code_for_another_architecture_is_compiled_not_loaded() {
        let other = if TARGET.starts_with("x86_64") {
            "aarch64-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        };
        let engine = WasmEngine::for_target(other).expect("engine");
        let (kind, code) = engine
            .precompile_for_target(&wat::parse_str(EXIT_42).expect("wat"), WasmForm::CoreModule)
            .expect("precompile");
        assert_eq!(kind, Workload::Module);
        // An ELF object for the other machine (EM_AARCH64 183, EM_X86_64 62).
        let machine = u16::from_le_bytes([code[18], code[19]]);
        assert_eq!(
            machine,
            if other.starts_with("aarch64") {
                183
            } else {
                62
            }
        );
        // The baseline key is the same for every engine made for a target.
        assert_eq!(
            engine.cache_key(),
            WasmEngine::for_target(other).expect("engine").cache_key()
        );
        assert_ne!(
            engine.cache_key(),
            WasmEngine::new().expect("engine").cache_key()
        );
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

//! The per-store host state and the WASI context built from a [`GuestEnv`].

use wasmtime::Engine;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::filesystem::FsPerms;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::{EngineError, GuestEnv};

/// Store data for components: WASI, wasi:http and their resource table.
pub struct Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

impl Host {
    pub fn new(env: &GuestEnv) -> Result<Self, EngineError> {
        Ok(Self {
            wasi: builder(env)?.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        })
    }
}

/// A WASI context with the container's stdio, args, env, preopens and
/// network (the container's own network namespace).
pub(crate) fn builder(env: &GuestEnv) -> Result<WasiCtxBuilder, EngineError> {
    let mut b = WasiCtxBuilder::new();
    b.inherit_stdio()
        .args(&env.args)
        .envs(&env.envs)
        .inherit_network()
        .allow_ip_name_lookup(true);
    for (host, guest) in &env.preopens {
        b.preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|source| EngineError::Preopen {
                path: host.clone(),
                source,
            })?;
    }
    Ok(b)
}

/// The component linker shared by commands and HTTP proxies: WASI 0.2 plus
/// `wasi:http`. (`wasi:cli/exit` gives components only success or failure,
/// unless they use `exit-with-code` from WASI 0.2.12.)
pub(crate) fn component_linker(engine: &Engine) -> Result<Linker<Host>, EngineError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::Link)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(EngineError::Link)?;
    Ok(linker)
}

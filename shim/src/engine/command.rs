//! Runs a WASI command to completion: a preview 1 core module (calling
//! `_start` or the requested export) or a `wasi:cli/run` component.

use wasmtime::component;
use wasmtime::{InstancePre, Module, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;

use super::wasi::{Host, builder};
use super::{EngineError, GuestEnv, Outcome, WasmEngine};

impl WasmEngine {
    /// Runs a WASI preview 1 module's `func` export.
    pub async fn run_module(
        &self,
        module: &Module,
        pre: &InstancePre<WasiP1Ctx>,
        func: &str,
        env: &GuestEnv,
    ) -> Result<Outcome, EngineError> {
        let engine = self.engine();

        let has_func = module.get_export(func).is_some_and(|e| e.func().is_some());
        if !has_func {
            let hint = match module
                .exports()
                .filter(|e| e.ty().func().is_some())
                .map(|e| e.name())
                .collect::<Vec<_>>()
            {
                names if names.is_empty() => " (it exports no functions)".to_string(),
                names => format!(" (exported functions: {})", names.join(", ")),
            };
            return Err(EngineError::UnknownExport {
                name: func.to_string(),
                hint,
            });
        }

        let mut store = Store::new(engine, builder(env)?.build_p1());
        let result = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let f = instance.get_typed_func::<(), ()>(&mut store, func)?;
            f.call_async(&mut store, ()).await
        }
        .await;
        Ok(outcome(result.map(|()| 0)))
    }

    /// Runs a `wasi:cli/run` component.
    pub async fn run_command(
        &self,
        pre: &component::InstancePre<Host>,
        env: &GuestEnv,
    ) -> Result<Outcome, EngineError> {
        let engine = self.engine();

        let mut store = Store::new(engine, Host::new(env)?);
        let result = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let command = Command::new(&mut store, &instance)?;
            command.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        // `wasi:cli/run` returns `result`: `Err(())` is a failure with code 1
        // (WASI 0.2's `exit` carries only success or failure, too).
        Ok(outcome(result.map(|r| if r.is_ok() { 0 } else { 1 })))
    }
}

/// Maps a guest's result to its exit code or trap.
fn outcome(result: wasmtime::Result<i32>) -> Outcome {
    match result {
        Ok(code) => Outcome::Exited(code),
        Err(err) => match err.downcast_ref::<I32Exit>() {
            Some(exit) => Outcome::Exited(exit.0),
            None => Outcome::Trapped(format!("{err:?}")),
        },
    }
}

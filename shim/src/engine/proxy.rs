//! A `wasi:http/proxy` component as a backend of the shim's HTTP server:
//! each request gets a fresh instance from a pre-linked `ProxyPre`, so
//! requests share nothing but the compiled code.

use std::future::Future;

use hyper::body::Incoming;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::wasi::Host;
use super::{EngineError, GuestEnv, WasmEngine};
use crate::http::Backend;

/// Serves requests with fresh instances of one component.
pub struct ProxyBackend {
    pre: ProxyPre<Host>,
    env: GuestEnv,
}

impl WasmEngine {
    /// A linked `wasi:http/proxy` component, for many requests.
    pub fn proxy_backend(
        &self,
        pre: &ProxyPre<Host>,
        env: GuestEnv,
    ) -> Result<ProxyBackend, EngineError> {
        // Fail now, not on the first request, if a preopen cannot be opened.
        Host::new(&env)?;
        Ok(ProxyBackend {
            pre: pre.clone(),
            env,
        })
    }
}

impl Backend for ProxyBackend {
    type Body = HyperOutgoingBody;

    fn handle(
        &self,
        req: hyper::Request<Incoming>,
    ) -> impl Future<Output = anyhow::Result<hyper::Response<Self::Body>>> + Send {
        let pre = self.pre.clone();
        let host = Host::new(&self.env);
        async move {
            let mut store = Store::new(pre.engine(), host?);
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;

            // The guest may keep streaming the body after it set the
            // response, so it runs in its own task.
            let task = tokio::task::spawn(async move {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            });

            match receiver.await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(code)) => Err(anyhow::anyhow!(
                    "the component answered with error {code:?}"
                )),
                Err(_) => {
                    let why = match task.await {
                        Ok(Ok(())) => anyhow::anyhow!("the component never set a response"),
                        Ok(Err(e)) => anyhow::anyhow!("the component trapped: {e:?}"),
                        Err(e) => anyhow::anyhow!("the request task failed: {e}"),
                    };
                    Err(why)
                }
            }
        }
    }
}

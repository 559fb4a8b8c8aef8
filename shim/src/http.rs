//! The HTTP serving path: a listener inside the container's network
//! namespace and per-connection request dispatch to a [`Backend`].
//!
//! The server knows nothing of Wasm: today the backend is a `wasi:http/proxy`
//! component ([`crate::engine::proxy::ProxyBackend`]); a second backend (for
//! example a native twin of the app) can be added behind the same trait.
//! Nothing on the per-request path logs at `info`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Something that answers HTTP requests.
pub trait Backend: Send + Sync + 'static {
    type Body: Body<Data = Bytes> + Send + 'static;

    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = anyhow::Result<Response<Self::Body>>> + Send;
}

type ServerBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Binds `addr`; bind errors (address in use, no such address in this
/// network namespace) are returned before anything is served.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How long the server has no open connection before it counts as idle.
pub const IDLE_AFTER: Duration = Duration::from_millis(200);

/// Open connections, and how many times the last one closed.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    closes: AtomicU64,
}

/// Holds a connection open in [`Activity`]; on the last one's close, calls
/// `on_idle` once no connection has opened for [`IDLE_AFTER`].
struct Open<F: Fn() + Send + Sync + 'static> {
    activity: Arc<Activity>,
    on_idle: Arc<F>,
}

impl<F: Fn() + Send + Sync + 'static> Drop for Open<F> {
    fn drop(&mut self) {
        if self.activity.open.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let quiet = self.activity.closes.fetch_add(1, Ordering::SeqCst) + 1;
        let (activity, on_idle) = (self.activity.clone(), self.on_idle.clone());
        tokio::spawn(async move {
            tokio::time::sleep(IDLE_AFTER).await;
            if activity.open.load(Ordering::SeqCst) == 0
                && activity.closes.load(Ordering::SeqCst) == quiet
            {
                on_idle();
            }
        });
    }
}

/// Serves `backend` on `listener` until the process ends. `on_idle` runs
/// before the first connection and whenever the server has had no open
/// connection for [`IDLE_AFTER`] (off the request path: e.g. to give the
/// memory of finished requests back).
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    on_idle: impl Fn() + Send + Sync + 'static,
) -> std::io::Result<()>
where
    <B::Body as Body>::Error: std::error::Error + Send + Sync + 'static,
{
    let activity = Arc::new(Activity::default());
    let on_idle = Arc::new(on_idle);
    on_idle();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Transient (e.g. EMFILE): log and keep serving.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let backend = backend.clone();
        activity.open.fetch_add(1, Ordering::SeqCst);
        let open = Open {
            activity: activity.clone(),
            on_idle: on_idle.clone(),
        };
        tokio::spawn(async move {
            let _open = open;
            let service = service_fn(move |req| dispatch(backend.clone(), req));
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("connection from {peer} ended with error: {e}");
            }
        });
    }
}

async fn dispatch<B: Backend>(
    backend: Arc<B>,
    req: Request<Incoming>,
) -> Result<Response<ServerBody>, Infallible>
where
    <B::Body as Body>::Error: std::error::Error + Send + Sync + 'static,
{
    let method = req.method().clone();
    let uri = req.uri().clone();
    match backend.handle(req).await {
        Ok(resp) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as _).boxed_unsync())),
        Err(e) => {
            log::warn!("{method} {uri}: {e:#}");
            Ok(error_response(StatusCode::INTERNAL_SERVER_ERROR))
        }
    }
}

fn error_response(status: StatusCode) -> Response<ServerBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{status}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

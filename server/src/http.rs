//! HTTP probes on `--http`, served with hyper: `/healthz` (alive),
//! `/readyz` (recovered and keeping up), `/metrics` (Prometheus text).
//!
//! Probes are few and small, so the port is kept small too: at most
//! [`MAX_CONNECTIONS`] at once (more are answered 503 and closed at once),
//! request headers within [`HEADER_READ_TIMEOUT`] (idle keep-alive connections
//! included) and [`MAX_HEADER_BYTES`]. Half-sent requests therefore cannot use
//! up the process's file descriptors, which the RESP listener needs.

use crate::app::App;
use crate::stop::Stop;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Most probe connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a request's headers may take to arrive, and an idle keep-alive
/// connection may wait for the next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection, which bounds a request's headers (hyper's minimum).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The answer to a connection over [`MAX_CONNECTIONS`], written without waiting.
const TOO_MANY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What the probes look at: the app once recovery has built it.
#[derive(Default)]
pub struct ProbeState {
    pub app: OnceLock<Arc<App>>,
    pub recovering_reason: parking_lot::Mutex<String>,
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn json_reason(ready: bool, reason: &str) -> String {
    serde_json::json!({ "ready": ready, "reason": reason }).to_string()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<ProbeState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let app = state.app.get();
    let resp = match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match app.map(|a| a.not_ready_reason()) {
            Some(None) => text(StatusCode::OK, "application/json", json_reason(true, "")),
            Some(Some(reason)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json_reason(false, &reason),
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json_reason(false, &state.recovering_reason.lock()),
            ),
        },
        "/metrics" => match app {
            Some(app) => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render(app),
            ),
            None => text(StatusCode::OK, "text/plain; version=0.0.4", String::new()),
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(resp)
}

/// Binds the probe listener (so a bad address fails at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves probes until stopped (the last thing a shutdown stops).
pub async fn serve(listener: TcpListener, state: Arc<ProbeState>, mut stop: Stop) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A fresh socket's send buffer is empty, so this one non-blocking
            // write takes the whole answer without waiting.
            if let Ok(mut stream) = stream.into_std() {
                let _ = std::io::Write::write(&mut stream, TOO_MANY);
            }
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

//! HTTP probes on `--http`, served with hyper: `/healthz` (alive),
//! `/readyz` (recovered and keeping up), `/metrics` (Prometheus text).

use crate::app::App;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

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

/// Refreshes the gauges that are read from state rather than counted.
fn refresh_gauges(app: &App) {
    let es = app.engine.stats();
    gauge!("creditd_accounts").set(es.accounts as f64);
    gauge!("creditd_open_holds").set(es.open_holds as f64);
    counter!("creditd_hold_expiries_total").absolute(es.hold_expiries);
    counter!("creditd_bucket_expiries_total").absolute(es.bucket_expiries);
    counter!("creditd_renewals_total").absolute(es.renewals);
    let js = app.journal.stats();
    counter!("creditd_journal_bytes_written_total").absolute(js.bytes_written);
    counter!("creditd_journal_records_total").absolute(js.records_written);
    counter!("creditd_journal_writes_total").absolute(js.groups_written);
    counter!("creditd_journal_fsyncs_total").absolute(js.fsyncs);
    gauge!("creditd_journal_last_write_seconds").set(js.last_write_latency_ns as f64 / 1e9);
    gauge!("creditd_journal_last_fsync_seconds").set(js.last_fsync_latency_ns as f64 / 1e9);
    gauge!("creditd_journal_pending_bytes").set(js.pending_bytes as f64);
    gauge!("creditd_journal_segments").set(js.segment_count as f64);
    let (connected, pending, lag_ms) = app.redis_status();
    gauge!("creditd_redis_connected").set(connected as u8 as f64);
    gauge!("creditd_redis_pending").set(pending as f64);
    gauge!("creditd_redis_lag_seconds").set(lag_ms as f64 / 1e3);
    if let Some(redis) = app.redis.read().as_ref() {
        redis.export_metrics();
    }
    gauge!("creditd_ready").set(app.not_ready_reason().is_none() as u8 as f64);
    app.metrics.connections_open.set(
        app.stats
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
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
            Some(app) => {
                refresh_gauges(app);
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    app.metrics.render(),
                )
            }
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

/// Serves probes until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<ProbeState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

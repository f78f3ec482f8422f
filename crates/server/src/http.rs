//! HTTP: `GET /healthz` (200 once the database is open, 503 before) and `GET /metrics`
//! (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nyala_storage::Database;
use tokio::net::TcpListener;
use tokio::sync::{watch, OnceCell};

use crate::metrics::Metrics;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn route(
    req: &Request<Incoming>,
    ready: &OnceCell<Arc<Database>>,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => match ready.get() {
            Some(_) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "recovering\n".into(),
            ),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(ready.get().map(|d| d.as_ref())),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz or /metrics\n".into(),
        ),
    }
}

/// Serves HTTP on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<OnceCell<Arc<Database>>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("HTTP accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = route(&req, &ready, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("HTTP connection: {e}");
            }
        });
    }
}

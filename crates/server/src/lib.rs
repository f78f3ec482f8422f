//! Nyala's server: one database directory, served over gRPC (`nyala.v1.Nyala`) and the
//! PostgreSQL wire protocol ([`pg`]), with HTTP for health checks and metrics.
//!
//! Data flows one way: a request reaches [`grpc`], which plans and runs SQL through
//! `nyala-sql` (each call its own session) or asks the database directly, and answers in
//! Arrow IPC. [`serve`] opens the database (recovery happens here: `/healthz` answers only
//! once it is done), binds the listeners and runs until the shutdown future resolves; then it
//! stops accepting, lets in-flight requests finish (bounded) and flushes every table.

mod convert;
pub mod grpc;
pub mod http;
mod ipc;
pub mod metrics;
pub mod pg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nyala_storage::{Database, StorageError};

// The storage settings a server is configured with.
pub use nyala_storage::{
    machine_memory_bytes, DatabaseOptions, Durability, MaintenanceOptions, TabletOptions,
};
use thiserror::Error;
use tokio::net::TcpListener;

/// What the server listens on and serves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The database directory (created if missing).
    pub data_dir: PathBuf,
    /// gRPC API address.
    pub grpc_addr: SocketAddr,
    /// HTTP address (`/healthz`, `/metrics`).
    pub http_addr: SocketAddr,
    /// The PostgreSQL listener.
    pub pg: pg::PgConfig,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Storage settings.
    pub database: DatabaseOptions,
    /// gRPC request limits.
    pub limits: grpc::Limits,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The database could not be opened (e.g. another server holds the directory).
    #[error("cannot open the database in {dir}: {source}")]
    Database {
        /// The data directory.
        dir: PathBuf,
        /// What the storage engine said.
        source: StorageError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The PostgreSQL listener's settings are refused.
    #[error("PostgreSQL listener: {0}")]
    Pg(#[from] pg::PgConfigError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// Flushing at shutdown failed.
    #[error("flush at shutdown: {0}")]
    Flush(StorageError),
}

/// The addresses a started server listens on (useful with port 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
    /// PostgreSQL wire protocol.
    pub pg: SocketAddr,
}

/// Opens the database, binds the listeners, reports them through `on_bound`, and serves until
/// `shutdown` resolves; then drains and flushes.
pub async fn serve(
    config: ServerConfig,
    on_bound: impl FnOnce(Bound),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = Arc::new(metrics::Metrics::default());
    // Bind first: a port in use is reported before the (possibly long) recovery.
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { what, addr, source })
    };
    let grpc_listener = bind("gRPC", config.grpc_addr).await?;
    let http_listener = bind("HTTP", config.http_addr).await?;
    let tls = config.pg.acceptor()?;
    let pg_listener = bind("PostgreSQL", config.pg.addr).await?;
    let bound = Bound {
        grpc: grpc_listener.local_addr().expect("bound"),
        http: http_listener.local_addr().expect("bound"),
        pg: pg_listener.local_addr().expect("bound"),
    };
    let ready = Arc::new(tokio::sync::OnceCell::<Arc<Database>>::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = Box::pin(shutdown);
    let http_task = tokio::spawn(http::serve(
        http_listener,
        ready.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));

    let dir = config.data_dir.clone();
    let options = config.database.clone();
    let db = tokio::task::spawn_blocking(move || Database::open(&dir, options))
        .await
        .expect("open does not panic")
        .map_err(|source| ServerError::Database {
            dir: config.data_dir.clone(),
            source,
        })?;
    let db = Arc::new(db);
    let _ = ready.set(db.clone());
    tracing::info!(dir = %config.data_dir.display(), "database open");
    on_bound(bound);

    let pg_task = tokio::spawn(pg::serve(
        pg_listener,
        db.clone(),
        config.pg.auth.clone(),
        tls,
        stop_rx.clone(),
    ));
    let service = grpc::NyalaService::new(db.clone(), metrics.clone(), config.limits);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(tokio_stream_listener(grpc_listener), async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        });
    let grace = config.shutdown_grace;
    let mut grpc = tokio::spawn(grpc);
    tokio::select! {
        ended = &mut grpc => ended.expect("the gRPC server does not panic")?,
        () = shutdown => {
            tracing::info!("shutting down: no new requests; in-flight ones may run {grace:?}");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(grace, &mut grpc).await {
                Ok(ended) => ended.expect("the gRPC server does not panic")?,
                Err(_) => {
                    // Their tasks may still finish while the tables flush; their writes are
                    // durable either way (the WAL), and the process exits without them.
                    tracing::warn!("requests still running after {grace:?}: not waiting longer");
                    grpc.abort();
                }
            }
        }
    }
    let _ = tokio::time::timeout(grace, http_task).await;
    let _ = tokio::time::timeout(grace, pg_task).await;
    let flush_db = db.clone();
    tokio::task::spawn_blocking(move || {
        for name in flush_db.list_tables(None) {
            if let Ok(t) = flush_db.table(&name) {
                t.flush()?;
            }
        }
        Ok::<_, StorageError>(())
    })
    .await
    .expect("flush does not panic")
    .map_err(ServerError::Flush)?;
    tracing::info!("stopped");
    Ok(())
}

/// Accepted connections of `listener` as the stream tonic serves.
fn tokio_stream_listener(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    return Some((Ok(s), l));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!("gRPC accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

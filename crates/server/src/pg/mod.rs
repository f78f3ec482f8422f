//! The PostgreSQL front end: psql, psycopg, JDBC, SQLAlchemy and BI tools connect with a
//! `postgresql://` URI and speak SQL to the same engine as the gRPC `Sql` call.
//!
//! The wire protocol is the `pgwire` crate's (startup, SCRAM, TLS, simple and extended
//! query, portals, cancel requests); [`handler`] answers queries through `nyala-sql`, with
//! Arrow results encoded by `arrow-pg`. Each connection is a task, not a thread: idle
//! connections cost a few kilobytes.

mod auth;
mod copy;
mod handler;
mod session;
mod text;
mod unflushed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::{ConnectionManager, PgWireServerHandlers};
use pgwire::tokio::process_socket;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use nyala_storage::Database;

pub use auth::PgAuth;

/// The PostgreSQL listener's settings.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// Where to listen (default 127.0.0.1:5433).
    pub addr: SocketAddr,
    /// How clients authenticate.
    pub auth: PgAuth,
    /// TLS certificate chain and private key (PEM files); clients may then ask for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Why the PostgreSQL listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum PgConfigError {
    /// Password-less logins on an address other hosts can reach.
    #[error(
        "refusing to accept password-less PostgreSQL logins on {0}, which is not a loopback \
         address: set a password (--pg-password or NYALA_PG_PASSWORD)"
    )]
    TrustNotLoopback(SocketAddr),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

impl PgConfig {
    /// Checks the settings and loads the TLS certificate.
    pub(crate) fn acceptor(&self) -> Result<Option<TlsAcceptor>, PgConfigError> {
        if self.auth == PgAuth::Trust && !self.addr.ip().is_loopback() {
            return Err(PgConfigError::TrustNotLoopback(self.addr));
        }
        let Some((cert, key)) = &self.tls else {
            return Ok(None);
        };
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| PgConfigError::Tls(format!("{}: {e}", p.display())))
        };
        let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PgConfigError::Tls(format!("{}: {e}", cert.display())))?;
        let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
            .map_err(|e| PgConfigError::Tls(format!("{}: {e}", key.display())))?
            .ok_or_else(|| PgConfigError::Tls(format!("{}: no private key", key.display())))?;
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| PgConfigError::Tls(e.to_string()))?;
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// The handlers every connection of one server shares.
struct Handlers {
    query: Arc<handler::QueryHandler>,
    auth: auth::Authenticator,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(self.auth.startup())
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.query.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl pgwire::api::ErrorHandler> {
        Arc::new(Errors)
    }
}

/// Words errors as PostgreSQL does where clients or people match on them.
struct Errors;

impl pgwire::api::ErrorHandler for Errors {
    fn on_error<C>(&self, client: &C, error: &mut pgwire::error::PgWireError)
    where
        C: pgwire::api::ClientInfo,
    {
        use pgwire::error::{ErrorInfo, PgWireError};
        if let PgWireError::InvalidPassword(_) = error {
            let user = client
                .metadata()
                .get(pgwire::api::METADATA_USER)
                .cloned()
                .unwrap_or_default();
            *error = PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            )));
        }
    }
}

/// Serves PostgreSQL connections on `listener` until `stop` turns true. Connections that are
/// open then are left to end with the process (their statements are each atomic).
pub(crate) async fn serve(
    listener: TcpListener,
    db: Arc<Database>,
    auth: PgAuth,
    tls: Option<TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let manager = Arc::new(ConnectionManager::new());
    let handlers = Arc::new(Handlers {
        query: Arc::new(handler::QueryHandler::new(db)),
        auth: auth::Authenticator::new(&auth, manager.clone()),
        cancel: Arc::new(DefaultCancelHandler::new(manager)),
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let handlers = handlers.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = process_socket(socket, tls, handlers).await {
                        tracing::debug!(%peer, "PostgreSQL connection ended: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("PostgreSQL accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_less_logins_only_on_loopback() {
        let config = |addr: &str, auth| PgConfig {
            addr: addr.parse().unwrap(),
            auth,
            tls: None,
        };
        assert!(config("127.0.0.1:5433", PgAuth::Trust).acceptor().is_ok());
        assert!(config("[::1]:5433", PgAuth::Trust).acceptor().is_ok());
        let Err(err) = config("0.0.0.0:5433", PgAuth::Trust).acceptor() else {
            panic!("a password-less listener on 0.0.0.0 was accepted");
        };
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        let scram = PgAuth::Scram {
            user: "nyala".into(),
            password: "pw".into(),
        };
        assert!(config("0.0.0.0:5433", scram).acceptor().is_ok());
    }
}

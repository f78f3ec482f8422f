//! pgwire's view of a connection, with two adjustments its handlers need.
//!
//! **Held flushes.** Answers to extended-protocol messages wait in the connection's buffer until
//! `Sync` or `Flush`, as PostgreSQL's do. pgwire's handlers `send` (write, then flush the
//! socket) `ParseComplete`, `BindComplete`, the answer to `Describe` and `CommandComplete` one
//! by one, so a prepared point lookup cost four socket writes (and as many wake-ups of the
//! client) and a pipelined `executemany` three per row. Passing the connection to those
//! handlers as [`Unflushed::new`] makes their flushes no-ops. The codec still writes whenever
//! its buffer fills, and `Sync` and `Flush` flush: the protocol asks clients to send one of
//! them whenever they wait for an answer.
//!
//! **Recovered blocks.** pgwire moves a transaction block into the failed state on an error but
//! never back, while `ROLLBACK TO SAVEPOINT` returns a failed block to normal (psycopg relies
//! on it: SQLAlchemy's first query runs inside a savepoint). A simple query's connection,
//! [`Unflushed::recovering`], reports such a block as in progress: in the status pgwire sets
//! and in the `ReadyForQuery` it sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::Sink;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, SessionExtensions};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, ProtocolVersion};
use tokio_rustls::rustls::pki_types::CertificateDer;

/// A connection as pgwire's handlers see it (see the module documentation).
pub(crate) struct Unflushed<'a, C> {
    client: &'a mut C,
    hold_flushes: bool,
    /// The session's flag, set by a `ROLLBACK TO SAVEPOINT` that recovered a failed block.
    recovered: Option<&'a AtomicBool>,
}

impl<'a, C> Unflushed<'a, C> {
    /// For extended-protocol messages: flushes are held until `Sync` or `Flush`.
    pub fn new(client: &'a mut C) -> Self {
        Unflushed {
            client,
            hold_flushes: true,
            recovered: None,
        }
    }

    /// For a simple query: flushed as usual, and a block recovered meanwhile (`recovered`
    /// set) is reported in progress, not failed.
    pub fn recovering(client: &'a mut C, recovered: &'a AtomicBool) -> Self {
        Unflushed {
            client,
            hold_flushes: false,
            recovered: Some(recovered),
        }
    }

    /// Whether a failed-block status should read "in progress" instead; `take` clears the
    /// flag (once the answer carrying the status has gone out).
    fn recovered(&self, take: bool) -> bool {
        self.recovered.is_some_and(|f| {
            if take {
                f.swap(false, Ordering::AcqRel)
            } else {
                f.load(Ordering::Acquire)
            }
        })
    }
}

impl<C> Sink<PgWireBackendMessage> for Unflushed<'_, C>
where
    C: Sink<PgWireBackendMessage> + Unpin,
{
    type Error = C::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().client).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: PgWireBackendMessage) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let item = match item {
            PgWireBackendMessage::ReadyForQuery(r)
                if r.status == TransactionStatus::Error && this.recovered(true) =>
            {
                PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                    TransactionStatus::Transaction,
                ))
            }
            other => other,
        };
        Pin::new(&mut *this.client).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.hold_flushes {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.client).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut *self.get_mut().client).poll_close(cx)
    }
}

impl<C: ClientPortalStore> ClientPortalStore for Unflushed<'_, C> {
    type PortalStore = C::PortalStore;

    fn portal_store(&self) -> &Self::PortalStore {
        self.client.portal_store()
    }
}

impl<C: ClientInfo> ClientInfo for Unflushed<'_, C> {
    fn socket_addr(&self) -> SocketAddr {
        self.client.socket_addr()
    }

    fn is_secure(&self) -> bool {
        self.client.is_secure()
    }

    fn protocol_version(&self) -> ProtocolVersion {
        self.client.protocol_version()
    }

    fn set_protocol_version(&mut self, version: ProtocolVersion) {
        self.client.set_protocol_version(version)
    }

    fn pid_and_secret_key(&self) -> (i32, SecretKey) {
        self.client.pid_and_secret_key()
    }

    fn set_pid_and_secret_key(&mut self, pid: i32, secret_key: SecretKey) {
        self.client.set_pid_and_secret_key(pid, secret_key)
    }

    fn state(&self) -> PgWireConnectionState {
        self.client.state()
    }

    fn set_state(&mut self, new_state: PgWireConnectionState) {
        self.client.set_state(new_state)
    }

    fn transaction_status(&self) -> TransactionStatus {
        self.client.transaction_status()
    }

    fn set_transaction_status(&mut self, new_status: TransactionStatus) {
        let status = if new_status == TransactionStatus::Error && self.recovered(false) {
            TransactionStatus::Transaction
        } else {
            new_status
        };
        self.client.set_transaction_status(status)
    }

    fn metadata(&self) -> &HashMap<String, String> {
        self.client.metadata()
    }

    fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        self.client.metadata_mut()
    }

    fn session_extensions(&self) -> &SessionExtensions {
        self.client.session_extensions()
    }

    fn sni_server_name(&self) -> Option<&str> {
        self.client.sni_server_name()
    }

    fn client_certificates<'a>(&self) -> Option<&[CertificateDer<'a>]> {
        self.client.client_certificates()
    }
}

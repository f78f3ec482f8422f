//! Who may connect over the PostgreSQL protocol: SCRAM-SHA-256 against the configured user
//! and password (the default when a password is set), cleartext password, or trust (no
//! password; loopback only, enforced where the listener is bound).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager, PgWireConnectionState,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

/// How clients authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgAuth {
    /// No password: any user name is accepted. Only for loopback listeners.
    Trust,
    /// `user` with `password`, checked by SCRAM-SHA-256 (the password never crosses the wire).
    Scram { user: String, password: String },
    /// `user` with `password`, sent in clear text (for old clients; use TLS).
    Cleartext { user: String, password: String },
}

/// The parameters every session starts with (`ParameterStatus`), as PostgreSQL 16 sends.
pub(crate) fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = format!(
        "{} (Nyala {})",
        nyala_sql::POSTGRES_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    p.time_zone = "UTC".into();
    p.date_style = "ISO, MDY".into();
    p
}

/// SCRAM iterations: PostgreSQL's default.
const SCRAM_ITERATIONS: usize = 4096;

/// The configured user's password, as each method needs it.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    user: String,
    /// For SCRAM: the salted password and its salt (derived once: 4096 rounds of HMAC).
    salted: Option<(Vec<u8>, Vec<u8>)>,
    /// For cleartext.
    clear: Vec<u8>,
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        if user != self.user {
            // As PostgreSQL: the same answer for an unknown user as for a wrong password.
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            ))));
        }
        Ok(match &self.salted {
            Some((salt, salted)) => Password::new(Some(salt.clone()), salted.clone()),
            None => Password::new(None, self.clear.clone()),
        })
    }
}

/// The startup handler for the configured [`PgAuth`].
pub(crate) enum Startup {
    Trust(TrustStartup),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
    Cleartext(CleartextPasswordAuthStartupHandler<Credentials, DefaultServerParameterProvider>),
}

/// Builds each connection's startup handler (SASL keeps its exchange's state in the
/// handler, so every connection needs its own).
pub(crate) struct Authenticator {
    manager: Arc<ConnectionManager>,
    method: Method,
    pids: Arc<RandomPidSecretKeyGenerator>,
}

enum Method {
    Trust,
    Scram(Arc<Credentials>),
    Cleartext(Credentials),
}

impl Authenticator {
    pub fn new(auth: &PgAuth, manager: Arc<ConnectionManager>) -> Authenticator {
        let method = match auth {
            PgAuth::Trust => Method::Trust,
            PgAuth::Scram { user, password } => {
                let salt: [u8; 16] = rand::random();
                let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
                Method::Scram(Arc::new(Credentials {
                    user: user.clone(),
                    salted: Some((salt.to_vec(), salted)),
                    clear: vec![],
                }))
            }
            PgAuth::Cleartext { user, password } => Method::Cleartext(Credentials {
                user: user.clone(),
                salted: None,
                clear: password.as_bytes().to_vec(),
            }),
        };
        Authenticator {
            manager,
            method,
            pids: Arc::new(RandomPidSecretKeyGenerator::default()),
        }
    }

    /// A startup handler for one new connection.
    pub fn startup(&self) -> Startup {
        let manager = self.manager.clone();
        match &self.method {
            Method::Trust => Startup::Trust(TrustStartup {
                manager,
                pids: self.pids.clone(),
            }),
            Method::Scram(credentials) => {
                let mut scram = ScramAuth::new(credentials.clone());
                scram.set_iterations(SCRAM_ITERATIONS);
                Startup::Scram(
                    SASLAuthStartupHandler::new(Arc::new(server_parameters()))
                        .with_scram(scram)
                        .with_connection_manager(manager)
                        .with_pid_secret_key_generator(self.pids.clone()),
                )
            }
            Method::Cleartext(credentials) => Startup::Cleartext(
                CleartextPasswordAuthStartupHandler::new(credentials.clone(), server_parameters())
                    .with_connection_manager(manager)
                    .with_pid_secret_key_generator(self.pids.clone()),
            ),
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Trust(h) => h.on_startup(client, message).await,
            Startup::Scram(h) => h.on_startup(client, message).await,
            Startup::Cleartext(h) => h.on_startup(client, message).await,
        }
    }
}

/// No password asked; the session is registered for cancel requests like the others.
pub(crate) struct TrustStartup {
    manager: Arc<ConnectionManager>,
    /// Hands out each connection's process id and cancel key (one counter for all).
    pids: Arc<RandomPidSecretKeyGenerator>,
}

#[async_trait]
impl StartupHandler for TrustStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let (pid, secret) = self.pids.generate(client);
            client.set_pid_and_secret_key(pid, secret.clone());
            let (handle, guard) = self.manager.register(pid, secret);
            client
                .session_extensions()
                .insert::<Arc<ConnectionHandle>>(handle);
            client.session_extensions().insert::<ConnectionGuard>(guard);
            finish_authentication(client, &server_parameters()).await?;
            client.set_state(PgWireConnectionState::ReadyForQuery);
            client.flush().await?;
        }
        Ok(())
    }
}

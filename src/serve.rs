//! `nyala serve`: the server process, its logging and its signals.

use std::process::ExitCode;
use std::time::Duration;

use nyala_server::{serve, ServerConfig};

use crate::{DurabilityArg, LogFormat, PgAuthArg, ServeArgs};

pub async fn run_server(args: ServeArgs) -> ExitCode {
    let maintenance = maintenance_options(&args);
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = ServerConfig {
        data_dir: args.data_dir,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        pg: nyala_server::pg::PgConfig {
            addr: args.pg_addr,
            auth: match (args.pg_password, args.pg_auth) {
                (None, _) => nyala_server::pg::PgAuth::Trust,
                (Some(password), PgAuthArg::Scram) => nyala_server::pg::PgAuth::Scram {
                    user: args.pg_user,
                    password,
                },
                (Some(password), PgAuthArg::Cleartext) => nyala_server::pg::PgAuth::Cleartext {
                    user: args.pg_user,
                    password,
                },
            },
            tls: args.pg_tls_cert.zip(args.pg_tls_key),
        },
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        database: nyala_server::DatabaseOptions {
            tablet: nyala_server::TabletOptions {
                durability: match args.durability {
                    DurabilityArg::Sync => nyala_server::Durability::Sync,
                    DurabilityArg::Async => nyala_server::Durability::Async {
                        interval: Duration::from_millis(args.async_interval_ms.max(1)),
                    },
                },
                flush_threshold_bytes: Some(
                    args.flush_threshold_mb
                        .clamp(1, 1 << 20)
                        .saturating_mul(1 << 20),
                ),
                history_retention: Duration::from_secs(args.history_retention_secs),
                column_cache_bytes: match args.column_cache_mb {
                    Some(mb) => mb.min(1 << 30) << 20,
                    None => (nyala_server::machine_memory_bytes() / 10).min(1 << 30),
                },
                ..Default::default()
            },
            maintenance,
            ..Default::default()
        },
        limits: nyala_server::grpc::Limits {
            max_message_bytes: args.max_message_bytes,
            ..Default::default()
        },
    };
    // Handlers first: a signal during recovery is then a clean stop once the database is
    // open, not the default abrupt exit.
    let shutdown = shutdown_signal();
    let result = serve(
        config,
        |bound| {
            tracing::info!(
                grpc = %bound.grpc,
                pg = %bound.pg,
                http = %bound.http,
                "listening: gRPC {} (nyala sql --grpc-addr {}), PostgreSQL {} (psql \"postgresql://nyala@{}/nyala\"), HTTP http://{}/healthz",
                bound.grpc,
                bound.grpc,
                bound.pg,
                bound.pg,
                bound.http
            );
        },
        shutdown,
    )
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("nyala serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now; the future resolves on the first
/// signal. A second one exits at once (status 130), e.g. to give up on a slow flush.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("nyala serve: second signal, exiting now");
            std::process::exit(130);
        });
    }
}

/// The maintenance manager's settings from the flags (0 keeps the automatic default).
fn maintenance_options(args: &ServeArgs) -> nyala_server::MaintenanceOptions {
    let auto = nyala_server::MaintenanceOptions::default();
    nyala_server::MaintenanceOptions {
        threads: match args.maintenance_threads {
            0 => auto.threads,
            n => n.min(64),
        },
        memory_budget_bytes: match args.memory_budget_mb {
            0 => auto.memory_budget_bytes,
            mb => mb.min(1 << 30).saturating_mul(1 << 20),
        },
        write_stall_timeout: Duration::from_secs(args.write_stall_secs),
        compaction_input_bytes: args.compaction_budget_mb.clamp(1, 1 << 20) << 20,
        compaction_nice: args.compaction_nice,
        max_buffer_age: Duration::from_secs(args.max_buffer_age_secs.max(1)),
        ..auto
    }
}

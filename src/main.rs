//! The `nyala` binary: `nyala serve` runs the server; `nyala sql`, `nyala load` and `nyala demo`
//! talk to one.

mod config;
mod demo;
mod load;
mod serve;
mod shell;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

// The write buffer and Arrow allocate many small, short-lived objects.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nyala",
    version,
    about = "Nyala: tables with a primary key, fast lookups and fast analytics, in one server."
)]
struct Cli {
    /// Settings file (default: ./nyala.toml if it exists). Keys are flag names (`grpc_addr`
    /// or `grpc-addr`), at the top level or in a `[serve]`/`[sql]`/`[load]`/`[demo]` table;
    /// flags and environment variables override it.
    #[arg(long, global = true, env = "NYALA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on a data directory.
    Serve(Box<ServeArgs>),
    /// Run SQL against a server: `-c "statement"`, or statements from standard input
    /// (separated by `;`).
    Sql(SqlArgs),
    /// Load a CSV or Parquet file into a table (through the gRPC API, with a progress bar).
    Load(load::LoadArgs),
    /// Generate a traffic dataset, load it and chart the average speed per hour at one point.
    Demo(demo::DemoArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Parser)]
pub(crate) struct ServeArgs {
    /// The database directory (created if missing).
    #[arg(long, env = "NYALA_DATA_DIR", default_value = "./nyala-data")]
    pub(crate) data_dir: PathBuf,
    /// Address of the gRPC API.
    #[arg(long, env = "NYALA_GRPC_ADDR", default_value = "127.0.0.1:7050")]
    pub(crate) grpc_addr: SocketAddr,
    /// Address of the PostgreSQL wire protocol listener (psql, psycopg, JDBC, BI tools).
    #[arg(long, env = "NYALA_PG_ADDR", default_value = "127.0.0.1:5433")]
    pub(crate) pg_addr: SocketAddr,
    /// PostgreSQL user name clients log in as.
    #[arg(long, env = "NYALA_PG_USER", default_value = "nyala")]
    pub(crate) pg_user: String,
    /// PostgreSQL password (checked with SCRAM-SHA-256). Without one, any user logs in
    /// without a password, and the listener must be on a loopback address.
    #[arg(long, env = "NYALA_PG_PASSWORD", hide_env_values = true)]
    pub(crate) pg_password: Option<String>,
    /// How the password is checked: scram (SCRAM-SHA-256) or cleartext (for old clients;
    /// use with TLS).
    #[arg(long, env = "NYALA_PG_AUTH", value_enum, default_value_t = PgAuthArg::Scram)]
    pub(crate) pg_auth: PgAuthArg,
    /// TLS certificate chain (PEM) for the PostgreSQL listener; with --pg-tls-key, clients
    /// may ask for TLS (sslmode=require).
    #[arg(long, env = "NYALA_PG_TLS_CERT", requires = "pg_tls_key")]
    pub(crate) pg_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the PostgreSQL listener.
    #[arg(long, env = "NYALA_PG_TLS_KEY", requires = "pg_tls_cert")]
    pub(crate) pg_tls_key: Option<PathBuf>,
    /// Address of the HTTP endpoints (/healthz, /metrics).
    #[arg(long, env = "NYALA_HTTP_ADDR", default_value = "127.0.0.1:8050")]
    pub(crate) http_addr: SocketAddr,
    /// Seconds in-flight requests may run on after SIGTERM/SIGINT.
    #[arg(long, env = "NYALA_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub(crate) shutdown_grace_secs: u64,
    /// Log filter (tracing's syntax, e.g. `info` or `nyala_server=debug`).
    #[arg(long, env = "NYALA_LOG", default_value = "info")]
    pub(crate) log: String,
    /// Log format.
    #[arg(long, env = "NYALA_LOG_FORMAT", value_enum, default_value = "human")]
    pub(crate) log_format: LogFormat,
    /// Largest gRPC request message, in bytes (bulk loads send many messages).
    #[arg(long, env = "NYALA_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub(crate) max_message_bytes: usize,
    /// When a write is acknowledged: `sync` (its WAL record is on disk; concurrent writes
    /// share a sync) or `async` (in memory, synced within --async-interval-ms; a crash may
    /// lose that much).
    #[arg(long, env = "NYALA_DURABILITY", value_enum, default_value = "sync")]
    pub(crate) durability: DurabilityArg,
    /// With --durability async: the longest an acknowledged write waits for its sync.
    #[arg(long, env = "NYALA_ASYNC_INTERVAL_MS", default_value_t = 100)]
    pub(crate) async_interval_ms: u64,
    /// Write buffer size of one tablet, in MiB, at which it is flushed to a segment.
    #[arg(long, env = "NYALA_FLUSH_THRESHOLD_MB", default_value_t = 128)]
    pub(crate) flush_threshold_mb: usize,
    /// How long old row versions stay readable by snapshot reads, in seconds.
    #[arg(long, env = "NYALA_HISTORY_RETENTION_SECS", default_value_t = 900)]
    pub(crate) history_retention_secs: u64,
    /// Memory all write buffers together may hold, in MiB (0: a fifth of the machine's
    /// memory). Above 60% of it flushes come first and writes slow down; at the limit a write
    /// waits up to --write-stall-secs for flushes, then fails as busy (retry).
    #[arg(long, env = "NYALA_MEMORY_BUDGET_MB", default_value_t = 0)]
    pub(crate) memory_budget_mb: usize,
    /// Memory for decoded segment columns, in MiB (0: none; default: a tenth of the
    /// machine's memory, at most 1024). Scans that read much of a row group decode its columns
    /// whole into this cache, and later scans slice them instead of decoding Parquet pages
    /// again; least recently useful columns make room.
    #[arg(long, env = "NYALA_COLUMN_CACHE_MB")]
    pub(crate) column_cache_mb: Option<u64>,
    /// How long a write waits at the memory budget before failing as busy, in seconds.
    #[arg(long, env = "NYALA_WRITE_STALL_SECS", default_value_t = 10)]
    pub(crate) write_stall_secs: u64,
    /// Background threads for flushes and compactions (0: a quarter of the cores, 2 to 8).
    #[arg(long, env = "NYALA_MAINTENANCE_THREADS", default_value_t = 0)]
    pub(crate) maintenance_threads: usize,
    /// A write buffer is flushed once its oldest write is this old, in seconds.
    #[arg(long, env = "NYALA_MAX_BUFFER_AGE_SECS", default_value_t = 30)]
    pub(crate) max_buffer_age_secs: u64,
    /// Largest input of one compaction, in MiB of segment files.
    #[arg(long, env = "NYALA_COMPACTION_BUDGET_MB", default_value_t = 128)]
    pub(crate) compaction_budget_mb: u64,
    /// How many nice levels (0 to 19) below the server the background threads that compact
    /// run, so that compactions take the CPU requests leave idle; 0 runs them at the server's
    /// own priority (Linux only).
    #[arg(long, env = "NYALA_COMPACTION_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub(crate) compaction_nice: i32,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PgAuthArg {
    /// SCRAM-SHA-256: the password never crosses the wire.
    Scram,
    /// The password in clear text (old clients; use TLS).
    Cleartext,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DurabilityArg {
    /// Acknowledge after the WAL sync.
    Sync,
    /// Acknowledge before it; sync in the background.
    Async,
}

#[derive(Parser)]
pub(crate) struct SqlArgs {
    /// The server's gRPC address.
    #[arg(long, env = "NYALA_GRPC_ADDR", default_value = "127.0.0.1:7050")]
    pub(crate) grpc_addr: String,
    /// Run this statement and exit.
    #[arg(short = 'c', long = "command")]
    pub(crate) command: Option<String>,
    /// Print how long each statement took.
    #[arg(long)]
    pub(crate) timing: bool,
}

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("nyala: {e}");
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Serve(_)) {
        // A client command piped into `head` ends quietly when the pipe closes, as Unix tools
        // do, instead of failing its next print. (Rust ignores SIGPIPE; sockets are unaffected:
        // they send with MSG_NOSIGNAL.)
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run_server(*args)),
        Command::Sql(args) => runtime.block_on(shell::run_sql(args)),
        Command::Load(args) => runtime.block_on(load::run_load(args)),
        Command::Demo(args) => runtime.block_on(demo::run_demo(args)),
    };
    // Work still running (a request past the shutdown grace period) does not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// A gRPC address as a URL (`host:port` gets `http://`).
pub(crate) fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

//! The `nyala` binary: `nyala serve` runs the server; `nyala sql` talks to one.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use nyala_client::Client;
use nyala_server::{serve, ServerConfig};

#[derive(Parser)]
#[command(
    name = "nyala",
    version,
    about = "Nyala: tables with a primary key, fast lookups and fast analytics, in one server."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on a data directory.
    Serve(ServeArgs),
    /// Run SQL against a server: `-c "statement"`, or statements from standard input
    /// (separated by `;`).
    Sql(SqlArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Parser)]
struct ServeArgs {
    /// The database directory (created if missing).
    #[arg(long, env = "NYALA_DATA_DIR", default_value = "./nyala-data")]
    data_dir: PathBuf,
    /// Address of the gRPC API.
    #[arg(long, env = "NYALA_GRPC_ADDR", default_value = "127.0.0.1:7050")]
    grpc_addr: SocketAddr,
    /// Address of the HTTP endpoints (/healthz, /metrics).
    #[arg(long, env = "NYALA_HTTP_ADDR", default_value = "127.0.0.1:8050")]
    http_addr: SocketAddr,
    /// Seconds in-flight requests may run on after SIGTERM/SIGINT.
    #[arg(long, env = "NYALA_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Log filter (tracing's syntax, e.g. `info` or `nyala_server=debug`).
    #[arg(long, env = "NYALA_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, env = "NYALA_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Largest gRPC request message, in bytes (bulk loads send many messages).
    #[arg(long, env = "NYALA_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    max_message_bytes: usize,
}

#[derive(Parser)]
struct SqlArgs {
    /// The server's gRPC address.
    #[arg(long, env = "NYALA_GRPC_ADDR", default_value = "127.0.0.1:7050")]
    grpc_addr: String,
    /// Run this statement and exit.
    #[arg(short = 'c', long = "command")]
    command: Option<String>,
    /// Print how long each statement took.
    #[arg(long)]
    timing: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = match cli.command {
        Command::Serve(args) => runtime.block_on(run_server(args)),
        Command::Sql(args) => runtime.block_on(run_sql(args)),
    };
    // Work still running (a request past the shutdown grace period) does not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn run_server(args: ServeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = ServerConfig {
        data_dir: args.data_dir,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        database: Default::default(),
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
                http = %bound.http,
                "listening: gRPC {} (nyala sql --grpc-addr {}), HTTP http://{}/healthz",
                bound.grpc,
                bound.grpc,
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

fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

async fn run_sql(args: SqlArgs) -> ExitCode {
    let address = url(&args.grpc_addr);
    let mut client = match Client::connect(&address).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nyala sql: {e} (is `nyala serve` running?)");
            return ExitCode::FAILURE;
        }
    };
    if let Some(statement) = args.command {
        return if run_one(&mut client, &statement, args.timing).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // Statements from standard input, each ended by `;` (or the end of input).
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut pending = String::new();
    let mut ok = true;
    let prompt = |pending: &str| {
        if interactive {
            print!(
                "{}",
                if pending.is_empty() {
                    "nyala> "
                } else {
                    "   ... "
                }
            );
            let _ = std::io::stdout().flush();
        }
    };
    prompt(&pending);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        pending.push_str(&line);
        pending.push('\n');
        while let Some(end) = statement_end(&pending) {
            let statement: String = pending.drain(..=end).collect();
            let statement = statement.trim().trim_end_matches(';').trim();
            if !only_comments(statement) {
                ok &= run_one(&mut client, statement, args.timing).await;
            }
        }
        prompt(pending.trim());
    }
    let rest = pending.trim();
    if !only_comments(rest) {
        ok &= run_one(&mut client, rest, args.timing).await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Whether `text` holds nothing but whitespace and `--` comments.
fn only_comments(text: &str) -> bool {
    text.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
}

/// The byte index of the first `;` outside quotes and comments, if any.
fn statement_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut quote) = (0, None::<u8>);
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b[i]),
            (None, b'-') if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (None, b';') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Runs one statement and prints its result (or error); false if it failed.
async fn run_one(client: &mut Client, statement: &str, timing: bool) -> bool {
    let started = Instant::now();
    match client.sql(statement).await {
        Ok(result) => {
            if result.schema.fields().is_empty() {
                println!("OK");
            } else {
                match arrow::util::pretty::pretty_format_batches(&result.batches) {
                    Ok(table) if result.num_rows() > 0 => println!("{table}"),
                    _ => {
                        let names: Vec<&str> = result
                            .schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect();
                        println!("{}\n(0 rows)", names.join(" | "));
                    }
                }
            }
            if timing {
                println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3);
            }
            true
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::statement_end;

    #[test]
    fn statements_end_at_semicolons_outside_quotes() {
        assert_eq!(statement_end("SELECT 1; SELECT 2;"), Some(8));
        assert_eq!(statement_end("SELECT ';' ;"), Some(11));
        assert_eq!(statement_end("SELECT 1 -- ; not here\n;"), Some(23));
        assert_eq!(statement_end("SELECT 1"), None);
        assert!(super::only_comments("-- done\n  \n"));
        assert!(!super::only_comments("-- a\nSELECT 1"));
    }
}

//! Request counters for `/metrics`, in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The gRPC methods other than `Sql` (which has its own counters), for per-method metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `Write` and `WriteStream`.
    Write,
    /// `Get`.
    Get,
    /// `Scan`.
    Scan,
    /// `CreateTable`, `DropTable`, `AlterTable`, `GetTableSchema`.
    Admin,
}

impl Method {
    const ALL: [Method; 4] = [Method::Write, Method::Get, Method::Scan, Method::Admin];

    fn label(self) -> &'static str {
        match self {
            Method::Write => "write",
            Method::Get => "get",
            Method::Scan => "scan",
            Method::Admin => "admin",
        }
    }
}

/// Calls, failures and time of one method.
#[derive(Debug, Default)]
pub struct MethodCounters {
    /// Calls received.
    pub calls: AtomicU64,
    /// Calls that ended with an error status.
    pub errors: AtomicU64,
    /// Total time spent, in microseconds.
    pub micros: AtomicU64,
}

/// Counters shared by the front ends.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per-method counters, indexed by `Method as usize`.
    methods: [MethodCounters; 4],
    /// gRPC requests started, by method.
    pub sql_requests: AtomicU64,
    /// Statements that failed.
    pub sql_errors: AtomicU64,
    /// Total time spent running statements, in microseconds.
    pub sql_micros: AtomicU64,
    /// Rows returned by statements.
    pub rows_returned: AtomicU64,
    /// Rows written by statements (their `count`).
    pub rows_written: AtomicU64,
    /// `ListTables` requests.
    pub list_tables_requests: AtomicU64,
    /// Scans producing results right now (a gauge).
    pub active_scans: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters of `method`.
    pub fn method(&self, method: Method) -> &MethodCounters {
        &self.methods[method as usize]
    }

    /// Records one finished call of `method`.
    pub fn record(&self, method: Method, started: std::time::Instant, ok: bool) {
        let m = self.method(method);
        Self::add(&m.calls, 1);
        Self::add(&m.micros, started.elapsed().as_micros() as u64);
        if !ok {
            Self::add(&m.errors, 1);
        }
    }

    /// The counters, plus the database's per-table gauges and the process's memory, as
    /// Prometheus text.
    pub fn render(&self, db: Option<&nyala_storage::Database>) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            "nyala_sql_requests_total",
            "SQL statements received.",
            &self.sql_requests,
        );
        counter(
            "nyala_sql_errors_total",
            "SQL statements that failed.",
            &self.sql_errors,
        );
        counter(
            "nyala_sql_duration_microseconds_total",
            "Time spent running SQL statements.",
            &self.sql_micros,
        );
        counter(
            "nyala_rows_returned_total",
            "Rows returned by statements, Get and Scan.",
            &self.rows_returned,
        );
        counter(
            "nyala_rows_written_total",
            "Rows written by statements and Write calls.",
            &self.rows_written,
        );
        counter(
            "nyala_list_tables_requests_total",
            "ListTables requests.",
            &self.list_tables_requests,
        );
        for (name, help, field) in [
            (
                "nyala_rpc_calls_total",
                "gRPC calls by method (Sql and ListTables are counted above).",
                0,
            ),
            (
                "nyala_rpc_errors_total",
                "gRPC calls that failed, by method.",
                1,
            ),
            (
                "nyala_rpc_duration_microseconds_total",
                "Time spent in gRPC calls, by method.",
                2,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for m in Method::ALL {
                let c = self.method(m);
                let v = [&c.calls, &c.errors, &c.micros][field].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{method=\"{}\"}} {v}", m.label());
            }
        }
        let _ = writeln!(
            out,
            "# HELP nyala_active_scans Scans streaming results now.\n# TYPE nyala_active_scans gauge\nnyala_active_scans {}",
            self.active_scans.load(Ordering::Relaxed)
        );
        if let Some(db) = db {
            let _ = writeln!(
                out,
                "# HELP nyala_table_rows Rows in a table's segments (not deleted) and write buffers.\n# TYPE nyala_table_rows gauge"
            );
            let mut buffer = String::new();
            for name in db.list_tables(None) {
                let Ok(t) = db.table(&name) else { continue };
                let info = t.describe();
                let (mut rows, mut bytes) = (0u64, 0u64);
                for tablet in &info.tablets {
                    let s = &tablet.stats;
                    rows += s.estimated_rows();
                    bytes += s.buffer_bytes as u64;
                }
                let label = format!(
                    "{{namespace=\"{}\",table=\"{}\"}}",
                    escape(&name.namespace),
                    escape(&name.name)
                );
                let _ = writeln!(out, "nyala_table_rows{label} {rows}");
                let _ = writeln!(buffer, "nyala_table_buffer_bytes{label} {bytes}");
            }
            let _ = writeln!(
                out,
                "# HELP nyala_table_buffer_bytes Bytes in a table's write buffers.\n# TYPE nyala_table_buffer_bytes gauge\n{buffer}"
            );
        }
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Resident set size from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

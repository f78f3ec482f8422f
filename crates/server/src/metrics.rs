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
            render_tables(&mut out, db);
            render_maintenance(&mut out, &db.maintenance_stats());
            render_column_cache(&mut out, &db.column_cache_stats());
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

/// Per-table gauges and counters, summed (or, for segments per key, averaged) over tablets.
fn render_tables(out: &mut String, db: &nyala_storage::Database) {
    type Get = fn(&nyala_storage::TabletStats) -> f64;
    const TABLE_METRICS: &[(&str, &str, &str, Get)] = &[
        ("nyala_table_rows", "gauge", "Rows in a table's segments (not deleted) and write buffers.", |s| s.estimated_rows() as f64),
        ("nyala_table_buffer_bytes", "gauge", "Bytes in a table's write buffers.", |s| s.buffer_bytes as f64),
        ("nyala_table_buffer_rows", "gauge", "Row versions in a table's write buffers.", |s| s.buffer_versions as f64),
        ("nyala_table_segments", "gauge", "Segments of a table.", |s| s.segments as f64),
        ("nyala_table_segment_bytes", "gauge", "Bytes of a table's segment files.", |s| s.segment_file_bytes as f64),
        ("nyala_table_deleted_rows", "gauge", "Rows of a table's segments marked deleted (not yet purged by a compaction).", |s| s.deleted_rows as f64),
        ("nyala_table_segments_per_key", "gauge", "About how many segments a key lookup considers, averaged over the table's tablets (1 = no overlap).", |s| s.segments_per_key),
        ("nyala_table_flushes_total", "counter", "Write buffer flushes of a table since the server started.", |s| s.flushes as f64),
        ("nyala_table_flushed_bytes_total", "counter", "Bytes of segment files written by flushes.", |s| s.bytes_flushed as f64),
        ("nyala_table_compactions_total", "counter", "Compactions of a table since the server started.", |s| s.compactions as f64),
        ("nyala_table_compacted_bytes_total", "counter", "Bytes of segment files read by compactions.", |s| s.bytes_compacted as f64),
        ("nyala_table_purged_rows_total", "counter", "Deleted or superseded rows compactions purged.", |s| s.rows_purged as f64),
    ];
    let tables: Vec<(String, Vec<nyala_storage::TabletStats>)> = db
        .list_tables(None)
        .into_iter()
        .filter_map(|name| {
            let t = db.table(&name).ok()?;
            let label = format!(
                "{{namespace=\"{}\",table=\"{}\"}}",
                escape(&name.namespace),
                escape(&name.name)
            );
            Some((
                label,
                t.describe().tablets.into_iter().map(|x| x.stats).collect(),
            ))
        })
        .collect();
    for (metric, kind, help, get) in TABLE_METRICS {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (label, stats) in &tables {
            let mut v: f64 = stats.iter().map(get).sum();
            if *metric == "nyala_table_segments_per_key" {
                v /= stats.len().max(1) as f64;
            }
            let _ = writeln!(out, "{metric}{label} {v}");
        }
    }
}

/// The column cache's memory and how often scans find what they read in it.
fn render_column_cache(out: &mut String, c: &nyala_storage::ColumnCacheStats) {
    let rows: [(&str, &str, &str, u64); 4] = [
        (
            "nyala_column_cache_bytes",
            "gauge",
            "Bytes of decoded segment columns the scans' cache holds.",
            c.used_bytes,
        ),
        (
            "nyala_column_cache_capacity_bytes",
            "gauge",
            "The column cache's size (0: no cache).",
            c.capacity_bytes,
        ),
        (
            "nyala_column_cache_hits_total",
            "counter",
            "Row groups' columns scans found decoded in the cache.",
            c.hits,
        ),
        (
            "nyala_column_cache_misses_total",
            "counter",
            "Row groups' columns scans decoded whole for the cache.",
            c.misses,
        ),
    ];
    write_rows(out, &rows);
}

/// The maintenance manager's memory budget and work.
fn render_maintenance(out: &mut String, m: &nyala_storage::MaintenanceStats) {
    let rows: [(&str, &str, &str, u64); 13] = [
        (
            "nyala_write_memory_bytes",
            "gauge",
            "Bytes all write buffers hold (charged to the budget).",
            m.memory_used_bytes as u64,
        ),
        (
            "nyala_write_memory_budget_bytes",
            "gauge",
            "The write buffers' memory budget (hard limit).",
            m.memory_budget_bytes as u64,
        ),
        (
            "nyala_write_memory_soft_limit_bytes",
            "gauge",
            "Above this, flushes come first and writers slow down.",
            m.memory_soft_limit_bytes as u64,
        ),
        (
            "nyala_maintenance_flushes_total",
            "counter",
            "Background flushes.",
            m.flushes,
        ),
        (
            "nyala_maintenance_flush_microseconds_total",
            "counter",
            "Time spent in background flushes.",
            m.flush_micros,
        ),
        (
            "nyala_maintenance_compactions_total",
            "counter",
            "Background compactions.",
            m.compactions,
        ),
        (
            "nyala_maintenance_compaction_microseconds_total",
            "counter",
            "Time spent in background compactions.",
            m.compaction_micros,
        ),
        (
            "nyala_maintenance_compacted_bytes_total",
            "counter",
            "Segment bytes read by background compactions.",
            m.bytes_compacted,
        ),
        (
            "nyala_maintenance_purged_rows_total",
            "counter",
            "Rows background compactions purged.",
            m.rows_purged,
        ),
        (
            "nyala_maintenance_failures_total",
            "counter",
            "Background operations that failed (retried later).",
            m.failures,
        ),
        (
            "nyala_maintenance_running",
            "gauge",
            "Background flushes and compactions in progress.",
            m.running as u64,
        ),
        (
            "nyala_write_stalls_total",
            "counter",
            "Writes slowed or held at the memory budget.",
            m.write_stalls,
        ),
        (
            "nyala_writes_refused_total",
            "counter",
            "Writes refused as busy at the memory budget.",
            m.writes_refused,
        ),
    ];
    write_rows(out, &rows);
}

/// Writes unlabelled metrics: (name, type, help, value).
fn write_rows(out: &mut String, rows: &[(&str, &str, &str, u64)]) {
    for (metric, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {v}"
        );
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

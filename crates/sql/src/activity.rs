//! The server's sessions as SQL sees them: `pg_stat_activity`, `pg_backend_pid()`,
//! `pg_cancel_backend(pid)` and `pg_terminate_backend(pid)` (what BI tools use to stop a
//! query: Superset's SQL Lab asks for its session's `pg_backend_pid()` and later terminates
//! it from another connection).
//!
//! A front end registers each session in the server's [`Backends`] with a way to cancel its
//! running statement, and tells the session's engine its process id
//! ([`crate::Engine::attach_backend`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use arrow::array::{
    ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType as ArrowType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use parking_lot::Mutex;

/// What is known of one session.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub user: String,
    pub application_name: String,
    pub client_addr: String,
    pub started: SystemTime,
}

struct Backend {
    info: BackendInfo,
    state: &'static str,
    query: String,
    since: SystemTime,
    cancel: Arc<dyn Fn() + Send + Sync>,
}

/// Every session of a server (one per server process).
#[derive(Default)]
pub struct Backends {
    sessions: Mutex<BTreeMap<i32, Backend>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("sessions", &self.sessions.lock().len())
            .finish()
    }
}

/// Removes its session from [`Backends`] when the session ends.
pub struct BackendGuard {
    backends: Weak<Backends>,
    pid: i32,
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        if let Some(b) = self.backends.upgrade() {
            b.sessions.lock().remove(&self.pid);
        }
    }
}

impl Backends {
    /// Adds a session; `cancel` stops its running statement (it must not block).
    pub fn register(
        self: &Arc<Self>,
        pid: i32,
        info: BackendInfo,
        cancel: Arc<dyn Fn() + Send + Sync>,
    ) -> BackendGuard {
        self.sessions.lock().insert(
            pid,
            Backend {
                since: info.started,
                info,
                state: "idle",
                query: String::new(),
                cancel,
            },
        );
        BackendGuard {
            backends: Arc::downgrade(self),
            pid,
        }
    }

    /// Records that the session runs `query` (`active`) or waits (`idle`, with its last query).
    pub fn set_state(&self, pid: i32, active: bool, query: &str) {
        if let Some(b) = self.sessions.lock().get_mut(&pid) {
            b.state = if active { "active" } else { "idle" };
            if active {
                b.query = query.to_string();
            }
            b.since = SystemTime::now();
        }
    }

    /// Cancels the running statement of session `pid`; `false` if there is no such session.
    pub fn cancel(&self, pid: i32) -> bool {
        let cancel = self.sessions.lock().get(&pid).map(|b| b.cancel.clone());
        match cancel {
            Some(c) => {
                c();
                true
            }
            None => false,
        }
    }

    /// `pg_stat_activity`'s columns (those tools read).
    pub(crate) fn schema() -> SchemaRef {
        let ts = ArrowType::Timestamp(TimeUnit::Microsecond, None);
        Arc::new(ArrowSchema::new(vec![
            Field::new("datname", ArrowType::Utf8, true),
            Field::new("pid", ArrowType::Int32, false),
            Field::new("usename", ArrowType::Utf8, true),
            Field::new("application_name", ArrowType::Utf8, true),
            Field::new("client_addr", ArrowType::Utf8, true),
            Field::new("backend_start", ts.clone(), true),
            Field::new("query_start", ts.clone(), true),
            Field::new("state_change", ts, true),
            Field::new("state", ArrowType::Utf8, true),
            Field::new("query", ArrowType::Utf8, true),
            Field::new("backend_type", ArrowType::Utf8, true),
        ]))
    }

    /// The sessions as `pg_stat_activity` rows.
    pub(crate) fn rows(&self) -> Result<RecordBatch> {
        let sessions = self.sessions.lock();
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0)
        };
        let text = |f: &dyn Fn(&Backend) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(sessions.values().map(f)))
        };
        let columns: Vec<ArrayRef> = vec![
            text(&|_| crate::catalog::CATALOG.to_string()),
            Arc::new(Int32Array::from_iter_values(sessions.keys().copied())),
            text(&|b| b.info.user.clone()),
            text(&|b| b.info.application_name.clone()),
            text(&|b| b.info.client_addr.clone()),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                sessions.values().map(|b| micros(b.info.started)),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                sessions.values().map(|b| micros(b.since)),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                sessions.values().map(|b| micros(b.since)),
            )),
            text(&|b| b.state.to_string()),
            text(&|b| b.query.clone()),
            text(&|_| "client backend".to_string()),
        ];
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }
}

/// `pg_backend_pid()`: this session's process id.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct BackendPid {
    pid: i32,
    signature: Signature,
}

impl BackendPid {
    pub(crate) fn udf(pid: i32) -> ScalarUDF {
        ScalarUDF::new_from_impl(BackendPid {
            pid,
            signature: Signature::exact(vec![], Volatility::Stable),
        })
    }
}

impl ScalarUDFImpl for BackendPid {
    fn name(&self) -> &str {
        "pg_backend_pid"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Int32)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Int32(Some(self.pid))))
    }
}

/// `pg_cancel_backend(pid)` and `pg_terminate_backend(pid)`: both stop the session's running
/// statement (terminate leaves the connection open; its next statement runs normally).
#[derive(Debug)]
pub(crate) struct CancelBackend {
    name: &'static str,
    backends: Arc<Backends>,
    signature: Signature,
}

impl PartialEq for CancelBackend {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.backends, &other.backends)
    }
}

impl Eq for CancelBackend {}

impl std::hash::Hash for CancelBackend {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl CancelBackend {
    pub(crate) fn udf(name: &'static str, backends: Arc<Backends>) -> ScalarUDF {
        ScalarUDF::new_from_impl(CancelBackend {
            name,
            backends,
            signature: Signature::any(1, Volatility::Volatile),
        })
    }
}

impl ScalarUDFImpl for CancelBackend {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let pids = args.args[0].to_array(args.number_rows)?;
        let pids = arrow::compute::cast(&pids, &ArrowType::Int32)?;
        let pids = pids
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("cast to Int32");
        let out: BooleanArray = pids
            .iter()
            .map(|p| p.map(|p| self.backends.cancel(p)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

//! One PostgreSQL connection's state: its SQL session, its run-time parameters (`SET`,
//! `SHOW`) and what happened in its transaction block.
//!
//! Statements that change the session, not the data (`BEGIN`, `COMMIT`, `ROLLBACK`, `SET`,
//! `RESET`, `SHOW`, `DISCARD`, ...), are recognised here ([`Special`]) and never reach the SQL
//! engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use nyala_sql::Engine;
use nyala_storage::Database;

/// The state of one connection.
pub(crate) struct Session {
    /// Shared with a COPY's insert task, which must not keep the session (and so the COPY's
    /// channel) alive: when the connection goes away mid-COPY, the channel closes and the
    /// insert undoes itself.
    pub engine: Arc<Engine>,
    vars: Mutex<BTreeMap<String, String>>,
    /// Statements that wrote since `BEGIN` (a `ROLLBACK` warns that it cannot undo them).
    pub writes_in_block: Mutex<u64>,
    /// The block's savepoints, oldest first: each name with `writes_in_block` when it was set.
    pub savepoints: Mutex<Vec<(String, u64)>>,
    /// Set by a `ROLLBACK TO SAVEPOINT` that ended an aborted block's error state: pgwire
    /// only moves a block into the error state, so the handler moves it back (see
    /// `unflushed::Unflushed`).
    pub recovered: std::sync::atomic::AtomicBool,
    /// The COPY FROM in progress.
    pub copy: tokio::sync::Mutex<Option<super::copy::CopyIn>>,
    /// This session's process id, and its place in the server's sessions.
    pub pid: i32,
    _registered: nyala_sql::activity::BackendGuard,
}

/// The run-time parameters a session starts with, as PostgreSQL 16 names and shows them.
fn defaults() -> BTreeMap<String, String> {
    let v = nyala_sql::POSTGRES_VERSION;
    let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
    let num = format!("{}{:04}", major, minor.parse::<u32>().unwrap_or(0));
    [
        ("application_name", ""),
        ("client_encoding", "UTF8"),
        ("client_min_messages", "notice"),
        ("datestyle", "ISO, MDY"),
        ("default_transaction_isolation", "read committed"),
        ("default_transaction_read_only", "off"),
        ("extra_float_digits", "1"),
        ("idle_in_transaction_session_timeout", "0"),
        ("integer_datetimes", "on"),
        ("intervalstyle", "postgres"),
        ("is_superuser", "on"),
        ("lc_collate", "C.UTF-8"),
        ("lc_ctype", "C.UTF-8"),
        ("lc_messages", "C.UTF-8"),
        ("lc_monetary", "C.UTF-8"),
        ("lc_numeric", "C.UTF-8"),
        ("lc_time", "C.UTF-8"),
        ("lock_timeout", "0"),
        ("max_identifier_length", "63"),
        ("search_path", "\"$user\", public"),
        ("server_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("statement_timeout", "0"),
        ("timezone", "UTC"),
        ("transaction_isolation", "read committed"),
        ("transaction_read_only", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([
        ("server_version".to_string(), v.to_string()),
        ("server_version_num".to_string(), num),
    ])
    .collect()
}

impl Session {
    /// A session over `db`, listed in `backends` as `pid`; `cancel` stops its running
    /// statement (for `pg_cancel_backend`).
    pub fn new(
        db: Arc<Database>,
        backends: &Arc<nyala_sql::activity::Backends>,
        pid: i32,
        info: nyala_sql::activity::BackendInfo,
        cancel: Arc<dyn Fn() + Send + Sync>,
    ) -> Session {
        let mut vars = defaults();
        if !info.application_name.is_empty() {
            vars.insert("application_name".into(), info.application_name.clone());
        }
        let engine = Arc::new(Engine::new(db));
        engine.attach_backend(backends.clone(), pid);
        let registered = backends.register(pid, info, cancel);
        Session {
            pid,
            _registered: registered,
            engine,
            vars: Mutex::new(vars),
            writes_in_block: Mutex::new(0),
            savepoints: Mutex::new(Vec::new()),
            recovered: Default::default(),
            copy: tokio::sync::Mutex::new(None),
        }
    }

    /// `SHOW name`: the value, or `None` for a parameter PostgreSQL would not know either.
    pub fn show(&self, name: &str) -> Option<String> {
        self.vars.lock().get(name).cloned()
    }

    /// `SHOW ALL`: every parameter and its value.
    pub fn show_all(&self) -> Vec<(String, String)> {
        self.vars
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `SET name = value` (`None`: `DEFAULT`). `search_path` also picks the schema
    /// unqualified names resolve in: its first entry that exists.
    pub fn set(&self, name: &str, value: Option<String>) {
        let value = value.unwrap_or_else(|| defaults().remove(name).unwrap_or_default());
        if name == "search_path" {
            for schema in value.split(',') {
                let schema = schema.trim().trim_matches('"');
                if self.engine.set_default_schema(schema) {
                    break;
                }
            }
        }
        self.vars.lock().insert(name.to_string(), value);
    }

    /// `RESET ALL` / `DISCARD ALL`.
    pub fn reset_all(&self) {
        let app = self.show("application_name");
        *self.vars.lock() = defaults();
        self.set("search_path", None);
        self.set("application_name", app);
    }
}

/// A statement about the session or its transaction, answered without the SQL engine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Special {
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(String),
    /// `SET [SESSION | LOCAL] name { TO | = } value | DEFAULT`, `SET TIME ZONE value`.
    Set { name: String, value: Option<String> },
    /// `SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS ...`: accepted (Nyala runs every
    /// statement at read committed or stronger; see docs/postgres.md).
    SetTransaction,
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`, `DISCARD ALL`.
    ResetAll,
    /// `SHOW name`.
    Show(String),
    /// `SHOW ALL`.
    ShowAll,
    /// `COPY ... FROM STDIN` / `COPY ... TO STDOUT`.
    Copy(Box<super::copy::CopySpec>),
    /// A COPY Nyala does not run (files, programs, binary format), and why.
    CopyRefused(String),
    /// Statements accepted with nothing to do (`LISTEN`, `UNLISTEN`, `DEALLOCATE`,
    /// `DISCARD PLANS`, ...), answered with this command tag.
    Ignored(&'static str),
}

/// Recognises `sql` (one statement) as a [`Special`] one.
pub(crate) fn special(sql: &str) -> Option<Special> {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    let first = words.first()?.to_ascii_uppercase();
    let lower = |i: usize| words.get(i).map(|w| w.to_ascii_lowercase());
    match first.as_str() {
        "BEGIN" => Some(Special::Begin),
        "START" if lower(1).as_deref() == Some("transaction") => Some(Special::Begin),
        "COMMIT" | "END" => Some(Special::Commit),
        "ROLLBACK" | "ABORT" => {
            let mut rest = words[1..].iter().map(|w| w.to_ascii_lowercase());
            let mut next = rest.next();
            if matches!(next.as_deref(), Some("work" | "transaction")) {
                next = rest.next();
            }
            match next.as_deref() {
                None => Some(Special::Rollback),
                Some("to") if first == "ROLLBACK" => {
                    let name = savepoint_name(&words[1..])?;
                    Some(Special::RollbackTo(name))
                }
                // `ROLLBACK AND NO CHAIN` and the like; anything else is the engine's error.
                Some("and") => Some(Special::Rollback),
                _ => None,
            }
        }
        "SAVEPOINT" => Some(Special::Savepoint(savepoint_name(&words[1..])?)),
        "RELEASE" => Some(Special::Release(savepoint_name(&words[1..])?)),
        "SET" => parse_set(sql.trim().trim_end_matches(';')),
        "RESET" => match lower(1)?.as_str() {
            "all" => Some(Special::ResetAll),
            name => Some(Special::Reset(variable(name))),
        },
        "SHOW" => {
            let rest = words[1..].join(" ").to_ascii_lowercase();
            match rest.as_str() {
                "" => None,
                "all" => Some(Special::ShowAll),
                // Nyala's own SHOW statements, answered by the SQL engine.
                "tables" | "columns" => None,
                r if r.starts_with("tables ") || r.starts_with("columns ") => None,
                "transaction isolation level" => {
                    Some(Special::Show("transaction_isolation".into()))
                }
                "time zone" => Some(Special::Show("timezone".into())),
                r => Some(Special::Show(variable(r))),
            }
        }
        "DISCARD" => match lower(1)?.as_str() {
            "all" => Some(Special::ResetAll),
            _ => Some(Special::Ignored("DISCARD")),
        },
        "COPY" => Some(match super::copy::parse(sql) {
            Ok(spec) => Special::Copy(Box::new(spec)),
            Err(why) => Special::CopyRefused(why),
        }),
        "LISTEN" => Some(Special::Ignored("LISTEN")),
        "UNLISTEN" => Some(Special::Ignored("UNLISTEN")),
        "DEALLOCATE" => Some(Special::Ignored("DEALLOCATE")),
        _ => None,
    }
}

/// The savepoint named by the last of `words` (after an optional `SAVEPOINT` and, for
/// `ROLLBACK TO`, `WORK`/`TRANSACTION` already taken): an identifier, folded to lower case
/// unless double-quoted (psycopg names its savepoints `"_pg3_1"`).
fn savepoint_name(words: &[&str]) -> Option<String> {
    let words = match words.iter().position(|w| w.eq_ignore_ascii_case("to")) {
        Some(i) => &words[i + 1..],
        None => words,
    };
    let words = match words.first() {
        Some(w) if w.eq_ignore_ascii_case("savepoint") && words.len() > 1 => &words[1..],
        _ => words,
    };
    let [name] = words else {
        return None;
    };
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) if !quoted.is_empty() => Some(quoted.replace("\"\"", "\"")),
        Some(_) => None,
        None => Some(name.to_ascii_lowercase()),
    }
}

/// A parameter name as PostgreSQL keys it: lower case, unquoted, with its aliases.
fn variable(name: &str) -> String {
    let n = name.trim().trim_matches('"').to_ascii_lowercase();
    match n.as_str() {
        "time zone" => "timezone".into(),
        _ => n,
    }
}

/// `SET ...` (the whole statement).
fn parse_set(sql: &str) -> Option<Special> {
    let mut rest = sql[3..].trim_start();
    for scope in ["session ", "local "] {
        if rest.len() >= scope.len() && rest[..scope.len()].eq_ignore_ascii_case(scope) {
            rest = rest[scope.len()..].trim_start();
        }
    }
    let lower = rest.to_ascii_lowercase();
    if lower.starts_with("transaction") || lower.starts_with("characteristics") {
        return Some(Special::SetTransaction);
    }
    let (name, value) = if lower.starts_with("time zone") {
        ("timezone".to_string(), rest["time zone".len()..].trim())
    } else {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let name = variable(&rest[..end]);
        let mut value = rest[end..].trim_start();
        if let Some(v) = value.strip_prefix('=') {
            value = v.trim_start();
        } else if value.len() >= 2 && value[..2].eq_ignore_ascii_case("to") {
            value = value[2..].trim_start();
        } else {
            return None;
        }
        (name, value)
    };
    // DataFusion's own options (`SET datafusion.execution.batch_size = ...`) are the SQL
    // engine's.
    if name.starts_with("datafusion.") {
        return None;
    }
    let value = value.trim();
    if value.eq_ignore_ascii_case("default") || value.eq_ignore_ascii_case("local") {
        return Some(Special::Set { name, value: None });
    }
    let unquoted = value
        .split(',')
        .map(|v| {
            let v = v.trim();
            match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                Some(inner) => inner.replace("''", "'"),
                None => v.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(Special::Set {
        name,
        value: Some(unquoted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_session_statements() {
        assert_eq!(special("begin"), Some(Special::Begin));
        assert_eq!(
            special("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Some(Special::Begin)
        );
        assert_eq!(special("END;"), Some(Special::Commit));
        assert_eq!(special("ROLLBACK"), Some(Special::Rollback));
        assert_eq!(
            special("ROLLBACK TO SAVEPOINT a"),
            Some(Special::RollbackTo("a".into()))
        );
        assert_eq!(
            special("rollback transaction to B;"),
            Some(Special::RollbackTo("b".into()))
        );
        assert_eq!(special("ROLLBACK WORK"), Some(Special::Rollback));
        assert_eq!(
            special("SAVEPOINT \"_pg3_1\""),
            Some(Special::Savepoint("_pg3_1".into()))
        );
        assert_eq!(
            special("RELEASE SAVEPOINT \"_pg3_1\""),
            Some(Special::Release("_pg3_1".into()))
        );
        assert_eq!(special("release Sp"), Some(Special::Release("sp".into())));
        assert_eq!(special("SAVEPOINT"), None);
        assert_eq!(special("SAVEPOINT a b"), None);
        assert_eq!(
            special("SET search_path TO 'traffic', public"),
            Some(Special::Set {
                name: "search_path".into(),
                value: Some("traffic, public".into())
            })
        );
        assert_eq!(
            special("set SESSION DateStyle = default"),
            Some(Special::Set {
                name: "datestyle".into(),
                value: None
            })
        );
        assert_eq!(
            special("SET TIME ZONE 'UTC'"),
            Some(Special::Set {
                name: "timezone".into(),
                value: Some("UTC".into())
            })
        );
        assert_eq!(
            special("SET TRANSACTION READ ONLY"),
            Some(Special::SetTransaction)
        );
        assert_eq!(special("SET datafusion.execution.batch_size = 1"), None);
        assert_eq!(
            special("show transaction isolation level"),
            Some(Special::Show("transaction_isolation".into()))
        );
        assert_eq!(special("SHOW TABLES"), None);
        assert_eq!(special("SHOW ALL"), Some(Special::ShowAll));
        assert_eq!(special("DISCARD ALL"), Some(Special::ResetAll));
        assert_eq!(special("SELECT 1"), None);
    }

    #[test]
    fn server_version_num_follows_the_version() {
        let d = defaults();
        assert_eq!(d["server_version"], nyala_sql::POSTGRES_VERSION);
        assert_eq!(d["server_version_num"].len(), 6);
    }
}

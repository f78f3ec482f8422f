//! Sessions: row operations buffered and sent in batches (Kudu's `KuduSession`).

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use nyala_common::Value;
use nyala_proto::v1 as pb;
use tokio::task::JoinHandle;

use crate::table::{encode_ops, Operation};
use crate::{Client, ClientError};

/// When a [`Session`] sends its operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// Every [`Session::apply`] is sent at once and waits for the answer; a refused row is
    /// returned as [`ClientError::Row`]. Simple, and one round trip per row.
    AutoFlushSync,
    /// Operations are buffered; a full buffer is sent by a background task while the next one
    /// fills. Up to [`Session::set_max_in_flight`] batches (default 2) are in flight at once,
    /// so memory stays bounded, and the server's group commit syncs them together.
    /// Operations on the same key are applied in the order they were given: a batch that
    /// shares a key with one in flight waits for it (batches with no key in common commute).
    /// Refused rows go to [`Session::take_errors`].
    AutoFlushBackground,
    /// Operations are buffered until [`Session::flush`]; applying to a full buffer fails with
    /// [`ClientError::BufferFull`]. Refused rows go to [`Session::take_errors`].
    Manual,
}

/// A row the server refused, with the operation that carried it.
#[derive(Clone, Debug, PartialEq)]
pub struct RowError {
    /// The table, as `namespace.name`.
    pub table: String,
    /// The operation.
    pub op: pb::Op,
    /// The row's key values, in key order.
    pub key: Vec<Value>,
    /// Why: duplicate key, key not found, no partition.
    pub code: pb::RowErrorCode,
    /// The server's message (names the key).
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} on {}: {}", self.op, self.table, self.message)
    }
}

/// Buffers row operations (of any tables) and sends them in batches. Not shared between
/// tasks: open one per writer (sessions are cheap; the connection is shared).
///
/// Call [`Session::flush`] (or [`Session::close`]) before dropping a session that buffers:
/// operations still in its buffer are not sent.
#[derive(Debug)]
pub struct Session {
    client: Client,
    mode: FlushMode,
    buffer: Vec<Operation>,
    buffer_limit: usize,
    errors: Vec<RowError>,
    /// The background flushes in flight (AutoFlushBackground), oldest first.
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
}

/// A batch sent in the background: its row errors, or why it failed (with the operations it
/// did not apply); and the hashes of its keys, to keep later operations on them behind it.
#[derive(Debug)]
struct InFlight {
    task: JoinHandle<Result<Vec<RowError>, ClientError>>,
    keys: HashSet<u64>,
}

/// Default number of batches in flight at once (AutoFlushBackground); Kudu's default too.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// Default number of operations buffered before a background flush (or refused in Manual).
pub const DEFAULT_BUFFER_OPS: usize = 1000;

impl Session {
    pub(crate) fn new(client: Client, mode: FlushMode) -> Self {
        Session {
            client,
            mode,
            buffer: Vec::new(),
            buffer_limit: DEFAULT_BUFFER_OPS,
            errors: Vec::new(),
            in_flight: VecDeque::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// The flush mode.
    pub fn mode(&self) -> FlushMode {
        self.mode
    }

    /// Sets how many operations the buffer holds (at least 1): the batch size of background
    /// flushes, the capacity in Manual mode.
    pub fn set_buffer_limit(&mut self, ops: usize) {
        self.buffer_limit = ops.max(1);
    }

    /// Sets how many batches an AutoFlushBackground session keeps in flight at once (at
    /// least 1). More overlap the server's work with the network and the next batch's
    /// building; memory is one buffer per batch in flight.
    pub fn set_max_in_flight(&mut self, batches: usize) {
        self.max_in_flight = batches.max(1);
    }

    /// Operations buffered and not yet sent.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Applies (or buffers, per the flush mode) one operation.
    pub async fn apply(&mut self, op: Operation) -> Result<(), ClientError> {
        op.check()?;
        match self.mode {
            FlushMode::AutoFlushSync => {
                let mut errors = send(&self.client, vec![op]).await?;
                match errors.pop() {
                    Some(e) => Err(ClientError::Row(e)),
                    None => Ok(()),
                }
            }
            FlushMode::Manual => {
                if self.buffer.len() >= self.buffer_limit {
                    return Err(ClientError::BufferFull(self.buffer.len()));
                }
                self.buffer.push(op);
                Ok(())
            }
            FlushMode::AutoFlushBackground => {
                self.buffer.push(op);
                if self.buffer.len() < self.buffer_limit {
                    return Ok(());
                }
                // Room for one more batch, and none in flight that shares a key with this
                // one. If a batch failed, neither its unapplied operations nor this buffer
                // are kept: the error returns them all.
                let keys: HashSet<u64> = self.buffer.iter().map(key_hash).collect();
                if let Err(e) = self
                    .wait_in_flight(self.max_in_flight - 1, Some(&keys))
                    .await
                {
                    return Err(with_unsent(e, &mut self.buffer, None));
                }
                let ops = std::mem::take(&mut self.buffer);
                let client = self.client.clone();
                self.in_flight.push_back(InFlight {
                    task: tokio::spawn(async move { send(&client, ops).await }),
                    keys,
                });
                Ok(())
            }
        }
    }

    /// Waits for the oldest batches in flight until at most `keep` remain and none of them
    /// holds a key of `conflicts`. When one has failed, every later one is awaited too, and
    /// the error carries all their operations not applied, in order.
    async fn wait_in_flight(
        &mut self,
        keep: usize,
        conflicts: Option<&HashSet<u64>>,
    ) -> Result<(), ClientError> {
        let must_wait = |f: &VecDeque<InFlight>| {
            f.len() > keep || conflicts.is_some_and(|k| f.iter().any(|b| !b.keys.is_disjoint(k)))
        };
        while must_wait(&self.in_flight) {
            let Some(batch) = self.in_flight.pop_front() else {
                break;
            };
            if let Err(mut failed) = self.settle(batch).await {
                while let Some(later) = self.in_flight.pop_front() {
                    if let Err(e) = self.settle(later).await {
                        failed = merge_unapplied(failed, e);
                    }
                }
                return Err(failed);
            }
        }
        Ok(())
    }

    /// Awaits one background batch, collecting its row errors.
    async fn settle(&mut self, batch: InFlight) -> Result<(), ClientError> {
        let errors = batch.task.await.map_err(|e| {
            ClientError::InvalidArgument(format!("the background flush task failed: {e}"))
        })??;
        self.errors.extend(errors);
        Ok(())
    }

    /// Sends every buffered operation and waits for all of them (including the background
    /// batches in flight). Refused rows are collected, not returned: see
    /// [`Session::take_errors`]. An `Err` means a batch was refused whole (e.g. the table
    /// is gone) or the server was unreachable: [`ClientError::NotApplied`] then returns every
    /// operation not applied, in order (the buffer is left empty).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if let Err(e) = self.wait_in_flight(0, None).await {
            return Err(with_unsent(e, &mut self.buffer, None));
        }
        if !self.buffer.is_empty() {
            let ops = std::mem::take(&mut self.buffer);
            let errors = send(&self.client, ops).await?;
            self.errors.extend(errors);
        }
        Ok(())
    }

    /// The rows refused so far (since the last call).
    pub fn take_errors(&mut self) -> Vec<RowError> {
        std::mem::take(&mut self.errors)
    }

    /// Flushes and ends the session, returning the rows refused since the last
    /// [`Session::take_errors`].
    pub async fn close(mut self) -> Result<Vec<RowError>, ClientError> {
        self.flush().await?;
        Ok(self.take_errors())
    }
}

/// A failed background batch's error, with the buffered operations (and `next`) queued after
/// it added to the ones it did not apply. Other errors leave the buffer as it is.
fn with_unsent(
    e: ClientError,
    buffer: &mut Vec<Operation>,
    next: Option<Operation>,
) -> ClientError {
    match e {
        ClientError::NotApplied { source, mut ops } => {
            ops.append(buffer);
            ops.extend(next);
            ClientError::NotApplied { source, ops }
        }
        other => other,
    }
}

/// The first error, with a later batch's unapplied operations added to those it carries.
fn merge_unapplied(first: ClientError, later: ClientError) -> ClientError {
    match (first, later) {
        (
            ClientError::NotApplied { source, mut ops },
            ClientError::NotApplied { ops: more, .. },
        ) => {
            ops.extend(more);
            ClientError::NotApplied { source, ops }
        }
        (first, _) => first,
    }
}

/// A hash of an operation's table and key: equal keys hash equally (a collision only makes a
/// batch wait when it need not). The table counts by its bare name, lowercased, not by
/// handle: two handles of one table (named with or without its namespace, in any case) write
/// the same rows, and a false match between namespaces only costs a wait.
fn key_hash(op: &Operation) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Lowercased char by char: no allocation per operation.
    for c in op.table.name.name.chars().flat_map(char::to_lowercase) {
        c.hash(&mut h);
    }
    for &i in op.table.schema.key_indices() {
        match &op.values[i] {
            None | Some(Value::Null) => 0u8.hash(&mut h),
            Some(v) => hash_value(v, &mut h),
        }
    }
    h.finish()
}

fn hash_value(v: &Value, h: &mut impl Hasher) {
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Null => {}
        Value::Bool(x) => x.hash(h),
        Value::Int8(x) => x.hash(h),
        Value::Int16(x) => x.hash(h),
        Value::Int32(x) | Value::Date(x) => x.hash(h),
        Value::Int64(x) | Value::Timestamp(x) => x.hash(h),
        Value::Float32(x) => x.to_bits().hash(h),
        Value::Float64(x) => x.to_bits().hash(h),
        Value::Utf8(x) => x.hash(h),
        Value::Binary(x) => x.hash(h),
        Value::Decimal(x) => x.hash(h),
    }
}

/// Sends `ops` in order (one write request per run of one table's operations setting the same
/// columns) and returns the refused rows. A request that fails whole stops the sending: the
/// error carries that request's operations and every later one.
async fn send(client: &Client, ops: Vec<Operation>) -> Result<Vec<RowError>, ClientError> {
    let mut errors = Vec::new();
    let mut start = 0;
    let not_applied = |e: ClientError, from: usize, ops: &[Operation]| ClientError::NotApplied {
        source: Box::new(e),
        ops: ops[from..].to_vec(),
    };
    while start < ops.len() {
        let table = ops[start].table.clone();
        let mut end = start + 1;
        while end < ops.len() && Arc::ptr_eq(&ops[end].table, &table) {
            end += 1;
        }
        let run = &ops[start..end];
        let mut first = 0;
        let requests = encode_ops(run).map_err(|e| not_applied(e, start, &ops))?;
        for (request, n) in requests {
            let r = match client.rpc().write(request).await {
                Ok(r) => r.into_inner(),
                Err(status) => return Err(not_applied(status.into(), start + first, &ops)),
            };
            let unlisted = r.failed.saturating_sub(r.errors.len() as u64);
            if unlisted > 0 {
                errors.push(RowError {
                    table: format!("{}.{}", table.name.namespace, table.name.name),
                    op: pb::Op::Unspecified,
                    key: Vec::new(),
                    code: pb::RowErrorCode::Unspecified,
                    message: format!(
                        "{unlisted} more rows of this batch failed (the server lists a limited number; use a smaller buffer limit to see each)"
                    ),
                });
            }
            for e in r.errors {
                let Some(op) = run.get(first + e.row as usize) else {
                    continue;
                };
                errors.push(RowError {
                    table: format!("{}.{}", table.name.namespace, table.name.name),
                    op: op.op,
                    key: op.key(),
                    code: pb::RowErrorCode::try_from(e.code)
                        .unwrap_or(pb::RowErrorCode::Unspecified),
                    message: e.message,
                });
            }
            first += n;
        }
        start = end;
    }
    Ok(errors)
}

//! Sessions: row operations buffered and sent in batches (Kudu's `KuduSession`).

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
    /// fills. At most one batch is in flight, so memory stays bounded (two buffers) and rows
    /// are applied in the order they were given. Refused rows go to [`Session::take_errors`].
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
    /// The background flush in flight (AutoFlushBackground): its row errors, or why it failed
    /// (with the operations it did not apply).
    in_flight: Option<JoinHandle<Result<Vec<RowError>, ClientError>>>,
}

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
            in_flight: None,
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
                if self.buffer.len() + 1 >= self.buffer_limit {
                    // Wait for the previous batch first: one in flight keeps memory bounded
                    // and the rows in order. If it failed, neither its unapplied operations
                    // nor this one are kept: the error returns them all.
                    if let Err(e) = self.wait_in_flight().await {
                        return Err(with_unsent(e, &mut self.buffer, Some(op)));
                    }
                }
                self.buffer.push(op);
                if self.buffer.len() >= self.buffer_limit {
                    let ops = std::mem::take(&mut self.buffer);
                    let client = self.client.clone();
                    self.in_flight = Some(tokio::spawn(async move { send(&client, ops).await }));
                }
                Ok(())
            }
        }
    }

    async fn wait_in_flight(&mut self) -> Result<(), ClientError> {
        if let Some(h) = self.in_flight.take() {
            let errors = h.await.map_err(|e| {
                ClientError::InvalidArgument(format!("the background flush task failed: {e}"))
            })??;
            self.errors.extend(errors);
        }
        Ok(())
    }

    /// Sends every buffered operation and waits for all of them (including a background
    /// batch in flight). Refused rows are collected, not returned: see
    /// [`Session::take_errors`]. An `Err` means a batch was refused whole (e.g. the table
    /// is gone) or the server was unreachable: [`ClientError::NotApplied`] then returns every
    /// operation not applied, in order (the buffer is left empty).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if let Err(e) = self.wait_in_flight().await {
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

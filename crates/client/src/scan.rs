//! Scans: a builder and the stream of record batches it yields.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use futures::Stream;
use nyala_proto::v1 as pb;
use tonic::Streaming;

use crate::table::{Predicate, Table};
use crate::ClientError;

/// A scan being set up: projection, predicates, limit, snapshot.
#[derive(Clone, Debug)]
pub struct Scan {
    table: Table,
    projection: Vec<String>,
    predicates: Vec<Predicate>,
    limit: u64,
    snapshot: u64,
    batch_rows: u32,
}

impl Scan {
    pub(crate) fn new(table: Table) -> Self {
        Scan {
            table,
            projection: Vec::new(),
            predicates: Vec::new(),
            limit: 0,
            snapshot: 0,
            batch_rows: 0,
        }
    }

    /// Return only these columns, in this order.
    pub fn project<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.projection = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Return only rows satisfying `p` (and every other predicate).
    pub fn filter(mut self, p: Predicate) -> Self {
        self.predicates.push(p);
        self
    }

    /// Stop after `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = n;
        self
    }

    /// Read as of `timestamp`: a [`ScanStream::snapshot`] of an earlier scan (repeatable
    /// reads across calls) or a [`crate::WriteResult::timestamp`] (read your writes).
    pub fn snapshot(mut self, timestamp: u64) -> Self {
        self.snapshot = timestamp;
        self
    }

    /// Rows per batch (the server caps it).
    pub fn batch_rows(mut self, n: u32) -> Self {
        self.batch_rows = n;
        self
    }

    /// Starts the scan: waits for the server to fix the snapshot and send the schema.
    pub async fn execute(self) -> Result<ScanStream, ClientError> {
        let schema = self.table.schema();
        let predicates = self
            .predicates
            .iter()
            .map(|p| p.to_proto(schema))
            .collect::<Result<_, _>>()?;
        let inner = &self.table.inner;
        let mut stream = inner
            .client
            .rpc()
            .scan(pb::ScanRequest {
                table: Some(inner.name.clone()),
                projection: self.projection,
                predicates,
                limit: self.limit,
                snapshot_timestamp: self.snapshot,
                batch_rows: self.batch_rows,
            })
            .await?
            .into_inner();
        let mut decoder = StreamDecoder::new();
        let mut ready = VecDeque::new();
        let mut snapshot = 0;
        // The schema comes first, possibly over several messages.
        while decoder.schema().is_none() {
            let Some(msg) = stream.message().await? else {
                return Err(ClientError::InvalidArgument(
                    "the server ended the scan before sending its schema".into(),
                ));
            };
            if snapshot == 0 {
                snapshot = msg.snapshot_timestamp;
            }
            feed(&mut decoder, msg.arrow_ipc, &mut ready)?;
        }
        Ok(ScanStream {
            schema: decoder.schema().expect("decoded above"),
            snapshot,
            decoder,
            ready,
            stream: Some(stream),
        })
    }
}

fn feed(
    decoder: &mut StreamDecoder,
    bytes: Vec<u8>,
    ready: &mut VecDeque<RecordBatch>,
) -> Result<(), ClientError> {
    let mut buf = Buffer::from_vec(bytes);
    while !buf.is_empty() {
        if let Some(b) = decoder.decode(&mut buf)? {
            ready.push_back(b);
        }
    }
    Ok(())
}

/// A running scan: a stream of record batches, read at [`ScanStream::snapshot`]. Dropping it
/// cancels the scan on the server.
pub struct ScanStream {
    schema: SchemaRef,
    snapshot: u64,
    decoder: StreamDecoder,
    ready: VecDeque<RecordBatch>,
    stream: Option<Streaming<pb::ScanResponse>>,
}

impl std::fmt::Debug for ScanStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanStream")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl ScanStream {
    /// The columns of every batch.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The snapshot the scan reads: pass it to [`Scan::snapshot`] to read the same data again.
    pub fn snapshot(&self) -> u64 {
        self.snapshot
    }
}

impl Stream for ScanStream {
    type Item = Result<RecordBatch, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            let Some(stream) = &mut this.stream else {
                return Poll::Ready(None);
            };
            match Pin::new(stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.stream = None;
                    if let Err(e) = this.decoder.finish() {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    this.stream = None;
                    return Poll::Ready(Some(Err(status.into())));
                }
                Poll::Ready(Some(Ok(msg))) => {
                    if let Err(e) = feed(&mut this.decoder, msg.arrow_ipc, &mut this.ready) {
                        this.stream = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }
}

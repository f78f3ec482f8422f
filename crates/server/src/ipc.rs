//! Arrow IPC streams on the wire: what clients send (write batches) and what the server
//! answers (results), cut into messages of bounded size.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use tonic::Status;

/// Largest piece of an Arrow IPC stream sent in one message (clients accept 4 MiB by default).
pub const CHUNK_BYTES: usize = 1 << 20;

fn encoding(e: arrow::error::ArrowError) -> Status {
    Status::internal(format!("encoding the result: {e}"))
}

/// An Arrow IPC stream written a batch at a time, handing out the bytes as they are produced
/// so a scan's result never has to be held whole.
pub struct IpcEncoder {
    writer: StreamWriter<Vec<u8>>,
}

impl IpcEncoder {
    /// Starts a stream of `schema`; [`IpcEncoder::take`] then returns the schema message.
    pub fn new(schema: &SchemaRef) -> Result<Self, Status> {
        Ok(IpcEncoder {
            writer: StreamWriter::try_new(Vec::new(), schema).map_err(encoding)?,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), Status> {
        self.writer.write(batch).map_err(encoding)
    }

    /// Ends the stream.
    pub fn finish(&mut self) -> Result<(), Status> {
        self.writer.finish().map_err(encoding)
    }

    /// The bytes produced since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.writer.get_mut())
    }
}

/// `batches` as one complete Arrow IPC stream of `schema`.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, Status> {
    let mut enc = IpcEncoder::new(schema)?;
    for b in batches {
        enc.write(b)?;
    }
    enc.finish()?;
    Ok(enc.take())
}

/// Decodes a client's Arrow IPC stream; anything malformed is `INVALID_ARGUMENT`.
pub fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let bad = |e: arrow::error::ArrowError| {
        Status::invalid_argument(format!("arrow_ipc is not a valid Arrow IPC stream: {e}"))
    };
    if bytes.is_empty() {
        return Err(Status::invalid_argument(
            "arrow_ipc is empty: it must hold an Arrow IPC stream (schema and batches)",
        ));
    }
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(bad)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    Ok((schema, batches))
}

//! `nyala load`: bulk import of a CSV or Parquet file through the streaming `WriteStream` RPC.
//!
//! A reader thread parses the file into Arrow batches and converts each column to the table's
//! type; a value that does not convert makes its row a *bad row*, reported with its line
//! (CSV) or row number (Parquet) and left out, while the rest of the batch goes on. Batches
//! stream to the server as they are ready; rows the server refuses (duplicate keys, keys
//! outside every range partition) are reported the same way at the end.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{cast_with_options, filter_record_batch, CastOptions};
use arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nyala_client::{Client, ClientError, ColumnSchema, DataType, Op, Schema, Table};

use crate::url;

/// Largest batch sent in one message, in bytes of Arrow memory (the server's default limit is
/// 64 MiB per message).
const MAX_SEND_BYTES: usize = 16 << 20;

/// Bad rows printed one by one; beyond this only counted.
const MAX_REPORTED: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum FileFormat {
    /// Comma-separated values with a header line naming the columns.
    Csv,
    /// Apache Parquet.
    Parquet,
}

#[derive(Parser)]
pub(crate) struct LoadArgs {
    /// The file to load: CSV (with a header line) or Parquet.
    file: PathBuf,
    /// The table to load into (`name` or `namespace.name`).
    #[arg(long)]
    table: String,
    /// Create the table if it does not exist, with the file's columns (types inferred).
    #[arg(long)]
    create: bool,
    /// With --create: the primary key columns, comma-separated (default: the first column).
    #[arg(long, value_delimiter = ',')]
    key: Vec<String>,
    /// Replace rows whose key exists (UPSERT) instead of reporting them as duplicates.
    #[arg(long)]
    upsert: bool,
    /// The file's format (default: from its extension).
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
    /// CSV field delimiter.
    #[arg(long, default_value_t = ',')]
    delimiter: char,
    /// Rows per batch sent to the server.
    #[arg(long, default_value_t = 65_536)]
    batch_rows: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// The server's gRPC address.
    #[arg(long, env = "NYALA_GRPC_ADDR", default_value = "127.0.0.1:7050")]
    grpc_addr: String,
}

/// Where the rows sent come from, for reporting refused rows by line.
#[derive(Default)]
struct LineMap {
    /// Per batch sent: the index of its first row in the stream, and the source line of each
    /// row (or of the first, when no row of the batch was left out).
    batches: Vec<(u64, Lines)>,
}

enum Lines {
    Contiguous(u64),
    Listed(Vec<u64>),
}

impl LineMap {
    fn line_of(&self, row: u64) -> Option<u64> {
        let i = self.batches.partition_point(|(start, _)| *start <= row);
        let (start, lines) = self.batches.get(i.checked_sub(1)?)?;
        let off = row - start;
        Some(match lines {
            Lines::Contiguous(first) => first + off,
            Lines::Listed(v) => *v.get(off as usize)?,
        })
    }
}

/// What the reader found wrong, shared with the progress output.
struct Report {
    bar: ProgressBar,
    bad: AtomicU64,
    unit: &'static str,
}

impl Report {
    fn bad_row(&self, line: u64, why: &str) {
        let n = self.bad.fetch_add(1, Ordering::Relaxed) as usize;
        let text = if n < MAX_REPORTED {
            format!("{} {line}: {why}", self.unit)
        } else if n == MAX_REPORTED {
            "(more bad rows: only counted from here on)".to_string()
        } else {
            return;
        };
        // A hidden bar (not a terminal, --quiet) prints nothing itself.
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

pub(crate) async fn run_load(args: LoadArgs) -> ExitCode {
    match load(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("nyala load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn format_of(args: &LoadArgs) -> Result<FileFormat, String> {
    if let Some(f) = args.format {
        return Ok(f);
    }
    match args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") | Some("txt") | Some("tsv") => Ok(FileFormat::Csv),
        Some("parquet") | Some("pq") => Ok(FileFormat::Parquet),
        _ => Err(format!(
            "cannot tell the format of {} from its name: pass --format csv|parquet",
            args.file.display()
        )),
    }
}

/// The file's columns with types (inferred from a sample for CSV), and its row count when
/// known.
fn file_schema(
    path: &Path,
    format: FileFormat,
    delimiter: u8,
) -> Result<(SchemaRef, Option<u64>), String> {
    let open = || File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()));
    match format {
        FileFormat::Parquet => {
            let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open()?)
                .map_err(|e| format!("{} is not a readable Parquet file: {e}", path.display()))?;
            let rows = b.metadata().file_metadata().num_rows() as u64;
            Ok((b.schema().clone(), Some(rows)))
        }
        FileFormat::Csv => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .with_delimiter(delimiter)
                .infer_schema(BufReader::new(open()?), Some(10_000))
                .map_err(|e| format!("cannot read the CSV header of {}: {e}", path.display()))?;
            Ok((Arc::new(schema), None))
        }
    }
}

/// The Nyala type for a column of a file.
fn nyala_type(t: &ArrowType) -> Option<DataType> {
    Some(match t {
        ArrowType::Boolean => DataType::Bool,
        ArrowType::Int8 => DataType::Int8,
        ArrowType::Int16 | ArrowType::UInt8 => DataType::Int16,
        ArrowType::Int32 | ArrowType::UInt16 => DataType::Int32,
        ArrowType::Int64 | ArrowType::UInt32 | ArrowType::UInt64 => DataType::Int64,
        ArrowType::Float16 | ArrowType::Float32 => DataType::Float32,
        ArrowType::Float64 => DataType::Float64,
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View | ArrowType::Null => {
            DataType::Utf8
        }
        ArrowType::Binary | ArrowType::LargeBinary | ArrowType::BinaryView => DataType::Binary,
        ArrowType::Timestamp(_, _) => DataType::Timestamp,
        ArrowType::Date32 | ArrowType::Date64 => DataType::Date,
        ArrowType::Decimal128(p, s) if *s >= 0 => DataType::Decimal {
            precision: *p,
            scale: *s,
        },
        _ => return None,
    })
}

async fn create_table(
    client: &Client,
    name: &str,
    source: &ArrowSchema,
    key: &[String],
) -> Result<Table, String> {
    let key: Vec<String> = if key.is_empty() {
        vec![source.field(0).name().clone()]
    } else {
        key.to_vec()
    };
    let mut columns = Vec::new();
    for f in source.fields() {
        let t = nyala_type(f.data_type()).ok_or_else(|| {
            format!(
                "column \"{}\" has type {} which Nyala does not store",
                f.name(),
                f.data_type()
            )
        })?;
        columns.push(if key.contains(f.name()) {
            ColumnSchema::not_null(f.name().clone(), t)
        } else {
            ColumnSchema::nullable(f.name().clone(), t)
        });
    }
    let key_refs: Vec<&str> = key.iter().map(String::as_str).collect();
    let schema = Schema::new(columns, &key_refs).map_err(|e| e.to_string())?;
    let t = client
        .create_table(name, &schema, None, false)
        .await
        .map_err(|e| format!("cannot create table {name}: {e}"))?;
    eprintln!(
        "created table {} ({}), primary key ({})",
        t.name(),
        schema
            .columns()
            .iter()
            .map(|c| format!("{} {}", c.name, c.data_type))
            .collect::<Vec<_>>()
            .join(", "),
        key.join(", ")
    );
    Ok(t)
}

/// How one column of the file becomes one column of the table.
struct Target {
    /// Index in the file's batches.
    source: usize,
    /// The field sent (table name and type; timestamps zoneless, read as UTC).
    field: Field,
    /// Whether NULL is refused (key and NOT NULL columns).
    required: bool,
    /// The column's SQL type, for messages.
    type_name: String,
}

fn targets(file: &ArrowSchema, table: &Schema) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for (i, f) in file.fields().iter().enumerate() {
        let idx = table
            .index_of(f.name())
            .or_else(|_| table.index_of(&f.name().to_lowercase()))
            .map_err(|_| {
                format!(
                    "the file's column \"{}\" is not a column of the table (its columns: {})",
                    f.name(),
                    table
                        .columns()
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let col = &table.columns()[idx];
        let t = match col.data_type {
            DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, None),
            other => other.to_arrow(),
        };
        out.push(Target {
            source: i,
            // Nullable on the wire: rows with a NULL where none is allowed are left out
            // before sending, and the server checks again.
            field: Field::new(col.name.clone(), t, true),
            // A default fills a column left out, not a NULL sent: NULL is refused either way.
            required: table.is_key(idx) || !col.nullable,
            type_name: col.data_type.to_string(),
        });
    }
    for &k in table.key_indices() {
        let name = &table.columns()[k].name;
        if !out.iter().any(|t| t.field.name() == name) {
            return Err(format!("the file has no column for key column \"{name}\""));
        }
    }
    Ok(out)
}

/// Casts `array` to `to`; a timestamp with a zone keeps its instant (the zone is a label).
fn cast(array: &ArrayRef, to: &ArrowType) -> Result<ArrayRef, String> {
    let safe = CastOptions {
        safe: true,
        ..Default::default()
    };
    if let (ArrowType::Timestamp(_, Some(tz)), ArrowType::Timestamp(unit, None)) =
        (array.data_type(), to)
    {
        let zoned = ArrowType::Timestamp(*unit, Some(tz.clone()));
        let out = cast_with_options(array, &zoned, &safe).map_err(|e| e.to_string())?;
        let data = out.to_data().into_builder().data_type(to.clone());
        return Ok(arrow::array::make_array(
            data.build().map_err(|e| e.to_string())?,
        ));
    }
    cast_with_options(array, to, &safe).map_err(|e| e.to_string())
}

/// Converts one batch of the file to the table's types. Rows with a value that does not
/// convert (or a NULL where one is refused) are reported and left out; returns the batch and
/// the source line of each kept row when some were left out.
fn convert(
    batch: &RecordBatch,
    targets: &[Target],
    schema: &SchemaRef,
    first_line: u64,
    report: &Report,
) -> Result<(RecordBatch, Option<Vec<u64>>), String> {
    let n = batch.num_rows();
    let mut keep = vec![true; n];
    let mut columns = Vec::with_capacity(targets.len());
    let fmt = FormatOptions::default();
    for t in targets {
        let src = batch.column(t.source);
        let out = cast(src, t.field.data_type())
            .map_err(|e| format!("column \"{}\": {e}", t.field.name()))?;
        if out.null_count() > src.null_count() || (t.required && out.null_count() > 0) {
            let show = ArrayFormatter::try_new(src.as_ref(), &fmt).ok();
            for (r, kept) in keep.iter_mut().enumerate() {
                if *kept && out.is_null(r) {
                    if src.is_valid(r) {
                        let v = show
                            .as_ref()
                            .map(|s| s.value(r).to_string())
                            .unwrap_or_default();
                        report.bad_row(
                            first_line + r as u64,
                            &format!(
                                "column \"{}\": '{v}' is not a valid {}",
                                t.field.name(),
                                t.type_name
                            ),
                        );
                        *kept = false;
                    } else if t.required {
                        report.bad_row(
                            first_line + r as u64,
                            &format!("column \"{}\" is empty but may not be NULL", t.field.name()),
                        );
                        *kept = false;
                    }
                }
            }
        }
        columns.push(out);
    }
    let converted = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    if keep.iter().all(|k| *k) {
        return Ok((converted, None));
    }
    let lines = (0..n)
        .filter(|&r| keep[r])
        .map(|r| first_line + r as u64)
        .collect();
    let kept =
        filter_record_batch(&converted, &BooleanArray::from(keep)).map_err(|e| e.to_string())?;
    Ok((kept, Some(lines)))
}

/// Counts the bytes read, for the progress bar of a CSV file.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send>;

/// The file's batches as read (CSV: every column as text, converted afterwards so a bad value
/// costs one row, not the batch), with the number of the first line of data.
fn read_file(
    path: &Path,
    format: FileFormat,
    file_schema: &ArrowSchema,
    delimiter: u8,
    batch_rows: usize,
    bytes_read: Arc<AtomicU64>,
) -> Result<(Batches, u64), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match format {
        FileFormat::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(batch_rows).build())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((Box::new(reader.map(|b| b.map_err(|e| e.to_string()))), 1))
        }
        FileFormat::Csv => {
            let text = ArrowSchema::new(
                file_schema
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), ArrowType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            let reader = arrow::csv::ReaderBuilder::new(Arc::new(text))
                .with_header(true)
                .with_delimiter(delimiter)
                .with_batch_size(batch_rows)
                .build(Counting {
                    inner: BufReader::with_capacity(1 << 20, file),
                    read: bytes_read,
                })
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // Line 1 is the header.
            Ok((Box::new(reader.map(|b| b.map_err(|e| e.to_string()))), 2))
        }
    }
}

async fn load(args: LoadArgs) -> Result<bool, String> {
    let format = format_of(&args)?;
    let delimiter = u8::try_from(args.delimiter)
        .map_err(|_| "the delimiter must be a single-byte character".to_string())?;
    let client = Client::connect(&url(&args.grpc_addr))
        .await
        .map_err(|e| format!("{e} (is `nyala serve` running?)"))?;
    let (file_schema, total_rows) = file_schema(&args.file, format, delimiter)?;
    let table = match client.table(&args.table).await {
        Ok(t) => t,
        Err(ClientError::Status(s)) if s.code() == tonic_code_not_found() => {
            if !args.create {
                return Err(format!(
                    "table {} does not exist (add --create, and --key for its primary key)",
                    args.table
                ));
            }
            create_table(&client, &args.table, &file_schema, &args.key).await?
        }
        Err(e) => return Err(e.to_string()),
    };
    let targets = targets(&file_schema, table.schema())?;
    let send_schema: SchemaRef = Arc::new(ArrowSchema::new(
        targets.iter().map(|t| t.field.clone()).collect::<Vec<_>>(),
    ));

    let file_bytes = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        match total_rows {
            Some(rows) => ProgressBar::new(rows).with_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows, {per_sec}, ETA {eta}",
                )
                .expect("a valid template"),
            ),
            None => ProgressBar::new(file_bytes).with_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg}, ETA {eta}",
                )
                .expect("a valid template"),
            ),
        }
    };
    let report = Arc::new(Report {
        bar: bar.clone(),
        bad: AtomicU64::new(0),
        unit: if format == FileFormat::Csv {
            "line"
        } else {
            "row"
        },
    });
    let bytes_read = Arc::new(AtomicU64::new(0));
    let (batches, first_line) = read_file(
        &args.file,
        format,
        &file_schema,
        delimiter,
        args.batch_rows.max(1),
        bytes_read.clone(),
    )?;

    // Reader thread -> bounded channel -> the WriteStream call.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(4);
    let lines = Arc::new(Mutex::new(LineMap::default()));
    let started = Instant::now();
    let reader = {
        let lines = lines.clone();
        let report = report.clone();
        let bar = bar.clone();
        std::thread::spawn(move || -> Result<u64, String> {
            let mut line = first_line;
            let mut sent = 0u64;
            let mut read = 0u64;
            for batch in batches {
                let batch = batch?;
                let n = batch.num_rows() as u64;
                let (out, kept_lines) = convert(&batch, &targets, &send_schema, line, &report)?;
                lines.lock().expect("not poisoned").batches.push((
                    sent,
                    match kept_lines {
                        None => Lines::Contiguous(line),
                        Some(v) => Lines::Listed(v),
                    },
                ));
                line += n;
                read += n;
                sent += out.num_rows() as u64;
                // Messages stay well under the server's size limit, whatever the row width.
                let pieces = out.get_array_memory_size().div_ceil(MAX_SEND_BYTES).max(1);
                let step = out.num_rows().div_ceil(pieces).max(1);
                let mut offset = 0;
                let mut gone = false;
                while offset < out.num_rows() {
                    let len = step.min(out.num_rows() - offset);
                    if tx.blocking_send(out.slice(offset, len)).is_err() {
                        // The call ended early (the server refused the stream): it says why.
                        gone = true;
                        break;
                    }
                    offset += len;
                }
                if gone {
                    break;
                }
                if total_rows.is_some() {
                    bar.set_position(read);
                } else {
                    bar.set_position(bytes_read.load(Ordering::Relaxed));
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{read} rows, {:.0} rows/s", read as f64 / secs));
                }
            }
            Ok(read)
        })
    };
    let op = if args.upsert { Op::Upsert } else { Op::Insert };
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let result = table.write_stream(op, stream).await;
    let read = reader
        .join()
        .map_err(|_| "the file reader failed".to_string())?;
    bar.finish_and_clear();
    let read = read?;
    let result = result.map_err(|e| format!("the server refused the load: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let lines = lines.lock().expect("not poisoned");
    for (row, _, message) in result.errors.iter().take(MAX_REPORTED) {
        match lines.line_of(*row) {
            Some(l) => eprintln!("{} {l}: {message}", report.unit),
            None => eprintln!("{message}"),
        }
    }
    if result.failed as usize > MAX_REPORTED {
        eprintln!(
            "({} more refused rows)",
            result.failed as usize - MAX_REPORTED
        );
    }
    let bad = report.bad.load(Ordering::Relaxed);
    println!(
        "loaded {} rows into {} in {secs:.2} s ({:.0} rows/s); {} rows read, {} bad, {} refused by the server{}",
        result.applied,
        table.name(),
        result.applied as f64 / secs.max(1e-9),
        read,
        bad,
        result.failed,
        if result.ignored > 0 {
            format!(", {} ignored", result.ignored)
        } else {
            String::new()
        }
    );
    Ok(bad == 0 && result.failed == 0)
}

fn tonic_code_not_found() -> nyala_client::Code {
    nyala_client::Code::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_rows_map_back_to_their_lines() {
        let map = LineMap {
            batches: vec![
                (0, Lines::Contiguous(2)),
                (3, Lines::Listed(vec![5, 7, 8])),
                (6, Lines::Contiguous(9)),
            ],
        };
        assert_eq!(map.line_of(0), Some(2));
        assert_eq!(map.line_of(2), Some(4));
        assert_eq!(map.line_of(4), Some(7));
        assert_eq!(map.line_of(6), Some(9));
        assert_eq!(map.line_of(10), Some(13));
    }
}

//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT`, in PostgreSQL's text and CSV formats.
//!
//! COPY FROM streams: each `CopyData` message is cut at the last complete row, the rows are
//! parsed into text columns and sent (a bounded channel: a fast client waits for the engine)
//! to an insert running in its own task, which reads each value as its column's type. The
//! insert is all or nothing; it commits only when the client says `CopyDone` (a `CopyFail`
//! or a client that goes away ends the stream with an error, and the rows written so far are
//! removed).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use arrow_pg::encoder::encode_value;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::stream;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions};
use pgwire::error::PgWireResult;
use tokio::sync::mpsc;

use nyala_sql::SqlError;

/// Rows per chunk sent to the insert.
const CHUNK_ROWS: usize = 8192;

/// A COPY statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CopySpec {
    /// The table (COPY FROM, COPY t TO).
    pub table: String,
    /// Its columns as listed (empty: all).
    pub columns: Vec<String>,
    /// `COPY (query) TO STDOUT`.
    pub query: Option<String>,
    /// TO STDOUT (else FROM STDIN).
    pub to: bool,
    pub format: CopyFormat,
}

/// The data format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CopyFormat {
    /// Tab-separated (by default), `\N` for NULL, backslash escapes.
    Text { delimiter: char, null: String },
    /// RFC 4180 with PostgreSQL's NULL (an unquoted empty field, by default).
    Csv {
        delimiter: char,
        quote: char,
        escape: char,
        null: String,
        header: bool,
    },
}

/// Parses a COPY statement; `Err` says why it is not one Nyala runs.
pub(crate) fn parse(sql: &str) -> Result<CopySpec, String> {
    let statement = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| e.to_string())?;
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Err("not a COPY statement".into());
    };
    match (&target, to) {
        (CopyTarget::Stdin, false) | (CopyTarget::Stdout, true) => {}
        _ => {
            return Err(
                "COPY reads from STDIN and writes to STDOUT only (files are the client's: \
                 psql's \\copy)"
                    .into(),
            )
        }
    }
    let (table, columns, query) = match source {
        CopySource::Table {
            table_name,
            columns,
        } => (
            table_name.to_string(),
            columns
                .iter()
                .map(|c| normalize(&c.value, c.quote_style))
                .collect(),
            None,
        ),
        CopySource::Query(q) if to => (String::new(), vec![], Some(q.to_string())),
        CopySource::Query(_) => return Err("COPY (query) FROM is not valid".into()),
    };
    let mut csv = false;
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = '"';
    let mut escape = None;
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                other => return Err(format!("COPY format \"{other}\" is not supported")),
            },
            CopyOption::Delimiter(c) => delimiter = Some(c),
            CopyOption::Null(n) => null = Some(n),
            CopyOption::Header(h) => header = h,
            CopyOption::Quote(c) => quote = c,
            CopyOption::Escape(c) => escape = Some(c),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => return Err(format!("COPY option {other} is not supported")),
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Csv(opts) => {
                csv = true;
                for o in opts {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = c,
                        CopyLegacyCsvOption::Escape(c) => escape = Some(c),
                        other => return Err(format!("COPY option {other} is not supported")),
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(c),
            CopyLegacyOption::Null(n) => null = Some(n),
            CopyLegacyOption::Header => header = true,
            other => return Err(format!("COPY option {other} is not supported")),
        }
    }
    let format = if csv {
        CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(','),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
        }
    } else {
        if header {
            return Err("COPY HEADER is available only in CSV mode".into());
        }
        CopyFormat::Text {
            delimiter: delimiter.unwrap_or('\t'),
            null: null.unwrap_or_else(|| "\\N".into()),
        }
    };
    Ok(CopySpec {
        table,
        columns,
        query,
        to,
        format,
    })
}

/// An identifier as SQL resolves it (unquoted: lower case).
fn normalize(value: &str, quote: Option<char>) -> String {
    match quote {
        Some(_) => value.to_string(),
        None => value.to_ascii_lowercase(),
    }
}

/// What the insert task receives.
pub(crate) enum Chunk {
    /// One text array per column.
    Rows(Vec<ArrayRef>),
    /// The client finished (`CopyDone`): the insert may commit.
    Done,
}

/// A COPY FROM in progress on a connection.
pub(crate) struct CopyIn {
    format: CopyFormat,
    columns: usize,
    /// Bytes received after the last complete row.
    pending: Vec<u8>,
    /// CSV: the header line is still to be skipped.
    skip_header: bool,
    /// Text: the end marker `\.` was seen; later data is ignored.
    ended: bool,
    /// Parsed rows not yet sent.
    rows: Vec<Vec<Option<String>>>,
    /// The first error (bad data, or the insert stopped): later data is ignored and the error
    /// is the answer to `CopyDone`, as in PostgreSQL.
    pub failed: Option<SqlError>,
    pub tx: mpsc::Sender<Chunk>,
    pub task: tokio::task::JoinHandle<Result<u64, SqlError>>,
}

/// The stream the insert reads: chunks until `Done`; a channel closed before `Done` (the
/// client failed the COPY or went away) is an error, so nothing commits.
pub(crate) fn chunks(
    rx: mpsc::Receiver<Chunk>,
) -> impl futures::Stream<Item = Result<Vec<ArrayRef>, SqlError>> + Send + 'static {
    stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Chunk::Rows(r)) => Some((Ok(r), Some(rx))),
            Some(Chunk::Done) => None,
            None => Some((
                Err(SqlError::InvalidText(
                    "COPY did not finish: the client failed it or went away".into(),
                )),
                None,
            )),
        }
    })
}

impl CopyIn {
    pub fn new(
        format: CopyFormat,
        columns: usize,
        tx: mpsc::Sender<Chunk>,
        task: tokio::task::JoinHandle<Result<u64, SqlError>>,
    ) -> CopyIn {
        let skip_header = matches!(format, CopyFormat::Csv { header: true, .. });
        CopyIn {
            format,
            columns,
            pending: Vec::new(),
            skip_header,
            ended: false,
            rows: Vec::new(),
            failed: None,
            tx,
            task,
        }
    }

    /// Takes a `CopyData` payload; returns the chunks of rows ready to send.
    pub fn data(&mut self, data: &[u8]) -> Result<Vec<Chunk>, SqlError> {
        if self.ended {
            return Ok(vec![]);
        }
        self.pending.extend_from_slice(data);
        let end = match &self.format {
            CopyFormat::Text { .. } => self.pending.iter().rposition(|&b| b == b'\n'),
            CopyFormat::Csv { quote, .. } => last_record_end(&self.pending, *quote as u8),
        };
        let Some(end) = end else { return Ok(vec![]) };
        let complete: Vec<u8> = self.pending.drain(..=end).collect();
        self.parse(&complete)?;
        Ok(self.ready(false))
    }

    /// The client is done: the rest of the rows.
    pub fn finish(&mut self) -> Result<Vec<Chunk>, SqlError> {
        if !self.ended && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.parse(&rest)?;
        }
        Ok(self.ready(true))
    }

    fn ready(&mut self, all: bool) -> Vec<Chunk> {
        let mut out = Vec::new();
        while self.rows.len() >= CHUNK_ROWS || (all && !self.rows.is_empty()) {
            let n = self.rows.len().min(CHUNK_ROWS);
            let rows: Vec<_> = self.rows.drain(..n).collect();
            let columns = (0..self.columns)
                .map(|i| {
                    Arc::new(StringArray::from_iter(rows.iter().map(|r| r[i].as_deref())))
                        as ArrayRef
                })
                .collect();
            out.push(Chunk::Rows(columns));
        }
        out
    }

    fn parse(&mut self, bytes: &[u8]) -> Result<(), SqlError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| SqlError::InvalidText(format!("COPY data is not UTF-8: {e}")))?;
        match self.format.clone() {
            CopyFormat::Text { delimiter, null } => {
                for line in text.split('\n') {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if line == "\\." {
                        self.ended = true;
                        break;
                    }
                    if line.is_empty() && self.columns != 1 {
                        continue;
                    }
                    let row = text_fields(line, delimiter, &null)?;
                    self.push(row)?;
                }
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                for row in csv_records(text, delimiter, quote, escape, &null)? {
                    if std::mem::take(&mut self.skip_header) {
                        continue;
                    }
                    if row.len() == 1 && row[0].as_deref() == Some("\\.") {
                        self.ended = true;
                        break;
                    }
                    self.push(row)?;
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, row: Vec<Option<String>>) -> Result<(), SqlError> {
        if row.len() != self.columns {
            return Err(SqlError::InvalidText(format!(
                "COPY row {} has {} values for {} columns",
                self.rows.len() + 1,
                row.len(),
                self.columns
            )));
        }
        self.rows.push(row);
        Ok(())
    }
}

/// The end of the last complete CSV record (a newline outside quotes).
fn last_record_end(bytes: &[u8], quote: u8) -> Option<usize> {
    let mut in_quotes = false;
    let mut last = None;
    for (i, &b) in bytes.iter().enumerate() {
        if b == quote {
            in_quotes = !in_quotes;
        } else if b == b'\n' && !in_quotes {
            last = Some(i);
        }
    }
    last
}

/// One line of the text format.
fn text_fields(line: &str, delimiter: char, null: &str) -> Result<Vec<Option<String>>, SqlError> {
    let mut out = Vec::new();
    for raw in line.split(delimiter) {
        if raw == null {
            out.push(None);
            continue;
        }
        let mut value = String::with_capacity(raw.len());
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some('b') => value.push('\u{8}'),
                Some('f') => value.push('\u{c}'),
                Some('n') => value.push('\n'),
                Some('r') => value.push('\r'),
                Some('t') => value.push('\t'),
                Some('v') => value.push('\u{b}'),
                Some(d @ '0'..='7') => {
                    let mut n = d.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match chars.peek().and_then(|c| c.to_digit(8)) {
                            Some(x) => {
                                n = n * 8 + x;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    value.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                }
                Some('x') => {
                    let mut n = 0;
                    for _ in 0..2 {
                        match chars.peek().and_then(|c| c.to_digit(16)) {
                            Some(x) => {
                                n = n * 16 + x;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    value.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                }
                Some(other) => value.push(other),
                None => {
                    return Err(SqlError::InvalidText(
                        "COPY text ends in a lone backslash".into(),
                    ))
                }
            }
        }
        out.push(Some(value));
    }
    Ok(out)
}

/// CSV records; an unquoted field equal to `null` is NULL, a quoted one never is.
fn csv_records(
    text: &str,
    delimiter: char,
    quote: char,
    escape: char,
    null: &str,
) -> Result<Vec<Vec<Option<String>>>, SqlError> {
    let mut records = Vec::new();
    let mut row: Vec<Option<String>> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut any = false;
    let mut chars = text.chars().peekable();
    let end_field = |row: &mut Vec<Option<String>>, field: &mut String, quoted: &mut bool| {
        let f = std::mem::take(field);
        row.push(if !*quoted && f == null { None } else { Some(f) });
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            if c == escape
                && escape != quote
                && matches!(chars.peek(), Some(&n) if n == quote || n == escape)
            {
                field.extend(chars.next());
            } else if c == quote {
                if escape == quote && chars.peek() == Some(&quote) {
                    // A doubled quote inside quotes is one quote.
                    chars.next();
                    field.push(quote);
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else if c == quote {
            in_quotes = true;
            quoted = true;
        } else if c == delimiter {
            end_field(&mut row, &mut field, &mut quoted);
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            end_field(&mut row, &mut field, &mut quoted);
            let r = std::mem::take(&mut row);
            if !(r.len() == 1 && r[0].is_none() && null.is_empty()) {
                records.push(r);
            }
            any = false;
        } else {
            field.push(c);
        }
    }
    if in_quotes {
        return Err(SqlError::InvalidText(
            "unterminated CSV quoted field".into(),
        ));
    }
    if any {
        end_field(&mut row, &mut field, &mut quoted);
        records.push(row);
    }
    Ok(records)
}

/// Encodes query results as COPY TO data.
pub(crate) fn copy_out(
    batches: Vec<RecordBatch>,
    format: &CopyFormat,
) -> PgWireResult<CopyResponse> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &schema,
        &Format::UnifiedText,
        None,
    )?);
    let columns = fields.len();
    let mut encoder = match format {
        CopyFormat::Text { delimiter, null } => CopyEncoder::new_text(
            fields.clone(),
            CopyTextOptions {
                delimiter: delimiter.to_string().into(),
                null_string: null.as_str().into(),
            },
        ),
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            ..
        } => CopyEncoder::new_csv(
            fields.clone(),
            CopyCsvOptions {
                delimiter: delimiter.to_string().into(),
                quote: quote.to_string().into(),
                escape: escape.to_string().into(),
                null_string: null.as_str().into(),
                ..Default::default()
            },
        ),
    };
    let mut header = match format {
        CopyFormat::Csv {
            header: true,
            delimiter,
            ..
        } => Some(
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(&delimiter.to_string())
                + "\n",
        ),
        _ => None,
    };
    let mut out = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            for (i, field) in schema.fields().iter().enumerate() {
                encode_value(&mut encoder, batch.column(i), row, field, &fields[i])?;
            }
            let mut data = arrow_pg::encoder::Encoder::take_row(&mut encoder);
            // The header travels with the first row, so the row count stays right.
            if let Some(h) = header.take() {
                let mut bytes = h.into_bytes();
                bytes.extend_from_slice(&data.data);
                data.data = bytes.into();
            }
            out.push(Ok(data));
        }
    }
    if let Some(h) = header.take() {
        out.push(Ok(pgwire::messages::copy::CopyData::new(
            h.into_bytes().into(),
        )));
    }
    Ok(CopyResponse::new(0, columns, stream::iter(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_copy_statements() {
        let s =
            parse("COPY traffic (uid, Lane) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap();
        assert_eq!(s.table, "traffic");
        assert_eq!(s.columns, ["uid", "lane"]);
        assert!(!s.to);
        assert!(matches!(
            s.format,
            CopyFormat::Csv {
                header: true,
                delimiter: ',',
                ..
            }
        ));
        let s = parse("COPY t TO STDOUT").unwrap();
        assert!(
            s.to && matches!(
                s.format,
                CopyFormat::Text {
                    delimiter: '\t',
                    ..
                }
            )
        );
        let s = parse("COPY (SELECT 1) TO STDOUT WITH CSV HEADER").unwrap();
        assert!(s.query.is_some());
        assert!(parse("COPY t FROM '/etc/passwd'").is_err());
    }

    #[test]
    fn reads_text_and_csv_rows() {
        assert_eq!(
            text_fields("1\t\\N\ta\\tb\\\\c\\101", '\t', "\\N").unwrap(),
            vec![Some("1".into()), None, Some("a\tb\\cA".into())]
        );
        assert_eq!(
            csv_records("1,,\"\",\"a,\"\"b\"\"\nc\"\n2,x,y,z\n", ',', '"', '"', "").unwrap(),
            vec![
                vec![
                    Some("1".into()),
                    None,
                    Some("".into()),
                    Some("a,\"b\"\nc".into())
                ],
                vec![
                    Some("2".into()),
                    Some("x".into()),
                    Some("y".into()),
                    Some("z".into())
                ],
            ]
        );
        assert_eq!(last_record_end(b"1,\"a\nb\"\n2,\"c\n", b'"'), Some(7));
    }
}

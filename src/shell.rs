//! `nyala sql`: statements from `-c`, standard input or an interactive prompt.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Instant;

use nyala_client::Client;

use crate::{url, SqlArgs};

/// Where statements come from: a line editor on a terminal, plain lines otherwise.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Lines(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Input {
    /// The next line (`None` at the end of input). Ctrl-C at the prompt gives an empty line
    /// and drops the statement being typed.
    fn next_line(&mut self, prompt: &str, pending: &mut String) -> Option<String> {
        match self {
            Input::Editor(rl) => match tokio::task::block_in_place(|| rl.readline(prompt)) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = rl.add_history_entry(line.as_str());
                    }
                    Some(line)
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    pending.clear();
                    Some(String::new())
                }
                Err(_) => None,
            },
            Input::Lines(lines) => lines.next().and_then(Result::ok),
        }
    }
}

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".nyala_history"))
}

const HELP: &str = "Statements end with ';' and may span lines. Commands:
  \\d            list tables
  \\d TABLE      describe a table: columns, key, partitioning, tablets
  \\timing       toggle printing each statement's time
  \\q            quit (or Ctrl-D)
  \\?            this help";

pub async fn run_sql(args: SqlArgs) -> ExitCode {
    let address = url(&args.grpc_addr);
    let client = match Client::connect(&address).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nyala sql: {e} (is `nyala serve` running?)");
            return ExitCode::FAILURE;
        }
    };
    let mut timing = args.timing;
    if let Some(statement) = args.command {
        let ok = match statement.trim().strip_prefix('\\') {
            Some(cmd) => meta_command(&client, cmd, &mut timing).await != Meta::Failed,
            None => run_one(&client, &statement, timing).await,
        };
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // Statements from standard input, each ended by `;` (or the end of input).
    let interactive = std::io::stdin().is_terminal();
    let mut input = match interactive
        .then(rustyline::DefaultEditor::new)
        .and_then(Result::ok)
    {
        Some(mut rl) => {
            if let Some(h) = history_path() {
                let _ = rl.load_history(&h);
            }
            println!("nyala sql: connected to {address}. \\? for help, \\q to quit.");
            Input::Editor(Box::new(rl))
        }
        None => Input::Lines(std::io::stdin().lock().lines()),
    };
    let mut pending = String::new();
    let mut ok = true;
    loop {
        let prompt = if pending.trim().is_empty() {
            "nyala> "
        } else {
            "   ... "
        };
        let Some(line) = input.next_line(prompt, &mut pending) else {
            break;
        };
        if pending.trim().is_empty() {
            if let Some(cmd) = line.trim().strip_prefix('\\') {
                match meta_command(&client, cmd, &mut timing).await {
                    Meta::Quit => break,
                    Meta::Failed => ok = false,
                    Meta::Done => {}
                }
                continue;
            }
        }
        pending.push_str(&line);
        pending.push('\n');
        while let Some(end) = statement_end(&pending) {
            let statement: String = pending.drain(..=end).collect();
            let statement = statement.trim().trim_end_matches(';').trim();
            if !only_comments(statement) {
                ok &= run_one(&client, statement, timing).await;
            }
        }
    }
    let rest = pending.trim();
    if !only_comments(rest) {
        ok &= run_one(&client, rest, timing).await;
    }
    if let (Input::Editor(rl), Some(h)) = (&mut input, history_path()) {
        let _ = rl.save_history(&h);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a backslash command did.
#[derive(PartialEq, Eq)]
enum Meta {
    Done,
    Failed,
    Quit,
}

/// Runs a backslash command (`cmd` without its backslash).
async fn meta_command(client: &Client, cmd: &str, timing: &mut bool) -> Meta {
    let mut words = cmd.split_whitespace();
    match (words.next().unwrap_or(""), words.next()) {
        ("q" | "quit", _) => Meta::Quit,
        ("?" | "h" | "help", _) => {
            println!("{HELP}");
            Meta::Done
        }
        ("timing", _) => {
            *timing = !*timing;
            println!("Timing is {}.", if *timing { "on" } else { "off" });
            Meta::Done
        }
        ("d" | "dt", None) => match client.list_tables(None).await {
            Ok(tables) => {
                let rows: Vec<Vec<String>> = tables.into_iter().map(|(s, t)| vec![s, t]).collect();
                print_strings(&["schema", "table"], &rows);
                Meta::Done
            }
            Err(e) => {
                eprintln!("ERROR: {e}");
                Meta::Failed
            }
        },
        ("d" | "dt", Some(name)) => match client.table(name.trim_end_matches(';')).await {
            Ok(t) => {
                describe(&t);
                Meta::Done
            }
            Err(e) => {
                eprintln!("ERROR: {e}");
                Meta::Failed
            }
        },
        (other, _) => {
            eprintln!("unknown command \\{other}; \\? lists the commands");
            Meta::Failed
        }
    }
}

/// Prints a table's columns, key, partitioning and tablets.
fn describe(t: &nyala_client::Table) {
    let schema = t.schema();
    let rows: Vec<Vec<String>> = schema
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                c.name.clone(),
                c.data_type.to_string(),
                if c.nullable { "" } else { "not null" }.to_string(),
                c.default
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                if schema.is_key(i) { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    println!("Table {}", t.name());
    print_strings(&["column", "type", "nullable", "default", "key"], &rows);
    let d = t.definition();
    if let Some(p) = &d.partitioning {
        if !p.hash_columns.is_empty() {
            println!(
                "Partitioned by HASH ({}) PARTITIONS {}",
                p.hash_columns.join(", "),
                p.hash_buckets
            );
        }
        if !p.range_column.is_empty() {
            println!(
                "Range partitioned on {} ({} partitions)",
                p.range_column,
                p.ranges.len()
            );
        }
    }
    let rows: u64 = d.tablets.iter().map(|t| t.estimated_rows).sum();
    println!("{} tablets, ~{rows} rows", d.tablets.len());
}

/// Prints rows of text as an aligned table.
fn print_strings(header: &[&str], rows: &[Vec<String>]) {
    use arrow::array::{ArrayRef, StringArray};
    let columns: Vec<ArrayRef> = (0..header.len())
        .map(|c| {
            std::sync::Arc::new(StringArray::from(
                rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch =
        arrow::array::RecordBatch::try_from_iter(header.iter().map(|h| h.to_string()).zip(columns));
    match batch.and_then(|b| arrow::util::pretty::pretty_format_batches(&[b])) {
        Ok(t) if !rows.is_empty() => println!("{t}"),
        _ => println!("{}\n(0 rows)", header.join(" | ")),
    }
}

/// Whether `text` holds nothing but whitespace and `--` comments.
fn only_comments(text: &str) -> bool {
    text.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
}

/// The byte index of the first `;` outside quotes and comments, if any.
fn statement_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut quote) = (0, None::<u8>);
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b[i]),
            (None, b'-') if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (None, b';') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Runs one statement and prints its result (or error); false if it failed.
async fn run_one(client: &Client, statement: &str, timing: bool) -> bool {
    let started = Instant::now();
    match client.sql(statement).await {
        Ok(result) => {
            if result.schema.fields().is_empty() {
                println!("OK");
            } else {
                match arrow::util::pretty::pretty_format_batches_with_options(
                    &result.batches,
                    &display_options(),
                ) {
                    Ok(table) if result.num_rows() > 0 => println!("{table}"),
                    _ => {
                        let names: Vec<&str> = result
                            .schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect();
                        println!("{}\n(0 rows)", names.join(" | "));
                    }
                }
            }
            if timing {
                println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3);
            }
            true
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            false
        }
    }
}

/// How result values print: times as PostgreSQL (and psql) show them, `2024-05-01 10:00:00`
/// with a fraction only when there is one, instead of Arrow's ISO `2024-05-01T10:00:00`.
fn display_options() -> arrow::util::display::FormatOptions<'static> {
    arrow::util::display::FormatOptions::default()
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"))
        .with_datetime_format(Some("%Y-%m-%d %H:%M:%S%.f"))
}

#[cfg(test)]
mod tests {
    use super::statement_end;

    #[test]
    fn statements_end_at_semicolons_outside_quotes() {
        assert_eq!(statement_end("SELECT 1; SELECT 2;"), Some(8));
        assert_eq!(statement_end("SELECT ';' ;"), Some(11));
        assert_eq!(statement_end("SELECT 1 -- ; not here\n;"), Some(23));
        assert_eq!(statement_end("SELECT 1"), None);
        assert!(super::only_comments("-- done\n  \n"));
        assert!(!super::only_comments("-- a\nSELECT 1"));
    }
}

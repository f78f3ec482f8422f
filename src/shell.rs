//! `nyala sql`: statements from `-c`, standard input or an interactive prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use nyala_client::Client;

use crate::{url, SqlArgs};

pub async fn run_sql(args: SqlArgs) -> ExitCode {
    let address = url(&args.grpc_addr);
    let mut client = match Client::connect(&address).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nyala sql: {e} (is `nyala serve` running?)");
            return ExitCode::FAILURE;
        }
    };
    if let Some(statement) = args.command {
        return if run_one(&mut client, &statement, args.timing).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // Statements from standard input, each ended by `;` (or the end of input).
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut pending = String::new();
    let mut ok = true;
    let prompt = |pending: &str| {
        if interactive {
            print!(
                "{}",
                if pending.is_empty() {
                    "nyala> "
                } else {
                    "   ... "
                }
            );
            let _ = std::io::stdout().flush();
        }
    };
    prompt(&pending);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        pending.push_str(&line);
        pending.push('\n');
        while let Some(end) = statement_end(&pending) {
            let statement: String = pending.drain(..=end).collect();
            let statement = statement.trim().trim_end_matches(';').trim();
            if !only_comments(statement) {
                ok &= run_one(&mut client, statement, args.timing).await;
            }
        }
        prompt(pending.trim());
    }
    let rest = pending.trim();
    if !only_comments(rest) {
        ok &= run_one(&mut client, rest, args.timing).await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
async fn run_one(client: &mut Client, statement: &str, timing: bool) -> bool {
    let started = Instant::now();
    match client.sql(statement).await {
        Ok(result) => {
            if result.schema.fields().is_empty() {
                println!("OK");
            } else {
                match arrow::util::pretty::pretty_format_batches(&result.batches) {
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

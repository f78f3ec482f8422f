//! `nyala.toml`: settings for every command, below flags and environment variables.
//!
//! The file is read after the command line, and each setting it holds for the chosen command
//! is added as a flag unless the command line or the environment gave that flag already. So
//! the precedence is: flag, environment variable, file, built-in default; and the file is
//! checked by the same parser as the flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, Parser};

use crate::Cli;

/// Where the settings file is looked for when `--config` is not given.
const DEFAULT_FILE: &str = "nyala.toml";

/// The command line, completed from the settings file.
pub(crate) fn parse() -> Result<Cli, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    // A first pass that tolerates missing flags: the file may supply required ones. Help,
    // version and real errors are reported by the normal parse.
    let matches = match Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
    {
        Ok(m) if m.subcommand().is_some() => m,
        _ => Cli::command().get_matches_from(&args),
    };
    // `--config` is global: it may have been given before or after the command.
    let config_of =
        |m: &clap::ArgMatches| m.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    let explicit =
        config_of(&matches).or_else(|| matches.subcommand().and_then(|(_, m)| config_of(m)));
    let path = match &explicit {
        Some(p) => p.clone(),
        None if Path::new(DEFAULT_FILE).exists() => PathBuf::from(DEFAULT_FILE),
        None => return Ok(Cli::parse_from(args)),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let extra = settings(&text, &matches).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut all = args;
    all.extend(extra.into_iter().map(OsString::from));
    Cli::try_parse_from(all).map_err(|e| format!("{} (with settings from {})", e, path.display()))
}

fn value_text(key: &str, v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => {
            return Err(format!(
                "{key}: expected a string, number or boolean, got {other}"
            ))
        }
    })
}

/// The flags the file adds for the command `matches` chose.
fn settings(text: &str, matches: &clap::ArgMatches) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let (sub, sub_matches) = matches
        .subcommand()
        .ok_or_else(|| "no command given".to_string())?;
    let root = Cli::command();
    let commands: Vec<String> = root
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let known = |name: &str| {
        root.get_subcommands().any(|c| {
            c.get_arguments()
                .any(|a| a.get_long().is_some_and(|l| l == name.replace('_', "-")))
        })
    };
    // Top-level keys first; the command's own table overrides them.
    let mut wanted: Vec<(String, toml::Value)> = Vec::new();
    for (k, v) in &table {
        if let toml::Value::Table(section) = v {
            if !commands.contains(k) {
                return Err(format!(
                    "unknown section [{k}] (sections: {})",
                    commands.join(", ")
                ));
            }
            if k == sub {
                for (k2, v2) in section {
                    wanted.retain(|(w, _)| w != &k2.replace('_', "-"));
                    wanted.push((k2.replace('_', "-"), v2.clone()));
                }
            } else {
                continue;
            }
        } else if !known(k) {
            return Err(format!("unknown setting {k}"));
        } else if !wanted.iter().any(|(w, _)| w == &k.replace('_', "-")) {
            wanted.push((k.replace('_', "-"), v.clone()));
        }
    }
    let command = root
        .find_subcommand(sub)
        .expect("the chosen command exists");
    let mut out = Vec::new();
    for (name, value) in wanted {
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()))
        else {
            if table
                .get(sub)
                .is_some_and(|s| s.get(&name).is_some() || s.get(name.replace('-', "_")).is_some())
            {
                return Err(format!("unknown setting {name} in [{sub}]"));
            }
            // A top-level setting of another command.
            continue;
        };
        let id = arg.get_id().as_str();
        let given = matches!(
            sub_matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let text = value_text(&name, &value)?;
        match arg.get_action() {
            ArgAction::SetTrue => {
                if text == "true" {
                    out.push(format!("--{name}"));
                } else if text != "false" {
                    return Err(format!("{name}: expected true or false"));
                }
            }
            _ => out.push(format!("--{name}={text}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(cmdline: &[&str], file: &str) -> Result<Vec<String>, String> {
        let m = Cli::command().get_matches_from(cmdline);
        settings(file, &m)
    }

    #[test]
    fn file_settings_fill_in_what_the_command_line_leaves() {
        let file = "grpc_addr = \"127.0.0.1:9000\"\nlog = \"debug\"\n[serve]\ndata-dir = \"/srv/nyala\"\n[sql]\ntiming = true\n";
        assert_eq!(
            flags(&["nyala", "serve"], file).unwrap(),
            [
                "--grpc-addr=127.0.0.1:9000",
                "--log=debug",
                "--data-dir=/srv/nyala"
            ]
        );
        // The command line wins; settings of other commands are left alone.
        assert_eq!(
            flags(&["nyala", "sql", "--grpc-addr", "h:1"], file).unwrap(),
            ["--timing"]
        );
        assert!(flags(&["nyala", "serve"], "nonsense = 1")
            .unwrap_err()
            .contains("nonsense"));
        assert!(flags(&["nyala", "serve"], "[serve]\ntiming = true")
            .unwrap_err()
            .contains("timing"));
        assert!(flags(&["nyala", "serve"], "[nope]\na = 1")
            .unwrap_err()
            .contains("[nope]"));
    }
}

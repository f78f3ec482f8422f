//! Table and namespace names, with PostgreSQL's case rules.
//!
//! Names are stored exactly as given to [`TableName::new`]. [`TableName::parse`] reads a name as
//! SQL would: unquoted identifiers fold to lower case, `"quoted"` ones keep their case (with
//! `""` for a quote), and an optional `namespace.` prefix defaults to [`DEFAULT_NAMESPACE`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// The namespace (SQL schema) tables live in unless another is named.
pub const DEFAULT_NAMESPACE: &str = "public";

/// Longest table or namespace name, in bytes (PostgreSQL allows 63).
pub const MAX_IDENT_LEN: usize = 128;

/// The full name of a table: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName {
    /// The namespace (SQL schema), e.g. `public`.
    pub namespace: String,
    /// The table's name within its namespace.
    pub name: String,
}

impl TableName {
    /// A name taken literally (no case folding), in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `table`, `namespace.table`, or their quoted forms, folding unquoted parts to lower
    /// case as PostgreSQL does.
    pub fn parse(text: &str) -> Result<Self> {
        let parts = split_identifiers(text)?;
        match parts.as_slice() {
            [name] => Ok(TableName::new(DEFAULT_NAMESPACE, name.clone())),
            [ns, name] => Ok(TableName::new(ns.clone(), name.clone())),
            _ => Err(StorageError::InvalidInput(format!(
                "invalid table name {text:?}: expected name or namespace.name"
            ))),
        }
    }

    /// Checks both parts are valid identifiers.
    pub(crate) fn validate(&self) -> Result<()> {
        validate_identifier("schema", &self.namespace)?;
        validate_identifier("table", &self.name)
    }
}

impl fmt::Display for TableName {
    /// Quoted where SQL needs it, so the output parses back to the same name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", quote(&self.namespace), quote(&self.name))
    }
}

/// An identifier as SQL writes it: bare when that reads back the same, quoted otherwise.
pub fn quote(ident: &str) -> String {
    let bare = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// Checks a table, namespace or column name: 1 to [`MAX_IDENT_LEN`] bytes, no NUL.
pub(crate) fn validate_identifier(what: &str, ident: &str) -> Result<()> {
    if ident.is_empty() || ident.len() > MAX_IDENT_LEN || ident.contains('\0') {
        return Err(StorageError::InvalidInput(format!(
            "invalid {what} name {ident:?}: names must be 1 to {MAX_IDENT_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// Splits a dotted name into identifiers, folding unquoted ones to lower case.
fn split_identifiers(text: &str) -> Result<Vec<String>> {
    let bad = |why: &str| StorageError::InvalidInput(format!("invalid name {text:?}: {why}"));
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad("unterminated quoted identifier")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c.is_whitespace() {
                    return Err(bad(
                        "unexpected character; quote names with spaces or quotes",
                    ));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(bad("empty identifier"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {}
            Some(_) => return Err(bad("expected '.' after a quoted identifier")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_unquoted_and_keeps_quoted() {
        assert_eq!(
            TableName::parse("Readings").unwrap(),
            TableName::new("public", "readings")
        );
        assert_eq!(
            TableName::parse("Traffic.\"Readings\"").unwrap(),
            TableName::new("traffic", "Readings")
        );
        assert_eq!(
            TableName::parse("\"a\"\"b.c\"").unwrap(),
            TableName::new("public", "a\"b.c")
        );
        for bad in ["", "a.", ".a", "a.b.c", "\"open", "a b", "\"x\"y"] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for n in [
            TableName::new("public", "readings"),
            TableName::new("Traffic", "a\"b"),
            TableName::new("public", "1x"),
        ] {
            assert_eq!(TableName::parse(&n.to_string()).unwrap(), n);
        }
    }
}

//! Table schemas with a primary key.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_schema::{Field, Schema as ArrowSchema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::{DataType, SchemaError};

/// Longest column name accepted, in bytes (PostgreSQL allows 63; we are a little more generous).
pub const MAX_NAME_LEN: usize = 128;

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// The column's name, unique within its table.
    pub name: String,
    /// The column's type.
    pub data_type: DataType,
    /// Whether the column may hold NULL (never true for key columns).
    pub nullable: bool,
}

impl ColumnSchema {
    /// A column that may hold NULL.
    pub fn nullable(name: impl Into<String>, data_type: DataType) -> Self {
        ColumnSchema {
            name: name.into(),
            data_type,
            nullable: true,
        }
    }

    /// A column that may not hold NULL.
    pub fn not_null(name: impl Into<String>, data_type: DataType) -> Self {
        ColumnSchema {
            name: name.into(),
            data_type,
            nullable: false,
        }
    }
}

/// The on-disk form of a schema (what [`Schema`] is built from and saved as).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDef {
    /// Columns in table order.
    pub columns: Vec<ColumnSchema>,
    /// Names of the primary key columns, in key order.
    pub primary_key: Vec<String>,
}

/// A validated table schema.
///
/// Invariants (checked by [`Schema::new`], relied on everywhere else): at least one column,
/// unique non-empty names, a non-empty primary key of distinct existing columns, and every key
/// column is `NOT NULL` and of a type that [`DataType::can_be_key`].
#[derive(Clone, Debug)]
pub struct Schema {
    def: SchemaDef,
    key: Vec<usize>,
    arrow: SchemaRef,
}

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.def == other.def
    }
}

impl Schema {
    /// Builds and validates a schema. Key columns given as nullable are an error rather than
    /// silently made `NOT NULL`, so that a client's mistake is visible.
    pub fn new(columns: Vec<ColumnSchema>, primary_key: &[&str]) -> Result<Self, SchemaError> {
        Self::from_def(SchemaDef {
            columns,
            primary_key: primary_key.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Validates a schema definition (e.g. one read back from disk).
    pub fn from_def(def: SchemaDef) -> Result<Self, SchemaError> {
        if def.columns.is_empty() {
            return Err(SchemaError::NoColumns);
        }
        let mut seen = HashSet::new();
        for c in &def.columns {
            if c.name.is_empty() || c.name.len() > MAX_NAME_LEN {
                return Err(SchemaError::InvalidColumnName(c.name.clone()));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(SchemaError::DuplicateColumn(c.name.clone()));
            }
            if let DataType::Decimal { precision, scale } = c.data_type {
                DataType::decimal(precision, scale)?;
            }
        }
        if def.primary_key.is_empty() {
            return Err(SchemaError::NoPrimaryKey);
        }
        let mut key = Vec::with_capacity(def.primary_key.len());
        for name in &def.primary_key {
            let idx = def
                .columns
                .iter()
                .position(|c| &c.name == name)
                .ok_or_else(|| SchemaError::UnknownKeyColumn(name.clone()))?;
            if key.contains(&idx) {
                return Err(SchemaError::DuplicateKeyColumn(name.clone()));
            }
            let col = &def.columns[idx];
            if col.nullable {
                return Err(SchemaError::NullableKeyColumn(name.clone()));
            }
            if !col.data_type.can_be_key() {
                return Err(SchemaError::InvalidKeyType {
                    column: name.clone(),
                    data_type: col.data_type.to_string(),
                });
            }
            key.push(idx);
        }
        let fields: Vec<Field> = def
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.to_arrow(), c.nullable))
            .collect();
        let arrow = Arc::new(ArrowSchema::new(fields));
        Ok(Schema { def, key, arrow })
    }

    /// The definition this schema was built from (serialisable).
    pub fn def(&self) -> &SchemaDef {
        &self.def
    }

    /// Columns in table order.
    pub fn columns(&self) -> &[ColumnSchema] {
        &self.def.columns
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.def.columns.len()
    }

    /// Always false: a schema has at least one column. Present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Positions of the key columns, in key order.
    pub fn key_indices(&self) -> &[usize] {
        &self.key
    }

    /// Whether column `idx` is part of the primary key.
    pub fn is_key(&self, idx: usize) -> bool {
        self.key.contains(&idx)
    }

    /// Position of the column named `name` (exact, case-sensitive match).
    pub fn index_of(&self, name: &str) -> Result<usize, SchemaError> {
        self.def
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| SchemaError::UnknownColumn(name.to_string()))
    }

    /// The Arrow schema of a full row, as scans return it.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<ColumnSchema> {
        vec![
            ColumnSchema::not_null("id", DataType::Int64),
            ColumnSchema::nullable("v", DataType::Float64),
        ]
    }

    #[test]
    fn valid_schema() {
        let s = Schema::new(cols(), &["id"]).unwrap();
        assert_eq!(s.key_indices(), &[0]);
        assert_eq!(s.index_of("v").unwrap(), 1);
        assert!(s.index_of("nope").is_err());
    }

    #[test]
    fn rejects_bad_schemas() {
        assert_eq!(Schema::new(vec![], &["id"]), Err(SchemaError::NoColumns));
        assert_eq!(Schema::new(cols(), &[]), Err(SchemaError::NoPrimaryKey));
        assert_eq!(
            Schema::new(cols(), &["x"]),
            Err(SchemaError::UnknownKeyColumn("x".into()))
        );
        assert!(matches!(
            Schema::new(cols(), &["v"]),
            Err(SchemaError::NullableKeyColumn(_))
        ));
        let mut c = cols();
        c[1].nullable = false;
        assert!(matches!(
            Schema::new(c, &["v"]),
            Err(SchemaError::InvalidKeyType { .. })
        ));
        let mut c = cols();
        c.push(ColumnSchema::nullable("id", DataType::Int8));
        assert_eq!(
            Schema::new(c, &["id"]),
            Err(SchemaError::DuplicateColumn("id".into()))
        );
        assert!(matches!(
            Schema::new(cols(), &["id", "id"]),
            Err(SchemaError::DuplicateKeyColumn(_))
        ));
    }
}

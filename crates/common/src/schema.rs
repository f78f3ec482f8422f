//! Table schemas with a primary key.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_schema::{Field, Schema as ArrowSchema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::{DataType, SchemaError, Value};

/// Longest column name accepted, in bytes (PostgreSQL allows 63; we are a little more generous).
pub const MAX_NAME_LEN: usize = 128;

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// The column's name, unique within its table.
    pub name: String,
    /// The column's type.
    pub data_type: DataType,
    /// Whether the column may hold NULL (never true for key columns).
    pub nullable: bool,
    /// Stable identity, assigned by [`Schema`]: segments name their columns by id, so a rename
    /// changes nothing on disk and a dropped column's data is never mistaken for a new one's.
    #[serde(default)]
    pub id: u32,
    /// Value of the column in rows written before it was added, and in inserted rows that
    /// leave it out (`None`: NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

impl ColumnSchema {
    /// A column that may hold NULL.
    pub fn nullable(name: impl Into<String>, data_type: DataType) -> Self {
        ColumnSchema {
            name: name.into(),
            data_type,
            nullable: true,
            id: 0,
            default: None,
        }
    }

    /// A column that may not hold NULL.
    pub fn not_null(name: impl Into<String>, data_type: DataType) -> Self {
        ColumnSchema {
            name: name.into(),
            data_type,
            nullable: false,
            id: 0,
            default: None,
        }
    }

    /// The same column with a default value.
    pub fn with_default(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }
}

/// The on-disk form of a schema (what [`Schema`] is built from and saved as).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaDef {
    /// Columns in table order.
    pub columns: Vec<ColumnSchema>,
    /// Names of the primary key columns, in key order.
    pub primary_key: Vec<String>,
    /// The id the next added column gets (ids are never reused).
    #[serde(default)]
    pub next_column_id: u32,
    /// Bumped by every change (add, drop, rename column), so holders of a schema can tell
    /// whether theirs is still current.
    #[serde(default)]
    pub version: u64,
}

/// A validated table schema.
///
/// Invariants (checked by [`Schema::new`], relied on everywhere else): at least one column,
/// unique non-empty names, a non-empty primary key of distinct existing columns, every key
/// column is `NOT NULL`, of a type that [`DataType::can_be_key`] and without a default;
/// defaults have the column's type (and are not NULL for `NOT NULL` columns); column ids
/// increase strictly in table order and stay below `next_column_id` (columns are only ever
/// appended, so table order is id order).
#[derive(Clone, Debug)]
pub struct Schema {
    def: SchemaDef,
    key: Vec<usize>,
    arrow: SchemaRef,
    /// Identifies the definition within this process (not stable across builds).
    fingerprint: u64,
}

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.def == other.def
    }
}

impl Schema {
    /// Builds and validates a schema. Key columns given as nullable are an error rather than
    /// silently made `NOT NULL`, so that a client's mistake is visible.
    /// Column ids are assigned here (0, 1, ...), whatever the given columns say.
    pub fn new(mut columns: Vec<ColumnSchema>, primary_key: &[&str]) -> Result<Self, SchemaError> {
        for (i, c) in columns.iter_mut().enumerate() {
            c.id = i as u32;
        }
        Self::from_def(SchemaDef {
            next_column_id: columns.len() as u32,
            columns,
            primary_key: primary_key.iter().map(|s| s.to_string()).collect(),
            version: 0,
        })
    }

    /// Validates a schema definition (e.g. one read back from disk).
    pub fn from_def(mut def: SchemaDef) -> Result<Self, SchemaError> {
        if def.columns.is_empty() {
            return Err(SchemaError::NoColumns);
        }
        if def.next_column_id == 0 {
            // Written before columns had ids: their positions are their ids.
            for (i, c) in def.columns.iter_mut().enumerate() {
                c.id = i as u32;
            }
            def.next_column_id = def.columns.len() as u32;
        }
        let mut last_id = None;
        for c in &def.columns {
            if last_id.is_some_and(|l| c.id <= l) || c.id >= def.next_column_id {
                return Err(SchemaError::Arrow(format!(
                    "column ids must increase in table order (column \"{}\")",
                    c.name
                )));
            }
            last_id = Some(c.id);
            if let Some(d) = &c.default {
                let finite = match d {
                    Value::Float32(f) => f.is_finite(),
                    Value::Float64(f) => f.is_finite(),
                    _ => true,
                };
                if !finite {
                    // Defaults are saved as JSON, which has no NaN or infinity.
                    return Err(SchemaError::InvalidDefault {
                        column: c.name.clone(),
                        reason: "a floating point default must be a finite number".into(),
                    });
                }
                if d.is_null() && !c.nullable {
                    return Err(SchemaError::InvalidDefault {
                        column: c.name.clone(),
                        reason: "NULL is not allowed in a NOT NULL column".into(),
                    });
                }
                Value::to_array(&c.name, c.data_type, std::slice::from_ref(d)).map_err(|e| {
                    SchemaError::InvalidDefault {
                        column: c.name.clone(),
                        reason: e.to_string(),
                    }
                })?;
            }
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
            if col.default.is_some() {
                return Err(SchemaError::InvalidDefault {
                    column: name.clone(),
                    reason: "primary key columns have no default".into(),
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
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{def:?}").hash(&mut h);
            h.finish()
        };
        Ok(Schema {
            def,
            key,
            arrow,
            fingerprint,
        })
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

    /// The schema's version: bumped by every change.
    pub fn version(&self) -> u64 {
        self.def.version
    }

    /// A hash of the whole definition, to tell two schemas apart cheaply within one process
    /// (two different schemas may share a version number after a failed change).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Position of the column with id `id`, if the schema still has it.
    pub fn index_of_id(&self, id: u32) -> Option<usize> {
        self.def.columns.binary_search_by_key(&id, |c| c.id).ok()
    }

    fn changed(&self, f: impl FnOnce(&mut SchemaDef)) -> Result<Schema, SchemaError> {
        let mut def = self.def.clone();
        f(&mut def);
        def.version += 1;
        Schema::from_def(def)
    }

    fn non_key_column(&self, name: &str, what: &str) -> Result<usize, SchemaError> {
        let idx = self.index_of(name)?;
        if self.is_key(idx) {
            return Err(SchemaError::KeyColumnChange {
                column: name.to_string(),
                change: what.to_string(),
            });
        }
        Ok(idx)
    }

    /// This schema with `column` appended (`ALTER TABLE ADD COLUMN`). A `NOT NULL` column needs
    /// a default, which rows written before the change then read as.
    pub fn add_column(&self, mut column: ColumnSchema) -> Result<Schema, SchemaError> {
        if self.index_of(&column.name).is_ok() {
            return Err(SchemaError::DuplicateColumn(column.name));
        }
        if !column.nullable && column.default.is_none() {
            return Err(SchemaError::InvalidDefault {
                column: column.name,
                reason: "a NOT NULL column added to a table needs a default".into(),
            });
        }
        column.id = self.def.next_column_id;
        self.changed(|d| {
            d.next_column_id += 1;
            d.columns.push(column);
        })
    }

    /// This schema without non-key column `name` (`ALTER TABLE DROP COLUMN`).
    pub fn drop_column(&self, name: &str) -> Result<Schema, SchemaError> {
        let idx = self.non_key_column(name, "dropped")?;
        self.changed(|d| {
            d.columns.remove(idx);
        })
    }

    /// This schema with non-key column `from` renamed to `to` (`ALTER TABLE RENAME COLUMN`).
    pub fn rename_column(&self, from: &str, to: &str) -> Result<Schema, SchemaError> {
        let idx = self.non_key_column(from, "renamed")?;
        if self.index_of(to).is_ok() {
            return Err(SchemaError::DuplicateColumn(to.to_string()));
        }
        self.changed(|d| d.columns[idx].name = to.to_string())
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

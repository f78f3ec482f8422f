//! `information_schema`: DataFusion's views (tables, schemata, settings, ...) plus Nyala's own
//! `columns` (SQL type names, 1-based positions, real nullability and defaults) and the key
//! views DataFusion lacks (`table_constraints`, `key_column_usage`), so tools that reflect a
//! table find its columns and primary key where the SQL standard puts them.
//!
//! Views are built from the live catalog each time a statement names them.

use std::sync::{Arc, Weak};

use arrow::array::{
    ArrayBuilder, ArrayRef, Int32Array, Int32Builder, RecordBatch, StringArray, StringBuilder,
};
use arrow_schema::{DataType as ArrowType, Field, Schema as ArrowSchema};
use async_trait::async_trait;
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::catalog::{CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result;

use nyala_common::DataType;
use nyala_storage::Database;

use crate::catalog::CATALOG;
use crate::types::{default_text, sql_type_name};

/// The schema name, as the SQL standard spells it.
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// The leading columns of the constraint views: which constraint, on which table.
const CONSTRAINT_OF_TABLE: [&str; 6] = [
    "constraint_catalog",
    "constraint_schema",
    "constraint_name",
    "table_catalog",
    "table_schema",
    "table_name",
];

/// The views Nyala builds itself (the rest are DataFusion's).
const OWN_VIEWS: [&str; 3] = ["columns", "key_column_usage", "table_constraints"];

/// `information_schema` of the Nyala catalog.
#[derive(Debug)]
pub(crate) struct InformationSchema {
    db: Arc<Database>,
    /// DataFusion's views, which list every catalog of the session. Weak: the session's
    /// catalog list owns this schema's catalog.
    catalogs: Weak<dyn CatalogProviderList>,
}

impl InformationSchema {
    pub(crate) fn new(db: Arc<Database>, catalogs: Weak<dyn CatalogProviderList>) -> Self {
        InformationSchema { db, catalogs }
    }

    fn datafusion_views(&self) -> Option<InformationSchemaProvider> {
        self.catalogs.upgrade().map(InformationSchemaProvider::new)
    }

    /// One row per column of every table, with SQL type names, 1-based positions and the
    /// stored nullability (the query engine is shown every column as nullable).
    fn columns(&self) -> Result<RecordBatch> {
        let mut text: Vec<StringBuilder> = (0..8).map(|_| StringBuilder::new()).collect();
        let mut ints: Vec<Int32Builder> = (0..7).map(|_| Int32Builder::new()).collect();
        for name in self.db.list_tables(None) {
            let Ok(table) = self.db.table(&name) else {
                continue;
            };
            let schema = table.schema();
            for (i, c) in schema.columns().iter().enumerate() {
                text[0].append_value(CATALOG);
                text[1].append_value(&name.namespace);
                text[2].append_value(&name.name);
                text[3].append_value(&c.name);
                text[4].append_option(
                    c.default
                        .as_ref()
                        .and_then(|d| default_text(c.data_type, d)),
                );
                text[5].append_value(if c.nullable { "YES" } else { "NO" });
                text[6].append_value(sql_type_name(c.data_type));
                text[7].append_null(); // interval_type
                let (precision, radix, scale, datetime) = match c.data_type {
                    DataType::Int8 => (Some(8), Some(2), Some(0), None),
                    DataType::Int16 => (Some(16), Some(2), Some(0), None),
                    DataType::Int32 => (Some(32), Some(2), Some(0), None),
                    DataType::Int64 => (Some(64), Some(2), Some(0), None),
                    DataType::Float32 => (Some(24), Some(2), None, None),
                    DataType::Float64 => (Some(53), Some(2), None, None),
                    DataType::Decimal { precision, scale } => {
                        (Some(precision as i32), Some(10), Some(scale as i32), None)
                    }
                    DataType::Timestamp => (None, None, None, Some(6)),
                    DataType::Date => (None, None, None, Some(0)),
                    _ => (None, None, None, None),
                };
                ints[0].append_value(i as i32 + 1);
                ints[1].append_null(); // character_maximum_length: text is unbounded
                ints[2].append_null(); // character_octet_length
                ints[3].append_option(precision);
                ints[4].append_option(radix);
                ints[5].append_option(scale);
                ints[6].append_option(datetime);
            }
        }
        let mut t = text
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let mut n = ints
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let mut next = |text: bool| if text { t.next() } else { n.next() }.expect("column");
        let layout: [(&str, bool, bool); 15] = [
            ("table_catalog", true, false),
            ("table_schema", true, false),
            ("table_name", true, false),
            ("column_name", true, false),
            ("ordinal_position", false, false),
            ("column_default", true, true),
            ("is_nullable", true, false),
            ("data_type", true, false),
            ("character_maximum_length", false, true),
            ("character_octet_length", false, true),
            ("numeric_precision", false, true),
            ("numeric_precision_radix", false, true),
            ("numeric_scale", false, true),
            ("datetime_precision", false, true),
            ("interval_type", true, true),
        ];
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for (name, is_text, nullable) in layout {
            let t = if is_text {
                ArrowType::Utf8
            } else {
                ArrowType::Int32
            };
            fields.push(Field::new(name, t, nullable));
            arrays.push(next(is_text));
        }
        Ok(RecordBatch::try_new(
            Arc::new(ArrowSchema::new(fields)),
            arrays,
        )?)
    }

    /// One row per primary key: `<table>_pkey`, as PostgreSQL names them.
    fn table_constraints(&self) -> Result<RecordBatch> {
        let tables = self.db.list_tables(None);
        let n = tables.len();
        let names: Vec<String> = tables.iter().map(|t| format!("{}_pkey", t.name)).collect();
        let ns: Vec<&str> = tables.iter().map(|t| t.namespace.as_str()).collect();
        let table: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        let text = |v: Vec<&str>| Arc::new(StringArray::from(v)) as ArrayRef;
        let columns = vec![
            text(vec![CATALOG; n]),
            text(ns.clone()),
            Arc::new(StringArray::from(names)) as ArrayRef,
            text(vec![CATALOG; n]),
            text(ns),
            text(table),
            text(vec!["PRIMARY KEY"; n]),
            text(vec!["NO"; n]),
            text(vec!["NO"; n]),
            text(vec!["YES"; n]),
        ];
        Ok(RecordBatch::try_new(
            schema(
                &[
                    &CONSTRAINT_OF_TABLE[..],
                    &[
                        "constraint_type",
                        "is_deferrable",
                        "initially_deferred",
                        "enforced",
                    ],
                ]
                .concat(),
            ),
            columns,
        )?)
    }

    /// One row per primary-key column, with its 1-based position in the key.
    fn key_column_usage(&self) -> Result<RecordBatch> {
        let mut text: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
        let mut position = Int32Builder::new();
        for name in self.db.list_tables(None) {
            // A table dropped since listing simply has no rows.
            let Ok(table) = self.db.table(&name) else {
                continue;
            };
            let schema = table.schema();
            for (pos, &i) in schema.key_indices().iter().enumerate() {
                for (b, v) in text.iter_mut().zip([
                    CATALOG,
                    &name.namespace,
                    &format!("{}_pkey", name.name),
                    CATALOG,
                    &name.namespace,
                    &name.name,
                    &schema.columns()[i].name,
                ]) {
                    b.append_value(v);
                }
                position.append_value(pos as i32 + 1);
            }
        }
        let n = position.len();
        let mut fields: Vec<Field> = CONSTRAINT_OF_TABLE
            .iter()
            .chain(&["column_name"])
            .map(|f| Field::new(*f, ArrowType::Utf8, false))
            .collect();
        fields.push(Field::new("ordinal_position", ArrowType::Int32, false));
        fields.push(Field::new(
            "position_in_unique_constraint",
            ArrowType::Int32,
            true,
        ));
        let mut arrays: Vec<ArrayRef> = text
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        arrays.push(Arc::new(position.finish()));
        arrays.push(Arc::new(Int32Array::from(vec![None; n])));
        Ok(RecordBatch::try_new(
            Arc::new(ArrowSchema::new(fields)),
            arrays,
        )?)
    }
}

fn schema(text_columns: &[&str]) -> Arc<ArrowSchema> {
    Arc::new(ArrowSchema::new(
        text_columns
            .iter()
            .map(|f| Field::new(*f, ArrowType::Utf8, false))
            .collect::<Vec<_>>(),
    ))
}

fn view(batch: RecordBatch) -> Result<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(
        batch.schema(),
        vec![vec![batch]],
    )?))
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self
            .datafusion_views()
            .map(|v| v.table_names())
            .unwrap_or_default();
        names.retain(|n| !OWN_VIEWS.contains(&n.as_str()));
        names.extend(OWN_VIEWS.iter().map(|s| s.to_string()));
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match name {
            "columns" => Ok(Some(view(self.columns()?)?)),
            "table_constraints" => Ok(Some(view(self.table_constraints()?)?)),
            "key_column_usage" => Ok(Some(view(self.key_column_usage()?)?)),
            _ => match self.datafusion_views() {
                Some(v) => v.table(name).await,
                None => Ok(None),
            },
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        OWN_VIEWS.contains(&name) || self.datafusion_views().is_some_and(|v| v.table_exist(name))
    }
}

//! The database's namespaces and tables as a DataFusion catalog, looked up live: a table
//! created, renamed or dropped is seen by the next statement.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::Result;

use nyala_storage::{Database, StorageError, TableName};

use crate::error::to_df;
use crate::provider::NyalaTable;

/// Name of the DataFusion catalog holding Nyala's namespaces.
pub const CATALOG: &str = "nyala";

/// Every namespace of the database.
#[derive(Debug)]
pub struct NyalaCatalog {
    db: Arc<Database>,
}

impl NyalaCatalog {
    /// The catalog of `db`.
    pub fn new(db: Arc<Database>) -> Self {
        NyalaCatalog { db }
    }
}

impl CatalogProvider for NyalaCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.db.list_namespaces()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.db
            .list_namespaces()
            .iter()
            .any(|n| n == name)
            .then(|| {
                Arc::new(NyalaSchema {
                    db: self.db.clone(),
                    namespace: name.to_string(),
                }) as Arc<dyn SchemaProvider>
            })
    }
}

/// The tables of one namespace.
#[derive(Debug)]
pub struct NyalaSchema {
    db: Arc<Database>,
    namespace: String,
}

#[async_trait]
impl SchemaProvider for NyalaSchema {
    fn table_names(&self) -> Vec<String> {
        self.db
            .list_tables(Some(&self.namespace))
            .into_iter()
            .map(|n| n.name)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.db.table(&TableName::new(&self.namespace, name)) {
            Ok(t) => Ok(Some(Arc::new(NyalaTable::new(t)))),
            Err(StorageError::UndefinedTable(_)) => Ok(None),
            Err(e) => Err(to_df(e)),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.db
            .table(&TableName::new(&self.namespace, name))
            .is_ok()
    }
}

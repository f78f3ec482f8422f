//! The database's namespaces and tables as a DataFusion catalog, looked up live: a table
//! created, renamed or dropped is seen by the next statement.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::RwLock;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::error::Result;

use nyala_storage::{Database, StorageError, TableName};

use crate::error::to_df;
use crate::provider::NyalaTable;
use crate::system::{InformationSchema, INFORMATION_SCHEMA};

/// Name of the DataFusion catalog holding Nyala's namespaces.
pub const CATALOG: &str = "nyala";

/// Every namespace of the database, and `information_schema`.
#[derive(Debug)]
pub struct NyalaCatalog {
    db: Arc<Database>,
    /// The session's catalogs, which `information_schema` lists (set once registered).
    catalogs: OnceLock<Weak<dyn CatalogProviderList>>,
    /// Schemas a session adds beside the database's namespaces (`pg_catalog`).
    system: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
}

impl NyalaCatalog {
    /// The catalog of `db`.
    pub fn new(db: Arc<Database>) -> Self {
        NyalaCatalog {
            db,
            catalogs: OnceLock::new(),
            system: RwLock::new(HashMap::new()),
        }
    }

    /// Tells the catalog which session catalogs `information_schema` describes.
    pub fn set_session_catalogs(&self, catalogs: &Arc<dyn CatalogProviderList>) {
        let _ = self.catalogs.set(Arc::downgrade(catalogs));
    }
}

impl CatalogProvider for NyalaCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.db.list_namespaces();
        names.extend(self.system.read().keys().cloned());
        names
    }

    /// Adds a system schema (a namespace of the database cannot be created this way: that
    /// is `CREATE SCHEMA`).
    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        Ok(self.system.write().insert(name.to_string(), schema))
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.system.read().get(name) {
            return Some(s.clone());
        }
        if name == INFORMATION_SCHEMA {
            let catalogs = self.catalogs.get().cloned().unwrap_or_else(|| {
                Weak::<datafusion::catalog::MemoryCatalogProviderList>::new()
                    as Weak<dyn CatalogProviderList>
            });
            return Some(Arc::new(InformationSchema::new(self.db.clone(), catalogs)));
        }
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

//! The persisted catalog: namespaces, tables, their schemas, partitioning and tablets.
//!
//! # Crash safety
//! The catalog is one JSON file, replaced atomically (write a temporary file, sync it, rename
//! it over the old one, sync the directory). Every DDL operation is ordered so that a crash at
//! any point leaves the old or the new state:
//! - creating tablets happens *before* the catalog names them: a crash in between leaves
//!   unnamed tablet directories, which opening the database deletes;
//! - dropping removes tablets from the catalog *before* deleting their directories: a crash in
//!   between leaves unnamed directories again.
//!
//! So the invariant is: a tablet directory is live if and only if the catalog names it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use nyala_common::schema::SchemaDef;

use super::names::{TableName, DEFAULT_NAMESPACE};
use super::partition::{PartitionSpec, RangeBounds};
use crate::error::{Result, StorageError};

/// Format version of the catalog file; bump when its layout changes incompatibly.
const CATALOG_FORMAT: u32 = 1;
const CATALOG_FILE: &str = "catalog.json";
const CATALOG_TMP: &str = "catalog.json.tmp";
const LOCK_FILE: &str = "LOCK";
const TABLETS_DIR: &str = "tablets";

/// One tablet of a table: which range partition and hash bucket it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TabletMeta {
    /// Names the tablet's directory.
    pub id: u64,
    /// The range partition (unbounded without range partitioning).
    pub range: RangeBounds,
    /// The hash bucket.
    pub bucket: u32,
}

/// One table as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TableMeta {
    /// Stable identity (names change with renames).
    pub id: u64,
    pub name: TableName,
    pub schema: SchemaDef,
    /// With range partitions sorted by lower bound.
    pub partitioning: PartitionSpec,
    pub tablets: Vec<TabletMeta>,
}

/// The whole catalog as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CatalogState {
    pub format: u32,
    pub next_table_id: u64,
    pub next_tablet_id: u64,
    pub namespaces: BTreeSet<String>,
    pub tables: Vec<TableMeta>,
}

impl CatalogState {
    fn empty() -> Self {
        CatalogState {
            format: CATALOG_FORMAT,
            next_table_id: 1,
            next_tablet_id: 1,
            namespaces: [DEFAULT_NAMESPACE.to_string()].into(),
            tables: vec![],
        }
    }

    /// Every tablet id the catalog names.
    pub fn tablet_ids(&self) -> BTreeSet<u64> {
        self.tables
            .iter()
            .flat_map(|t| t.tablets.iter().map(|m| m.id))
            .collect()
    }

    /// The table called `name`.
    pub fn table(&self, name: &TableName) -> Option<&TableMeta> {
        self.tables.iter().find(|t| &t.name == name)
    }

    /// The table called `name`, to change.
    pub fn table_mut(&mut self, name: &TableName) -> Option<&mut TableMeta> {
        self.tables.iter_mut().find(|t| &t.name == name)
    }
}

/// The files of a database directory.
#[derive(Debug)]
pub(crate) struct CatalogFiles {
    dir: PathBuf,
    /// Held (locked) for as long as the database is open.
    _lock: File,
}

impl CatalogFiles {
    /// Takes the directory's lock (creating the directory if needed): one open database per
    /// directory, across processes and within one.
    pub fn lock(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join(TABLETS_DIR))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StorageError::InUse(format!(
                    "the data directory {} is in use by another Nyala process",
                    dir.display()
                )))
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        Ok(CatalogFiles {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Where tablet `id` keeps its files.
    pub fn tablet_dir(&self, id: u64) -> PathBuf {
        self.dir.join(TABLETS_DIR).join(id.to_string())
    }

    /// Makes new tablet directories durable (their entries in `tablets/`, and theirs).
    pub fn sync_tablets_dir(&self) -> Result<()> {
        let dir = self.dir.join(TABLETS_DIR);
        for entry in std::fs::read_dir(&dir)? {
            File::open(entry?.path())?.sync_all()?;
        }
        File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Reads the catalog (an empty one for a new directory).
    pub fn load(&self) -> Result<CatalogState> {
        let _ = std::fs::remove_file(self.dir.join(CATALOG_TMP));
        let bytes = match std::fs::read(self.dir.join(CATALOG_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CatalogState::empty()),
            Err(e) => return Err(e.into()),
        };
        let state: CatalogState = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt(format!("catalog file: {e}")))?;
        if state.format != CATALOG_FORMAT {
            return Err(StorageError::Corrupt(format!(
                "catalog format {} is not supported by this version (expected {CATALOG_FORMAT})",
                state.format
            )));
        }
        Ok(state)
    }

    /// Replaces the catalog atomically and durably.
    pub fn save(&self, state: &CatalogState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| StorageError::Corrupt(format!("catalog does not serialise: {e}")))?;
        let tmp = self.dir.join(CATALOG_TMP);
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join(CATALOG_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Deletes tablet directories the catalog does not name (leftovers of a DDL operation a
    /// crash interrupted, or of a drop whose files were still in use).
    pub fn remove_unnamed_tablets(&self, state: &CatalogState) -> Result<()> {
        let live = state.tablet_ids();
        for entry in std::fs::read_dir(self.dir.join(TABLETS_DIR))? {
            let entry = entry?;
            let named = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| live.contains(&id));
            if !named {
                tracing::info!(dir = %entry.path().display(), "removing unnamed tablet directory");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

//! The database: named tables in namespaces, each split into tablets, with a durable catalog.
//!
//! This is the layer the SQL engine and the front ends talk to. Module map:
//! - [`names`]: table names and PostgreSQL's case rules;
//! - [`partition`]: hash and range partitioning, routing rows and pruning scans;
//! - `catalog`: the persisted catalog and its crash-safety rules;
//! - [`table`]: a table's tablets, writes routed across them, scans at one snapshot.
//!
//! Directory layout: `LOCK` (held while open), `catalog.json`, `tablets/<id>/` (one tablet
//! each). All tablets share one clock, so a timestamp names one moment across the database.

pub mod names;
pub mod partition;
pub mod table;

mod catalog;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};

use nyala_common::{ColumnSchema, RowCodec, Schema};

use crate::clock::Clock;
use crate::colcache::{ColumnCache, ColumnCacheStats};
use crate::error::{Result, StorageError};
use crate::maintenance::{Maintenance, MaintenanceOptions, MaintenanceStats};
use crate::options::TabletOptions;
use crate::tablet::Tablet;
use crate::tablet::TabletEnv;

use catalog::{CatalogFiles, CatalogState, TableMeta, TabletMeta};
use names::{validate_identifier, TableName};
use partition::{describe_bounds, PartitionSpec, Partitioner, RangeBounds};
use table::{Layout, TableInner, TabletHandle};

pub use names::DEFAULT_NAMESPACE;
pub use table::{ScanPlan, Table, TableInfo, TableScan, TabletInfo, TabletScans};

/// Settings of a database.
#[derive(Clone, Debug)]
pub struct DatabaseOptions {
    /// Settings of every tablet.
    pub tablet: TabletOptions,
    /// The background maintenance manager and the write buffers' memory budget.
    pub maintenance: MaintenanceOptions,
    /// Threads one table scan uses to read tablets in parallel (default: the number of cores).
    pub scan_threads: usize,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions {
            tablet: TabletOptions::default(),
            maintenance: MaintenanceOptions::default(),
            scan_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// One change of `ALTER TABLE` to a table's columns.
#[derive(Clone, Debug, PartialEq)]
pub enum SchemaChange {
    /// Append a column (nullable, or `NOT NULL` with a default).
    AddColumn(ColumnSchema),
    /// Drop a non-key column.
    DropColumn(String),
    /// Rename a non-key column.
    RenameColumn {
        /// Its current name.
        from: String,
        /// Its new name.
        to: String,
    },
}

/// Whether creating something that exists (or dropping something missing) is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IfExists {
    /// Report it (the default, as in SQL).
    #[default]
    Error,
    /// Do nothing (`IF NOT EXISTS` / `IF EXISTS`).
    Skip,
}

/// An open database directory. Every method takes `&self`; DDL operations are serialised,
/// reads and writes run concurrently with them and with each other.
#[derive(Debug)]
pub struct Database {
    opts: DatabaseOptions,
    clock: Arc<Clock>,
    tables: RwLock<BTreeMap<TableName, Table>>,
    /// The persisted catalog; held for the whole of each DDL operation.
    catalog: Mutex<CatalogState>,
    /// Background flushes and compactions of every tablet (stopped after the tables close).
    maintenance: Maintenance,
    /// Decoded segment columns, shared by every tablet's scans.
    columns: Option<Arc<ColumnCache>>,
    /// Declared last: the directory lock is released after everything else is closed.
    files: CatalogFiles,
}

impl Database {
    /// Opens (or creates) the database in `dir`, recovering every tablet. Fails with
    /// [`StorageError::InUse`] if another process (or another `Database` here) has it open.
    pub fn open(dir: &Path, opts: DatabaseOptions) -> Result<Database> {
        opts.tablet.validate()?;
        let files = CatalogFiles::lock(dir)?;
        let maintenance = Maintenance::start(opts.maintenance.clone())?;
        let mut state = files.load()?;
        files.remove_unnamed_tablets(&state)?;
        let clock = Arc::new(Clock::default());
        let env = TabletEnv {
            clock: clock.clone(),
            maintenance: maintenance.shared().clone(),
            columns: ColumnCache::new(opts.tablet.column_cache_bytes),
        };
        let jobs: Vec<(u64, PathBuf)> = state
            .tables
            .iter()
            .flat_map(|t| t.tablets.iter().map(|m| (m.id, files.tablet_dir(m.id))))
            .collect();
        let mut opened = run_parallel(jobs, |(id, dir)| {
            Tablet::open_in(&dir, opts.tablet.clone(), &env)
                .map(|t| (id, dir, t))
                .map_err(|e| match e {
                    StorageError::Io(_) | StorageError::Corrupt(_) | StorageError::NotFound(_) => {
                        StorageError::Corrupt(format!("tablet {id}: {e}"))
                    }
                    e => e,
                })
        })?
        .into_iter()
        .map(|(id, dir, t)| (id, (dir, t)))
        .collect::<BTreeMap<_, _>>();
        // A schema change interrupted by a crash may have altered some tablets but not the
        // catalog: finish it (the newest schema is the one that was being installed).
        let mut changed = false;
        for meta in &mut state.tables {
            let mut newest = Schema::from_def(meta.schema.clone())?;
            for m in &meta.tablets {
                let s = opened[&m.id].1.schema();
                if s.version() > newest.version() {
                    newest = s;
                }
            }
            for m in &meta.tablets {
                let s = opened[&m.id].1.schema();
                if s.version() == newest.version() && s != newest {
                    return Err(StorageError::Corrupt(format!(
                        "table {}: tablet {} has a different schema of the same version",
                        meta.name, m.id
                    )));
                }
            }
            for m in &meta.tablets {
                let t = &opened[&m.id].1;
                if t.schema().version() < newest.version() {
                    t.alter_schema(&newest)?;
                }
            }
            if newest.version() != meta.schema.version {
                tracing::info!(table = %meta.name, version = newest.version(),
                    "finished an interrupted schema change");
                meta.schema = newest.def().clone();
                changed = true;
            }
        }
        if changed {
            files.save(&state)?;
        }
        let mut tables = BTreeMap::new();
        for meta in &state.tables {
            let mut tablets = Vec::with_capacity(meta.tablets.len());
            for m in &meta.tablets {
                let (dir, t) = opened.remove(&m.id).expect("every named tablet was opened");
                tablets.push(TabletHandle::new(m.id, m.range.clone(), m.bucket, dir, t));
            }
            let table = build_table(meta, tablets, &clock, &opts)?;
            tables.insert(meta.name.clone(), table);
        }
        Ok(Database {
            opts,
            clock,
            tables: RwLock::new(tables),
            catalog: Mutex::new(state),
            maintenance,
            columns: env.columns,
            files,
        })
    }

    /// The maintenance manager's counters and the write buffers' memory use, for metrics.
    pub fn maintenance_stats(&self) -> MaintenanceStats {
        self.maintenance.shared().stats()
    }

    /// The column cache's figures (all zero without one), for metrics.
    pub fn column_cache_stats(&self) -> ColumnCacheStats {
        self.columns.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// The options the database was opened with (front ends check writes against the limits
    /// before they promise them).
    pub fn options(&self) -> &DatabaseOptions {
        &self.opts
    }

    /// A timestamp for a snapshot that sees every write acknowledged so far, for reading
    /// several tables (or one table several times) at one moment: pass it as
    /// `ScanRequest::snapshot`.
    pub fn snapshot_timestamp(&self) -> crate::clock::Timestamp {
        self.clock.next()
    }

    /// The table called `name`.
    pub fn table(&self, name: &TableName) -> Result<Table> {
        self.tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::UndefinedTable(name.to_string()))
    }

    /// Names of the tables in `namespace` (every namespace if `None`), sorted.
    pub fn list_tables(&self, namespace: Option<&str>) -> Vec<TableName> {
        self.tables
            .read()
            .keys()
            .filter(|n| namespace.is_none_or(|ns| n.namespace == ns))
            .cloned()
            .collect()
    }

    /// Definition, partitions and per-tablet counters of table `name`.
    pub fn describe(&self, name: &TableName) -> Result<TableInfo> {
        Ok(self.table(name)?.describe())
    }

    /// Namespaces (SQL schemas), sorted; `public` always exists.
    pub fn list_namespaces(&self) -> Vec<String> {
        self.catalog.lock().namespaces.iter().cloned().collect()
    }

    /// Creates a namespace (SQL `CREATE SCHEMA`).
    pub fn create_namespace(&self, name: &str, if_exists: IfExists) -> Result<()> {
        validate_identifier("schema", name)?;
        let mut cat = self.catalog.lock();
        if cat.namespaces.contains(name) {
            return match if_exists {
                IfExists::Skip => Ok(()),
                IfExists::Error => Err(StorageError::DuplicateNamespace(name.into())),
            };
        }
        let mut next = cat.clone();
        next.namespaces.insert(name.to_string());
        self.files.save(&next)?;
        *cat = next;
        Ok(())
    }

    /// Drops an empty namespace (`public` cannot be dropped).
    pub fn drop_namespace(&self, name: &str, if_exists: IfExists) -> Result<()> {
        let mut cat = self.catalog.lock();
        if !cat.namespaces.contains(name) {
            return match if_exists {
                IfExists::Skip => Ok(()),
                IfExists::Error => Err(StorageError::UndefinedNamespace(name.into())),
            };
        }
        if name == DEFAULT_NAMESPACE {
            return Err(StorageError::InvalidInput(format!(
                "schema \"{name}\" cannot be dropped"
            )));
        }
        if cat.tables.iter().any(|t| t.name.namespace == name) {
            return Err(StorageError::InvalidInput(format!(
                "schema \"{name}\" is not empty: drop its tables first"
            )));
        }
        let mut next = cat.clone();
        next.namespaces.remove(name);
        self.files.save(&next)?;
        *cat = next;
        Ok(())
    }

    /// Creates a table with `schema`, split into tablets by `partitioning`. With
    /// [`IfExists::Skip`], an existing table of that name is returned as it is.
    pub fn create_table(
        &self,
        name: &TableName,
        schema: &Schema,
        partitioning: &PartitionSpec,
        if_exists: IfExists,
    ) -> Result<Table> {
        name.validate()?;
        let mut cat = self.catalog.lock();
        if !cat.namespaces.contains(&name.namespace) {
            return Err(StorageError::UndefinedNamespace(name.namespace.clone()));
        }
        if cat.table(name).is_some() {
            return match if_exists {
                IfExists::Skip => self.table(name),
                IfExists::Error => Err(StorageError::DuplicateTable(name.to_string())),
            };
        }
        self.check_defaults(schema)?;
        let partitioner = Partitioner::new(schema, partitioning)?;
        // Persist the ranges sorted, as the partitioner numbers them.
        let mut partitioning = partitioning.clone();
        if let Some(r) = &mut partitioning.range {
            r.partitions = partitioner
                .ranges
                .iter()
                .map(|e| e.bounds.clone())
                .collect();
        }
        let mut next = cat.clone();
        let id = next.next_table_id;
        next.next_table_id += 1;
        let metas = allocate_tablets(&mut next, &partitioner.ranges_bounds(), partitioner.buckets);
        let handles = self.create_tablets(schema, &metas)?;
        let meta = TableMeta {
            id,
            name: name.clone(),
            schema: schema.def().clone(),
            partitioning,
            tablets: metas,
        };
        next.tables.push(meta.clone());
        // On failure the new tablets' handles are dropped with their files.
        self.files.save(&next)?;
        let table = build_table(
            &meta,
            handles
                .into_iter()
                .map(PendingTablet::into_handle)
                .collect(),
            &self.clock,
            &self.opts,
        )?;
        *cat = next;
        self.tables.write().insert(name.clone(), table.clone());
        tracing::info!(table = %name, tablets = table.tablet_count(), "created table");
        Ok(table)
    }

    /// Drops a table. Its files are deleted once running scans of it finish (or, after a
    /// crash, when the database is next opened).
    pub fn drop_table(&self, name: &TableName, if_exists: IfExists) -> Result<()> {
        let mut cat = self.catalog.lock();
        if cat.table(name).is_none() {
            return match if_exists {
                IfExists::Skip => Ok(()),
                IfExists::Error => Err(StorageError::UndefinedTable(name.to_string())),
            };
        }
        let mut next = cat.clone();
        next.tables.retain(|t| &t.name != name);
        self.files.save(&next)?;
        *cat = next;
        if let Some(table) = self.tables.write().remove(name) {
            table.inner.dropped.store(true, Ordering::Release);
            for h in &table.inner.layout.load().tablets {
                h.remove_when_unused();
            }
        }
        tracing::info!(table = %name, "dropped table");
        Ok(())
    }

    /// Renames a table (possibly into another namespace). Data stays where it is.
    pub fn rename_table(&self, from: &TableName, to: &TableName) -> Result<()> {
        to.validate()?;
        let mut cat = self.catalog.lock();
        if cat.table(from).is_none() {
            return Err(StorageError::UndefinedTable(from.to_string()));
        }
        if !cat.namespaces.contains(&to.namespace) {
            return Err(StorageError::UndefinedNamespace(to.namespace.clone()));
        }
        if cat.table(to).is_some() {
            return Err(StorageError::DuplicateTable(to.to_string()));
        }
        let mut next = cat.clone();
        next.table_mut(from).expect("checked").name = to.clone();
        self.files.save(&next)?;
        *cat = next;
        let mut tables = self.tables.write();
        if let Some(table) = tables.remove(from) {
            *table.inner.name.write() = to.clone();
            tables.insert(to.clone(), table);
        }
        Ok(())
    }

    /// Changes a table's columns (`ALTER TABLE ... ADD/DROP/RENAME COLUMN`) online: existing
    /// segments are not rewritten (they read added columns as their default and keep dropped
    /// ones until rewritten); key columns cannot change.
    ///
    /// Each tablet flushes and persists the new schema, then the catalog does; a crash in
    /// between is finished when the database next opens.
    pub fn alter_table(&self, name: &TableName, change: &SchemaChange) -> Result<()> {
        let mut cat = self.catalog.lock();
        let table = self.table(name)?;
        let inner = &table.inner;
        table.check_live()?;
        let current = inner.layout.load().schema.clone();
        let new = match change {
            SchemaChange::AddColumn(c) => current.add_column(c.clone())?,
            SchemaChange::DropColumn(c) => current.drop_column(c)?,
            SchemaChange::RenameColumn { from, to } => current.rename_column(from, to)?,
        };
        self.check_defaults(&new)?;
        // Most of the buffered data goes to segments while writers carry on.
        table.flush()?;
        let _exclusive = inner.alter_lock.write();
        let layout = inner.layout.load_full();
        let mut next = cat.clone();
        next.table_mut(name).expect("table exists").schema = new.def().clone();
        let done = run_parallel(layout.tablets.clone(), |h| h.tablet().alter_schema(&new))
            .and_then(|_| self.files.save(&next));
        if let Err(e) = done {
            // Some tablets may have the new schema: refuse work on the table until a reopen
            // finishes the change (and never let a different change reuse its version).
            *inner.broken.lock() = Some(e.to_string());
            return Err(e);
        }
        *cat = next;
        let partitioner = Partitioner::new(&new, &inner.partitioning.read())?;
        inner.layout.store(Arc::new(Layout {
            codec: Arc::new(RowCodec::new(&new)?),
            schema: new,
            partitioner,
            tablets: layout.tablets.clone(),
        }));
        tracing::info!(table = %name, change = ?change, "altered table");
        Ok(())
    }

    /// Adds a range partition (one new tablet per hash bucket) to a range-partitioned table.
    /// Fails if it overlaps an existing one.
    pub fn add_range_partition(&self, name: &TableName, bounds: &RangeBounds) -> Result<()> {
        let mut cat = self.catalog.lock();
        let table = self.table(name)?;
        let inner = &table.inner;
        let layout = inner.layout.load_full();
        let (at, _) = layout.partitioner.insertion_point(bounds)?;
        let mut next = cat.clone();
        let metas = allocate_tablets(
            &mut next,
            std::slice::from_ref(bounds),
            layout.partitioner.buckets,
        );
        let handles = self.create_tablets(&layout.schema, &metas)?;
        let meta = next.table_mut(name).expect("table exists");
        let range = meta.partitioning.range.as_mut().expect("range partitioned");
        range.partitions.insert(at, bounds.clone());
        let b = layout.partitioner.buckets as usize;
        let mut all = meta.tablets.clone();
        all.splice(at * b..at * b, metas.iter().cloned());
        meta.tablets = all;
        let partitioning = meta.partitioning.clone();
        self.files.save(&next)?;
        let mut tablets = layout.tablets.clone();
        tablets.splice(
            at * b..at * b,
            handles
                .into_iter()
                .map(|h| Arc::new(PendingTablet::into_handle(h))),
        );
        inner.set_partitions(&layout, partitioning, tablets)?;
        *cat = next;
        tracing::info!(table = %name, range = %describe_bounds(bounds), "added range partition");
        Ok(())
    }

    /// Drops the range partition with exactly these bounds, and its rows: the cheap way to
    /// expire old data. Files go once running scans finish.
    pub fn drop_range_partition(&self, name: &TableName, bounds: &RangeBounds) -> Result<()> {
        let mut cat = self.catalog.lock();
        let table = self.table(name)?;
        let inner = &table.inner;
        let layout = inner.layout.load_full();
        let rc = layout.partitioner.range.as_ref().ok_or_else(|| {
            StorageError::InvalidInput(format!("table {name} has no range partitions"))
        })?;
        let wanted = rc.encode(bounds)?;
        let at = layout
            .partitioner
            .ranges
            .iter()
            .position(|r| r.same_bounds(&wanted))
            .ok_or_else(|| {
                StorageError::InvalidInput(format!(
                    "table {name} has no range partition {}",
                    describe_bounds(bounds)
                ))
            })?;
        let b = layout.partitioner.buckets as usize;
        let mut next = cat.clone();
        let meta = next.table_mut(name).expect("table exists");
        meta.partitioning
            .range
            .as_mut()
            .expect("range partitioned")
            .partitions
            .remove(at);
        meta.tablets.drain(at * b..(at + 1) * b);
        let partitioning = meta.partitioning.clone();
        self.files.save(&next)?;
        let mut tablets = layout.tablets.clone();
        for h in tablets.drain(at * b..(at + 1) * b) {
            h.remove_when_unused();
        }
        inner.set_partitions(&layout, partitioning, tablets)?;
        *cat = next;
        tracing::info!(table = %name, range = %describe_bounds(bounds), "dropped range partition");
        Ok(())
    }

    /// Defaults fill cells of rows that never went through a write's size checks: hold them to
    /// the same limit.
    fn check_defaults(&self, schema: &Schema) -> Result<()> {
        for c in schema.columns() {
            let len = match &c.default {
                Some(nyala_common::Value::Utf8(s)) => s.len(),
                Some(nyala_common::Value::Binary(b)) => b.len(),
                _ => continue,
            };
            if len > self.opts.tablet.max_cell_bytes {
                return Err(StorageError::InvalidInput(format!(
                    "the default of column \"{}\" is {len} bytes, over the limit of {} bytes",
                    c.name, self.opts.tablet.max_cell_bytes
                )));
            }
        }
        Ok(())
    }

    /// Creates the tablets of `metas` (in parallel). If any fails, those created are removed.
    fn create_tablets(&self, schema: &Schema, metas: &[TabletMeta]) -> Result<Vec<PendingTablet>> {
        let jobs: Vec<TabletMeta> = metas.to_vec();
        let results = run_parallel_all(jobs, |m| {
            let dir = self.files.tablet_dir(m.id);
            // A directory left by an interrupted attempt is not named by the catalog: reuse
            // of its id is impossible (ids only grow), but be safe.
            let _ = std::fs::remove_dir_all(&dir);
            let env = TabletEnv {
                clock: self.clock.clone(),
                maintenance: self.maintenance.shared().clone(),
                columns: self.columns.clone(),
            };
            let t = Tablet::create_in(&dir, schema, self.opts.tablet.clone(), &env);
            (m, dir, t)
        });
        let mut out = Vec::with_capacity(results.len());
        let mut first_err = None;
        for (m, dir, t) in results {
            match t {
                Ok(t) => out.push(PendingTablet(Some(TabletHandle::new(
                    m.id, m.range, m.bucket, dir, t,
                )))),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // The new directories must survive a power loss before the catalog names them.
        self.files.sync_tablets_dir()?;
        Ok(out)
    }
}

/// A tablet created for a DDL operation that has not committed yet: its files are deleted
/// when it is dropped, unless the commit turned it into a live handle first.
struct PendingTablet(Option<TabletHandle>);

impl PendingTablet {
    /// The catalog now names the tablet: keep it.
    fn into_handle(mut self) -> TabletHandle {
        self.0.take().expect("taken once")
    }
}

impl Drop for PendingTablet {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.remove_when_unused();
        }
    }
}

/// Gives the tablets of `ranges x buckets` fresh ids, in partition order.
fn allocate_tablets(
    state: &mut CatalogState,
    ranges: &[RangeBounds],
    buckets: u32,
) -> Vec<TabletMeta> {
    let mut out = Vec::with_capacity(ranges.len() * buckets as usize);
    for r in ranges {
        for b in 0..buckets {
            out.push(TabletMeta {
                id: state.next_tablet_id,
                range: r.clone(),
                bucket: b,
            });
            state.next_tablet_id += 1;
        }
    }
    out
}

fn build_table(
    meta: &TableMeta,
    tablets: Vec<TabletHandle>,
    clock: &Arc<Clock>,
    opts: &DatabaseOptions,
) -> Result<Table> {
    let schema = Schema::from_def(meta.schema.clone())?;
    let partitioner = Partitioner::new(&schema, &meta.partitioning)?;
    if partitioner.tablets() != tablets.len() {
        return Err(StorageError::Corrupt(format!(
            "table {} has {} tablets, its partitioning needs {}",
            meta.name,
            tablets.len(),
            partitioner.tablets()
        )));
    }
    let codec = Arc::new(RowCodec::new(&schema)?);
    Ok(Table {
        inner: Arc::new(TableInner {
            id: meta.id,
            name: RwLock::new(meta.name.clone()),
            partitioning: RwLock::new(meta.partitioning.clone()),
            layout: ArcSwap::from_pointee(Layout {
                schema,
                codec,
                partitioner,
                tablets: tablets.into_iter().map(Arc::new).collect(),
            }),
            alter_lock: RwLock::new(()),
            broken: Mutex::new(None),
            clock: clock.clone(),
            opts: opts.tablet.clone(),
            scan_threads: opts.scan_threads,
            dropped: AtomicBool::new(false),
        }),
    })
}

/// Runs `f` on every job, on up to one thread per core; every job runs even if some fail.
fn run_parallel_all<J: Send, T: Send>(jobs: Vec<J>, f: impl Fn(J) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((i, job)) = queue.lock().pop() else {
                    return;
                };
                let r = f(job);
                results.lock().push((i, r));
            });
        }
    });
    let mut results = results.into_inner();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// [`run_parallel_all`] for fallible jobs: the first error, or every result.
fn run_parallel<J: Send, T: Send>(
    jobs: Vec<J>,
    f: impl Fn(J) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    run_parallel_all(jobs, f).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nyala_common::DataType;

    #[test]
    fn a_schema_change_interrupted_between_tablets_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let name = TableName::new("public", "t");
        let new = {
            let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
            let schema = Schema::new(
                vec![
                    ColumnSchema::not_null("id", DataType::Int64),
                    ColumnSchema::nullable("v", DataType::Utf8),
                ],
                &["id"],
            )
            .unwrap();
            let t = db
                .create_table(
                    &name,
                    &schema,
                    &PartitionSpec::hash(["id"], 3),
                    IfExists::Error,
                )
                .unwrap();
            let new = schema
                .add_column(ColumnSchema::nullable("w", DataType::Int32))
                .unwrap();
            // What a crash after altering the first tablet, before the catalog, leaves.
            t.inner.layout.load().tablets[0]
                .tablet()
                .alter_schema(&new)
                .unwrap();
            new
        };
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        let t = db.table(&name).unwrap();
        assert_eq!(t.schema(), new);
        for h in &t.inner.layout.load().tablets {
            assert_eq!(h.tablet().schema(), new);
        }
        drop((t, db));
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        assert_eq!(
            db.table(&name).unwrap().schema(),
            new,
            "the catalog was saved"
        );
    }
}

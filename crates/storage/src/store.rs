//! The metadata store: the manifest and persisted deletion vectors, in `sled`.
//!
//! One sled tree per tablet; keys are prefixed by kind:
//! - `m`: the manifest (JSON, with a format version);
//! - `d` + segment id + checkpoint ts (big endian): deletions of one segment that became
//!   durable at that checkpoint, as (ts, row) pairs.
//!
//! A checkpoint (after a flush) writes the new manifest and the deletion-vector entries it
//! covers in one atomic sled batch, then syncs; only after that are WAL records up to the
//! checkpoint removed (see `wal.rs`). Recovery therefore always finds either the old manifest
//! with the WAL records it needs, or the new one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use nyala_common::schema::SchemaDef;

use crate::clock::Timestamp;
use crate::error::{Result, StorageError};
use crate::segment::SegmentMeta;

/// Manifest format version; bump when the layout changes.
const MANIFEST_FORMAT: u32 = 1;

/// The durable description of a tablet: schema, on-disk segments, and the checkpoint (every
/// write with a timestamp at or below it is in those segments).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    pub schema: SchemaDef,
    pub next_segment_id: u64,
    pub checkpoint_ts: Timestamp,
    pub history_horizon: Timestamp,
    pub segments: Vec<SegmentMeta>,
}

impl Manifest {
    pub fn new(schema: SchemaDef) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            schema,
            next_segment_id: 1,
            checkpoint_ts: 0,
            history_horizon: 0,
            segments: vec![],
        }
    }
}

const MANIFEST_KEY: &[u8] = b"m";

fn dv_prefix(segment: u64) -> [u8; 9] {
    let mut k = [b'd'; 9];
    k[1..].copy_from_slice(&segment.to_be_bytes());
    k
}

/// Handle on a tablet's metadata.
#[derive(Debug)]
pub(crate) struct MetaStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl MetaStore {
    /// Opens (creating if needed) the store in `path`. Only [`MetaStore::sync`] syncs.
    ///
    /// sled releases its directory lock from a background thread after the last handle is
    /// dropped, so a reopen right after a close may find the lock still held: it retries for
    /// up to a second before reporting the store as in use.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .flush_every_ms(None)
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("acquire lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(StorageError::InUse(format!(
                            "the tablet in {} is already open (by another handle or process)",
                            path.parent().unwrap_or(path).display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tree = db.open_tree("tablet")?;
        Ok(MetaStore { db, tree })
    }

    pub fn load_manifest(&self) -> Result<Option<Manifest>> {
        let Some(bytes) = self.tree.get(MANIFEST_KEY)? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt(format!("manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(StorageError::Corrupt(format!(
                "unknown manifest format {}",
                m.format
            )));
        }
        Ok(Some(m))
    }

    /// Writes the first manifest of a new tablet, durably.
    pub fn create(&self, manifest: &Manifest) -> Result<()> {
        self.tree.insert(MANIFEST_KEY, encode_manifest(manifest)?)?;
        self.sync()
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Atomically installs `manifest` with the deletion-vector entries it covers, and syncs.
    pub fn checkpoint(
        &self,
        manifest: &Manifest,
        dvs: &[(u64, Vec<(Timestamp, u32)>)],
    ) -> Result<()> {
        self.checkpoint_retiring(manifest, dvs, &[])
    }

    /// [`MetaStore::checkpoint`] that also forgets the deletions of segments `retired` (which
    /// `manifest` no longer lists), in the same atomic batch.
    pub fn checkpoint_retiring(
        &self,
        manifest: &Manifest,
        dvs: &[(u64, Vec<(Timestamp, u32)>)],
        retired: &[u64],
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for &segment in retired {
            for r in self.tree.scan_prefix(dv_prefix(segment)) {
                batch.remove(r?.0);
            }
        }
        batch.insert(MANIFEST_KEY, encode_manifest(manifest)?);
        for (segment, entries) in dvs.iter().filter(|(_, e)| !e.is_empty()) {
            let mut key = dv_prefix(*segment).to_vec();
            key.extend_from_slice(&manifest.checkpoint_ts.to_be_bytes());
            let mut val = Vec::with_capacity(entries.len() * 12);
            for (ts, row) in entries {
                val.extend_from_slice(&ts.to_le_bytes());
                val.extend_from_slice(&row.to_le_bytes());
            }
            batch.insert(key, val);
        }
        self.tree.apply_batch(batch)?;
        self.sync()
    }

    /// Every persisted deletion of `segment`.
    pub fn load_deletions(&self, segment: u64) -> Result<Vec<(Timestamp, u32)>> {
        let mut out = Vec::new();
        for r in self.tree.scan_prefix(dv_prefix(segment)) {
            let (_, v) = r?;
            if v.len() % 12 != 0 {
                return Err(StorageError::Corrupt(format!(
                    "deletion vector of segment {segment}"
                )));
            }
            for c in v.chunks_exact(12) {
                out.push((
                    u64::from_le_bytes(c[..8].try_into().unwrap()),
                    u32::from_le_bytes(c[8..].try_into().unwrap()),
                ));
            }
        }
        Ok(out)
    }

    /// Bytes of WAL and metadata on disk (sled's own estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn encode_manifest(m: &Manifest) -> Result<Vec<u8>> {
    serde_json::to_vec(m).map_err(|e| StorageError::Corrupt(format!("manifest: {e}")))
}

//! A few threads that sync WAL files while the writers that appended to them carry on.
//!
//! With sync durability a write appends its record, applies the batch to the write buffer and
//! returns once the record is durable. Run one after the other, a 1,000-row batch spent a
//! quarter of its time waiting in `fdatasync`; started here right after the append, the sync
//! runs while the batch is applied, and the writer only waits for what is left of it.
//! Applied rows are not visible until the writer has seen its sync finish (the tablet's
//! `visible` timestamp moves after that), so readers never see an undurable write.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use crate::error::{Result, StorageError};

type Job = Box<dyn FnOnce() + Send>;

/// Threads in the pool: each runs one sync at a time; more tablets syncing at once queue.
const THREADS: usize = 4;

struct Pool {
    jobs: Sender<Job>,
}

/// The process's pool, started by its first use; `None` if no thread could be started (syncs
/// then run on the writer's thread, as before).
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, rx) = channel::<Job>();
        let rx: &'static Mutex<Receiver<Job>> = Box::leak(Box::new(Mutex::new(rx)));
        let mut started = 0;
        for i in 0..THREADS {
            let spawned = std::thread::Builder::new()
                .name(format!("nyala-wal-sync-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take a job, not while running it.
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking sync drops its outcome's sender, which its waiter sees
                        // as an error; the thread carries on.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(Pool { jobs })
    })
    .as_ref()
}

/// A sync to run: whoever takes it first runs it, the pool's thread or the waiting writer.
type Slot = std::sync::Arc<Mutex<Option<Box<dyn FnOnce() -> Result<()> + Send>>>>;

/// A sync under way, queued, or (when no pool thread could be started) left for the waiter.
pub(crate) struct PendingSync {
    slot: Slot,
    outcome: Option<Receiver<Result<()>>>,
}

impl PendingSync {
    /// Queues `sync` on the pool.
    pub fn start(sync: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        let slot: Slot = std::sync::Arc::new(Mutex::new(Some(Box::new(sync))));
        let Some(pool) = pool() else {
            return PendingSync {
                slot,
                outcome: None,
            };
        };
        let (tx, rx) = sync_channel(1);
        let job_slot = slot.clone();
        let job: Job = Box::new(move || {
            let taken = job_slot.lock().ok().and_then(|mut s| s.take());
            if let Some(sync) = taken {
                // The writer may have given up waiting (its apply failed): nobody to tell.
                let _ = tx.send(sync());
            }
        });
        // Without a worker to take it, the waiter runs it.
        let outcome = pool.jobs.send(job).is_ok().then_some(rx);
        PendingSync { slot, outcome }
    }

    /// Waits for the sync's outcome. A sync still queued when its writer is done applying
    /// (every pool thread busy with other tablets' syncs) runs here instead, so a writer never
    /// waits behind other tablets.
    pub fn wait(self) -> Result<()> {
        let taken = self.slot.lock().ok().and_then(|mut s| s.take());
        if let Some(sync) = taken {
            return sync();
        }
        match self.outcome {
            Some(rx) => rx.recv().unwrap_or_else(|_| {
                Err(StorageError::Corrupt(
                    "a WAL sync ended without an outcome (its thread panicked)".into(),
                ))
            }),
            None => Err(StorageError::Corrupt(
                "a WAL sync was neither queued nor run".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_come_back_to_their_waiters() {
        let pending: Vec<PendingSync> = (0..20)
            .map(|i| {
                PendingSync::start(move || {
                    if i % 3 == 0 {
                        Err(StorageError::InvalidInput(format!("job {i}")))
                    } else {
                        Ok(())
                    }
                })
            })
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(p.wait().is_err(), i % 3 == 0, "job {i}");
        }
        // A panicking sync is an error for its waiter, whichever thread ran it (the waiter
        // runs a sync no pool thread has taken yet), and the pool carries on.
        let p = PendingSync::start(|| panic!("a sync that panics"));
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.wait()));
        assert!(waited.is_err() || waited.unwrap().is_err());
        assert!(PendingSync::start(|| Ok(())).wait().is_ok());
    }
}

//! Turns for statements that read rows and then write values computed from them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// Statements that read rows and then write values computed from them (UPDATE, DELETE, a
/// computed `ON CONFLICT DO UPDATE`) run one at a time per table in this server, each reading
/// the rows as committed once it holds the table: without this, two sessions adding to one
/// counter both read the old value and one addition is lost. Writes that do not read first
/// (INSERT, UPSERT, gRPC writes) do not wait.
pub(crate) async fn read_write_turn(table: &str) -> tokio::sync::OwnedMutexGuard<()> {
    static TURNS: LazyLock<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let turn = {
        let mut turns = TURNS.lock().expect("table turns");
        match turns.get(table).and_then(Weak::upgrade) {
            Some(t) => t,
            None => {
                turns.retain(|_, t| t.strong_count() > 0);
                let t = Arc::new(tokio::sync::Mutex::new(()));
                turns.insert(table.to_string(), Arc::downgrade(&t));
                t
            }
        }
    };
    turn.lock_owned().await
}

//! The in-process gate of each advisory key: the tasks of this process
//! take a key of one server in turn before they ask the server.
//!
//! It is needed for correctness, not only economy: a session that holds an
//! advisory lock is granted the same lock again (PostgreSQL counts holds
//! per session), so two tasks that tried one key on one shared session would
//! both win. Behind the gate only one exclusive contender of this process
//! reaches the server per key (shared ones pass together, and may stack on
//! one session, which is sound for shared holds). It also keeps a thousand
//! waiting tasks of one process from costing a thousand waiting sessions:
//! they wait here, in FIFO order (tokio's `RwLock` is fair), and only the
//! first of them waits on the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tokio::time::Instant;

use crate::vocab::LockMode;

/// The gates of one server's keys; a key's gate exists while a task is at
/// it.
#[derive(Default)]
pub(super) struct Gates {
    keys: Mutex<HashMap<i64, Arc<RwLock<()>>>>,
}

/// A task's pass through a key's gate: exclusive, or shared with other
/// shared passes. Dropping it lets the next task through.
pub(super) struct Pass {
    key: i64,
    gates: Arc<Gates>,
    held: Option<Held>,
    /// Whether the pass was waited for (another task of this process held
    /// or was taking the key).
    pub(super) waited: bool,
}

enum Held {
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
}

/// Why no pass was given.
pub(super) enum Shut {
    /// Another task of this process holds or is taking the key, and the
    /// caller does not wait.
    Busy,
    /// The deadline passed at the gate.
    TimedOut,
}

impl Gates {
    /// A pass for `key` in `mode`: at once or [`Shut::Busy`] when `wait` is
    /// false, else waiting in line until `deadline` (`None`: no limit).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait leaves the line.
    pub(super) async fn enter(
        self: &Arc<Self>,
        key: i64,
        mode: LockMode,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Pass, Shut> {
        let gate = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        // Made first, so that a shut gate is cleaned up like a left one.
        let mut pass = Pass {
            key,
            gates: self.clone(),
            held: None,
            waited: false,
        };
        let held = if !wait {
            match mode {
                LockMode::Exclusive => gate.try_write_owned().map(Held::Exclusive),
                LockMode::Shared => gate.try_read_owned().map(Held::Shared),
            }
            .map_err(|_| Shut::Busy)?
        } else if let Some(free) = match mode {
            // A gate that is free now (nobody in it, nobody queued).
            LockMode::Exclusive => gate.clone().try_write_owned().ok().map(Held::Exclusive),
            LockMode::Shared => gate.clone().try_read_owned().ok().map(Held::Shared),
        } {
            free
        } else {
            pass.waited = true;
            let entering = async {
                match mode {
                    LockMode::Exclusive => Held::Exclusive(gate.write_owned().await),
                    LockMode::Shared => Held::Shared(gate.read_owned().await),
                }
            };
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, entering)
                    .await
                    .map_err(|_| Shut::TimedOut)?,
                None => entering.await,
            }
        };
        pass.held = Some(held);
        Ok(pass)
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut keys = self
            .gates
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map refers to a gate nobody is at (clones are made under
        // this mutex, so the count cannot rise behind our back).
        if keys
            .get(&self.key)
            .is_some_and(|g| Arc::strong_count(g) == 1)
        {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_passes_exclude_and_gates_are_cleaned_up() {
        let gates = Arc::new(Gates::default());
        let first = gates
            .enter(7, LockMode::Exclusive, false, None)
            .await
            .ok()
            .unwrap();
        assert!(matches!(
            gates.enter(7, LockMode::Shared, false, None).await,
            Err(Shut::Busy)
        ));
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(matches!(
            gates.enter(7, LockMode::Exclusive, true, Some(soon)).await,
            Err(Shut::TimedOut)
        ));
        let other = gates.enter(8, LockMode::Exclusive, false, None).await;
        assert!(other.is_ok());
        drop((first, other));
        assert!(gates.keys.lock().unwrap().is_empty());
        let a = gates.enter(7, LockMode::Shared, false, None).await;
        let b = gates.enter(7, LockMode::Shared, false, None).await;
        assert!(a.is_ok() && b.is_ok());
        drop((a, b));
        assert!(gates.keys.lock().unwrap().is_empty());
    }
}

//! The in-process gate of each advisory key: the tasks of this process
//! take a key of one server in turn before they ask the server.
//!
//! It is needed for correctness, not only economy: a session that holds an
//! advisory lock is granted the same lock again (PostgreSQL counts holds
//! per session, and a session never conflicts with itself), so two tasks
//! that tried one key on one shared session would both win. Behind the gate
//! only one exclusive contender of this process reaches the server per key,
//! and never beside a shared one (shared ones pass together, and may stack
//! on one session, which is sound for shared holds). It also keeps a
//! thousand waiting tasks of one process from costing a thousand waiting
//! sessions: exclusive contenders wait here in FIFO order (a fair mutex),
//! and only the first of them waits for the gate to empty, then on the
//! server.
//!
//! A shared contender passes whenever no exclusive one of this process is
//! through, even past an exclusive one waiting for the shared ones to
//! leave: waiting there, it would wait for a writer that waits for the
//! readers, its own task's among them. (On the server, a shared request
//! does queue behind a waiting exclusive one, of any process.)

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use super::session::Session;
use crate::vocab::LockMode;

/// The gates of one server's keys; a key's gate exists while a task is at
/// it.
#[derive(Default)]
pub(super) struct Gates {
    keys: Mutex<HashMap<i64, Arc<Gate>>>,
}

/// One key's gate.
#[derive(Default)]
struct Gate {
    /// Who is through.
    through: Mutex<Through>,
    /// Told whenever a pass is given back.
    left: Notify,
    /// The line of exclusive contenders that wait (FIFO): only its first
    /// waits for the gate to empty.
    writers: tokio::sync::Mutex<()>,
    /// The line of shared contenders that wait on the server (FIFO): only
    /// its first waits there, on a session of its own. The one that wins
    /// leaves the session it won on here: the next ones try again there,
    /// where the server grants a shared hold again at once, even with an
    /// exclusive request of another process queued behind it.
    shared_waits: Arc<tokio::sync::Mutex<Option<Weak<Session>>>>,
}

/// A shared contender's turn to wait on the server, with the session the
/// last one that won on it left (see [`Pass::server_turn`]).
pub(super) type Turn = OwnedMutexGuard<Option<Weak<Session>>>;

#[derive(Default)]
struct Through {
    shared: usize,
    exclusive: bool,
}

impl Gate {
    /// Goes through at once in `mode`, if the gate lets it.
    fn try_pass(&self, mode: LockMode) -> bool {
        let mut through = self.through.lock().unwrap_or_else(PoisonError::into_inner);
        match mode {
            LockMode::Exclusive if !through.exclusive && through.shared == 0 => {
                through.exclusive = true;
                true
            }
            LockMode::Shared if !through.exclusive => {
                through.shared += 1;
                true
            }
            _ => false,
        }
    }

    /// Goes through in `mode` once the gate lets it. Cancel safe: nothing
    /// changes until it passes, in the same poll.
    async fn pass(&self, mode: LockMode) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            // Registered before looking, so that a pass given back between
            // the look and the wait is not missed.
            left.as_mut().enable();
            if self.try_pass(mode) {
                return;
            }
            left.await;
        }
    }

    fn leave(&self, mode: LockMode) {
        {
            let mut through = self.through.lock().unwrap_or_else(PoisonError::into_inner);
            match mode {
                LockMode::Exclusive => through.exclusive = false,
                LockMode::Shared => through.shared -= 1,
            }
        }
        self.left.notify_waiters();
    }
}

/// A task's pass through a key's gate: exclusive, or shared with other
/// shared passes. Dropping it lets the next task through.
pub(super) struct Pass {
    key: i64,
    gates: Arc<Gates>,
    /// Its key's gate; taken (and dropped) only under the map's mutex, when
    /// the pass drops, so that the last pass of a key to go sees it last.
    gate: Option<Arc<Gate>>,
    /// The mode it went through in; `None` until it has.
    mode: Option<LockMode>,
    /// Whether the pass was waited for (another task of this process held
    /// or was taking the key).
    pub(super) waited: bool,
}

impl Pass {
    /// A shared contender's turn to wait on the server for its key, kept
    /// as long as the guard lives: at once (`false`) if nobody of this
    /// process waits there, else once those before it are done (`true`:
    /// the lock may be held shared by now, and worth a try), within
    /// `deadline`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait leaves the line.
    pub(super) async fn server_turn(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Turn, bool), Shut> {
        let Some(gate) = &self.gate else {
            return Err(Shut::Busy);
        };
        let line = gate.shared_waits.clone();
        if let Ok(turn) = line.clone().try_lock_owned() {
            return Ok((turn, false));
        }
        let mut turn = None;
        within(deadline, async { turn = Some(line.lock_owned().await) }).await?;
        turn.map(|t| (t, true)).ok_or(Shut::TimedOut)
    }
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
            gate: Some(gate),
            mode: None,
            waited: false,
        };
        let Some(gate) = pass.gate.as_deref() else {
            return Err(Shut::Busy);
        };
        // A gate that lets it through now. A waiting exclusive contender
        // takes it so only with nobody in line before it (FIFO: one woken
        // at the head of the line is not handed the gate, and a newcomer
        // could take it first); a try never lines up, and may.
        let passed = match mode {
            LockMode::Exclusive if wait => gate
                .writers
                .try_lock()
                .is_ok_and(|_first| gate.try_pass(mode)),
            _ => gate.try_pass(mode),
        };
        if !passed {
            if !wait {
                return Err(Shut::Busy);
            }
            pass.waited = true;
            let entering = async {
                match mode {
                    LockMode::Exclusive => {
                        let _first = gate.writers.lock().await;
                        gate.pass(mode).await;
                    }
                    LockMode::Shared => gate.pass(mode).await,
                }
            };
            within(deadline, entering).await?;
        }
        pass.mode = Some(mode);
        Ok(pass)
    }
}

/// `entering`, or [`Shut::TimedOut`] at `deadline`.
async fn within(deadline: Option<Instant>, entering: impl Future<Output = ()>) -> Result<(), Shut> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, entering)
            .await
            .map_err(|_| Shut::TimedOut),
        None => {
            entering.await;
            Ok(())
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let (Some(mode), Some(gate)) = (self.mode.take(), &self.gate) {
            gate.leave(mode);
        }
        let mut keys = self
            .gates
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.gate.take());
        // Only the map refers to a gate nobody is at (clones are made, and
        // passes let theirs go, under this mutex, so the count cannot
        // change behind our back).
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

    /// A shared pass is given past an exclusive contender that waits for
    /// the shared passes to leave; the exclusive one goes through once they
    /// have, and then alone.
    #[tokio::test(flavor = "current_thread")]
    async fn shared_passes_go_past_a_waiting_exclusive_one() {
        let gates = Arc::new(Gates::default());
        let reader = gates.enter(7, LockMode::Shared, false, None).await;
        let writer = tokio::spawn({
            let gates = gates.clone();
            async move {
                gates
                    .enter(7, LockMode::Exclusive, true, None)
                    .await
                    .is_ok()
            }
        });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        let second = gates.enter(7, LockMode::Shared, false, None).await;
        assert!(second.is_ok());
        drop((reader, second));
        assert!(writer.await.unwrap());
        assert!(gates.keys.lock().unwrap().is_empty());
    }

    /// Waiting exclusive contenders go through in the order they came: one
    /// woken at the head of the line when the gate empties is not passed by
    /// a newcomer that finds it empty first.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_exclusive_passes_go_first_come_first_served() {
        use std::future::Future;
        let gates = Arc::new(Gates::default());
        let holder = gates.enter(7, LockMode::Exclusive, false, None).await;
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let gates = gates.clone();
            async move {
                let pass = gates.enter(7, LockMode::Exclusive, true, None).await;
                let _ = left.await;
                pass.is_ok()
            }
        });
        tokio::task::yield_now().await;
        drop(holder);
        // The head of the line is woken, not yet run: a newcomer now.
        let newcomer = gates.enter(7, LockMode::Exclusive, true, None);
        tokio::pin!(newcomer);
        let at_once = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(newcomer.as_mut().poll(cx).is_ready())
        })
        .await;
        assert!(
            !at_once,
            "a newcomer went through before the head of the line"
        );
        drop(leave);
        assert!(first.await.unwrap());
        assert!(newcomer.await.is_ok());
    }
}

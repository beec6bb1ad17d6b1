//! The waiting board: this process's lines of waiters, published for
//! other processes to read (`LockMgr::holders`, `lockmgr status`): how many
//! of its tasks wait for which file, and since when. It lives in shared
//! memory (`os::Board`, made with the first line), so a change costs no
//! system call on the waiting path; others read it through `/proc/PID/fd`.
//! A forked child starts a board of its own.

use std::sync::MutexGuard;

use crate::forkable::Forkable;
use crate::os::{self, FileId};

#[derive(Default)]
enum State {
    #[default]
    Untried,
    Ready(os::Board),
    /// No board could be made (no memfd): waiting goes on unpublished.
    Unavailable,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: Forkable<State> = Forkable::new();
    STATE.lock()
}

/// Publishes that `tasks` tasks of this process wait for `file`, the
/// longest since `since_ms` (Unix milliseconds); 0 clears it.
pub(crate) fn publish(file: FileId, tasks: usize, since_ms: u64) {
    let mut guard = state();
    let state = &mut *guard;
    if matches!(state, State::Untried) {
        if tasks == 0 {
            return;
        }
        *state = match os::Board::for_waiters() {
            Ok(board) => State::Ready(board),
            Err(e) => {
                tracing::debug!(error = %e, "lockmgr: no waiting board (waiters are not published)");
                State::Unavailable
            }
        };
    }
    if let State::Ready(board) = state {
        board.publish(file.numbers(), tasks as u64, since_ms);
    }
}

//! Tokio's clock as the waits use it: timers that a waiting future may
//! take from one runtime to another, and whether the clock runs with the
//! real one (which decides whether a kernel timer may stand in for Tokio's).

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

/// Tokio's `sleep_until(at)`: true once `at` has come, false as soon as it
/// is polled on another runtime than the one it began on. A Tokio timer
/// belongs to the runtime it was made on and panics when polled after that
/// runtime has shut down, so a wait whose future moved makes its timers
/// anew where it now runs.
pub(crate) async fn sleep_here(at: Instant) -> bool {
    let runtime = || tokio::runtime::Handle::try_current().ok().map(|h| h.id());
    let home = runtime();
    let mut sleep = std::pin::pin!(sleep_until(at));
    std::future::poll_fn(|cx| {
        if runtime() != home {
            return std::task::Poll::Ready(false);
        }
        sleep.as_mut().poll(cx).map(|()| true)
    })
    .await
}

/// Whether Tokio's clock, which read `now`, runs with the real monotonic
/// clock: it does unless it is paused (Tokio's `test-util`), when it reads
/// the same however much real time passes, or was paused or advanced
/// before, when it is off by the time skipped or missed.
pub(crate) fn follows_real_clock(now: Instant) -> bool {
    /// Far more than a few readings of the clock take. A clock resumed
    /// after a pause, or advanced, by less than this is taken for the real
    /// one: the deadline then comes at most this much early or late.
    const SLACK: Duration = Duration::from_millis(5);
    // A running clock moves within a few readings; a paused one never.
    let Some(ours) = (0..1000).map(|_| Instant::now()).find(|t| *t > now) else {
        return false;
    };
    let (ours, real) = (ours.into_std(), std::time::Instant::now());
    real.saturating_duration_since(ours) < SLACK && ours.saturating_duration_since(real) < SLACK
}

//! Tokio's clock as the waits use it: timers that a waiting future may
//! take from one runtime to another, and whether the clock runs with the
//! real one (which decides whether a kernel timer may stand in for Tokio's).

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::os;

/// Tokio's `sleep_until(at)`: true once `at` has come, false as soon as it
/// is polled on another runtime than the one it began on. A Tokio timer
/// belongs to the runtime it was made on and panics when polled after that
/// runtime has shut down, so a wait whose future moved makes its timers
/// anew where it now runs.
pub(crate) async fn sleep_here(at: Instant) -> bool {
    let home = os::runtime_id();
    let mut sleep = std::pin::pin!(sleep_until(at));
    std::future::poll_fn(|cx| {
        if os::runtime_id() != home {
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

/// Tokio's `sleep_until(at)`, kept to `at` across moves to other runtimes
/// (see [`sleep_here`]).
pub(crate) async fn sleep_until_here(at: Instant) {
    while !sleep_here(at).await {}
}

/// Tokio's `timeout_at(deadline, fut)`: `fut`'s output, or `None` once
/// `deadline` has come, with the timer made anew on any runtime the future
/// moves to (see [`sleep_here`]). `fut` is polled first, so an output ready
/// at the deadline counts.
pub(crate) async fn until_here<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            here = sleep_here(deadline) => if here {
                return None;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Polls `fut` once on a runtime that then shuts down, and returns what
    /// it gives on a second one.
    fn moved<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let first = runtime();
        first.block_on(async {
            tokio::select! {
                biased;
                _ = &mut fut => panic!("ready at once"),
                () = tokio::task::yield_now() => {}
            }
        });
        drop(first);
        runtime().block_on(fut)
    }

    #[test]
    fn a_sleep_moved_to_another_runtime_ends_at_its_time() {
        let started = std::time::Instant::now();
        let wait = Duration::from_millis(200);
        moved(async move { sleep_until_here(Instant::now() + wait).await });
        assert!(
            started.elapsed() >= wait,
            "ended after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_bound_moved_to_another_runtime_ends_at_its_deadline() {
        let started = std::time::Instant::now();
        let wait = Duration::from_millis(200);
        let out = moved(async move {
            until_here(Instant::now() + wait, std::future::pending::<()>()).await
        });
        assert_eq!(out, None);
        assert!(
            started.elapsed() >= wait,
            "ended after {:?}",
            started.elapsed()
        );
        // And the output of a future ready before the deadline (which a
        // plain `timeout_at` gives too: not a check of the move).
        let out = moved(async move {
            until_here(Instant::now() + wait, async {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                7
            })
            .await
        });
        assert_eq!(out, Some(7));
    }
}

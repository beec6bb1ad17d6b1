//! `lockmgr::pg` against a real PostgreSQL server, with helper processes.
//!
//! The server's URL comes from `LOCKMGR_PG_URL`, which `scripts/with-postgres`
//! (and so `scripts/test` and CI) provides. When it is set, every test here
//! must reach the server: an unreachable server fails them. Without it (a
//! bare `cargo test --all-features`), they say so and pass nothing off as
//! tested: each returns at once after printing that it did not run.
#![deny(unsafe_code)]

mod common;
#[path = "common/pg.rs"]
mod pg_common;

use std::future::Future;
use std::time::Duration;

use common::LIVENESS;
use lockmgr::pg::PgLockMgr;
use lockmgr::LockError;
use nix::sys::signal::Signal;
use pg_common::{
    admin, config_as, contend, left_by, lock_rows, lock_token_row, name, pg_holder,
    token_draw_waits, waits_on_server,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_across_processes_names_the_holding_session() {
    let Some(url) = common::pg_url() else { return };
    let name = name("exclusion");
    let holder = pg_holder(&url, &name, &["--label=nightly-report"]);
    let lock = PgLockMgr::builder(&url, &name)
        .max_attempts(2)
        .build()
        .unwrap();

    let err = lock.try_acquire().await.unwrap_err();
    let LockError::WouldBlock {
        lock: id,
        holder: who,
    } = &err
    else {
        panic!("expected WouldBlock, got {err}");
    };
    assert!(
        id.to_string().ends_with(&format!("/postgres/{name}")),
        "{err}"
    );
    let who = who.as_ref().expect("the holding session is named");
    assert_eq!(who.label.as_deref(), Some("nightly-report"));
    assert_eq!(who.host, "127.0.0.1");
    assert!(who.pid > 0);
    let age = std::time::SystemTime::now()
        .duration_since(who.since)
        .unwrap_or_default();
    assert!(age < LIVENESS, "since {:?}", who.since_utc());
    assert_eq!(lock.holder().await.unwrap().unwrap().pid, who.pid);

    // A zero timeout is one try; a short wait times out after its attempts.
    assert!(matches!(
        lock.acquire(true, Duration::ZERO).await,
        Err(LockError::WouldBlock { .. })
    ));
    let started = Instant::now();
    match lock.acquire(true, Duration::from_millis(150)).await {
        Err(LockError::TimedOut {
            attempts,
            waited,
            holder: Some(h),
            ..
        }) => {
            assert_eq!(attempts, 2);
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            assert_eq!(h.pid, who.pid);
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(started.elapsed() < LIVENESS);

    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, LIVENESS).await }
    });
    holder.finish();
    let guard = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in")
        .unwrap()
        .unwrap();
    assert!(lock.holder().await.unwrap().is_some());
    guard.release().await.unwrap();
    assert!(lock.holder().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_holding_process_lets_a_waiter_in() {
    let Some(url) = common::pg_url() else { return };
    let name = name("sigkill");
    let holder = pg_holder(&url, &name, &[]);
    let lock = PgLockMgr::builder(&url, &name)
        .max_attempts(1)
        .build()
        .unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(120)).await }
    });
    // The waiter is queued on the server once its lock request shows up
    // as not granted.
    let admin = admin(&url).await;
    tokio::time::timeout(LIVENESS, async {
        while lock_rows(&admin, &lock).await < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiter never queued on the server");
    holder.kill(Signal::SIGKILL);
    let guard = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in after the holder was killed")
        .unwrap()
        .unwrap();
    assert!(!guard.is_lost());
}

/// A session this process shares between its locks is terminated by an
/// administrator just before another lock is taken: the try that finds it
/// gone is made again on another session, and the lock is won. (Before,
/// the acquire failed with `Connect`, "the session ended", in most rounds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_ended_under_a_try_is_replaced() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    // Settings of their own: sessions no other test of this binary shares.
    let build = |name: &str| {
        PgLockMgr::builder(&url, name)
            .label("replaced-session")
            .build()
            .unwrap()
    };
    let first = build(&name("replaced-a"));
    let second = build(&name("replaced-b"));
    for round in 0..20 {
        let held = first.acquire(true, LIVENESS).await.unwrap();
        let backend = first.holder().await.unwrap().expect("held").pid as i32;
        admin
            .query_one("SELECT pg_terminate_backend($1)", &[&backend])
            .await
            .unwrap();
        let other = second
            .try_acquire()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        other.release().await.unwrap();
        held.lost().await;
        drop(held);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_resolves_lost_and_lets_a_waiter_in() {
    let Some(url) = common::pg_url() else { return };
    let name = name("terminate");
    // Sessions of their own (a label of their own): the terminated session
    // must not be one that other tests of this process hold locks on.
    let build = || {
        PgLockMgr::builder(&url, &name)
            .label("terminated-session")
            .build()
            .unwrap()
    };
    let lock = build();
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    let backend = lock.holder().await.unwrap().expect("held").pid as i32;
    let waiter = tokio::spawn({
        let lock = build();
        async move { lock.acquire(true, LIVENESS).await }
    });
    let admin = admin(&url).await;
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    tokio::time::timeout(LIVENESS, guard.lost())
        .await
        .expect("lost() did not resolve");
    assert!(guard.is_lost());
    let next = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in")
        .unwrap()
        .unwrap();
    assert!(next.fencing_token() > guard.fencing_token());
    // Releasing a lost guard says so.
    assert!(matches!(
        guard.release().await,
        Err(LockError::Connect { .. } | LockError::Server { .. })
    ));
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_across_processes() {
    let Some(url) = common::pg_url() else { return };
    // One holder at a time, and the tokens in the order of the holdings.
    contend(&url, &name("fence"), 4, 50);
}

/// An acquire of a held lock dropped after 1, 2, 3, ... polls: at every
/// await point (the pooling probe, connecting, logging in, the fence
/// table, the try, the waiting session, the wait itself) until it waits on
/// the server. Each time, once dropped (with its `PgLockMgr`), the server
/// soon holds no session and no lock request of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_at_any_poll_leaves_nothing_on_the_server() {
    let Some(url) = common::pg_url() else { return };
    let name = name("cancel");
    let holder = PgLockMgr::builder(&url, &name)
        .label("cancel-holder")
        .build()
        .unwrap();
    let held = holder.acquire(true, LIVENESS).await.unwrap();
    let admin = admin(&url).await;
    let mut reached_the_wait = false;
    for polls in 1..=400u32 {
        let label = format!("cancel-{}-{polls}", std::process::id());
        let lock = PgLockMgr::builder(&url, &name)
            .label(&label)
            .build()
            .unwrap();
        let mut acquire = Box::pin(lock.acquire(true, Duration::MAX));
        let mut made = 0;
        // Poll it `polls` times, each time after it asked to be woken; stop
        // early once it waits on the server.
        let polled = std::future::poll_fn(|cx| {
            if made == polls {
                return std::task::Poll::Ready(None);
            }
            made += 1;
            acquire.as_mut().poll(cx).map(Some)
        });
        let waited = tokio::select! {
            result = polled => {
                assert!(result.is_none(), "won a held lock");
                false
            }
            () = async { while !waits_on_server(&admin, &label).await {} } => true,
        };
        drop(acquire);
        drop(lock);
        tokio::time::timeout(LIVENESS, async {
            while left_by(&admin, &label).await != (0, 0) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("dropped after {made} polls, the acquire left sessions or requests behind")
        });
        if waited {
            eprintln!("the acquire waited on the server after {made} polls");
            reached_the_wait = true;
            break;
        }
    }
    assert!(
        reached_the_wait,
        "no acquire ever got to wait on the server"
    );
    assert_eq!(lock_rows(&admin, &holder).await, 1, "only the holder's row");
    held.release().await.unwrap();
    assert_eq!(lock_rows(&admin, &holder).await, 0);
}

/// 300 acquires of a held lock, each by a `PgLockMgr` of its own (its own
/// sessions), dropped at random moments up to a little after the time an
/// acquire takes to wait on the server: most land while the wait statement
/// is on its way, where a cancel request can overtake it. Afterwards the
/// server holds no session and no request of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_dropped_at_random_moments_leave_nothing_on_the_server() {
    const DROPS: u64 = 300;
    const AT_ONCE: usize = 10;
    let Some(url) = common::pg_url() else { return };
    let name = name("random-drop");
    let holder = PgLockMgr::new(&url, &name).unwrap();
    let held = holder.acquire(true, LIVENESS).await.unwrap();
    let admin = admin(&url).await;
    let prefix = format!("drop-{}-", std::process::id());
    let lock = |i: u64| {
        PgLockMgr::builder(&url, &name)
            .label(format!("{prefix}{i}"))
            .transaction_pooling(Some(false))
            .build()
            .unwrap()
    };
    // How long an acquire takes to be waiting on the server.
    let probe = lock(DROPS);
    let started = Instant::now();
    let waiting = tokio::spawn({
        let probe = probe.clone();
        async move { probe.acquire(true, LIVENESS).await }
    });
    tokio::time::timeout(LIVENESS, async {
        while !waits_on_server(&admin, &format!("{prefix}{DROPS}")).await {
            assert!(
                !waiting.is_finished(),
                "the probe did not wait: the lock was free"
            );
        }
    })
    .await
    .expect("the probe never waited on the server");
    let to_wait = started.elapsed();
    waiting.abort();
    drop(probe);

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..DROPS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = to_wait.mul_f64(1.3 * (seed % 1000) as f64 / 1000.0);
        let lock = lock(i);
        batch.spawn(async move {
            let r = tokio::time::timeout(at, lock.acquire(true, LIVENESS)).await;
            assert!(r.is_err(), "won a lock that is held");
        });
        if batch.len() == AT_ONCE {
            batch.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = batch.join_next().await {
        r.unwrap();
    }
    tokio::time::timeout(LIVENESS, async {
        while left_by(&admin, &format!("{prefix}%")).await != (0, 0) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("dropped acquires left sessions or lock requests behind (a wait takes {to_wait:?} to start)")
    });
    assert_eq!(lock_rows(&admin, &holder).await, 1, "only the holder's row");
    held.release().await.unwrap();
}

/// A thousand tasks of one process waiting for one lock wait in line in
/// the process: one session waits on the server, and they all get the lock
/// in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiting_tasks_cost_one_waiting_session() {
    const TASKS: usize = 1000;
    let Some(url) = common::pg_url() else { return };
    let name = name("line");
    let holder = PgLockMgr::builder(&url, &name)
        .label("line-holder")
        .build()
        .unwrap();
    let held = holder.acquire(true, LIVENESS).await.unwrap();
    let label = format!("line-{}", std::process::id());
    let lock = PgLockMgr::builder(&url, &name)
        .label(&label)
        .build()
        .unwrap();
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (lock, inside) = (lock.clone(), inside.clone());
        tasks.spawn(async move {
            let guard = lock.acquire(true, LIVENESS * 4).await.unwrap();
            assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
            tokio::task::yield_now().await;
            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            guard.release().await.unwrap();
        });
    }
    let admin = admin(&url).await;
    tokio::time::timeout(LIVENESS, async {
        while !waits_on_server(&admin, &label).await {}
    })
    .await
    .expect("nobody waited on the server");
    let (sessions, requests) = left_by(&admin, &label).await;
    assert!(
        sessions <= 3,
        "{sessions} sessions for {TASKS} waiting tasks"
    );
    assert_eq!(requests, 1, "one request waits on the server");
    held.release().await.unwrap();
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// One process holds 1,000 names at once on a server that allows 100
/// connections; it costs a few sessions, and the process (and everyone
/// else) can still ask the server things.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_held_names_cost_a_few_sessions() {
    const NAMES: usize = 1000;
    let Some(url) = common::pg_url() else { return };
    let label = format!("many-{}", std::process::id());
    let mut guards = Vec::new();
    for i in 0..NAMES {
        let lock = PgLockMgr::builder(&url, format!("{}-{i}", name("many")))
            .label(&label)
            .build()
            .unwrap();
        let guard = lock.try_acquire().await.unwrap();
        guards.push((lock, guard));
    }
    let admin = admin(&url).await;
    let (sessions, requests) = left_by(&admin, &label).await;
    assert!(sessions <= 2, "{sessions} sessions hold {NAMES} locks");
    assert_eq!(requests, NAMES as i64);
    let (lock, guard) = &guards[NAMES / 2];
    let holder = lock.holder().await.unwrap().expect("held");
    assert_eq!(holder.label.as_deref(), Some(label.as_str()));
    assert!(!guard.is_lost());
    // Distinct names held by one session do not stand in each other's way,
    // nor in an outsider's.
    let outsider = PgLockMgr::new(&url, name("many-outsider")).unwrap();
    assert_eq!(outsider.status().await.unwrap(), lockmgr::Status::Free);
    assert!(guards[0].0.try_acquire().await.unwrap_err().is_contended());
    let tokens: Vec<u64> = guards.iter().map(|(_, g)| g.fencing_token()).collect();
    assert!(tokens.iter().all(|&t| t >= 1));
    for (_, guard) in guards {
        guard.release().await.unwrap();
    }
    assert_eq!(left_by(&admin, &label).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holders_exclude_an_exclusive_one() {
    let Some(url) = common::pg_url() else { return };
    let name = name("shared");
    let lock = PgLockMgr::new(&url, &name).unwrap();
    let other = pg_holder(&url, &name, &["--shared"]);
    let mine = lock.acquire_shared(true, LIVENESS).await.unwrap();
    assert_eq!(mine.lock_mode(), lockmgr::LockMode::Shared);
    assert!(lock.try_acquire().await.unwrap_err().is_contended());
    assert!(lock.holder().await.unwrap().is_none(), "held shared");
    let writer = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, LIVENESS).await }
    });
    mine.release().await.unwrap();
    other.finish();
    let writer = tokio::time::timeout(LIVENESS, writer)
        .await
        .expect("the writer was not let in after both readers left")
        .unwrap()
        .unwrap();
    assert!(lock.try_acquire_shared().await.unwrap_err().is_contended());
    writer.release().await.unwrap();
}

/// Tasks that reach a server which never answers (a listener that accepts
/// nobody: the login waits forever) each fail within their own connect
/// timeout, tries and reads alike. Before, they queued for one connect at a
/// time: the fourth try failed after four timeouts. No server is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_to_a_server_that_never_answers_fail_each_within_its_bound() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("host=127.0.0.1 port={port} user=nobody dbname=x sslmode=disable");
    let bound = Duration::from_secs(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let lock = PgLockMgr::builder(&url, format!("silent-{i}"))
            .connect_timeout(bound)
            .request_timeout(bound)
            .build()
            .unwrap();
        let reads = lock.clone();
        tasks.spawn(async move { ("try", lock.try_acquire().await.map(drop), started.elapsed()) });
        tasks.spawn(async move { ("status", reads.status().await.map(drop), started.elapsed()) });
    }
    while let Some(done) = tasks.join_next().await {
        let (what, result, after) = done.unwrap();
        assert!(
            matches!(result, Err(LockError::Connect { .. })),
            "{what}: {result:?}"
        );
        // A second's timeout, and a second more for a loaded machine: the
        // old queue took four.
        assert!(after < bound * 3, "a {what} failed after {after:?}");
    }
    drop(listener);
}

/// Sessions let go as idle are never ones a try is still using: tasks of
/// one process that take and let go different locks at once, with no idle
/// session kept (so that every release that leaves a session holding
/// nothing ends it), all get their locks, and keep them. Before, a release
/// could end the session another task's try was running on: that try
/// failed (twice: `Connect`), or won on a session that was then ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_let_go_as_idle_is_never_one_a_try_uses() {
    let Some(url) = common::pg_url() else { return };
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let lock = PgLockMgr::builder(&url, name(&format!("idle-trim-{t}")))
            .max_idle_sessions(0)
            .build()
            .unwrap();
        tasks.spawn(async move {
            for round in 0..150 {
                let guard = lock
                    .try_acquire()
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, round {round}: {e}"));
                assert!(!guard.is_lost(), "task {t}, round {round}: lost at once");
                tokio::task::yield_now().await;
                guard
                    .release()
                    .await
                    .unwrap_or_else(|e| panic!("task {t}, round {round}: {e}"));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// A forked child of a process that holds a lock takes locks, and reads
/// them, on sessions of its own, and cannot let go of the parent's lock
/// through the guard it inherited (its release says so at once). Before,
/// its try picked the parent's session, whose connection no thread of the
/// child drives, and never returned.
#[tokio::test]
async fn a_forked_child_locks_on_sessions_of_its_own() {
    let Some(url) = common::pg_url() else { return };
    let name = name("forked");
    let out = common::helper_command("pg-fork", [url.as_str(), name.as_str()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("child: ok"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?}", out.status);
}

/// A `release()` dropped after its unlock went out sends no second one.
/// Two shared holds of one process stack on one session, where the server
/// counts them: a second unlock let go of the other task's hold too (before,
/// that task's own release then found nothing held, and another process
/// could have taken the lock exclusively meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_dropped_after_its_unlock_went_out_unlocks_once() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let name = name("release-dropped");
    // A server of its own in this process (the label makes it one), so
    // that other tests' sessions are not in its list: the three holds must
    // stack on one session.
    let lock = PgLockMgr::builder(&url, &name)
        .label(format!("release-dropped-{}", std::process::id()))
        .build()
        .unwrap();
    let mut cancelled = 0;
    for round in 0..20 {
        let a = lock.acquire_shared(true, LIVENESS).await.unwrap();
        let c = lock.acquire_shared(true, LIVENESS).await.unwrap();
        assert_eq!(lock_rows(&admin, &lock).await, 1, "two sessions hold it");
        let mut release = Box::pin(a.release());
        // Polled once, so that the unlock goes out, then dropped (unless a
        // preempted test thread found it answered already).
        tokio::select! {
            biased;
            r = &mut release => r.unwrap(),
            () = std::future::ready(()) => {
                cancelled += 1;
                drop(release);
            }
        }
        // A third hold, whose try goes out after whatever the drop sent.
        let d = lock.acquire_shared(true, LIVENESS).await.unwrap();
        assert_eq!(lock_rows(&admin, &lock).await, 1, "two sessions hold it");
        for (guard, which) in [(c, "second"), (d, "third")] {
            assert!(!guard.is_lost());
            guard.release().await.unwrap_or_else(|e| {
                panic!("round {round}: the {which} hold had been let go by the first's: {e}")
            });
        }
        assert_eq!(lock_rows(&admin, &lock).await, 0);
    }
    assert!(cancelled > 0, "no release was dropped before its answer");
}

#[tokio::test]
async fn a_server_that_is_down_or_refuses_the_login_is_a_typed_error() {
    let Some(url) = common::pg_url() else { return };
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = PgLockMgr::new(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        "x",
    )
    .unwrap();
    match down.acquire(true, Duration::from_secs(5)).await {
        Err(e @ LockError::Connect { .. }) => {
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }

    // The same URL with another password.
    let at = url.find('@').unwrap();
    let colon = url[..at].rfind(':').unwrap();
    let wrong = format!("{}wrong{}", &url[..=colon], &url[colon + 1..]);
    let wrong = PgLockMgr::new(&wrong, "x").unwrap();
    let err = wrong.try_acquire().await.unwrap_err();
    assert!(matches!(err, LockError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaked: {err}"
    );

    // An address that never answers: bounded by the wait, not by TCP.
    let silent = PgLockMgr::builder(
        "host=10.255.255.1 port=5432 user=postgres connect_timeout=600",
        "x",
    )
    .max_attempts(1)
    .build()
    .unwrap();
    let started = Instant::now();
    let err = silent
        .acquire(true, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Connect { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `sql` as the superuser (DBA work for a test).
/// Whether `role` may create tables in schema `public`.
async fn may_create(admin: &tokio_postgres::Client, role: &str) -> bool {
    admin
        .query_one(
            &format!("SELECT has_schema_privilege('{role}', 'public', 'CREATE')"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn as_dba(admin: &tokio_postgres::Client, sql: &str) {
    admin
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A role with a schema of its own (first on its `search_path`, as
/// `"$user"` is by default) shares the tokens of everyone else: the table
/// is `public.lockmgr_fence`, not the first schema on the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_table_is_the_same_for_every_search_path() {
    let Some(url) = common::pg_url() else { return };
    let tls_url = std::env::var("LOCKMGR_PG_TLS_URL").expect("scripts/with-postgres");
    let admin = admin(&url).await;
    as_dba(
        &admin,
        "CREATE SCHEMA IF NOT EXISTS lockmgr_tls AUTHORIZATION lockmgr_tls",
    )
    .await;
    let name = name("search-path");
    let mut last = 0;
    for config in [&url, &tls_url, &url, &tls_url] {
        let lock = PgLockMgr::new(config, &name).unwrap();
        let guard = lock.acquire(true, LIVENESS).await.unwrap();
        assert!(guard.fencing_token() > last, "one sequence for every role");
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
    let own: bool = admin
        .query_one(
            "SELECT to_regclass('lockmgr_tls.lockmgr_fence') IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(own, "a table in the role's own schema");
}

/// A role without `CREATE` uses a table a DBA made with
/// `fence_table_sql`; without one, the error says what the server said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_uses_the_table_a_dba_made() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let role = format!("lockmgr_nocreate_{}", std::process::id());
    let table = format!("public.fence_by_dba_{}", std::process::id());
    // A name with capitals names the table `fence_table_sql` makes (its
    // parts quoted), and is found as that one.
    let capitals = format!("public.Fence_By_DBA_{}", std::process::id());
    as_dba(
        &admin,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'nocreate-pw'; \
             REVOKE CREATE ON SCHEMA public FROM {role}; {}; {}; \
             GRANT SELECT, INSERT, UPDATE ON {table}, public.\"Fence_By_DBA_{}\" TO {role}",
            lockmgr::pg::fence_table_sql(&table),
            lockmgr::pg::fence_table_sql(&capitals),
            std::process::id()
        ),
    )
    .await;
    assert!(!may_create(&admin, &role).await);
    let config = config_as(&role, "nocreate-pw");
    for table in [&table, &capitals] {
        let lock = PgLockMgr::builder(&config, name("nocreate"))
            .fence_table(table)
            .build()
            .unwrap();
        for want in 1..=2 {
            let guard = lock
                .acquire(true, LIVENESS)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
            assert_eq!(guard.fencing_token(), want);
            guard.release().await.unwrap();
        }
    }

    let missing = PgLockMgr::builder(&config, name("nocreate"))
        .fence_table(format!("public.missing_{}", std::process::id()))
        .build()
        .unwrap();
    let e = missing.acquire(true, LIVENESS).await.unwrap_err();
    assert!(
        matches!(
            e,
            LockError::Server {
                op: lockmgr::Operation::Fence,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("42501") && text.contains("permission denied"),
        "{text}"
    );
    assert!(!text.contains("db error"), "{text}");
}

/// `status()` and `holder()` only read: a role that may not make the token
/// table (a monitoring role, or any role on a standby), on a database where
/// the table is not there yet, or may not read it, still learns that a free
/// lock is free and who holds a held one. Before, both failed with a
/// `Server` error (42501), from making the table or reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_make_the_token_table_still_reads_the_status() {
    use lockmgr::Status;
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let role = format!("lockmgr_monitor_{}", std::process::id());
    as_dba(
        &admin,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'monitor-pw'; \
             REVOKE CREATE ON SCHEMA public FROM {role}"
        ),
    )
    .await;
    assert!(!may_create(&admin, &role).await);
    // A table the DBA made for the application's role only: there, but
    // not readable by this one.
    let unreadable = format!("public.fence_unreadable_{}", std::process::id());
    as_dba(&admin, &lockmgr::pg::fence_table_sql(&unreadable)).await;
    let name = name("monitor");
    for table in [format!("public.absent_{}", std::process::id()), unreadable] {
        let watcher = PgLockMgr::builder(&config_as(&role, "monitor-pw"), &name)
            .fence_table(&table)
            .build()
            .unwrap();
        assert_eq!(watcher.status().await.unwrap(), Status::Free, "{table}");
        let holder = pg_holder(&url, &name, &["--label=the-holder"]);
        match watcher.status().await.unwrap() {
            Status::Exclusive { holder: Some(h) } => {
                assert_eq!(h.label.as_deref(), Some("the-holder"), "{h:?}");
            }
            other => panic!("{table}: {other:?}"),
        }
        let named = watcher.holder().await.unwrap();
        assert!(named.is_some_and(|h| h.label.as_deref() == Some("the-holder")));
        holder.finish();
    }
}

/// A DBA's table with other column types than ours works where the values
/// convert, and is a typed error (no panic) where they do not; a lock whose
/// token cannot be drawn is let go before the error is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_fence_column_types_are_errors_not_panics() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let numeric = format!("public.fence_numeric_{}", std::process::id());
    let uuid = format!("public.fence_uuid_{}", std::process::id());
    as_dba(
        &admin,
        &format!(
            "CREATE TABLE {numeric} (name text PRIMARY KEY, token numeric NOT NULL, \
             holder_pid bigint, since timestamp); \
             CREATE TABLE {uuid} (name text PRIMARY KEY, token uuid, holder_pid integer, \
             since timestamptz)"
        ),
    )
    .await;
    let name = name("odd-columns");
    let lock = PgLockMgr::builder(&url, &name)
        .fence_table(&numeric)
        .build()
        .unwrap();
    for want in 1..=2 {
        let guard = lock.acquire(true, LIVENESS).await.unwrap();
        assert_eq!(guard.fencing_token(), want);
        assert!(lock.holder().await.unwrap().is_some());
        guard.release().await.unwrap();
    }
    let odd = PgLockMgr::builder(&url, &name)
        .fence_table(&uuid)
        .build()
        .unwrap();
    // Let go before the error comes back: free at once, on the server and
    // for this process's next try.
    for _ in 0..10 {
        let e = odd.acquire(true, LIVENESS).await.unwrap_err();
        assert!(
            matches!(
                e,
                LockError::Server {
                    op: lockmgr::Operation::Fence,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("42804"), "{e}");
        let guard = lock
            .try_acquire()
            .await
            .expect("free once the failed acquire returned");
        guard.release().await.unwrap();
    }
    assert_eq!(lock_rows(&admin, &lock).await, 0, "left held");
}

/// The fencing token is drawn without the wait's `lock_timeout`: a token
/// row that another transaction keeps locked for longer than one attempt
/// delays the acquire instead of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fencing_token_is_not_bound_by_the_waits_lock_timeout() {
    let Some(url) = common::pg_url() else { return };
    const ATTEMPT: Duration = Duration::from_millis(300);
    let name = name("token-timeout");
    let holder = PgLockMgr::builder(&url, &name)
        .label("token-holder")
        .build()
        .unwrap();
    let held = holder.acquire(true, LIVENESS).await.unwrap();
    let label = format!("token-waiter-{}", std::process::id());
    let waiter = PgLockMgr::builder(&url, &name)
        .label(&label)
        .max_attempts(100)
        .build()
        .unwrap();
    let mut acquire = tokio::spawn(async move { waiter.acquire(true, ATTEMPT).await });

    // A DBA keeps the token row locked.
    let dba = lock_token_row(&url, &name).await;
    held.release().await.unwrap();

    // The waiter won, and its token statement has been blocked on the row
    // for twice an attempt's lock_timeout.
    let admin = admin(&url).await;
    tokio::select! {
        () = token_draw_waits(&admin, &label, 2.0 * ATTEMPT.as_secs_f64()) => {}
        r = &mut acquire => panic!("the acquire ended while the token row was locked: {r:?}"),
        () = tokio::time::sleep(LIVENESS) => panic!("the token statement never waited"),
    }
    dba.batch_execute("COMMIT").await.unwrap();
    let guard = tokio::time::timeout(LIVENESS, acquire)
        .await
        .expect("the acquire did not finish")
        .unwrap()
        .unwrap();
    assert!(guard.fencing_token() >= 2);
    guard.release().await.unwrap();
}

/// An acquire dropped after it won the lock, while its fencing token is
/// drawn (here held up by a DBA's lock on the token's row), lets the lock
/// go. Before, the lock stayed with this process's shared session for as
/// long as the process kept one: nobody, this process included, could have
/// it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_while_its_token_is_drawn_lets_the_lock_go() {
    let Some(url) = common::pg_url() else { return };
    let name = name("drop-in-draw");
    let label = format!("drop-in-draw-{}", std::process::id());
    let lock = PgLockMgr::builder(&url, &name)
        .label(&label)
        .build()
        .unwrap();
    // The token's row exists.
    lock.acquire(true, LIVENESS)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let dba = lock_token_row(&url, &name).await;
    let admin = admin(&url).await;
    let mut acquire = Box::pin(lock.try_acquire());
    // Dropped once the token statement waits for the row: the lock is won.
    tokio::select! {
        () = token_draw_waits(&admin, &label, 0.0) => {}
        r = &mut acquire => panic!("the acquire ended while the token row was locked: {r:?}"),
        () = tokio::time::sleep(LIVENESS) => panic!("the token statement never waited"),
    }
    assert_eq!(lock_rows(&admin, &lock).await, 1, "won, before the drop");
    drop(acquire);
    dba.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(LIVENESS, async {
        while lock_rows(&admin, &lock).await != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dropped acquire's lock stayed held");
    // And this process can have it again. (Waiting: the process's own gate
    // for the lock is given back once the unlock's answer is in, a moment
    // after the server shows the lock free; a try in that moment finds it
    // busy, which this run hit once.)
    lock.acquire(true, LIVENESS)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Tries and acquires of a free lock, dropped at random moments around the
/// time one takes (the try's statement on its way or answered, the token
/// drawn or not): none leaves the lock held. Before, a try dropped after
/// its statement was sent, or an acquire dropped while its token was
/// drawn, could leave it held by this process's shared session for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_dropped_at_random_moments_leave_no_lock_held() {
    let Some(url) = common::pg_url() else { return };
    let name = name("drop-try");
    let lock = PgLockMgr::builder(&url, &name)
        .label(format!("drop-try-{}", std::process::id()))
        .build()
        .unwrap();
    let admin = admin(&url).await;
    // How long a whole try takes here, sessions made.
    let mut took = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        lock.try_acquire().await.unwrap().release().await.unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    let span = took[10].as_nanos() as u64 * 2;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    let mut left = 0;
    for round in 0..1000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_nanos(rng % span);
        let wait = round % 2 == 0;
        let acquire = async {
            if wait {
                lock.acquire(true, LIVENESS).await
            } else {
                lock.try_acquire().await
            }
        };
        if let Ok(Ok(guard)) = tokio::time::timeout(after, acquire).await {
            guard.release().await.unwrap();
        }
        let freed = tokio::time::timeout(LIVENESS, async {
            while lock_rows(&admin, &lock).await != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        if freed.is_err() {
            left += 1;
            eprintln!("round {round}: dropped after {after:?}, the lock stayed held");
            break;
        }
    }
    assert_eq!(left, 0, "a dropped try left the lock held");
}

/// A server that ends idle sessions (`idle_session_timeout` on the role,
/// the database, or here the connection) does not end the sessions that
/// hold locks, which are idle on purpose. Before, the lock was lost as soon
/// as the timeout passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_timeout_does_not_end_a_holding_session() {
    let Some(url) = common::pg_url() else { return };
    let join = if url.contains('?') { '&' } else { '?' };
    let short = format!("{url}{join}options=-c%20idle_session_timeout%3D300");
    let name = name("idle-timeout");
    let lock = PgLockMgr::builder(&short, &name)
        .label(format!("idle-timeout-{}", std::process::id()))
        .build()
        .unwrap();
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    // Three times the server's patience.
    let lost = tokio::time::timeout(Duration::from_millis(900), guard.lost()).await;
    assert!(lost.is_err(), "the idle holding session was ended");
    let admin = admin(&url).await;
    assert_eq!(lock_rows(&admin, &lock).await, 1);
    guard.release().await.unwrap();
}

/// A token table dropped while the process runs is made again at the next
/// acquire, with a warning that tokens start again at 1 (as a process that
/// starts then would). Before, every acquire of the `PgLockMgr` failed
/// ("relation does not exist") until the process restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_table_dropped_meanwhile_is_made_again() {
    let Some(url) = common::pg_url() else { return };
    let table = format!("public.fence_dropped_{}", std::process::id());
    let lock = PgLockMgr::builder(&url, name("dropped-table"))
        .fence_table(&table)
        .build()
        .unwrap();
    for want in 1..=2 {
        let guard = lock.acquire(true, LIVENESS).await.unwrap();
        assert_eq!(guard.fencing_token(), want);
        guard.release().await.unwrap();
    }
    as_dba(&admin(&url).await, &format!("DROP TABLE {table}")).await;
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    assert_eq!(guard.fencing_token(), 1);
    guard.release().await.unwrap();
    as_dba(&admin(&url).await, &format!("DROP TABLE {table}")).await;
}

/// A name PostgreSQL cannot keep in the token table (a NUL byte; more
/// bytes than its key can hold) is refused when the lock is built, with an
/// error that names the server and does not repeat a huge name whole.
/// Before, the lock was won on the server first and the token draw failed
/// (`54000`, `22021`), with the whole megabyte of name in the message.
#[test]
fn names_the_token_table_cannot_keep_are_refused_at_build() {
    let config = "host=db.invalid port=5432 user=app dbname=app";
    for bad in ["nul\0name".to_string(), "n".repeat(1 << 20)] {
        let e = PgLockMgr::new(config, &bad).unwrap_err();
        assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(text.contains("db.invalid"), "{text}");
    }
    PgLockMgr::new(config, "n".repeat(2000)).unwrap();
    // The row of semaphore "x"'s count: before, a lock of that name drew
    // its tokens there, and "x" then had more permits than its users said.
    let e = PgLockMgr::new(config, "x/permits").unwrap_err();
    assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
    PgLockMgr::new(config, "x/permits/y").unwrap();
}

/// The longest name allowed, of bytes that do not compress, is held and
/// gets its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_name_allowed_is_held_with_a_token() {
    let Some(url) = common::pg_url() else { return };
    let mut x = u64::from(std::process::id()) | 1;
    let longest: String = (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect();
    let lock = PgLockMgr::new(&url, &longest).unwrap();
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    assert!(guard.fencing_token() >= 1);
    guard.release().await.unwrap();
}

/// A wait's whole budget (its attempts times their length) bounds it on
/// PostgreSQL too, when an attempt is shorter than a round trip to the
/// server: 1,000 attempts of 100 us give up after about 100 ms, not after
/// 1,000 round trips. Before, every attempt was made (1.4 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_attempts_stop_when_the_wait_is_spent() {
    let Some(url) = common::pg_url() else { return };
    let name = name("short-attempts");
    let holder = PgLockMgr::builder(&url, &name)
        .label("short-attempts-holder")
        .build()
        .unwrap();
    let held = holder.acquire(true, LIVENESS).await.unwrap();
    for shared in [false, true] {
        let waiter = PgLockMgr::builder(&url, &name)
            .label(format!("short-attempts-{shared}"))
            .max_attempts(1000)
            .transaction_pooling(Some(shared))
            .build()
            .unwrap();
        let per = Duration::from_micros(100);
        match waiter.acquire(true, per).await {
            Err(LockError::TimedOut {
                attempts, waited, ..
            }) => {
                assert!(attempts < 1000, "all {attempts} attempts were made");
                assert!(waited >= per * attempts, "{waited:?} for {attempts}");
            }
            other => panic!("{other:?}"),
        }
    }
    held.release().await.unwrap();
}

/// A read that the server holds up past the request timeout (here a DBA's
/// `LOCK TABLE` on the token table, which the holder lookup joins) fails,
/// but takes no lock of this process with it: reads run on a session that
/// holds none. Before, they ran on the sessions that hold the locks; the
/// timeout closed one, and every lock on it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_loses_no_lock() {
    let Some(url) = common::pg_url() else { return };
    let label = format!("slow-read-{}", std::process::id());
    let build = |name: &str, label: &str| {
        PgLockMgr::builder(&url, name)
            .label(label)
            .request_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let (a, b) = (name("slow-read-a"), name("slow-read-b"));
    let mine = build(&a, &label);
    let held = mine.acquire(true, LIVENESS).await.unwrap();
    // B is held by another server's session, so that its status looks up
    // its holder; asked through the server (the label) that holds A.
    let other = build(&b, &format!("{label}-other"));
    let b_held = other.acquire(true, LIVENESS).await.unwrap();
    let asked = build(&b, &label);
    let slow = read_while_locked(&url, "public.lockmgr_fence", asked.status()).await;
    assert!(slow.is_err(), "{slow:?}");
    assert!(!held.is_lost(), "A was lost with the slow read's session");
    let admin = admin(&url).await;
    assert_eq!(lock_rows(&admin, &mine).await, 1);
    // Reads go on, on a new session.
    assert!(matches!(
        asked.status().await.unwrap(),
        lockmgr::Status::Exclusive { .. }
    ));
    held.release().await.unwrap();
    b_held.release().await.unwrap();
}

/// Held in a transaction of a connection of its own (transaction pooling,
/// here forced on a direct server), a lock costs that connection and the
/// one reads run on, and no shared session, which nothing would use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_in_a_transaction_costs_no_shared_session() {
    let Some(url) = common::pg_url() else { return };
    let label = format!("txn-sessions-{}", std::process::id());
    let lock = PgLockMgr::builder(&url, name("txn-sessions"))
        .label(&label)
        .transaction_pooling(Some(true))
        .build()
        .unwrap();
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    let admin = admin(&url).await;
    let (sessions, requests) = left_by(&admin, &label).await;
    assert_eq!((sessions, requests), (2, 1));
    guard.release().await.unwrap();
}

/// A `statement_timeout` of the role or the database (common in
/// production) does not cut a wait in a transaction short (the way behind a
/// transaction pooler, here forced on a direct server): the wait lifts it
/// for itself, as a session-level wait does. Before, the wait failed with a
/// `Server` error (57014) once that timeout passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_does_not_cut_a_wait_in_a_transaction_short() {
    let Some(url) = common::pg_url() else { return };
    let name = name("statement-timeout");
    let label = format!("statement-timeout-{}", std::process::id());
    let holder = pg_holder(&url, &name, &[]);
    let lock = PgLockMgr::builder(
        &format!("{url}?options=-c%20statement_timeout%3D200"),
        &name,
    )
    .label(&label)
    .transaction_pooling(Some(true))
    .max_attempts(1)
    .build()
    .unwrap();
    let e = lock
        .acquire(true, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::TimedOut { .. }), "{e:?}");
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, LIVENESS).await }
    });
    let admin = admin(&url).await;
    let until = Instant::now() + LIVENESS;
    while !waits_on_server(&admin, &label).await {
        assert!(
            Instant::now() < until,
            "the waiter never waited on the server"
        );
        tokio::task::yield_now().await;
    }
    holder.finish();
    let guard = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in")
        .unwrap()
        .unwrap();
    guard.release().await.unwrap();
}

/// What `read` gives while a DBA holds `table` locked (`LOCK TABLE ... IN
/// ACCESS EXCLUSIVE MODE`, in an open transaction committed after it).
async fn read_while_locked<T>(url: &str, table: &str, read: impl Future<Output = T>) -> T {
    let (dba, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    dba.batch_execute(&format!(
        "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .unwrap();
    let answer = read.await;
    dba.batch_execute("COMMIT").await.unwrap();
    answer
}

/// A role allowed one connection (`CONNECTION LIMIT 1`), named by `tag`,
/// with a token table of its own: its connection settings and that table.
async fn one_connection_role(admin: &tokio_postgres::Client, tag: &str) -> (String, String) {
    let role = format!("lockmgr_onecon{tag}_{}", std::process::id());
    let table = format!("public.fence_onecon{tag}_{}", std::process::id());
    as_dba(
        admin,
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'onecon-pw' CONNECTION LIMIT 1; {}; \
             GRANT SELECT, INSERT, UPDATE ON {table} TO {role}",
            lockmgr::pg::fence_table_sql(&table)
        ),
    )
    .await;
    (config_as(&role, "onecon-pw"), table)
}

/// A role allowed one connection (`CONNECTION LIMIT 1`) still locks, with
/// tokens and holder lookups: reads fall back to the shared session when
/// their own cannot be had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_allowed_one_connection_still_locks() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let (config, table) = one_connection_role(&admin, "").await;
    // The pooling probe needs two connections: told instead.
    let lock = PgLockMgr::builder(&config, name("onecon"))
        .fence_table(&table)
        .transaction_pooling(Some(false))
        .build()
        .unwrap();
    for want in 1..=2 {
        let guard = lock.acquire(true, LIVENESS).await.unwrap();
        assert_eq!(guard.fencing_token(), want);
        assert!(lock.holder().await.unwrap().is_some());
        guard.release().await.unwrap();
    }
}

/// Where the server allows one connection (a role's `CONNECTION LIMIT
/// 1`), reads fall back to the shared session that holds this process's
/// locks. A read the server holds up there (a DBA's lock on the token
/// table) is ended by the server itself (`statement_timeout`, below the
/// request timeout), so the session, and the lock held on it, live on. On
/// the old code the request timeout closed the session, and the lock held
/// on it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_on_the_only_connection_loses_no_lock() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    // A short request timeout; then a short `dead_session_after`, whose
    // liveness probe must not end the session while the read is held up
    // (the first version of the bound let the probe, queued behind the
    // read, time out first).
    let bounds = [
        (Duration::from_millis(800), Duration::from_secs(30)),
        (Duration::from_secs(10), Duration::from_secs(3)),
    ];
    for (round, (request, dead)) in bounds.into_iter().enumerate() {
        let (config, table) = one_connection_role(&admin, &format!("_slow{round}")).await;
        let build = |name: &str| {
            PgLockMgr::builder(&config, name)
                .fence_table(&table)
                .transaction_pooling(Some(false))
                .request_timeout(request)
                .dead_session_after(dead)
                .build()
                .unwrap()
        };
        let (a, b) = (name("onecon-slow-a"), name("onecon-slow-b"));
        let mine = build(&a);
        let held = mine.acquire(true, LIVENESS).await.unwrap();
        // B is held by another server's session (the DBA's), so that its
        // status looks its holder up in the token table.
        let other = PgLockMgr::builder(&url, &b)
            .fence_table(&table)
            .build()
            .unwrap();
        let b_held = other.acquire(true, LIVENESS).await.unwrap();
        let slow = read_while_locked(&url, &table, build(&b).status()).await;
        assert!(slow.is_err(), "{slow:?}");
        assert!(
            !held.is_lost(),
            "round {round}: A was lost with the slow read's session"
        );
        assert_eq!(lock_rows(&admin, &mine).await, 1, "round {round}");
        // Reads go on, on the same session.
        assert!(matches!(
            build(&b).status().await.unwrap(),
            lockmgr::Status::Exclusive { .. }
        ));
        held.release().await.unwrap();
        b_held.release().await.unwrap();
    }
}

/// With one connection allowed, the session whose reads are bounded on
/// the server (above) is also the one a wait runs on: the wait lifts the
/// bound for itself, and waits as long as the lock is held (here, past the
/// bound). With the first version of the bound, the session was never made
/// a waiting one, the second connection was refused, and `acquire` failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_allowed_one_connection_waits_past_its_read_bound() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let (config, table) = one_connection_role(&admin, "_wait").await;
    let label = format!("onecon-waiter-{}", std::process::id());
    let name = name("onecon-wait");
    let lock = PgLockMgr::builder(&config, &name)
        .fence_table(&table)
        .label(&label)
        .transaction_pooling(Some(false))
        .request_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    // A first holding draws its token on the only session: its reads are
    // bounded from then on.
    lock.acquire(true, LIVENESS)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let other = PgLockMgr::builder(&url, &name)
        .fence_table(&table)
        .build()
        .unwrap();
    let held = other.acquire(true, LIVENESS).await.unwrap();
    let waiter = tokio::spawn(async move { lock.acquire(true, LIVENESS).await });
    // Until the wait has lasted longer than any read bound (400 ms here).
    tokio::time::timeout(LIVENESS, async {
        loop {
            let long: bool = admin
                .query_one(
                    "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 \
                     AND wait_event_type = 'Lock' \
                     AND clock_timestamp() - query_start > interval '1 second'",
                    &[&label],
                )
                .await
                .unwrap()
                .get(0);
            if long {
                break;
            }
        }
    })
    .await
    .expect("the one-connection waiter never waited a second on the server");
    held.release().await.unwrap();
    let won = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in")
        .unwrap()
        .unwrap();
    assert!(won.fencing_token() > 1);
    won.release().await.unwrap();
}

/// A token is drawn only while its lock is held. A waiter wins the lock;
/// its token statement ends the session holding it (a fault put in the
/// token table), and is held at a gate while the lock goes to the next
/// waiter, which draws its token. Before, the first one's statement then
/// drew a token larger than its successor's (on a session of its own: the
/// statement is retried once when its session ends) and `acquire` handed
/// it out, so a fenced store would refuse the holder of now. Now it draws
/// none and `acquire` fails, saying its session ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_drawn_for_a_lock_lost_before_the_draw() {
    let Some(url) = common::pg_url() else { return };
    let name = name("late-draw");
    let table = format!("public.fence_late_{}", std::process::id());
    let admin = admin(&url).await;
    // The fault: the token statement of the session named in `late_ctl`
    // ends that session, then waits for a gate the test holds.
    as_dba(
        &admin,
        &format!(
            "{create}; CREATE TABLE IF NOT EXISTS late_ctl_{p} (pid int4); \
             CREATE OR REPLACE FUNCTION late_{p}() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF EXISTS (SELECT 1 FROM late_ctl_{p} WHERE pid = NEW.holder_pid) THEN \
             PERFORM pg_terminate_backend(NEW.holder_pid); \
             PERFORM pg_advisory_xact_lock(7070, {p}); END IF; RETURN NEW; END $$; \
             CREATE OR REPLACE TRIGGER late_{p} BEFORE INSERT ON {table} \
             FOR EACH ROW EXECUTE FUNCTION late_{p}()",
            create = lockmgr::pg::fence_table_sql(&table),
            p = std::process::id(),
        ),
    )
    .await;
    let build = |label: &str| {
        PgLockMgr::builder(&url, &name)
            .label(format!("{label}-{}", std::process::id()))
            .fence_table(&table)
            .request_timeout(LIVENESS)
            .build()
            .unwrap()
    };
    let (first, late, next) = (build("late-first"), build("late-a"), build("late-b"));
    let held = first.acquire(true, LIVENESS).await.unwrap();
    let late_label = format!("late-a-{}", std::process::id());
    let mut a = tokio::spawn(async move { late.acquire(true, LIVENESS).await });
    // A's waiting session, named for the fault.
    let waiting = async {
        loop {
            let row = admin
                .query_opt(
                    "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND NOT l.granted AND s.application_name = $1",
                    &[&late_label],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                break row.get::<_, i32>(0);
            }
        }
    };
    let a_pid = tokio::time::timeout(LIVENESS, waiting)
        .await
        .expect("A never waited on the server");
    as_dba(
        &admin,
        &format!(
            "INSERT INTO late_ctl_{p} VALUES ({a_pid})",
            p = std::process::id()
        ),
    )
    .await;
    // The gate, held by the test's own session.
    admin
        .execute(
            "SELECT pg_advisory_lock(7070, $1)",
            &[&(std::process::id() as i32)],
        )
        .await
        .unwrap();
    held.release().await.unwrap();
    // A won; its token statement ended its holding session and waits at
    // the gate; B gets the lock and its token.
    let b = tokio::time::timeout(LIVENESS, next.acquire(true, LIVENESS))
        .await
        .expect("B was not let in")
        .unwrap();
    admin
        .execute(
            "SELECT pg_advisory_unlock(7070, $1)",
            &[&(std::process::id() as i32)],
        )
        .await
        .unwrap();
    let a = tokio::time::timeout(LIVENESS, &mut a)
        .await
        .expect("A never finished")
        .unwrap();
    match a {
        Ok(guard) => panic!(
            "A was handed the lock it lost, with token {} (the holder of now, B: {})",
            guard.fencing_token(),
            b.fencing_token()
        ),
        Err(e) => assert!(
            matches!(e, LockError::Connect { .. }),
            "A's error should say its session ended: {e:?}"
        ),
    }
    b.release().await.unwrap();
    as_dba(
        &admin,
        &format!(
            "DROP TABLE {table}; DROP TABLE late_ctl_{p}; DROP FUNCTION late_{p}()",
            p = std::process::id()
        ),
    )
    .await;
}

/// `server_locks`: a name held shared by two sessions, with an exclusive
/// waiter in its queue, is listed by name with both holders and the
/// waiter; a key of ours that no lockmgr holder ever won (so the fence
/// table does not know its name) is listed without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_locks_lists_names_holders_and_queues() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let name = name("listed");
    let build = |label: &str| {
        PgLockMgr::builder(&url, &name)
            .label(label)
            .build()
            .unwrap()
    };
    let (a, b, c) = (build("listed-a"), build("listed-b"), build("listed-c"));
    let ga = a.acquire_shared(true, LIVENESS).await.unwrap();
    let gb = b.acquire_shared(true, LIVENESS).await.unwrap();
    let waiter = tokio::spawn(async move { c.acquire(true, LIVENESS).await });
    tokio::time::timeout(LIVENESS, async {
        while !waits_on_server(&admin, "listed-c").await {}
    })
    .await
    .expect("the exclusive waiter never queued");
    let unnamed = lockmgr::pg::advisory_key(&format!("never-won-{}", std::process::id()));
    admin
        .execute(&format!("SELECT pg_advisory_lock({unnamed})"), &[])
        .await
        .unwrap();
    let admin_pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let locks = a.server_locks().await.unwrap();
    let listed = locks
        .iter()
        .find(|l| l.key == lockmgr::pg::advisory_key(&name))
        .unwrap_or_else(|| panic!("{name} not in {locks:?}"));
    assert_eq!(listed.name.as_deref(), Some(name.as_str()));
    assert_eq!(listed.mode, lockmgr::LockMode::Shared);
    let mut holding: Vec<_> = listed
        .holding
        .iter()
        .map(|h| h.label.clone().unwrap_or_default())
        .collect();
    holding.sort();
    assert_eq!(holding, ["listed-a", "listed-b"]);
    assert_eq!(listed.waiting.len(), 1);
    assert_eq!(listed.waiting[0].label.as_deref(), Some("listed-c"));
    let other = locks
        .iter()
        .find(|l| l.key == unnamed)
        .unwrap_or_else(|| panic!("the unnamed key not in {locks:?}"));
    assert_eq!(other.name, None);
    assert_eq!(other.holding.len(), 1);
    assert_eq!(other.holding[0].pid, admin_pid as u32);

    admin
        .execute(&format!("SELECT pg_advisory_unlock({unnamed})"), &[])
        .await
        .unwrap();
    ga.release().await.unwrap();
    gb.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
}

/// Two runtimes of one process share its sessions. The runtime that made
/// them shuts down (as a test's, or a short-lived `block_on`'s, does): the
/// lock the other runtime holds on them stays held, and its release is
/// answered. (Before, the sessions ran on the runtime that made them and
/// ended with it: the release failed with "the session ended".)
#[test]
fn a_runtime_that_shuts_down_takes_no_other_runtimes_lock_with_it() {
    let Some(url) = common::pg_url() else { return };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let (first, second) = (runtime(), runtime());
    let build = |name: &str| {
        PgLockMgr::builder(&url, name)
            .label("two-runtimes")
            .build()
            .unwrap()
    };
    let a = build(&name("runtime-a"));
    let b = build(&name("runtime-b"));
    let held_a = first.block_on(a.acquire(true, LIVENESS)).unwrap();
    let held_b = second.block_on(b.acquire(true, LIVENESS)).unwrap();
    first.block_on(held_a.release()).unwrap();
    drop(first);
    second.block_on(async {
        let admin = admin(&url).await;
        assert!(!held_b.is_lost());
        assert_eq!(lock_rows(&admin, &b).await, 1, "still held on the server");
        held_b.release().await.unwrap();
        assert_eq!(lock_rows(&admin, &b).await, 0);
    });
}

/// `acquire_all`: two sets of three names in opposite orders, taken 30
/// times each from two sets of sessions, never deadlock; with one name
/// held by another process, the call times out and lets go of the others
/// on the server before it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_all_never_deadlocks_and_is_all_or_nothing() {
    let Some(url) = common::pg_url() else { return };
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| name(&format!("all-{n}")))
        .collect();
    let set = |label: &str| -> Vec<PgLockMgr> {
        names
            .iter()
            .map(|n| PgLockMgr::builder(&url, n).label(label).build().unwrap())
            .collect()
    };
    let forward = set("all-forward");
    let mut backward = set("all-backward");
    backward.reverse();
    let run = |locks: Vec<PgLockMgr>| {
        tokio::spawn(async move {
            for _ in 0..30 {
                for guard in PgLockMgr::acquire_all(&locks, true, LIVENESS)
                    .await
                    .unwrap()
                {
                    guard.release().await.unwrap();
                }
            }
        })
    };
    let (one, two) = (run(forward.clone()), run(backward));
    tokio::time::timeout(LIVENESS, async {
        one.await.unwrap();
        two.await.unwrap();
    })
    .await
    .expect("deadlocked");

    let admin = admin(&url).await;
    let held = pg_holder(&url, &names[1], &[]);
    let e = PgLockMgr::acquire_all(&forward, true, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::TimedOut { .. }), "{e:?}");
    assert_eq!(lock_rows(&admin, &forward[0]).await, 0, "a was let go");
    assert_eq!(lock_rows(&admin, &forward[2]).await, 0, "c was let go");
    drop(held);
    let e = PgLockMgr::acquire_all(&[forward[0].clone(), forward[0].clone()], true, LIVENESS)
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
}

/// `PgSemaphore`: two of two permits can be held at once, not three; six
/// tasks taking one in turn are never more than two inside, and never two
/// in one slot; permits held by other processes, one killed with SIGKILL,
/// let a waiter in; a user that disagrees on the number is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_at_most_n_holders() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let Some(url) = common::pg_url() else { return };
    let name = name("semaphore");
    let sem = lockmgr::pg::PgSemaphore::new(&url, &name, 2).unwrap();
    let a = sem.acquire(true, LIVENESS).await.unwrap();
    let b = sem.acquire(true, LIVENESS).await.unwrap();
    assert_ne!(a.slot(), b.slot());
    // The semaphore's errors name the semaphore, on its server, not a slot.
    let names_the_semaphore = |e: &LockError| {
        e.lock().name() == Some(name.as_str())
            && e.lock().server().is_some_and(|s| !s.is_empty())
            && e.lock().database().is_some_and(|d| !d.is_empty())
    };
    let e = sem.try_acquire().await.unwrap_err();
    assert!(e.is_contended() && names_the_semaphore(&e), "{e:?}");
    let e = sem
        .acquire(true, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(
        matches!(e, LockError::TimedOut { .. }) && names_the_semaphore(&e),
        "{e:?}"
    );
    a.release().await.unwrap();
    b.release().await.unwrap();

    let inside = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (sem, inside, slots) = (sem.clone(), inside.clone(), slots.clone());
        tasks.spawn(async move {
            for _ in 0..5 {
                let permit = sem.acquire(true, LIVENESS).await.unwrap();
                assert!(inside.fetch_add(1, Ordering::SeqCst) < 2, "a third holder");
                assert!(
                    slots.lock().unwrap().insert(permit.slot()),
                    "one slot twice"
                );
                tokio::task::yield_now().await;
                slots.lock().unwrap().remove(&permit.slot());
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        });
    }
    tokio::time::timeout(LIVENESS, async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("the tasks did not get through");

    let first = common::Holder::started(
        common::helper_command("pg-permit-hold", [url.as_str(), name.as_str(), "2"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let second = common::Holder::started(
        common::helper_command("pg-permit-hold", [url.as_str(), name.as_str(), "2"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(true, LIVENESS).await }
    });
    first.kill(Signal::SIGKILL);
    let permit = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in")
        .unwrap()
        .unwrap();
    assert!(permit.slot() < 2);
    permit.release().await.unwrap();
    drop(second);

    let e = lockmgr::pg::PgSemaphore::new(&url, &name, 3)
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
    assert!(e.to_string().contains("has 2 permits"), "{e}");
    assert!(names_the_semaphore(&e), "{e:?}");
    let e = lockmgr::pg::PgSemaphore::new(&url, &name, 0).unwrap_err();
    assert!(
        matches!(e, LockError::Invalid { .. }) && names_the_semaphore(&e),
        "{e:?}"
    );
}

/// `connect_timeout` in the connection string (or `PGCONNECT_TIMEOUT`)
/// bounds the whole connect, as in libpq, when the builder sets none: a
/// server that takes the TCP connection and never answers (here, a socket
/// nobody accepts on) fails a try after about that long. Needs no server.
/// (Before: after the builder's default, 10 s, whatever the string said.)
#[tokio::test]
async fn a_connect_timeout_in_the_string_bounds_the_connect() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config =
        format!("host=127.0.0.1 port={port} user=u dbname=d sslmode=disable connect_timeout=1");
    let lock = PgLockMgr::new(&config, "silent").unwrap();
    let started = Instant::now();
    let e = lock.try_acquire().await.unwrap_err();
    assert!(matches!(e, LockError::Connect { .. }), "{e}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}: {e}");
}

/// A `PgSemaphore` built from a lock's builder takes its options: its
/// sessions show the builder's label, and its count and tokens go to the
/// builder's fence table. (Before, a semaphore could only be made with the
/// defaults, so `lockmgr run --permits --label` showed `lockmgr`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_takes_the_options_of_a_lock_builder() {
    let Some(url) = common::pg_url() else { return };
    let (label, options) = pg_common::labelled(&url, "semaphore-options");
    let table = format!("lockmgr_sem_options_{}", std::process::id());
    let sem = lockmgr::pg::PgSemaphore::from_builder(options.fence_table(&table), 1).unwrap();
    let permit = sem.try_acquire().await.unwrap();
    let slot = PgLockMgr::new(&url, format!("{}/permit/0", name("semaphore-options"))).unwrap();
    let holder = slot
        .holder()
        .await
        .unwrap()
        .expect("the permit's slot is held");
    assert_eq!(holder.label.as_deref(), Some(label.as_str()));
    let admin = admin(&url).await;
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    // The count of permits and the slot's token.
    assert_eq!(rows, 2);
    permit.release().await.unwrap();
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// The status of a `PgSemaphore`'s name tells its permits and how many are
/// taken, by any process: before, it said free with every permit held (and
/// `lockmgr status` exited 0, "free").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_of_a_semaphores_name_counts_its_permits_taken() {
    use lockmgr::Status;
    let Some(url) = common::pg_url() else { return };
    let name = name("semaphore-status");
    let sem = lockmgr::pg::PgSemaphore::new(&url, &name, 2).unwrap();
    let lock = PgLockMgr::new(&url, &name).unwrap();
    let taken = |taken| Status::Semaphore { permits: 2, taken };
    let other = common::Holder::started(
        common::helper_command("pg-permit-hold", [url.as_str(), name.as_str(), "2"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(lock.status().await.unwrap(), taken(1));
    let mine = sem.try_acquire().await.unwrap();
    assert_eq!(lock.status().await.unwrap(), taken(2));
    assert_eq!(lock.holder().await.unwrap(), None);
    other.kill(Signal::SIGKILL);
    let until = Instant::now() + LIVENESS;
    while lock.status().await.unwrap() != taken(1) {
        assert!(
            Instant::now() < until,
            "the killed holder's permit still counted"
        );
        tokio::task::yield_now().await;
    }
    mine.release().await.unwrap();
    assert_eq!(lock.status().await.unwrap(), taken(0));
    // A plain lock's name is no semaphore's.
    let plain = PgLockMgr::new(&url, name.clone() + "-plain").unwrap();
    assert_eq!(plain.status().await.unwrap(), Status::Free);
}

/// `PgSemaphore` across processes: four processes take one of two permits
/// 15 times each; no slot is ever held by two (an `O_EXCL` marker per
/// slot), and every process gets through.
#[test]
fn a_semaphore_holds_across_processes() {
    let Some(url) = common::pg_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let name = name("semaphore-procs");
    let procs = common::helpers(
        4,
        "pg-permits",
        &[
            url.as_str(),
            name.as_str(),
            "2",
            "15",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(common::all_succeed(procs), "a slot was held twice");
}

/// The session waiting on the server for `lock` (its backend pid), and
/// when its current statement began; `None` while none waits.
async fn waiting_on(
    admin: &tokio_postgres::Client,
    lock: &PgLockMgr,
) -> Option<(i32, std::time::SystemTime)> {
    let key = lock.key() as u64;
    let rows = admin
        .query(
            "SELECT l.pid, a.query_start FROM pg_locks l JOIN pg_stat_activity a \
             ON a.pid = l.pid WHERE l.locktype = 'advisory' AND NOT l.granted \
             AND l.classid::int8 = $1 AND l.objid::int8 = $2",
            &[&((key >> 32) as i64), &((key & 0xFFFF_FFFF) as i64)],
        )
        .await
        .unwrap();
    rows.first().map(|r| (r.get(0), r.get(1)))
}

/// Whether the backend `pid` is still connected, and when its current (or
/// last) statement began.
async fn statement_of(admin: &tokio_postgres::Client, pid: i32) -> Option<std::time::SystemTime> {
    admin
        .query_opt(
            "SELECT query_start FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// A one-permit `PgSemaphore` named `name`, its permit held by another
/// process, a task of this one waiting for it (on the server), and the
/// lock of its one slot.
#[allow(clippy::type_complexity)]
fn semaphore_waiter(
    url: &str,
    name: &str,
) -> (
    lockmgr::pg::PgSemaphore,
    common::Holder,
    tokio::task::JoinHandle<Result<lockmgr::pg::PgPermit, lockmgr::LockError>>,
    PgLockMgr,
) {
    let sem = lockmgr::pg::PgSemaphore::new(url, name, 1).unwrap();
    let held = common::Holder::started(
        common::helper_command("pg-permit-hold", [url, name, "1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(true, LIVENESS).await }
    });
    let slot = PgLockMgr::new(url, format!("{name}/permit/0")).unwrap();
    (sem, held, waiter, slot)
}

/// A `PgSemaphore` waiter waits on the server a second at a time (then
/// looks at every slot again): its session lives on from one round to the
/// next, rather than being closed and a new one logged in (a TLS handshake
/// and a login a second, for each waiter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_waiter_keeps_its_session_between_rounds() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    // A connection string of its own: sessions no other test of this binary
    // shares (an idle one of theirs would be taken for the next round, and
    // this one closed as one idle session too many).
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}application_name=semaphore-rounds");
    let name = name("semaphore-rounds");
    let (_sem, held, waiter, slot) = semaphore_waiter(&url, &name);
    let (pid, began) = tokio::time::timeout(LIVENESS, async {
        loop {
            if let Some(waiting) = waiting_on(&admin, &slot).await {
                break waiting;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiter never queued on the server");
    // The round ends; the same session goes on with the next statement.
    let next = tokio::time::timeout(LIVENESS, async {
        loop {
            match statement_of(&admin, pid).await {
                Some(at) if at != began => break Some(at),
                Some(_) => tokio::task::yield_now().await,
                None => break None,
            }
        }
    })
    .await
    .expect("the first round never ended");
    assert!(
        next.is_some(),
        "the waiting session was closed after its round (a new one logs in for the next)"
    );
    held.finish();
    waiter.await.unwrap().unwrap().release().await.unwrap();
}

/// A `PgSemaphore` acquire dropped while it waits leaves no wait on the
/// server, and the permit goes to the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_semaphore_wait_leaves_nothing() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    let name = name("semaphore-drop");
    let (sem, held, waiter, slot) = semaphore_waiter(&url, &name);
    tokio::time::timeout(LIVENESS, async {
        while lock_rows(&admin, &slot).await < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiter never queued on the server");
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    tokio::time::timeout(LIVENESS, async {
        while lock_rows(&admin, &slot).await != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dropped wait stayed on the server");
    held.finish();
    sem.try_acquire().await.unwrap().release().await.unwrap();
}

/// The builder's bounds at their extremes (`Duration::MAX` for "no bound",
/// a `dead_session_after` of a year) neither panic nor break the sessions:
/// a try, a status, a wait with no bound, a release all work. On the old
/// code `connect_timeout(Duration::MAX)` panicked (`Instant` overflow), and
/// a `dead_session_after` beyond what TCP's and the server's settings take
/// failed every connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_builder_bounds_neither_panic_nor_break_sessions() {
    let Some(url) = common::pg_url() else { return };
    let admin = admin(&url).await;
    type Bounded = fn(lockmgr::pg::PgLockMgrBuilder) -> lockmgr::pg::PgLockMgrBuilder;
    let builds: [(&str, Bounded); 4] = [
        ("connect_timeout", |b| b.connect_timeout(Duration::MAX)),
        ("request_timeout", |b| b.request_timeout(Duration::MAX)),
        ("dead_session_after", |b| {
            b.dead_session_after(Duration::MAX)
        }),
        ("dead_session_after a year", |b| {
            b.dead_session_after(Duration::from_secs(365 * 24 * 3600))
        }),
    ];
    for (what, build) in builds {
        let lock = build(PgLockMgr::builder(&url, name("absurd-bounds")))
            .build()
            .unwrap();
        let held = lock
            .try_acquire()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(lock_rows(&admin, &lock).await, 1, "{what}");
        assert!(
            matches!(lock.status().await, Ok(lockmgr::Status::Exclusive { .. })),
            "{what}"
        );
        held.release()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let held = lock
            .acquire(true, Duration::MAX)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        held.release()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(lock_rows(&admin, &lock).await, 0, "{what}");
    }
}

/// A reader of this process does not wait behind an exclusive waiter of
/// this process while the lock is held only shared, as a reader of another
/// process does not (the server grants it at once), and as for file locks.
/// On the old code the in-process gate was a fair `RwLock`: the try said
/// `WouldBlock`, and a waiting reader waited for the writer, which waited
/// for the first reader (for ever with `Duration::MAX`).
#[tokio::test(flavor = "current_thread")]
async fn a_shared_acquire_never_waits_behind_an_exclusive_waiter_of_its_process() {
    let Some(url) = common::pg_url() else { return };
    let lock = PgLockMgr::new(&url, name("reader-past-writer")).unwrap();
    let first = lock.acquire_shared(true, LIVENESS).await.unwrap();
    let writer = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::MAX).await }
    });
    // On a current-thread runtime one yield runs the writer to the
    // process's gate of the key, where it waits for the reader.
    tokio::task::yield_now().await;
    assert!(!writer.is_finished());
    let tried = lock.try_acquire_shared().await;
    assert!(tried.is_ok(), "{:?}", tried.err());
    let waited = lock.acquire_shared(true, Duration::from_secs(5)).await;
    assert!(waited.is_ok(), "{:?}", waited.err());
    assert!(!writer.is_finished(), "the writer got in beside readers");
    drop((first, tried, waited));
    let held = tokio::time::timeout(LIVENESS, writer)
        .await
        .expect("the writer never got the lock once the readers left")
        .unwrap()
        .unwrap();
    assert!(matches!(
        lock.try_acquire_shared().await,
        Err(LockError::WouldBlock { .. })
    ));
    held.release().await.unwrap();
}

//! `lockmgr::pg` against a real PostgreSQL server, with helper processes.
//!
//! The server's URL comes from `LOCKMGR_PG_URL`, which `scripts/with-postgres`
//! (and so `scripts/test` and CI) provides. When it is set, every test here
//! must reach the server: an unreachable server fails them. Without it (a
//! bare `cargo test --all-features`), they say so and pass nothing off as
//! tested: each returns at once after printing that it did not run.

mod common;

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use common::{Holder, LIVENESS};
use lockmgr::pg::PgLockMgr;
use lockmgr::LockError;
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// A lock name of its own for each test, so tests do not meet.
fn name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// A plain session for looking at the server's lock table.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the test server is reachable");
    tokio::spawn(connection);
    client
}

/// Rows in `pg_locks` (granted or waiting) for the lock's key.
async fn lock_rows(admin: &tokio_postgres::Client, lock: &PgLockMgr) -> i64 {
    let key = lock.key() as u64;
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND classid::int8 = $1 AND objid::int8 = $2",
            &[&((key >> 32) as i64), &((key & 0xFFFF_FFFF) as i64)],
        )
        .await
        .unwrap()
        .get(0)
}

fn pg_holder(url: &str, name: &str, opts: &[&str]) -> Holder {
    let mut args = vec![url, name];
    args.extend_from_slice(opts);
    let child = common::helper_command("pg-hold", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper");
    Holder::started(child)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_resolves_lost_and_lets_a_waiter_in() {
    let Some(url) = common::pg_url() else { return };
    let name = name("terminate");
    let lock = PgLockMgr::new(&url, &name).unwrap();
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    let backend = lock.holder().await.unwrap().expect("held").pid as i32;
    let waiter = tokio::spawn({
        let lock = PgLockMgr::new(&url, &name).unwrap();
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
    const PROCS: usize = 4;
    const ITERS: usize = 50;
    let Some(url) = common::pg_url() else { return };
    let name = name("fence");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            let args = [
                url.clone(),
                name.clone(),
                ITERS.to_string(),
                file.to_str().unwrap().to_owned(),
            ];
            common::helper_command("pg-fence", args)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tokens: Vec<u64> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), PROCS * ITERS);
    // Written under the lock, so the file is in the order of the holdings.
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens out of order: {tokens:?}"
    );
}

/// Sessions with `application_name` = `label`, and lock requests (granted
/// or waiting) by them.
async fn sessions_and_requests(admin: &tokio_postgres::Client, label: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = $1), \
             (SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
              WHERE l.locktype = 'advisory' AND a.application_name = $1)",
            &[&label],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Whether a session labelled `label` waits for a lock.
async fn waits_on_server(admin: &tokio_postgres::Client, label: &str) -> bool {
    admin
        .query_one(
            "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = $1",
            &[&label],
        )
        .await
        .unwrap()
        .get(0)
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
            while sessions_and_requests(&admin, &label).await != (0, 0) {
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
    let (sessions, requests) = sessions_and_requests(&admin, &label).await;
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
    let (sessions, requests) = sessions_and_requests(&admin, &label).await;
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
    assert_eq!(sessions_and_requests(&admin, &label).await.1, 0);
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

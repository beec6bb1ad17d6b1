//! What the `lockmgr::pg` test files share: names, an admin session and
//! its looks at the server, the helper processes that hold and contend.
//! Included by those files with `#[path]` (it needs the `postgres`
//! feature, which `common` must not).
#![allow(dead_code)]

use std::process::Stdio;

use lockmgr::pg::PgLockMgr;

use super::common::{self, Holder};

/// A lock name of its own for each test, so tests do not meet.
pub fn name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// A plain session for looking at the server's lock table.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the test server is reachable");
    tokio::spawn(connection);
    client
}

/// Rows in `pg_locks` (granted or waiting) for the lock's key.
pub async fn lock_rows(admin: &tokio_postgres::Client, lock: &PgLockMgr) -> i64 {
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

/// Sessions whose `application_name` is like `pattern` (SQL `LIKE`), and
/// lock requests (granted or waiting) by them.
pub async fn left_by(admin: &tokio_postgres::Client, pattern: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1), \
             (SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
              WHERE l.locktype = 'advisory' AND a.application_name LIKE $1)",
            &[&pattern],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Connection settings for the test server as `role`, with `password`.
pub fn config_as(role: &str, password: &str) -> String {
    format!(
        "host={} port={} user={role} password={password} dbname=postgres",
        std::env::var("LOCKMGR_PG_HOST").expect("scripts/with-postgres"),
        std::env::var("LOCKMGR_PG_PORT").expect("scripts/with-postgres"),
    )
}

/// A DBA's open transaction holding the token row of `name` (in the
/// default token table) locked, `FOR UPDATE`, until it commits.
pub async fn lock_token_row(url: &str, name: &str) -> tokio_postgres::Client {
    let (dba, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    dba.batch_execute("BEGIN").await.unwrap();
    dba.execute(
        "SELECT 1 FROM public.lockmgr_fence WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await
    .unwrap();
    dba
}

/// Returns once a session labelled `label` has had its token statement
/// wait for a row lock for more than `secs` seconds.
pub async fn token_draw_waits(admin: &tokio_postgres::Client, label: &str, secs: f64) {
    loop {
        let waits: bool = admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%' \
                 AND clock_timestamp() - query_start > $2::float8 * interval '1 second'",
                &[&label, &secs],
            )
            .await
            .unwrap()
            .get(0);
        if waits {
            return;
        }
    }
}

/// A builder of the lock of `test` (named as [`name`] names it), whose
/// sessions carry a label of their own (`TEST-PID`), returned beside it:
/// what a test finds its sessions by in `pg_stat_activity`.
pub fn labelled(url: &str, test: &str) -> (String, lockmgr::pg::PgLockMgrBuilder) {
    let label = format!("{test}-{}", std::process::id());
    let builder = PgLockMgr::builder(url, name(test)).label(&label);
    (label, builder)
}

/// Returns once a session labelled `label` waits for a lock, within the
/// liveness bound.
pub async fn until_waiting_on_server(admin: &tokio_postgres::Client, label: &str) {
    let deadline = tokio::time::Instant::now() + common::LIVENESS;
    while !waits_on_server(admin, label).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label} never waited on the server"
        );
        tokio::task::yield_now().await;
    }
}

/// Whether a session labelled `label` waits for a lock.
pub async fn waits_on_server(admin: &tokio_postgres::Client, label: &str) -> bool {
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

/// A helper process holding the lock `name` (`opts`: `--shared`,
/// `--label=L`, `--fence=TABLE`) until its stdin closes.
pub fn pg_holder(url: &str, name: &str, opts: &[&str]) -> Holder {
    let mut args = vec![url, name];
    args.extend_from_slice(opts);
    let child = common::helper_command("pg-hold", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper");
    Holder::started(child)
}

/// `procs` processes take the lock in turn, `iters` times each, each
/// checking that nobody else is inside while it holds it (a marker file
/// made with `O_EXCL`) and writing its fencing token under it: the tokens,
/// in the order of the holdings, strictly increase.
pub fn contend(url: &str, name: &str, procs: usize, iters: usize) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let children: Vec<_> = (0..procs)
        .map(|_| {
            let args = [
                url.to_owned(),
                name.to_owned(),
                iters.to_string(),
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
    assert_eq!(tokens.len(), procs * iters);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens out of order: {tokens:?}"
    );
}

//! Leadership among replicas (`LockMgr::lead`, and `PgLockMgr::lead` with
//! the `postgres` feature): replicas in processes of their own campaign,
//! one leads, and `kill -9` of the leader hands leadership to another.
#![deny(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::LIVENESS;

/// Replicas started with `args`; what each says arrives as (replica, line).
struct Replicas {
    children: Vec<Child>,
    said: mpsc::Receiver<(usize, String)>,
}

impl Replicas {
    fn start(n: usize, role: &str, args: &[&str]) -> Replicas {
        let (tx, said) = mpsc::channel();
        let children = (0..n)
            .map(|i| {
                let mut child = common::helper_command(role, args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let out = BufReader::new(child.stdout.take().unwrap());
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in out.lines().map_while(Result::ok) {
                        let _ = tx.send((i, line));
                    }
                });
                child
            })
            .collect();
        Replicas { children, said }
    }

    /// The next replica to say it leads, and what it said.
    fn next_leader(&self) -> (usize, String) {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (i, line) = self
                .said
                .recv_timeout(left)
                .expect("nobody took over the lead");
            if line.starts_with("leading") {
                return (i, line);
            }
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three replicas on a lock file: one leads, the others wait their turn
/// (one holder on the host); the leader killed with SIGKILL, another
/// leads, and then a third.
#[test]
fn a_killed_leader_hands_leadership_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.lock");
    let replicas = Replicas::start(3, "lead", &[path.to_str().unwrap()]);
    let (first, _) = replicas.next_leader();
    let holders = lockmgr::LockMgr::new(&path).holders().unwrap();
    assert_eq!(holders.holding.len(), 1, "{holders:?}");
    assert_eq!(holders.holding[0].pid, replicas.children[first].id());

    let mut replicas = replicas;
    replicas.children[first].kill().unwrap();
    let killed = Instant::now();
    let (second, _) = replicas.next_leader();
    eprintln!("handed on in {:?}", killed.elapsed());
    assert_ne!(second, first);
    // Stepping down (its work ends) hands on too.
    drop(replicas.children[second].stdin.take());
    let (third, _) = replicas.next_leader();
    assert!(third != first && third != second);
}

#[cfg(feature = "postgres")]
mod pg {
    use super::*;

    /// The same with PostgreSQL replicas: each term's fencing token is
    /// greater than the last one's.
    #[test]
    fn a_killed_leader_hands_leadership_on() {
        let Some(url) = common::pg_url() else { return };
        let name = format!("leader-{}", std::process::id());
        let mut replicas = Replicas::start(3, "pg-lead", &[&url, &name]);
        let (first, said) = replicas.next_leader();
        let token = |said: &str| -> u64 { said.strip_prefix("leading ").unwrap().parse().unwrap() };
        let first_token = token(&said);
        replicas.children[first].kill().unwrap();
        let (second, said) = replicas.next_leader();
        assert_ne!(second, first);
        assert!(token(&said) > first_token);
    }

    /// A leader whose lock is lost (its session terminated) is told so:
    /// its work is stopped and `lead` returns `Lost`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lock_ends_the_term() {
        let Some(url) = common::pg_url() else { return };
        let name = format!("lost-leader-{}", std::process::id());
        let lock = lockmgr::pg::PgLockMgr::builder(&url, &name)
            .label("lost-leader")
            .build()
            .unwrap();
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let (leading_tx, leading) = tokio::sync::oneshot::channel();
        let led = tokio::spawn({
            let lock = lock.clone();
            async move {
                lock.lead(|_| async move {
                    let _ = leading_tx.send(());
                    std::future::pending::<()>().await
                })
                .await
            }
        });
        leading.await.unwrap();
        let backend = lock.holder().await.unwrap().expect("held").pid as i32;
        admin
            .query_one("SELECT pg_terminate_backend($1)", &[&backend])
            .await
            .unwrap();
        let led = tokio::time::timeout(LIVENESS, led)
            .await
            .expect("the term did not end")
            .unwrap()
            .unwrap();
        assert_eq!(led, lockmgr::pg::Led::Lost);
    }
}

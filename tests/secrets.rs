//! No `Debug` or `Display` of any public type prints a connection
//! password: builders, locks, guards, lock ids, and the errors of a bad
//! connection string, an unreachable server and a refused login.
#![deny(unsafe_code)]

mod common;

use std::fmt::{Debug, Display};
use std::time::Duration;

use lockmgr::pg::PgLockMgr;

const SECRET: &str = "hunter2-Secret";

fn assert_hidden(what: &str, value: &(impl Debug + ?Sized)) {
    let debug = format!("{value:?}");
    let pretty = format!("{value:#?}");
    for shown in [debug, pretty] {
        assert!(
            !shown.contains(SECRET),
            "{what} shows the password: {shown}"
        );
    }
}

fn assert_hidden_display(what: &str, value: &(impl Display + Debug + ?Sized)) {
    assert_hidden(what, value);
    let shown = value.to_string();
    assert!(
        !shown.contains(SECRET),
        "{what} shows the password: {shown}"
    );
}

#[tokio::test]
async fn no_password_without_a_server() {
    // A closed port on loopback: the connection is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for config in [
        format!("postgres://app:{SECRET}@127.0.0.1:{port}/app"),
        format!("host=127.0.0.1 port={port} user=app password={SECRET} dbname=app"),
    ] {
        let builder = PgLockMgr::builder(&config, "jobs").connect_timeout(Duration::from_secs(5));
        assert_hidden("PgLockMgrBuilder", &builder);
        let lock = builder.build().unwrap();
        assert_hidden("PgLockMgr", &lock);
        let err = lock.try_acquire().await.unwrap_err();
        assert_hidden_display("a connection error", &err);
        assert_hidden_display("its LockId", err.lock());
        let err = lock.status().await.unwrap_err();
        assert_hidden_display("a status error", &err);
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            assert!(!s.to_string().contains(SECRET), "a source shows it: {s}");
            source = s.source();
        }
    }
    for bad in [
        format!("postgres://app:{SECRET}@db:notaport/app"),
        format!("host=db password={SECRET} port=x"),
        format!("postgres://app:{SECRET}@db/app?sslmode=bogus"),
    ] {
        let err = PgLockMgr::new(&bad, "jobs").unwrap_err();
        assert_hidden_display("a parse error", &err);
    }
}

/// A password with an `@` not written `%40` in a URL: the URL's user part
/// ends at the first `@` (as libpq reads it), so the rest of the password
/// would be taken for the host, and shown in every lock id, error and log
/// line. Such a URL is refused, and the refusal shows no piece of it.
#[test]
fn a_password_with_a_bare_at_sign_in_a_url_is_refused_unseen() {
    for (config, piece) in [
        ("postgres://app:hunter2@Secret@db.internal/app", "Secret@db"),
        // The rest of the password read as a host and a database.
        ("postgres://app:hunter2@Se/cret@db.internal/app", "cret@db"),
        // ... or as a parameter's name.
        ("postgres://app:hunter2?Secret@db.internal/app", "Secret@db"),
        (
            "postgres://app:hunter2@Secret@db.internal:5433/app",
            "Secret@db",
        ),
    ] {
        let err = PgLockMgr::new(config, "jobs").unwrap_err();
        assert!(matches!(err, lockmgr::LockError::Invalid { .. }), "{err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                !shown.contains(piece) && !shown.contains("Secret"),
                "{shown}"
            );
        }
        assert!(err.to_string().contains("%40"), "{err}");
    }
}

#[tokio::test]
async fn no_password_with_a_server() {
    let Some(url) = common::pg_url() else { return };
    // The real server, with the real password: a guard and its lock.
    let lock = PgLockMgr::new(&url, format!("secrets-{}", std::process::id())).unwrap();
    let guard = lock.try_acquire().await.unwrap();
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .expect("the test URL has a password");
    for shown in [format!("{guard:?}"), format!("{lock:?}")] {
        assert!(!shown.contains(&password), "{shown}");
    }
    guard.release().await.unwrap();

    // A refused login with a wrong password.
    let wrong = url.replacen(&format!(":{password}@"), &format!(":{SECRET}@"), 1);
    assert_ne!(wrong, url);
    let err = PgLockMgr::new(&wrong, "jobs")
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert_hidden_display("a refused login", &err);
}

//! `lockmgr run|status --postgres URL NAME`, driven as a real binary against
//! the server of `scripts/with-postgres` (see `tests/pg.rs` for how the
//! server is found).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lockmgr::pg::PgLockMgr;

const LOCKMGR: &str = env!("CARGO_BIN_EXE_lockmgr");

fn lockmgr(args: &[&str]) -> Output {
    Command::new(LOCKMGR).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_and_status_on_a_postgres_lock() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-{}", std::process::id());

    let out = lockmgr(&["status", "--postgres", &url, "--json", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"state\":\"free\""),
        "{}",
        text(&out.stdout)
    );

    // A holder that runs until its stdin closes, and shows its token.
    let mut first = Command::new(LOCKMGR)
        .args(["run", "--postgres", &url, "--label", "nightly", &name, "--"])
        .args([
            "sh",
            "-c",
            "echo token=$LOCKMGR_FENCING_TOKEN; exec cat >/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let token: u64 = line
        .trim()
        .strip_prefix("token=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no token in {line:?}"));

    let out = lockmgr(&["run", "--postgres", &url, "--nonblock", &name, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&name) && err.contains("(nightly)"), "{err}");

    let out = lockmgr(&["status", "--postgres", &url, "--json", &name]);
    assert_eq!(out.status.code(), Some(1));
    let json = text(&out.stdout);
    assert!(json.contains("\"kind\":\"postgres\""), "{json}");
    assert!(json.contains("\"state\":\"exclusive\""), "{json}");
    assert!(json.contains("\"label\":\"nightly\""), "{json}");

    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());

    // The next holder gets a later token.
    let out = lockmgr(&[
        "run",
        "--postgres",
        &url,
        &name,
        "--",
        "sh",
        "-c",
        "echo $LOCKMGR_FENCING_TOKEN",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let next: u64 = text(&out.stdout).trim().parse().unwrap();
    assert!(next > token);
}

#[test]
fn a_lost_session_stops_the_command() {
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-lost-{}", std::process::id());
    let child = Command::new(LOCKMGR)
        .args(["run", "--postgres", &url, &name, "--"])
        .args(["sh", "-c", "echo started; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lock = PgLockMgr::new(&url, &name).unwrap();
        let backend = lock.holder().await.unwrap().expect("held").pid as i32;
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&backend])
            .await
            .unwrap();
        // The command is stopped, and the lock is free for the next one.
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap()
        })
        .await
        .expect("the command was not stopped");
        // The command died of the SIGTERM, and lockmgr with it.
        assert_eq!(status.status.signal(), Some(15), "{}", text(&status.stderr));
        assert!(text(&status.stderr).contains("lock was lost"));
        drop(lock.try_acquire().await.unwrap());
    });
}

/// Whether process `pid` still runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// The lock lives in `lockmgr`'s own session, which dies with it: when
/// `lockmgr run` is killed, its command is ended at once, so it never runs
/// without the lock.
#[test]
fn a_killed_lockmgr_ends_its_command() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(url) = common::pg_url() else { return };
    let name = format!("cli-killed-{}", std::process::id());
    let mut child = Command::new(LOCKMGR)
        .args(["run", "--postgres", &url, &name, "--"])
        .args(["sh", "-c", "echo $$; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let command: i32 = line.trim().parse().unwrap();
    assert!(running(command));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + common::LIVENESS;
    while running(command) {
        if std::time::Instant::now() > deadline {
            let _ = kill(Pid::from_raw(command), Signal::SIGKILL);
            panic!("the command runs on after lockmgr died, without the lock");
        }
        std::thread::yield_now();
    }
}

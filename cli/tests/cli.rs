//! The `lockmgr` command, driven as a real binary.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LOCKMGR: &str = env!("CARGO_BIN_EXE_lockmgr");

fn lockmgr(args: &[&str]) -> Output {
    Command::new(LOCKMGR).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `lockmgr run [opts] LOCK -- sh -c 'echo started; exec cat'`: holds the
/// lock until its stdin closes. Returns once the command runs.
fn holder(lock: &Path, opts: &[&str]) -> Child {
    let mut child = Command::new(LOCKMGR)
        .arg("run")
        .args(opts)
        .arg(lock)
        .args(["--", "sh", "-c", "echo started; exec cat >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    child
}

fn finish(mut child: Child) -> Output {
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn two_runs_exclude_each_other_and_the_loser_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &["--label", "nightly"]);
    let pid = first.id();

    let out = lockmgr(&["run", "--nonblock", s(&lock), "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("is held by pid {pid} on host ")) && err.contains("(nightly)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = lockmgr(&[
        "run",
        "-n",
        "--conflict-exit-code",
        "7",
        s(&lock),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(7));

    assert!(finish(first).status.success());
    let out = lockmgr(&["run", "--nonblock", s(&lock), "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn waiting_gives_up_after_the_attempts_with_one_line_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &[]);
    let out = lockmgr(&[
        "run",
        "--wait",
        "0.3",
        "--attempts",
        "3",
        s(&lock),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let waiting: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("lockmgr: waiting for lock"))
        .collect();
    assert_eq!(waiting.len(), 1, "{err}");
    assert!(waiting[0].contains("held by pid"), "{err}");
    assert!(err.contains("after 3 attempts"), "{err}");

    let quiet = lockmgr(&["run", "-q", "-w", "0.1", s(&lock), "--", "true"]);
    assert_eq!(quiet.status.code(), Some(1));
    assert!(!text(&quiet.stderr).contains("lockmgr: waiting for lock"));
    finish(first);
}

#[test]
fn a_waiting_run_proceeds_when_the_holder_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("job.lock");
    let first = holder(&lock, &[]);
    let mut second = Command::new(LOCKMGR)
        .args(["run", s(&lock), "--", "sh", "-c", "echo second"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The second announces its wait (one line, off a terminal) before the
    // first lets go.
    let mut line = String::new();
    BufReader::new(second.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("waiting for lock"), "{line}");
    assert!(finish(first).status.success());
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "second\n");
}

#[test]
fn exit_status_is_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let out = lockmgr(&["run", s(&lock), "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = lockmgr(&["run", s(&lock), "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    let out = lockmgr(&["run", s(&lock), "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["run", s(dir.path()), "--", "true"], // a directory
        vec!["run", "/nonexistent-dir/x.lock", "--", "true"], // missing parent
        vec!["status", "/nonexistent-dir/x.lock"], // missing file
        vec!["status", s(dir.path())],            // a directory
    ] {
        let out = lockmgr(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("lockmgr: "), "{err}");
    }
    // Bad arguments: clap's usage error, also status 2.
    assert_eq!(lockmgr(&["run", "x.lock"]).status.code(), Some(2));
    assert_eq!(
        lockmgr(&["run", "--nonblock", "--wait", "1", "x", "--", "true"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let mut child = Command::new(LOCKMGR)
        .args(["run", s(&lock), "--", "sh", "-c"])
        // Bounded, so that a failure cannot leave it running for ever.
        .arg("trap 'echo got TERM; exit 42' TERM; echo ready; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // Only lockmgr gets the signal; the command hears of it from lockmgr.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got TERM\n");
    assert_eq!(child.wait().unwrap().code(), Some(42));
    // And the lock went with it.
    assert!(lockmgr(&["run", "-n", s(&lock), "--", "true"])
        .status
        .success());
}

#[test]
fn the_command_does_not_inherit_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    // The command leaves a background process behind, which inherits every
    // descriptor the command had.
    let out = lockmgr(&[
        "run",
        s(&lock),
        "--",
        "sh",
        "-c",
        "sleep 30 >/dev/null 2>&1 & echo $!",
    ]);
    assert!(out.status.success());
    let straggler: i32 = text(&out.stdout).trim().parse().unwrap();
    let status = lockmgr(&["status", s(&lock)]);
    kill(Pid::from_raw(straggler), Signal::SIGKILL).unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stdout));
}

#[test]
fn flock_kind_interoperates_with_util_linux_flock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let ours = holder(&lock, &["--kind", "flock"]);
    let flock = Command::new("flock")
        .args(["-n", s(&lock), "true"])
        .status()
        .unwrap();
    assert_eq!(
        flock.code(),
        Some(1),
        "flock(1) got in past lockmgr --kind flock"
    );
    finish(ours);

    let mut theirs = Command::new("flock")
        .args([s(&lock), "sh", "-c", "echo locked; exec cat >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(theirs.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let out = lockmgr(&["run", "-n", "--kind", "flock", s(&lock), "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    // The OFD family does not see flock(1): the kind must match.
    assert!(lockmgr(&["run", "-n", s(&lock), "--", "true"])
        .status
        .success());
    theirs.stdin.take().unwrap().write_all(b"").unwrap();
    theirs.wait().unwrap();
}

#[test]
fn status_while_held_and_after_the_holder_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l");
    let first = holder(&lock, &["--label", "backup \"db\""]);
    let pid = first.id();

    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(out.status.code(), Some(1));
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!(
            "{}: held exclusive by pid {pid} on host ",
            lock.display()
        )),
        "{line}"
    );

    let out = lockmgr(&["status", "--json", s(&lock)]);
    assert_eq!(out.status.code(), Some(1));
    let json = text(&out.stdout);
    assert!(json.contains("\"state\":\"exclusive\""), "{json}");
    assert!(json.contains(&format!("\"pid\":{pid},")), "{json}");
    assert!(json.contains("\"label\":\"backup \\\"db\\\"\""), "{json}");
    assert!(json.contains("\"stale\":false"), "{json}");
    assert!(json.contains("\"kind\":\"ofd\""), "{json}");

    let mut first = first;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    first.wait().unwrap();

    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), format!("{}: free\n", lock.display()));
    let out = lockmgr(&["status", "--json", s(&lock)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("\"state\":\"free\",\"holder\":null"));

    let reader = holder(&lock, &["--shared"]);
    let out = lockmgr(&["status", s(&lock)]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(1), format!("{}: held shared\n", lock.display()))
    );
    finish(reader);
}

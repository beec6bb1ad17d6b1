//! What the command's tests share.
#![allow(dead_code)]

pub mod sys;

/// The URL of the PostgreSQL server for these tests (`LOCKMGR_PG_URL`,
/// exported by `scripts/with-postgres`). `None`, with a note on stderr, when
/// it is not set outside CI; under CI (`CI` set) a missing URL fails the
/// test.
pub fn pg_url() -> Option<String> {
    match std::env::var("LOCKMGR_PG_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run these tests through scripts/with-postgres"
            );
            eprintln!("LOCKMGR_PG_URL is not set: not run (use scripts/test)");
            None
        }
    }
}

/// A C program of the workspace's `tests/foreign/NAME.c`, compiled once per
/// test run with the system's C compiler into cargo's temporary directory.
pub fn c_program(name: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashMap<String, std::path::PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap();
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/foreign")
        .join(format!("{name}.c"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    // Built under a name of its own, then renamed: test binaries that run
    // at once never see a half-written program.
    let tmp = out.with_extension(format!("{}", std::process::id()));
    let status = std::process::Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for these tests");
    assert!(status.success(), "cc failed on {}", src.display());
    std::fs::rename(&tmp, &out).unwrap();
    built.insert(name.to_owned(), out.clone());
    out
}

/// Generous bound for "promptly": a liveness check, not a speed assertion.
pub const LIVENESS: std::time::Duration = std::time::Duration::from_secs(30);

/// Output of a child read on a thread of its own, searchable as it comes.
pub struct Output {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    pub seen: Vec<u8>,
}

impl Output {
    pub fn of(mut from: impl std::io::Read + Send + 'static) -> Output {
        let (tx, chunks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Output {
            chunks,
            seen: Vec::new(),
        }
    }

    /// Waits (within the liveness bound) until `what` has appeared `times`
    /// times in all.
    pub fn until(&mut self, what: &str, times: usize) {
        let deadline = std::time::Instant::now() + LIVENESS;
        while self.count(what) < times {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!(
                    "{what:?} did not appear {times} times; output: {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    pub fn count(&self, what: &str) -> usize {
        String::from_utf8_lossy(&self.seen).matches(what).count()
    }

    /// Everything, once the child has ended.
    pub fn rest(mut self) -> String {
        while let Ok(chunk) = self.chunks.recv_timeout(LIVENESS) {
            self.seen.extend(chunk);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

/// `lockmgr ARGS -- sh -c SCRIPT`, with stdin, stdout and stderr piped;
/// returns once the script has printed its first line, with that line
/// (trimmed). The command ends when its stdin closes if SCRIPT ends in
/// `exec cat >/dev/null`.
pub fn run_until_said(args: &[&str], script: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockmgr"))
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

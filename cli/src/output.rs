//! Where `lockmgr`'s own lines go: the answer on stdout (`status`, `list`),
//! news and errors on stderr. Neither panics when nobody reads any more, as
//! `println!` and `eprintln!` do.

use std::fmt::Arguments;
use std::io::Write;
use std::path::Path;

/// `eprintln!`, except that a stderr nobody reads any more (a closed pipe,
/// or one nobody drains) loses the line instead of panicking or blocking:
/// `run` must still keep its deadline, hear signals, release its lock and
/// end as its command did.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::say_line(format_args!($($arg)*))
    };
}

/// `println!` for the answer of `status` and `list`: a reader that went
/// away (`lockmgr list | head -1`) ends `lockmgr` by SIGPIPE, as it ends
/// `ls`; any other failure to write it (a full disk) is one line on stderr
/// and exit status 2.
macro_rules! answer {
    ($($arg:tt)*) => {
        $crate::output::answer_line(format_args!($($arg)*))
    };
}

pub(crate) fn say_line(line: Arguments<'_>) {
    // One write, so that the line does not interleave with the command's.
    let line = format!("{}{line}\n", over_display());
    to_stderr(line.as_bytes(), PATIENCE_MS);
}

/// Whether the waiting display's line is on the terminal, unended.
static DISPLAY_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says whether the waiting display's updating line is now on the
/// terminal, unended (`progress` keeps it up to date); whether it was.
pub(crate) fn display_up(up: bool) -> bool {
    DISPLAY_UP.swap(up, std::sync::atomic::Ordering::Relaxed)
}

/// What a line of news starts with: over the waiting display's line, which
/// it clears (the display draws itself again below it at its next
/// refresh), where it would otherwise be written at that line's end.
fn over_display() -> &'static str {
    if DISPLAY_UP.swap(false, std::sync::atomic::Ordering::Relaxed) {
        "\r\x1b[K"
    } else {
        ""
    }
}

/// How long, in ms, a line waits for stderr to take it before it is lost.
/// A stderr that takes nothing (a pipe whose reader stopped reading, a
/// terminal stopped with Ctrl-S) must not hold `lockmgr` in `write(2)`:
/// the thread that writes is the one that keeps the wait's deadline and
/// reads the signals that end it.
pub(crate) const PATIENCE_MS: u16 = 1000;

/// Writes `bytes` to stderr, waiting at most `patience_ms` for it to be
/// written; what is not written by then is written later if stderr ever
/// takes it, or lost with the process.
///
/// The writes are made by a thread of their own (`lockmgr-stderr`), one
/// `write` per line as before, so that the caller never blocks in
/// `write(2)`, whatever stderr is (a pipe or terminal of another user,
/// which cannot be opened anew without blocking, a socket) and however
/// little room it has. Once a line was not written in time, the next
/// ones do not wait until it has been: a stalled stderr costs the first
/// line's patience, not one per line.
pub(crate) fn to_stderr(bytes: &[u8], patience_ms: u16) {
    use std::sync::atomic::Ordering;
    let Some(writer) = writer() else {
        // No thread to be had (a process limit): written here, as before.
        let _ = std::io::stderr().lock().write_all(bytes);
        return;
    };
    let (written, done) = std::sync::mpsc::sync_channel(1);
    // A queue that is full is a stderr that has not taken its lines for a
    // while: this one is lost.
    if writer.try_send((bytes.to_vec(), written)).is_err() {
        return;
    }
    if patience_ms == 0 || STALLED.load(Ordering::Acquire) {
        return;
    }
    let patience = std::time::Duration::from_millis(patience_ms.into());
    if done.recv_timeout(patience).is_err() {
        STALLED.store(true, Ordering::Release);
    }
}

/// Writes `bytes` to descriptor 2 itself, not through `std::io::stderr()`:
/// its lock, held by this thread while stderr takes nothing, would stop
/// every other thread that touches stderr (a flush before `lockmgr` ends
/// by a signal, a panic message).
fn write_all_to_fd2(mut bytes: &[u8]) {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr();
    while !bytes.is_empty() {
        match nix::unistd::write(stderr.as_fd(), bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// A line was not written within its patience, and the writer has not
/// written one since.
static STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Line = (Vec<u8>, std::sync::mpsc::SyncSender<()>);

/// The queue of the thread that writes stderr, started with the first
/// line; `None` if no thread can be started.
fn writer() -> Option<&'static std::sync::mpsc::SyncSender<Line>> {
    use std::sync::atomic::Ordering;
    static WRITER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Line>>> =
        std::sync::OnceLock::new();
    WRITER
        .get_or_init(|| {
            use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
            let (queue, lines) = std::sync::mpsc::sync_channel::<Line>(64);
            // Started with every signal blocked (a thread inherits the mask
            // of the one that starts it), whenever the first line comes:
            // a signal for `lockmgr` must never act in this thread, but be
            // read from the signal queue (see `signals`).
            let mut mask = SigSet::empty();
            let blocked =
                pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut mask));
            let started = std::thread::Builder::new()
                .name("lockmgr-stderr".into())
                .spawn(move || {
                    for (bytes, written) in lines {
                        write_all_to_fd2(&bytes);
                        STALLED.store(false, Ordering::Release);
                        let _ = written.try_send(());
                    }
                });
            if blocked.is_ok() {
                let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
            }
            started.ok()?;
            Some(queue)
        })
        .as_ref()
}

pub(crate) fn answer_line(line: Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // Stdout is line-buffered: the newline writes the line out, so a
    // failure shows here.
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::sys::die_of_sigpipe(),
        Err(e) => {
            say!("lockmgr: cannot write the answer: {e}");
            std::process::exit(2);
        }
    }
}

/// Stderr for the library's events, with a line's patience (see
/// [`to_stderr`]): the events' formatter writes each event whole.
pub(crate) struct PatientStderr;

impl Write for PatientStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let clear = over_display();
        if clear.is_empty() {
            to_stderr(bytes, PATIENCE_MS);
        } else {
            to_stderr(&[clear.as_bytes(), bytes].concat(), PATIENCE_MS);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A path found on the system (a file name any local user may have chosen),
/// as `status` and `list` show it: as the library shows a lock's name, as it
/// is or quoted and escaped as `{:?}` does when a control character or a
/// bidirectional override in it could forge a line or drive the terminal.
pub(crate) fn shown_path(path: &Path) -> String {
    lockmgr::LockId::file(path).to_string()
}

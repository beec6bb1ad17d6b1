//! Where `lockmgr`'s own lines go: the answer on stdout (`status`, `list`),
//! news and errors on stderr. Neither panics when nobody reads any more, as
//! `println!` and `eprintln!` do.

use std::fmt::Arguments;
use std::io::Write;
use std::path::Path;

/// `eprintln!`, except that a stderr nobody reads any more (a closed pipe)
/// loses the line instead of panicking: `run` must still release its lock
/// and end as its command did.
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
    let line = format!("{line}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
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

/// A path found on the system (a file name any local user may have chosen),
/// as `status` and `list` show it: as the library shows a lock's name, as it
/// is or quoted and escaped as `{:?}` does when a control character or a
/// bidirectional override in it could forge a line or drive the terminal.
pub(crate) fn shown_path(path: &Path) -> String {
    lockmgr::LockId::file(path).to_string()
}

//! Holder records: who holds a lock, written into the lock file by the
//! exclusive holder so that contention errors can say who is in the way.
//!
//! The record format is documented on [`Holder`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// The tag every record starts with, before its version.
const TAG: &[u8] = b"lockmgr-holder/";
const V1: &str = "lockmgr-holder/1";

/// The largest record a reader looks at. Longer content is not a record.
pub(crate) const MAX_RECORD: usize = 1024;

/// Whether `content` (a whole file) is a holder record's and nothing else:
/// one line, of at most [`MAX_RECORD`] bytes, that starts with the tag, a
/// version number and a space. Only such a file (or an empty one) is a
/// holder's to replace: a record may be garbled or of another version, but
/// anything more (a line that merely starts with the tag, a record with
/// other lines after it) is somebody's data.
pub(crate) fn is_whole_record(content: &[u8]) -> bool {
    let Some(line) = content.strip_suffix(b"\n") else {
        return false;
    };
    let Some(rest) = line.strip_prefix(TAG) else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    content.len() <= MAX_RECORD
        && !line.contains(&b'\n')
        && digits > 0
        && rest.get(digits) == Some(&b' ')
}

/// The fencing token in a whole record line (see [`is_whole_record`]),
/// read on its own: a record garbled elsewhere (a host that does not
/// decode, a field missing) still says where the sequence stands, and
/// tokens must never go back. The largest, if there are several; `Err`
/// for a token field that cannot be read.
pub(crate) fn recorded_token(record: &[u8]) -> Result<Option<u64>, ()> {
    let line = record.strip_suffix(b"\n").unwrap_or(record);
    let mut token = None;
    // Fields as any whitespace parts them: a record edited by hand may
    // have a tab or a carriage return where a space belongs.
    for field in line.split(|b| b.is_ascii_whitespace()) {
        if let Some(value) = field.strip_prefix(b"token=") {
            let value = std::str::from_utf8(value).map_err(drop)?;
            let value: u64 = value.parse().map_err(drop)?;
            token = token.max(Some(value));
        }
    }
    Ok(token)
}

/// Who holds a lock, as the holder recorded it.
///
/// Obtained from [`LockMgr::holder`](crate::LockMgr::holder) and carried by
/// [`LockError::WouldBlock`](crate::LockError::WouldBlock) and
/// [`LockError::TimedOut`](crate::LockError::TimedOut). Its `Display` form is
/// the part of a contention message after "held by":
///
/// ```
/// # use lockmgr::Holder;
/// let h: Holder = "lockmgr-holder/1 pid=4242 host=web-3 since=1763917331\n".parse().unwrap();
/// assert_eq!(h.to_string(), "pid 4242 on host web-3 since 2025-11-23T17:02:11Z");
/// ```
///
/// # Format (version 1)
///
/// One line of ASCII, space-separated `key=value` fields after a version tag,
/// ended by a newline:
///
/// ```text
/// lockmgr-holder/1 pid=4242 host=web-3 since=1763917331 label=nightly%20backup
/// ```
///
/// - `pid`: the holder's process id, decimal, in its own pid namespace.
/// - `pidns`: optional, that pid namespace (the inode `/proc/self/ns/pid`
///   names): a holder in a container that shares the host's name records
///   the pid it has there, which is not the host's process of that number.
/// - `host`: the holder's host name (`gethostname`).
/// - `since`: when the lock was won, in Unix seconds (UTC).
/// - `label`: optional, the builder's [`label`](crate::LockMgrBuilder::label).
/// - `token`: optional, the latest fencing token drawn on this file
///   (kept by every later holder's record, so the sequence never restarts).
///
/// Values are percent-encoded: every byte outside `!`..`~` (space, control
/// bytes, non-ASCII), and `%` and `=`, is written as `%XX`. Readers ignore
/// fields they do not know, so later versions may add some; a different tag
/// means a format this version cannot read. A record is only ever used for
/// reporting, never to decide who holds the lock: that is the kernel's job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's process id (on its host, in its pid namespace).
    pub pid: u32,
    /// The holder's host name.
    pub host: String,
    /// When the holder won the lock.
    pub since: SystemTime,
    /// The holder's [`label`](crate::LockMgrBuilder::label), if it set one.
    pub label: Option<String>,
    /// True when the record names a process of this host that is no longer
    /// running: the lock is held, but not by the recorded process (it died
    /// without a successor writing a record, or another tool holds the lock).
    pub stale: bool,
    /// The fencing token of the latest exclusive holder that drew one
    /// (see [`LockMgrBuilder::fencing_tokens`](crate::LockMgrBuilder::fencing_tokens)).
    pub token: Option<u64>,
    /// The record's pid belongs to a pid namespace other than the
    /// reader's (its `pidns` field): a holder in a container that shares
    /// the host's name. Its pid is then not this host's process of that
    /// number: the record is not called stale for that pid not running
    /// here, is shown as such, and is
    /// tied to the holding process whose own pid it is.
    pub(crate) other_pid_namespace: bool,
}

impl Holder {
    /// [`since`](Holder::since) as `YYYY-MM-DDTHH:MM:SSZ` (UTC). (A record
    /// read from a file is never dated past 9999; a time the format cannot
    /// write is given as `@` and its seconds since the epoch.)
    ///
    /// ```
    /// # use lockmgr::Holder;
    /// let h: Holder = "lockmgr-holder/1 pid=1 host=a since=0\n".parse().unwrap();
    /// assert_eq!(h.since_utc(), "1970-01-01T00:00:00Z");
    /// ```
    pub fn since_utc(&self) -> String {
        utc(self.since)
    }

    /// The one-line record, newline included.
    #[cfg(test)]
    pub(crate) fn to_record(&self) -> String {
        let secs = self
            .since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        record_line(
            self.pid,
            None,
            &self.host,
            secs,
            self.label.as_deref(),
            self.token,
        )
    }

    /// Parses the head of a lock file, read by a process of pid namespace
    /// `own_pid_namespace` (if known). `None` for anything that is not a
    /// complete version-1 record: a reader never fails on a garbled record.
    pub(crate) fn parse(
        head: &[u8],
        own_pid_namespace: Option<std::num::NonZeroU32>,
    ) -> Option<Holder> {
        Holder::parse_with_namespace(head, own_pid_namespace).map(|(h, _)| h)
    }

    /// [`parse`](Holder::parse), with the pid namespace the record names
    /// (kept apart: a [`Holder`] is carried by every contention error, and
    /// stays as small as it was).
    pub(crate) fn parse_with_namespace(
        head: &[u8],
        own_pid_namespace: Option<std::num::NonZeroU32>,
    ) -> Option<(Holder, Option<std::num::NonZeroU32>)> {
        let end = head.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&head[..end]).ok()?;
        let mut fields = line.split(' ');
        if fields.next()? != V1 {
            return None;
        }
        let (mut pid, mut host, mut since, mut label, mut token) = (None, None, None, None, None);
        let mut pid_namespace: Option<std::num::NonZeroU32> = None;
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "pid" => pid = Some(value.parse::<u32>().ok()?),
                "host" => host = Some(decode(value)?),
                "since" => since = Some(value.parse::<u64>().ok()?),
                "label" => label = Some(decode(value)?),
                "token" => token = Some(value.parse::<u64>().ok()?),
                // The kernel's namespace numbers are 32 bits; one this
                // version cannot read only goes unshown.
                "pidns" => pid_namespace = value.parse().ok(),
                _ => {}
            }
        }
        // A date RFC 3339 cannot write (after 9999) is no record a holder
        // wrote: garbled, like any other.
        let since = since.filter(|&s| s <= LAST_SECOND)?;
        let since = UNIX_EPOCH + Duration::from_secs(since);
        let other_pid_namespace =
            pid_namespace.is_some_and(|ns| own_pid_namespace.is_some_and(|own| own != ns));
        let holder = Holder {
            pid: pid?,
            other_pid_namespace,
            host: host?,
            since,
            label,
            stale: false,
            token,
        };
        Some((holder, pid_namespace))
    }

    /// Whether the record names a process of `this_host` (per
    /// `running`) that no longer runs. A pid of another pid namespace
    /// cannot be looked up here: never stale.
    pub(crate) fn checked(mut self, this_host: &str, running: impl Fn(u32) -> bool) -> Holder {
        self.stale = self.host == this_host && !self.in_other_pid_namespace() && !running(self.pid);
        self
    }

    /// Whether the record's pid belongs to a pid namespace other than the
    /// reader's.
    pub(crate) fn in_other_pid_namespace(&self) -> bool {
        self.other_pid_namespace
    }
}

impl std::str::FromStr for Holder {
    type Err = InvalidRecord;

    /// Parses a version-1 holder record (see [`Holder`]); `stale` is left
    /// false.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Holder::parse(s.as_bytes(), None).ok_or(InvalidRecord)
    }
}

/// The text is not a version-1 holder record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidRecord;

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a lockmgr holder record")
    }
}

impl std::error::Error for InvalidRecord {}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if self.in_other_pid_namespace() {
            f.write_str(" of another pid namespace")?;
        }
        write!(
            f,
            " on host {} since {}",
            Shown(&self.host),
            self.since_utc()
        )?;
        if let Some(label) = &self.label {
            write!(f, " ({})", Shown(label))?;
        }
        if self.stale {
            write!(f, " (stale record: pid {} is not running)", self.pid)?;
        }
        Ok(())
    }
}

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
pub(crate) const LAST_SECOND: u64 = 253_402_300_799;

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC). Total: a time the format cannot
/// write (read from another process, so anything) is given in seconds
/// since the epoch instead of failing the message it is part of.
pub(crate) fn utc(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= LAST_SECOND => humantime::format_rfc3339_seconds(t).to_string(),
        Ok(d) => format!("@{}", d.as_secs()),
        Err(before) => format!("@-{}", before.duration().as_secs()),
    }
}

/// Text another process wrote (a record's label or host, a command name),
/// shown to a person: as it is, or quoted and escaped as `{:?}` does when it
/// holds a control character or a bidirectional override, so that it can
/// neither forge a line of its own nor drive the terminal. Empty text is
/// shown quoted too (`""`), so that a message still shows where it is. The
/// fields keep the text as it was; only its display is guarded.
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hostile = |c: char| {
            c.is_control()
                || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        };
        if self.0.is_empty() || self.0.contains(hostile) {
            write!(f, "{:?}", self.0)
        } else {
            f.write_str(self.0)
        }
    }
}

/// The version-1 record line (newline included) of process `pid` on `host`,
/// holding since `secs` (Unix seconds), built straight into one string:
/// this runs on every exclusive acquire.
pub(crate) fn record_line(
    pid: u32,
    pid_namespace: Option<std::num::NonZeroU32>,
    host: &str,
    secs: u64,
    label: Option<&str>,
    token: Option<u64>,
) -> String {
    let mut s = String::with_capacity(64 + host.len() + label.map_or(0, str::len));
    s.push_str(V1);
    s.push_str(" pid=");
    s.push_str(&pid.to_string());
    if let Some(ns) = pid_namespace {
        s.push_str(" pidns=");
        s.push_str(&ns.to_string());
    }
    s.push_str(" host=");
    encode_into(&mut s, host);
    s.push_str(" since=");
    s.push_str(&secs.to_string());
    let token = token.map(|t| format!(" token={t}"));
    if let Some(label) = label {
        s.push_str(" label=");
        // A record longer than a reader looks at would be unreadable, and
        // so never replaced (content that is not a whole record is
        // somebody's data): a long label is cut, a whole character at a
        // time, to what fits.
        let room = MAX_RECORD.saturating_sub(s.len() + token.as_ref().map_or(0, String::len) + 1);
        // Encoding at most triples a byte: most labels fit in one go.
        if label.len() * 3 <= room {
            encode_into(&mut s, label);
        } else {
            let mut one = [0u8; 4];
            let mut used = 0;
            for c in label.chars() {
                let piece = utf8_percent_encode(c.encode_utf8(&mut one), ENCODED);
                let len: usize = piece.clone().map(str::len).sum();
                if used + len > room {
                    break;
                }
                used += len;
                s.extend(piece);
            }
        }
    }
    if let Some(token) = token {
        s.push_str(&token);
    }
    s.push('\n');
    s
}

/// What a record value may not contain as such: controls, space, `%` and
/// `=` (non-ASCII bytes are always encoded), so that a value is one
/// printable token of the `key=value` line.
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'=');

fn encode_into(out: &mut String, value: &str) {
    out.extend(utf8_percent_encode(value, ENCODED));
}

/// Decodes a record value; `None` for a malformed escape (which
/// `percent_decode_str` would pass through as text) or bytes that are not
/// UTF-8.
fn decode(value: &str) -> Option<String> {
    let well_formed = value
        .split('%')
        .skip(1)
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return None;
    }
    percent_decode_str(value)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_could_forge_a_line_or_drive_a_terminal_is_shown_escaped() {
        let shown = |s: &str| Shown(s).to_string();
        assert_eq!(shown("nightly backup \u{e9}"), "nightly backup \u{e9}");
        assert_eq!(shown("a\nb: free"), r#""a\nb: free""#);
        assert_eq!(shown("red\x1b[31m\r"), r#""red\u{1b}[31m\r""#);
        // A right-to-left override, which would reorder what follows it.
        assert_eq!(shown("txt.\u{202e}exe"), r#""txt.\u{202e}exe""#);
        let h = Holder {
            pid: 1,
            other_pid_namespace: false,
            host: "h\x1b]0;title\x07".into(),
            since: UNIX_EPOCH,
            label: Some("job\nforged".into()),
            stale: false,
            token: None,
        };
        let text = h.to_string();
        assert!(!text.chars().any(char::is_control), "{text}");
        assert!(text.contains(r#"("job\nforged")"#), "{text}");
    }

    /// A record of another pid namespace (a container's `pid=1`) is never
    /// stale, whatever the host's process of that number does, and says
    /// where its pid belongs; one of the reader's own namespace is checked
    /// as before.
    #[test]
    fn a_record_of_another_pid_namespace_is_never_stale() {
        let own = std::num::NonZeroU32::new(4_026_531_836).unwrap();
        let other = own.checked_add(1).unwrap();
        let record = |ns| record_line(1 << 30, Some(ns), "h", 1, None, None);
        let theirs = Holder::parse(record(other).as_bytes(), Some(own)).unwrap();
        assert!(theirs.in_other_pid_namespace());
        let theirs = theirs.checked("h", |_| false);
        assert!(!theirs.stale);
        assert!(theirs
            .to_string()
            .starts_with("pid 1073741824 of another pid namespace on host h"));
        let ours = Holder::parse(record(own).as_bytes(), Some(own))
            .unwrap()
            .checked("h", |_| false);
        assert!(ours.stale);
        assert!(ours.to_string().starts_with("pid 1073741824 on host h"));
    }

    #[test]
    fn record_round_trips_with_awkward_labels() {
        let h = Holder {
            pid: 4242,
            other_pid_namespace: false,
            host: "web-3".into(),
            since: UNIX_EPOCH + Duration::from_secs(1_763_917_331),
            label: Some("nightly backup = 100% \u{e9}\nsecond line".into()),
            stale: false,
            token: Some(17),
        };
        let rec = h.to_record();
        assert_eq!(rec.matches('\n').count(), 1, "{rec}");
        assert!(rec.starts_with("lockmgr-holder/1 pid=4242 host=web-3 since=1763917331 label="));
        assert_eq!(Holder::parse(rec.as_bytes(), None), Some(h));
    }

    #[test]
    fn garbled_records_read_as_unknown() {
        for bad in [
            &b""[..],
            b"lockmgr-holder/1 pid=1 host=a since=2", // no newline: torn
            b"lockmgr-holder/2 pid=1 host=a since=2\n", // another version
            b"lockmgr-holder/1 pid=x host=a since=2\n", // bad pid
            b"lockmgr-holder/1 host=a since=2\n",     // missing pid
            b"lockmgr-holder/1 pid=1 host=%zz since=2\n", // bad escape
            b"lockmgr-holder/1 pid=1 host=a since=2 junk\n", // not key=value
            b"\xff\xfe\n",
            b"some data file\n",
        ] {
            assert_eq!(
                Holder::parse(bad, None),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Unknown fields are skipped, for later versions' additions.
        assert!(Holder::parse(b"lockmgr-holder/1 pid=1 host=a since=2 cmd=x\n", None).is_some());
    }

    #[test]
    fn display_reads_as_a_sentence() {
        let mut h: Holder = "lockmgr-holder/1 pid=4242 host=web-3 since=1763917331 label=deploy\n"
            .parse()
            .unwrap();
        assert_eq!(
            h.to_string(),
            "pid 4242 on host web-3 since 2025-11-23T17:02:11Z (deploy)"
        );
        h.stale = true;
        assert!(h
            .to_string()
            .ends_with("(stale record: pid 4242 is not running)"));
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        let at = |secs| Holder {
            pid: 1,
            other_pid_namespace: false,
            host: "a".into(),
            since: UNIX_EPOCH + Duration::from_secs(secs),
            label: None,
            stale: false,
            token: None,
        };
        assert_eq!(at(0).since_utc(), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400).since_utc(), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_798_761_599).since_utc(), "2026-12-31T23:59:59Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(LAST_SECOND + 1)),
            "@253402300800"
        );
        assert_eq!(utc(UNIX_EPOCH - Duration::from_secs(1)), "@-1");
    }
}

//! Holder records: who holds a lock, written into the lock file by the
//! exclusive holder so that contention errors can say who is in the way.
//!
//! The record format is documented on [`Holder`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The tag every version-1 record starts with.
pub(crate) const TAG: &[u8] = b"lockmgr-holder/";
const V1: &str = "lockmgr-holder/1";

/// The largest record a reader looks at. Longer content is not a record.
pub(crate) const MAX_RECORD: usize = 1024;

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
/// - `pid`: the holder's process id, decimal.
/// - `host`: the holder's host name (`gethostname`).
/// - `since`: when the lock was won, in Unix seconds (UTC).
/// - `label`: optional, the builder's [`label`](crate::Builder::label).
///
/// Values are percent-encoded: every byte outside `!`..`~` (space, control
/// bytes, non-ASCII), and `%` and `=`, is written as `%XX`. Readers ignore
/// fields they do not know, so later versions may add some; a different tag
/// means a format this version cannot read. A record is only ever used for
/// reporting, never to decide who holds the lock: that is the kernel's job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's process id (on its host).
    pub pid: u32,
    /// The holder's host name.
    pub host: String,
    /// When the holder won the lock.
    pub since: SystemTime,
    /// The holder's [`label`](crate::Builder::label), if it set one.
    pub label: Option<String>,
    /// True when the record names a process of this host that is no longer
    /// running: the lock is held, but not by the recorded process (it died
    /// without a successor writing a record, or another tool holds the lock).
    pub stale: bool,
}

impl Holder {
    /// [`since`](Holder::since) as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
    ///
    /// ```
    /// # use lockmgr::Holder;
    /// let h: Holder = "lockmgr-holder/1 pid=1 host=a since=0\n".parse().unwrap();
    /// assert_eq!(h.since_utc(), "1970-01-01T00:00:00Z");
    /// ```
    pub fn since_utc(&self) -> String {
        Rfc3339(self.since).to_string()
    }

    /// The record for the calling process, won now, built straight into
    /// one string (this runs on every exclusive acquire).
    pub(crate) fn my_record(label: Option<&str>) -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        record_line(std::process::id(), crate::os::hostname(), secs, label)
    }

    /// The one-line record, newline included.
    #[cfg(test)]
    pub(crate) fn to_record(&self) -> String {
        let secs = self
            .since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        record_line(self.pid, &self.host, secs, self.label.as_deref())
    }

    /// Parses the head of a lock file. `None` for anything that is not a
    /// complete version-1 record: a reader never fails on a garbled record.
    pub(crate) fn parse(head: &[u8]) -> Option<Holder> {
        let end = head.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&head[..end]).ok()?;
        let mut fields = line.split(' ');
        if fields.next()? != V1 {
            return None;
        }
        let (mut pid, mut host, mut since, mut label) = (None, None, None, None);
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "pid" => pid = Some(value.parse::<u32>().ok()?),
                "host" => host = Some(decode(value)?),
                "since" => since = Some(value.parse::<u64>().ok()?),
                "label" => label = Some(decode(value)?),
                _ => {}
            }
        }
        let since = UNIX_EPOCH.checked_add(Duration::from_secs(since?))?;
        Some(Holder {
            pid: pid?,
            host: host?,
            since,
            label,
            stale: false,
        })
    }

    /// Marks the record stale if it names a dead process of this host.
    pub(crate) fn checked(mut self) -> Holder {
        self.stale = self.host == crate::os::hostname() && !crate::os::pid_alive(self.pid);
        self
    }
}

impl std::str::FromStr for Holder {
    type Err = InvalidRecord;

    /// Parses a version-1 holder record (see [`Holder`]); `stale` is left
    /// false.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Holder::parse(s.as_bytes()).ok_or(InvalidRecord)
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
        write!(
            f,
            "pid {} on host {} since {}",
            self.pid,
            self.host,
            Rfc3339(self.since)
        )?;
        if let Some(label) = &self.label {
            write!(f, " ({label})")?;
        }
        if self.stale {
            write!(f, " (stale record: pid {} is not running)", self.pid)?;
        }
        Ok(())
    }
}

fn record_line(pid: u32, host: &str, secs: u64, label: Option<&str>) -> String {
    let mut s = String::with_capacity(64 + host.len() + label.map_or(0, str::len));
    s.push_str(V1);
    s.push_str(" pid=");
    s.push_str(&pid.to_string());
    s.push_str(" host=");
    encode_into(&mut s, host);
    s.push_str(" since=");
    s.push_str(&secs.to_string());
    if let Some(label) = label {
        s.push_str(" label=");
        encode_into(&mut s, label);
    }
    s.push('\n');
    s
}

fn encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'%' && b != b'=' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
}

fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self
            .0
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_awkward_labels() {
        let h = Holder {
            pid: 4242,
            host: "web-3".into(),
            since: UNIX_EPOCH + Duration::from_secs(1_763_917_331),
            label: Some("nightly backup = 100% \u{e9}\nsecond line".into()),
            stale: false,
        };
        let rec = h.to_record();
        assert_eq!(rec.matches('\n').count(), 1, "{rec}");
        assert!(rec.starts_with("lockmgr-holder/1 pid=4242 host=web-3 since=1763917331 label="));
        assert_eq!(Holder::parse(rec.as_bytes()), Some(h));
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
                Holder::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Unknown fields are skipped, for later versions' additions.
        assert!(Holder::parse(b"lockmgr-holder/1 pid=1 host=a since=2 cmd=x\n").is_some());
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
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(
            Rfc3339(UNIX_EPOCH + Duration::from_secs(1_798_761_599)).to_string(),
            "2026-12-31T23:59:59Z"
        );
    }
}

//! What the kernel says about the locks on a file: `/proc/locks` lists every
//! lock of the host (and every request blocked behind one), and each
//! descriptor's `/proc/PID/fdinfo/FD` lists the locks held through it, which
//! is how holders are named whose lock `/proc/locks` does not tie to a
//! process (OFD locks show pid -1; a `flock` lock shows the process that
//! took it, which may have exited while a forked child keeps the lock).
//!
//! Reading never takes or disturbs a lock. When nothing locks the file, the
//! cost is one read of `/proc/locks`; only when something does are the
//! processes' open descriptors looked at (one `stat` each, and the `fdinfo` of those that
//! are the lock file).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::vocab::{semaphore_bytes, LockFamily, LockMode};

/// A file, as `/proc/locks` names it: device major and minor, and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Inode {
    major: u64,
    minor: u64,
    ino: u64,
}

impl Inode {
    /// The file open at `fd`.
    pub(crate) fn of(fd: impl AsFd) -> io::Result<Inode> {
        Ok(Inode::from_stat(&nix::sys::stat::fstat(fd.as_fd())?))
    }

    /// The file of device `dev` (`st_dev`) and inode `ino`.
    pub(crate) fn from_numbers((dev, ino): (u64, u64)) -> Inode {
        Inode {
            major: nix::sys::stat::major(dev),
            minor: nix::sys::stat::minor(dev),
            ino,
        }
    }

    /// The device number (`st_dev`) of the file.
    pub(crate) fn device(&self) -> u64 {
        nix::sys::stat::makedev(self.major, self.minor)
    }

    /// The inode number of the file.
    pub(crate) fn inode(&self) -> u64 {
        self.ino
    }

    fn from_stat(st: &nix::sys::stat::FileStat) -> Inode {
        Inode {
            major: nix::sys::stat::major(st.st_dev),
            minor: nix::sys::stat::minor(st.st_dev),
            ino: st.st_ino,
        }
    }
}

/// One line of `/proc/locks` (or an fdinfo `lock:` line) for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) family: LockFamily,
    pub(crate) mode: LockMode,
    /// The process the kernel ties the lock to: none for OFD locks.
    pub(crate) pid: Option<u32>,
    /// A request blocked behind a held lock (`->` lines).
    pub(crate) blocked: bool,
}

/// Parses one lock line (`1: FLOCK  ADVISORY  WRITE 812 fe:00:1234 0 EOF`,
/// `1: -> POSIX ...`); `None` for lines it does not know, and for a
/// semaphore's marks.
fn parse(line: &str) -> Option<(Inode, Entry)> {
    parse_unnumbered(unnumbered(line)?)
}

/// A lock line without its leading number (`1:`), which only tells the
/// line's place in the list.
fn unnumbered(line: &str) -> Option<&str> {
    let (number, rest) = line.trim_start().split_once(':')?;
    number.bytes().all(|b| b.is_ascii_digit()).then_some(rest)
}

/// [`parse`], after the line's number.
fn parse_unnumbered(line: &str) -> Option<(Inode, Entry)> {
    let mut words = line.split_whitespace();
    let mut word = words.next()?;
    let blocked = word == "->";
    if blocked {
        word = words.next()?;
    }
    let family = match word {
        "FLOCK" => LockFamily::Flock,
        "POSIX" => LockFamily::Posix,
        "OFDLCK" => LockFamily::Ofd,
        // Leases, delegations: not locks a lock manager takes.
        _ => return None,
    };
    // ADVISORY or MANDATORY, then the mode.
    words.next()?;
    let mode = match words.next()? {
        "READ" => LockMode::Shared,
        "WRITE" => LockMode::Exclusive,
        _ => return None,
    };
    let pid = words.next()?.parse::<i64>().ok()?;
    let mut id = words.next()?.split(':');
    let major = u64::from_str_radix(id.next()?, 16).ok()?;
    let minor = u64::from_str_radix(id.next()?, 16).ok()?;
    let ino = id.next()?.parse().ok()?;
    // A semaphore's marks (a waiter's, a first user's) hold no permit.
    let start = words.next().and_then(|w| w.parse::<u64>().ok());
    let end = words.next().and_then(|w| w.parse::<u64>().ok());
    if let (Some(start), Some(end)) = (start, end) {
        if semaphore_bytes::is_semaphore_mark(start, end) {
            return None;
        }
    }
    let entry = Entry {
        family,
        mode,
        pid: u32::try_from(pid).ok().filter(|&p| p > 0),
        blocked,
    };
    Some((Inode { major, minor, ino }, entry))
}

/// Whether any lock line names a file of inode number `ino`, on any device:
/// on btrfs the lock lists give the file system's device, not the one
/// `stat` gives, so a file found in none by its device may still be locked.
pub(crate) fn any_of_inode(ino: u64) -> io::Result<bool> {
    Ok(all_entries()?.iter().any(|(i, _)| i.ino == ino))
}

/// How many times `/proc/locks` is read at most, while its reads disagree.
const READS: usize = 4;

/// Every lock and blocked request of the host, by file.
///
/// The kernel makes `/proc/locks` a page at a time, each under its lock of
/// the lock list, but finds where the next page starts by its number of
/// lines: a lock let go before that place shifts the rest up, and the next
/// page starts a line late (a lock held all along is missing from that
/// read); a lock taken there shifts it down, and lines come twice. So the
/// file is read until two reads agree, which only a list that did not
/// change between them can give, and that read is the answer. If none
/// agree (at most [`READS`] reads), every line any read showed counts, as
/// many times as every read that showed it did at least (two locks can
/// make identical lines). A line can then stand for a lock let go between
/// the reads: those who read the result look at the processes'
/// descriptors too.
pub(crate) fn all_entries() -> io::Result<Vec<(Inode, Entry)>> {
    let mut fewest: BTreeMap<String, usize> = BTreeMap::new();
    let mut last: Option<BTreeMap<String, usize>> = None;
    for _ in 0..READS {
        // Named in the error: the caller's names the lock file, which is
        // not what could not be read (no `/proc` in a bare container).
        let text = fs::read_to_string("/proc/locks")
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/locks: {e}")))?;
        let mut read: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines().filter_map(unnumbered) {
            *read.entry(line.trim().to_owned()).or_default() += 1;
        }
        if last.as_ref() == Some(&read) {
            fewest = read;
            break;
        }
        for (line, &n) in &read {
            fewest
                .entry(line.clone())
                .and_modify(|least| *least = (*least).min(n))
                .or_insert(n);
        }
        last = Some(read);
    }
    Ok(fewest
        .iter()
        .flat_map(|(line, &n)| std::iter::repeat_n(line, n))
        .filter_map(|line| parse_unnumbered(line))
        .collect())
}

/// What the processes' descriptors show about one file.
#[derive(Debug, Default)]
pub(crate) struct Descriptors {
    /// Per process: the locks its descriptors of the file hold, each once
    /// however many descriptors share it (none: it has the file open
    /// without holding a lock through it).
    pub(crate) by_pid: BTreeMap<u32, Vec<Entry>>,
    /// Locks seen on a further descriptor of a process, of the family and
    /// mode of one already counted, where the kernel would not say whether
    /// the two descriptors share one open file description (one lock) or
    /// not (two).
    pub(crate) uncertain: Vec<(u32, Entry)>,
    /// The file's path, as a descriptor of it names it (`/proc/PID/fd/N`),
    /// unless it was deleted.
    pub(crate) path: Option<PathBuf>,
    /// The file as the kernel's lock lists name it, when a descriptor's
    /// locks showed it: with its file system's device, which on btrfs is
    /// not the subvolume's device `stat` gives.
    pub(crate) listed_as: Option<Inode>,
    /// The file as `stat` of a descriptor of it names it (see `listed_as`).
    pub(crate) stat_as: Option<Inode>,
}

/// Every process of this host that has one of `files` open, and the locks
/// held through its descriptors of them. Processes whose descriptors cannot
/// be read (another user's, without the privilege to look) are skipped.
pub(crate) fn descriptors(files: &[Inode]) -> io::Result<HashMap<Inode, Descriptors>> {
    let mut found: HashMap<Inode, Descriptors> = HashMap::new();
    // Which descriptor of a process showed which lock of a file.
    let mut seen_fds: HashMap<(Inode, u32), Vec<(i32, Entry)>> = HashMap::new();
    let inos: std::collections::HashSet<u64> = files.iter().map(|f| f.ino).collect();
    let devices: std::collections::HashSet<(u64, u64)> =
        files.iter().map(|f| (f.major, f.minor)).collect();
    for proc_entry in fs::read_dir("/proc")? {
        let Ok(proc_entry) = proc_entry else { continue };
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Another user's (without privilege), exited meanwhile, or a kernel
        // thread.
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds {
            let Ok(fd) = fd else { continue };
            // Neither the link nor the fdinfo asks the descriptor's file
            // system anything, where a `stat` of the link does: a process
            // with a file open on a stalled mount (a dead NFS server, a
            // stopped FUSE daemon) would hang this look at every other
            // file. So a descriptor is `stat`ed only once those two said it
            // may be one of `files`: not a socket, pipe or other object
            // without a path, and of one of their inode numbers.
            // (A link too long to read, a path past PATH_MAX, is no reason
            // to pass the descriptor over: its fdinfo decides.)
            let target = fs::read_link(fd.path()).ok();
            if target.as_ref().is_some_and(|t| !t.is_absolute()) {
                continue;
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            let Ok(info) = fs::read_to_string(info) else {
                continue;
            };
            let ino = info
                .lines()
                .find_map(|l| l.strip_prefix("ino:"))
                .and_then(|n| n.trim().parse::<u64>().ok());
            if ino.is_some_and(|ino| !inos.contains(&ino)) {
                continue;
            }
            // Inode numbers are the file system's own: a network or FUSE
            // mount (a passthrough view of the lock file's own directory,
            // say) may have one of the same number, and a `stat` there
            // would wait for it. Its device, which its process's mount
            // list tells without asking it, settles that.
            let mount = info
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .and_then(|id| remote_mount_device(pid, id));
            if mount.is_some_and(|device| !devices.contains(&device)) {
                continue;
            }
            // `stat` follows the descriptor's link to the open file.
            let Ok(st) = nix::sys::stat::stat(&fd.path()) else {
                continue;
            };
            let stat_file = Inode::from_stat(&st);
            let exact = files.contains(&stat_file);
            if !exact && !inos.contains(&stat_file.ino) {
                continue;
            }
            // A descriptor's fdinfo shows only locks of its own open file:
            // the inode number is enough, and the device is the one the
            // lock lists use (on btrfs, not the one `stat` gives).
            let lines: Vec<(Inode, Entry)> = info
                .lines()
                .filter_map(|l| l.strip_prefix("lock:"))
                .filter_map(parse)
                .filter(|(i, e)| i.ino == stat_file.ino && !e.blocked)
                .collect();
            // Asked about by the lock lists' name of it (btrfs): a lock line
            // of this descriptor is what ties the two names.
            let file = if exact {
                stat_file
            } else {
                match lines.iter().map(|(i, _)| *i).find(|i| files.contains(i)) {
                    Some(listed) => listed,
                    None => continue,
                }
            };
            let seen = found.entry(file).or_default();
            if let Some((listed, _)) = lines.first() {
                seen.listed_as.get_or_insert(*listed);
            }
            seen.stat_as.get_or_insert(stat_file);
            let locks: Vec<Entry> = lines.into_iter().map(|(_, e)| e).collect();
            if seen.path.is_none() {
                seen.path = target.filter(|t| !t.to_string_lossy().ends_with(" (deleted)"));
            }
            let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let shown_by = seen_fds.entry((file, pid)).or_default();
            // The locks of one open file description show on each of its
            // descriptors; those of two descriptions are two locks, each a
            // line of /proc/locks to match. A POSIX lock is the process's,
            // whatever descriptor shows it. Where the kernel will not tell
            // two descriptions from one (no `kcmp`), the lock is kept
            // aside, to match a line nothing else does.
            let mut new = Vec::new();
            for lock in locks {
                let (mut same, mut unknown) = (false, false);
                for &(other, e) in shown_by.iter() {
                    if e.family != lock.family || e.mode != lock.mode {
                        continue;
                    }
                    if lock.family == LockFamily::Posix {
                        same = true;
                        break;
                    }
                    match crate::os::same_description(pid, other, fd) {
                        Some(true) => {
                            same = true;
                            break;
                        }
                        Some(false) => {}
                        None => unknown = true,
                    }
                }
                if same {
                    continue;
                }
                if unknown {
                    seen.uncertain.push((pid, lock));
                } else {
                    new.push(lock);
                }
            }
            shown_by.extend(new.iter().map(|&e| (fd, e)));
            seen.by_pid.entry(pid).or_default().extend(new);
        }
    }
    Ok(found)
}

/// The waiting board of process `pid` (see `os::Board`): how many of its
/// `lockmgr` tasks wait for `file`, and since when (Unix ms). One
/// `readlink` per descriptor of the process, and one read of its board.
pub(crate) fn waiting(pid: u32, file: Inode) -> Option<(u64, u64)> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let name = format!("/memfd:{}", crate::os::Board::NAME);
    for fd in fds.flatten() {
        let is_board = fs::read_link(fd.path())
            .ok()
            .is_some_and(|t| t.to_string_lossy().starts_with(&name));
        if is_board {
            // Never more than a board, and never waiting: the file is the
            // other process's, which could make it as large as memory, or
            // a FIFO of that name (in a mount namespace of its own).
            use std::os::unix::fs::OpenOptionsExt;
            let mut bytes = Vec::new();
            // Looked at before it is opened: opening a device may do
            // something (the descriptor is checked again once open).
            if !fs::metadata(fd.path()).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let read = fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
                .open(fd.path())
                .and_then(|f| {
                    if !f.metadata()?.is_file() {
                        return Err(io::ErrorKind::InvalidData.into());
                    }
                    io::Read::read_to_end(&mut io::Read::take(f, board_bytes()), &mut bytes)
                });
            // A board the process inherited (a forked child's parent's)
            // names another pid: look on for its own.
            if let Some(found) = read
                .ok()
                .and_then(|_| crate::os::read_board(&bytes, pid, (file.device(), file.inode())))
            {
                return Some(found);
            }
        }
    }
    None
}

fn board_bytes() -> u64 {
    (crate::os::Board::WORDS * 8) as u64
}

/// The device (major, minor) of mount `id` of process `pid`, from its
/// mount list (which asks no file system), when that mount is of a network
/// or FUSE file system: where a `stat` may wait for a server or a daemon.
/// (Their devices are the ones `stat` and the lock lists give; a local file
/// system's, btrfs's, may not be.)
fn remote_mount_device(pid: u32, id: u64) -> Option<(u64, u64)> {
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    mounts.lines().find_map(|line| {
        // `ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE ...`
        let mut words = line.split_whitespace();
        if words.next()?.parse::<u64>().ok()? != id {
            return None;
        }
        let (major, minor) = words.nth(1)?.split_once(':')?;
        let fstype = words.skip_while(|&w| w != "-").nth(1)?;
        let remote = fstype.starts_with("fuse")
            || matches!(
                fstype,
                "nfs" | "nfs4" | "cifs" | "smb3" | "9p" | "ceph" | "afs" | "glusterfs" | "lustre"
            );
        remote.then_some((major.parse().ok()?, minor.parse().ok()?))
    })
}

/// The pid namespace of process `pid` (the inode its `/proc/PID/ns/pid`
/// names); `None` where it cannot be read (another user's process, for a
/// caller without privilege).
pub(crate) fn pid_namespace(pid: u32) -> Option<NonZeroU32> {
    namespace_at(&format!("/proc/{pid}/ns/pid"))
}

/// The calling process's pid namespace, read once per process: a child
/// that does not share memory, which may be in another one
/// (`clone(CLONE_NEWPID)`), asks again (see [`crate::os::pid_namespace_word`]).
/// Where that page cannot be had (before Linux 4.14), it is remembered by
/// pid, as the best that can be told.
pub(crate) fn own_pid_namespace() -> Option<NonZeroU32> {
    let Some(word) = crate::os::pid_namespace_word() else {
        return own_pid_namespace_by_pid();
    };
    if let Some(ns) = NonZeroU32::new(word.load(std::sync::atomic::Ordering::Relaxed)) {
        return Some(ns);
    }
    let ns = namespace_at("/proc/self/ns/pid");
    if let Some(ns) = ns {
        word.store(ns.get(), std::sync::atomic::Ordering::Relaxed);
    }
    ns
}

/// [`own_pid_namespace`] without the wipe-on-fork page: remembered with the
/// pid that read it, in one word (a lock could be left held by a thread
/// that a `fork` does not copy).
fn own_pid_namespace_by_pid() -> Option<NonZeroU32> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static OWN: AtomicU64 = AtomicU64::new(0);
    let pid = crate::os::current_pid();
    let known = OWN.load(Ordering::Relaxed);
    if known >> 32 == u64::from(pid) {
        if let Some(ns) = NonZeroU32::new(known as u32) {
            return Some(ns);
        }
    }
    let ns = namespace_at("/proc/self/ns/pid")?;
    OWN.store(
        u64::from(pid) << 32 | u64::from(ns.get()),
        Ordering::Relaxed,
    );
    Some(ns)
}

/// The namespace a `/proc/.../ns/pid` link names (`pid:[4026531836]`).
fn namespace_at(link: &str) -> Option<NonZeroU32> {
    let target = fs::read_link(link).ok()?;
    target
        .to_str()?
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The pid process `pid` has in its own pid namespace (the last of the
/// `NSpid:` line of its status, which anyone may read), when that
/// namespace is nested below the one this `/proc` shows (more than one
/// entry): what it records as its pid.
pub(crate) fn nested_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .collect();
    match ids[..] {
        [_, .., last] => last.parse().ok(),
        _ => None,
    }
}

/// The process's name as the kernel keeps it (`/proc/PID/comm`: at most 15
/// bytes). Never its command line, which may carry secrets.
pub(crate) fn command(pid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim_end_matches('\n');
    (!comm.is_empty()).then(|| comm.to_owned())
}

/// Whether this process may read the descriptors of process `pid`
/// (its own user's, or any with the privilege to look).
pub(crate) fn descriptors_readable(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd")).is_ok()
}

/// Whether process `pid` has `file` mapped into its memory
/// (`/proc/PID/maps`: `address perms offset major:minor inode path`).
pub(crate) fn maps(pid: u32, file: Inode) -> bool {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    maps.lines().any(|line| {
        let mut words = line.split_whitespace().skip(3);
        let (Some(dev), Some(ino)) = (words.next(), words.next()) else {
            return false;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            return false;
        };
        u64::from_str_radix(major, 16).ok() == Some(file.major)
            && u64::from_str_radix(minor, 16).ok() == Some(file.minor)
            && ino.parse::<u64>().ok() == Some(file.ino)
    })
}

/// Whether process `pid` exists on this host.
pub(crate) fn alive(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_for(line: &str, file: Inode) -> Option<Entry> {
        parse(line).filter(|(i, _)| *i == file).map(|(_, e)| e)
    }

    const FILE: Inode = Inode {
        major: 0xfe,
        minor: 0,
        ino: 10010645,
    };

    #[test]
    fn lines_of_every_family_parse() {
        let e = parse_for("1: FLOCK  ADVISORY  WRITE 26247 fe:00:10010645 0 EOF", FILE).unwrap();
        assert_eq!(
            e,
            Entry {
                family: LockFamily::Flock,
                mode: LockMode::Exclusive,
                pid: Some(26247),
                blocked: false
            }
        );
        let e = parse_for("2: OFDLCK ADVISORY  READ -1 fe:00:10010645 0 EOF", FILE).unwrap();
        assert_eq!(
            (e.family, e.mode, e.pid),
            (LockFamily::Ofd, LockMode::Shared, None)
        );
        let e = parse_for("3: -> POSIX  ADVISORY  WRITE 77 fe:00:10010645 0 EOF", FILE).unwrap();
        assert_eq!(
            (e.family, e.pid, e.blocked),
            (LockFamily::Posix, Some(77), true)
        );
        // An fdinfo line, after its `lock:` prefix.
        let e = parse_for("\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10010645 0 EOF", FILE).unwrap();
        assert_eq!(e.family, LockFamily::Ofd);
    }

    #[test]
    fn other_files_leases_and_garbage_are_skipped() {
        for line in [
            "1: FLOCK  ADVISORY  WRITE 1 fe:01:10010645 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 1 fe:00:10010646 0 EOF",
            "1: LEASE  ACTIVE    READ 1 fe:00:10010645 0 EOF",
            "1: DELEG  ACTIVE    READ 1 fe:00:10010645 0 EOF",
            "garbage",
            "",
            "1: FLOCK",
            "1: FLOCK ADVISORY WRITE x fe:00:10010645 0 EOF",
        ] {
            assert_eq!(parse_for(line, FILE), None, "{line}");
        }
    }
}

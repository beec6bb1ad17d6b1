//! A semaphore's contention: the number of permits, kept at the head of
//! its file; one permit slot per byte of a range far past any content,
//! each taken with an exclusive OFD lock on its byte; a try over every
//! slot; and the wait, behind this process's other waiters for the file,
//! on the file's close events (a permit is given back by closing its
//! descriptor, which a killed holder's exit does too) until a slot frees.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;

use crate::clock;
use crate::contender::{self, open_fd, LockConfig};
use crate::error::{LockError, Operation};
use crate::os::{self, FileId};
use crate::queue::{self, Ticket};
use crate::vocab::{LockKind, LockMode, Status};
use crate::wait::{self, Cause, Contender, Failed, Policy, Signal, Try};

use crate::vocab::semaphore_bytes::{COUNT_BYTE, SLOT_BASE, WAITING_BYTE};
/// How long a first user that found the count's byte taken keeps looking
/// for the count another first user is writing (see
/// `SlotContender::try_once`): a few system calls, unless that user is
/// descheduled on a busy machine, which a count of tries would not cover.
const COUNT_PATIENCE: std::time::Duration = std::time::Duration::from_millis(10);
/// How long a newcomer lets the processes already waiting try first.
const HEAD_START: std::time::Duration = std::time::Duration::from_millis(2);
/// The most permits a semaphore may have (each try looks at every slot).
pub(crate) const MAX_PERMITS: u32 = 4096;
const TAG: &str = "lockmgr-semaphore/1 permits=";

/// A permit held: the open file description that holds its slot.
#[derive(Debug)]
pub(crate) struct HeldPermit {
    file: Option<File>,
    path: Arc<Path>,
    slot: u32,
    owner_pid: u32,
    /// Given back on a blocking thread when dropped on a runtime: the file
    /// is on a file system whose calls may stall (see `contender`).
    off_runtime: bool,
}

impl HeldPermit {
    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file
            .as_ref()
            .expect("the file is only taken by release")
            .as_fd()
    }

    /// Gives the permit back: the slot unlocked (by the process that took
    /// it: a forked child's copy must not free its parent's permit), then
    /// the descriptor closed, which wakes the waiters of every process.
    pub(crate) fn release(&mut self) -> Result<(), LockError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if os::current_pid() == self.owner_pid {
            result = os::unlock_byte(&file, SLOT_BASE + i64::from(self.slot))
                .map_err(|e| LockError::io(&self.path, Operation::Unlock, e));
        }
        let closed = nix::unistd::close(file)
            .map_err(|e| LockError::io(&self.path, Operation::Close, e.into()));
        tracing::debug!(lock = %self.path.display(), slot = self.slot, "released permit");
        result.and(closed)
    }
}

impl Drop for HeldPermit {
    fn drop(&mut self) {
        if self.off_runtime && self.file.is_some() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut moved = HeldPermit {
                    file: self.file.take(),
                    path: self.path.clone(),
                    slot: self.slot,
                    owner_pid: self.owner_pid,
                    off_runtime: false,
                };
                rt.spawn_blocking(move || {
                    if let Err(e) = moved.release() {
                        tracing::warn!(error = %e, "lockmgr: error while releasing a permit");
                    }
                });
                return;
            }
        }
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "lockmgr: error while releasing a permit");
        }
    }
}

/// One caller's contention for a permit.
struct SlotContender<'a> {
    config: &'a LockConfig,
    permits: u32,
    fd: Option<OwnedFd>,
    file: FileId,
    slot: Option<u32>,
    /// Whether a try on `fd` found every permit taken (or the file's count
    /// not yet written): the file was waited for.
    lost: bool,
    /// Whether the file's count was found to be `permits` (see
    /// [`check_permits`]).
    counted: bool,
}

impl<'a> SlotContender<'a> {
    fn open(config: &'a LockConfig, permits: u32) -> Result<Self, LockError> {
        // Before the file is made: an absurd count leaves nothing behind.
        if permits == 0 || permits > MAX_PERMITS {
            return Err(LockError::Invalid {
                lock: config.id.clone(),
                reason: format!("a semaphore has 1 to {MAX_PERMITS} permits, not {permits}"),
            });
        }
        let (fd, file, _) = open_fd(config, LockMode::Exclusive)?;
        let counted = check_permits(config, fd.as_fd(), permits)?;
        Ok(SlotContender {
            config,
            permits,
            fd: Some(fd),
            file,
            slot: None,
            lost: false,
            counted,
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a contender has its descriptor until it is handed on")
            .as_fd()
    }

    /// The first free slot, taken; `None` when every permit is taken.
    fn try_slots(&self) -> Result<Option<u32>, LockError> {
        for slot in 0..self.permits {
            if os::try_lock_byte(self.fd(), SLOT_BASE + i64::from(slot))
                .map_err(|e| LockError::io(&self.config.path, Operation::Lock, e))?
            {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Leaves the file open for the one now at the path, marked as waited
    /// for as the old one was.
    fn reopen(&mut self) -> Result<(), LockError> {
        let fresh = SlotContender::open(self.config, self.permits)?;
        os::share_byte(fresh.fd(), WAITING_BYTE)
            .map_err(|e| LockError::io(&self.config.path, Operation::Lock, e))?;
        *self = fresh;
        Ok(())
    }

    fn into_permit(mut self) -> HeldPermit {
        // No longer waiting: the mark goes (it is the holder's descriptor).
        let _ = os::unlock_byte(self.fd(), WAITING_BYTE);
        HeldPermit {
            file: self.fd.take().map(File::from),
            path: self.config.path.clone(),
            slot: self.slot.expect("won"),
            owner_pid: os::current_pid(),
            off_runtime: self.config.on_network(),
        }
    }

    fn all_taken(&self) -> LockError {
        LockError::WouldBlock {
            lock: self.config.id.clone(),
            holder: None,
        }
    }
}

impl Contender for SlotContender<'_> {
    type Error = LockError;

    fn try_once(&mut self, attempt: u32, cause: Cause) -> Result<Try, LockError> {
        let path = &self.config.path;
        let mut moved = false;
        loop {
            let Some(slot) = self.try_slots()? else {
                tracing::debug!(lock = %path.display(), attempt, woke = cause.as_str(), "every permit taken");
                self.lost = true;
                return Ok(if moved { Try::Moved } else { Try::Held });
            };
            // As for a lock (`FileContender::try_once`): a file waited for
            // may no longer be the one at the path, whose permits count.
            if self.lost && os::file_id_at(path) != Some(self.file) {
                tracing::warn!(
                    lock = %path.display(),
                    "semaphore file was renamed or replaced while waited for; \
                     waiting for the file now at the path"
                );
                let _ = os::unlock_byte(self.fd(), SLOT_BASE + i64::from(slot));
                self.reopen()?;
                moved = true;
                continue;
            }
            if !self.counted {
                // The count could not be written when the file was opened.
                // A slot won means no lock covers the whole file now, so
                // whoever holds the count's byte is another first user
                // between its read and its write: a few system calls, which
                // no event will announce (it keeps its descriptor). The slot
                // is let go of meanwhile: a first user about to write the
                // count takes a slot held for longer for a permit held in a
                // file emptied under it, and would not write.
                let _ = os::unlock_byte(self.fd(), SLOT_BASE + i64::from(slot));
                let mut counted = check_permits(self.config, self.fd(), self.permits);
                let patience = std::time::Instant::now() + COUNT_PATIENCE;
                while matches!(counted, Ok(false)) && std::time::Instant::now() < patience {
                    std::thread::yield_now();
                    counted = check_permits(self.config, self.fd(), self.permits);
                }
                if !matches!(counted, Ok(true)) {
                    counted?;
                    // Slots held all that time in a file without a count:
                    // permits of a file emptied under their holders.
                    if os::others_lock_range(self.fd(), SLOT_BASE, i64::from(MAX_PERMITS))
                        .unwrap_or(false)
                    {
                        self.config.warn_emptied();
                    }
                    // Something else locks the count's byte alone, or holds
                    // permits in a file emptied under it: counted as every
                    // permit taken, tried again on the next event or
                    // recheck.
                    self.lost = true;
                    return Ok(Try::Held);
                }
                self.counted = true;
                continue;
            }
            self.slot = Some(slot);
            tracing::debug!(lock = %path.display(), attempt, slot, woke = cause.as_str(), "permit won");
            return Ok(Try::Won);
        }
    }

    fn signal(&mut self, _: Option<queue::Promise>) -> Signal {
        // No kernel wait can wait for any one of several slots: the close
        // that gives a permit back is the event.
        Signal::watch(self.fd(), &self.config.path)
    }

    fn fail(&self, e: std::io::Error) -> LockError {
        LockError::io(&self.config.path, Operation::Lock, e)
    }
}

/// Makes sure the file is a semaphore of `permits` permits: an empty file
/// becomes one; one of another count, or another file, is refused. False
/// when the file is empty and its count cannot be written now: another
/// first user is writing its own, a program that is no semaphore user
/// locks the file whole (`lockf`, a shared or unrecorded `LockMgr` holder),
/// which also covers every slot, or the file was emptied while permits are
/// held. The caller then counts the file as it
/// counts every permit taken, and checks again once it wins a slot.
fn check_permits(config: &LockConfig, fd: BorrowedFd<'_>, permits: u32) -> Result<bool, LockError> {
    let read = |fd: BorrowedFd<'_>| -> Result<String, LockError> {
        let mut head = [0u8; 64];
        let n = os::read_head(fd, &mut head)
            .map_err(|e| LockError::io(&config.path, Operation::Read, e))?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let mut head = read(fd)?;
    if head.is_empty() {
        // The first users write the count one at a time, each looking
        // again under the lock: of two that disagree, the second then finds
        // the first's count instead of writing its own over it (and both
        // reading back their own). The lock is held for a read and a write,
        // and never waited for: a lock on the whole file covers its byte
        // too, for as long as its holder likes (and, held by this process,
        // would never be let go).
        let io = |op, e| LockError::io(&config.path, op, e);
        if !os::try_lock_byte(fd, COUNT_BYTE).map_err(|e| io(Operation::Lock, e))? {
            // Another first user may have written its count already: it
            // lets go of the byte only after its write.
            head = read(fd)?;
            if head.is_empty() {
                return Ok(false);
            }
            return matches_count(config, &head, permits);
        }
        let written = read(fd).and_then(|now| {
            if !now.is_empty() {
                return Ok(now);
            }
            // Emptied while permits are held: their count is gone, and
            // writing ours would let more in beside them than either count.
            // Wait as if every permit were taken, until they are given back.
            let slots = i64::from(MAX_PERMITS);
            if os::others_lock_range(fd, SLOT_BASE, slots).map_err(|e| io(Operation::Lock, e))? {
                return Ok(now);
            }
            os::replace_head(fd, format!("{TAG}{permits}\n").as_bytes(), b"")
                .map_err(|e| io(Operation::Write, e))?;
            read(fd)
        });
        let _ = os::unlock_byte(fd, COUNT_BYTE);
        head = written?;
        if head.is_empty() {
            return Ok(false);
        }
    }
    matches_count(config, &head, permits)
}

/// Whether `head`, a semaphore file's head, gives it `permits` permits; an
/// error naming the lock when it gives another count or is no count.
fn matches_count(config: &LockConfig, head: &str, permits: u32) -> Result<bool, LockError> {
    let invalid = |reason: String| LockError::Invalid {
        lock: config.id.clone(),
        reason,
    };
    match permits_in(head) {
        Some(n) if n == permits => Ok(true),
        Some(n) => Err(invalid(format!(
            "the semaphore has {n} permits, and this one asks for {permits}: every user of a \
             semaphore must give the same number"
        ))),
        None => Err(invalid(
            "the file holds something else than a semaphore's permit count".into(),
        )),
    }
}

/// The permit count at the head of a semaphore's file, if it is one.
fn permits_in(head: &str) -> Option<u32> {
    head.strip_prefix(TAG)
        .and_then(|rest| rest.split('\n').next())
        .and_then(|n| n.parse::<u32>().ok())
}

/// A status query that knows a semaphore's file: its permits and how many
/// are taken (for OFD locks), where the whole-file query would take the
/// slots' locks for one exclusive holder. Any other file as
/// [`contender::status`](crate::contender::status), through one open.
pub(crate) fn status(config: &LockConfig) -> Result<Status, LockError> {
    let Some(fd) = contender::open_for_status(config)? else {
        return Ok(Status::Missing);
    };
    if config.kind == LockKind::Ofd {
        let counted =
            permits_taken(&fd).map_err(|e| LockError::io(&config.path, Operation::Read, e))?;
        if let Some(semaphore) = counted {
            return Ok(semaphore);
        }
    }
    contender::status_at(config, &fd)
}

/// The permits of the semaphore file open at `fd` and how many are taken,
/// or `None` for a file that is not a semaphore's. Takes nothing
/// (`F_OFD_GETLK` on each slot).
fn permits_taken(fd: &OwnedFd) -> std::io::Result<Option<Status>> {
    let mut head = [0u8; 64];
    let n = os::read_head(fd, &mut head)?;
    let Some(permits) = permits_in(&String::from_utf8_lossy(&head[..n])) else {
        return Ok(None);
    };
    // A count no semaphore can have was not written by one.
    if permits == 0 || permits > MAX_PERMITS {
        return Ok(None);
    }
    let mut taken = 0;
    for slot in 0..permits {
        if os::others_hold_byte(fd, SLOT_BASE + i64::from(slot))? {
            taken += 1;
        }
    }
    Ok(Some(Status::Semaphore { permits, taken }))
}

/// What a listing of the host's locked files says of the file open at
/// `fd`: its permits and how many are taken when it is a semaphore's.
pub(crate) fn semaphore_at(fd: &OwnedFd) -> Option<Status> {
    permits_taken(fd).ok().flatten()
}

/// One try over every slot, outside the line.
pub(crate) fn try_acquire(config: &LockConfig, permits: u32) -> Result<HeldPermit, LockError> {
    let mut contender = SlotContender::open(config, permits)?;
    match contender.try_once(1, Cause::First)? {
        Try::Won => Ok(contender.into_permit()),
        _ => Err(contender.all_taken()),
    }
}

/// A permit per `policy`: one try, then (if the policy waits) a place in
/// this process's line for the file and a wait on its close events.
pub(crate) async fn acquire(
    config: &Arc<LockConfig>,
    permits: u32,
    policy: Policy,
) -> Result<HeldPermit, LockError> {
    // As a lock on such a file system (see `contender::lock_off_runtime`):
    // a stalled mount must not block the runtime, and the budget bounds
    // the call even while a try is stuck.
    if config.on_network() {
        let attempt = move |config: &LockConfig, _| try_acquire(config, permits);
        let mut contended = false;
        let note = " (every permit taken)";
        return contender::off_runtime(config, policy, &mut contended, note, attempt).await;
    }
    let started = Instant::now();
    let mut ticket = None;
    // A permit is one slot held exclusively: its waiters line up with the
    // exclusive ones.
    let mode = LockMode::Exclusive;
    if policy.waits && queue::anyone_waiting() {
        ticket = os::file_id_at(&config.path)
            .and_then(|file| Ticket::join_if_waiting(file, config.kind, mode));
    }
    let mut announced = false;
    loop {
        if let Some(t) = &ticket {
            // A semaphore has no one holder to name.
            contender::wait_turn(config, t, policy, started, || None).await?;
        }
        let mut contender = SlotContender::open(config, permits)?;
        // Fairness between processes: a caller that may wait, and finds
        // others of other processes waiting, lets them go first (they were
        // woken by the release that freed a permit, and are about to try).
        let io = |e| LockError::io(&config.path, Operation::Lock, e);
        let defer =
            policy.waits && os::others_hold_byte(contender.fd(), WAITING_BYTE).map_err(io)?;
        if !defer && contender.try_once(1, Cause::First)? == Try::Won {
            return Ok(contender.into_permit());
        }
        if !policy.waits {
            return Err(contender.all_taken());
        }
        if !announced {
            announced = true;
            policy.announce(&config.id, None, " (every permit taken)");
        }
        let t = match ticket.take() {
            Some(t) if t.file() == contender.file => t,
            _ => {
                let t = Ticket::join(contender.file, config.kind, mode);
                if !t.is_head() {
                    ticket = Some(t);
                    continue;
                }
                t
            }
        };
        // Marked as waiting (the mark goes with the descriptor).
        os::share_byte(contender.fd(), WAITING_BYTE).map_err(io)?;
        let mut signal = contender.signal(Some(t.promise()));
        if defer {
            // Their head start: then this caller tries like them (so a
            // permit nobody took is not left free).
            let head_start = match policy.deadline(started) {
                Some(d) => d.saturating_duration_since(Instant::now()).min(HEAD_START),
                None => HEAD_START,
            };
            clock::sleep_until_here(Instant::now() + head_start).await;
        }
        return match wait::wait(&mut contender, &mut signal, Some(&t), policy, started).await {
            Ok(()) => {
                // The watch and its timer go after the caller resumes.
                signal.retire();
                Ok(contender.into_permit())
            }
            Err(Failed::Error(e)) => Err(e),
            Err(Failed::TimedOut { attempts, waited }) => Err(LockError::TimedOut {
                lock: config.id.clone(),
                attempts,
                waited,
                holder: None,
            }),
        };
    }
}

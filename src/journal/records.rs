//! [`Records`]: the records of a journal, read back one by one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{JournalError, JournalOp, MAX_WRITE};

/// How much of the journal a reader holds in memory at a time (a record
/// longer than this is held whole).
const CHUNK: usize = 64 * 1024;

/// The records of a journal as [`Journal::records`](super::Journal::records)
/// found them: an iterator over its complete records, in file order and
/// without their newlines, and apart from them the torn tail, if a writer
/// died inside its write ([`Records::torn_tail`]).
///
/// The records are those of every append that had finished when `records`
/// was called; appends made since do not show. They are read from the file
/// as the iterator advances, a chunk at a time, so a journal of any size
/// needs only about 64 KiB (or its longest record) of memory. The reads are
/// ordinary blocking `pread`s, as `std::fs` makes: for a very large journal
/// in async code, iterate inside `tokio::task::spawn_blocking`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let journal = lockmgr::journal::Journal::open(dir.path().join("journal")).await?;
/// journal.append_batch(["one", "two"]).await?;
/// let mut lengths = Vec::new();
/// for record in journal.records().await? {
///     lengths.push(record?.len());
/// }
/// assert_eq!(lengths, [3, 3]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Records {
    file: Arc<File>,
    path: PathBuf,
    /// Where the next unread byte is.
    pos: u64,
    /// Just past the last complete record.
    end: u64,
    /// Read but not yet returned: `buf[at..]`.
    buf: Vec<u8>,
    at: usize,
    torn_tail: Option<Vec<u8>>,
}

impl Records {
    pub(super) fn new(
        file: Arc<File>,
        path: PathBuf,
        end: u64,
        torn_tail: Option<Vec<u8>>,
    ) -> Records {
        Records {
            file,
            path,
            pos: 0,
            end,
            buf: Vec::new(),
            at: 0,
            torn_tail,
        }
    }

    /// The bytes after the last complete record, if any: the start of a
    /// record whose writer died inside its write. Never one of the records;
    /// the next append cuts it off.
    pub fn torn_tail(&self) -> Option<&[u8]> {
        self.torn_tail.as_deref()
    }

    /// Reads the next chunk after what is buffered; false at the end.
    fn fill(&mut self) -> Result<bool, JournalError> {
        if self.pos >= self.end {
            return Ok(false);
        }
        self.buf.drain(..self.at);
        self.at = 0;
        let want = CHUNK.min((self.end - self.pos) as usize);
        let have = self.buf.len();
        self.buf.resize(have + want, 0);
        self.file
            .read_exact_at(&mut self.buf[have..], self.pos)
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                op: JournalOp::Read,
                source,
            })?;
        self.pos += want as u64;
        Ok(true)
    }
}

impl Iterator for Records {
    type Item = Result<Vec<u8>, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut searched = self.at;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                let record = self.buf[self.at..searched + i].to_vec();
                self.at = searched + i + 1;
                return Some(Ok(record));
            }
            searched = self.buf.len();
            // No append writes a line this long: not a journal's, and not
            // to be held in memory whole.
            if searched - self.at >= MAX_WRITE {
                let offset = self.pos - (searched - self.at) as u64;
                self.pos = self.end;
                self.buf.clear();
                self.at = 0;
                return Some(Err(JournalError::NotAJournal {
                    path: self.path.clone(),
                    offset,
                }));
            }
            let before = self.at;
            match self.fill() {
                Ok(true) => searched -= before,
                // `end` is just past a newline, so nothing is left over.
                Ok(false) => return None,
                Err(e) => {
                    self.pos = self.end;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(bytes: &[u8], chunk_end: u64) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, bytes).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        Records::new(file, path, chunk_end, None)
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn records_split_at_newlines_across_chunks() {
        assert_eq!(records(b"a\nbb\n", 5), [b"a".to_vec(), b"bb".to_vec()]);
        assert_eq!(
            records(b"a\n\nb\n", 5),
            [b"a".to_vec(), Vec::new(), b"b".to_vec()]
        );
        assert!(records(b"", 0).is_empty());
        // Only up to the end given: what follows is another append's.
        assert_eq!(records(b"a\nbb\ncc", 5), [b"a".to_vec(), b"bb".to_vec()]);
        // Records longer than a chunk, and records across chunk borders.
        let long = vec![b'x'; CHUNK * 2 + 17];
        let mut bytes = Vec::new();
        for r in [&b"short"[..], &long, b"", b"tail"] {
            bytes.extend_from_slice(r);
            bytes.push(b'\n');
        }
        let want: Vec<Vec<u8>> = vec![
            b"short".to_vec(),
            long.clone(),
            Vec::new(),
            b"tail".to_vec(),
        ];
        assert_eq!(records(&bytes, bytes.len() as u64), want);
    }
}

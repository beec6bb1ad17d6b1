//! [`Records`]: what [`Journal::records`](super::Journal::records) read back.

/// What [`Journal::records`](super::Journal::records) read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Records {
    /// The complete records, in file order, without their newlines.
    pub records: Vec<Vec<u8>>,
    /// The bytes after the last newline, if any: the start of a record whose
    /// writer died inside its write. Never part of `records`.
    pub torn_tail: Option<Vec<u8>>,
}

/// Splits the bytes of a journal into its records and a torn tail.
pub(super) fn split_records(bytes: &[u8]) -> Records {
    let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty last part after a final newline; anything else
    // there is a record without its newline.
    let tail = parts.pop().filter(|t| !t.is_empty()).map(<[u8]>::to_vec);
    Records {
        records: parts.into_iter().map(<[u8]>::to_vec).collect(),
        torn_tail: tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_reported_apart() {
        let r = split_records(b"a\nbb\nccc");
        assert_eq!(r.records, vec![b"a".to_vec(), b"bb".to_vec()]);
        assert_eq!(r.torn_tail.as_deref(), Some(&b"ccc"[..]));
        let r = split_records(b"a\n\nb\n");
        assert_eq!(r.records, vec![b"a".to_vec(), Vec::new(), b"b".to_vec()]);
        assert_eq!(r.torn_tail, None);
        assert_eq!(split_records(b""), Records::default());
    }
}

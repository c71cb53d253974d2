//! Errors. Each variant has a stable numeric code (`Error::code`) that the
//! wire protocol and the CLI report; docs/api.md lists them.

use std::io;
use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("device {path}: {source}", path = .0.display(), source = .1)]
    Device(PathBuf, #[source] io::Error),
    #[error("i/o: {0}")]
    Io(#[source] io::Error),
    #[error("no healthy mirror left: the mirror set cannot take writes")]
    NoHealthyMirror,
    #[error("full: no free segment; set a mark to reclaim space")]
    Full,
    #[error("record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("unknown journal {0:?}")]
    UnknownJournal(String),
    #[error("journal {0:?} already exists")]
    JournalExists(String),
    #[error("invalid journal name {0:?}: 1 to 64 bytes of [A-Za-z0-9._-]")]
    InvalidName(String),
    #[error("too many journals (at most {0})")]
    TooManyJournals(usize),
    #[error("lsn {lsn} is below the mark {mark}: reclaimed")]
    BelowMark { lsn: u64, mark: u64 },
    #[error("lsn {lsn} is not written yet (next lsn is {next})")]
    NotYetWritten { lsn: u64, next: u64 },
    #[error("invalid mark {mark}: must be between the current mark {current} and the next lsn {next}")]
    InvalidMark { mark: u64, current: u64, next: u64 },
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("the mirror set is closed")]
    Closed,
    #[error("back-pressure: every batch buffer is in use; retry after writes complete")]
    Backpressure,
    #[error("an append of several records totalling {size} bytes exceeds {max} bytes, the most one write batch holds (its records must be written together); split it")]
    AppendTooLarge { size: usize, max: usize },
    #[error("writer-fenced: the journal was claimed by writer epoch {current}; this writer's epoch is {writer} (a newer writer took over; nothing was done)")]
    WriterFenced { writer: u64, current: u64 },
}

impl Error {
    /// Stable numeric code for the wire protocol, the CLI and metrics.
    pub fn code(&self) -> u16 {
        use crate::codes::*;
        match self {
            Error::Config(_) => CONFIG,
            Error::Device(..) => DEVICE,
            Error::Io(_) => IO,
            Error::NoHealthyMirror => NO_HEALTHY_MIRROR,
            Error::Full => FULL,
            Error::RecordTooLarge { .. } => RECORD_TOO_LARGE,
            Error::UnknownJournal(_) => UNKNOWN_JOURNAL,
            Error::JournalExists(_) => JOURNAL_EXISTS,
            Error::InvalidName(_) => INVALID_NAME,
            Error::TooManyJournals(_) => TOO_MANY_JOURNALS,
            Error::BelowMark { .. } => BELOW_MARK,
            Error::NotYetWritten { .. } => NOT_YET_WRITTEN,
            Error::InvalidMark { .. } => INVALID_MARK,
            Error::Corrupt(_) => CORRUPT,
            Error::Closed => CLOSED,
            Error::Backpressure => BACKPRESSURE,
            Error::AppendTooLarge { .. } => APPEND_TOO_LARGE,
            Error::WriterFenced { .. } => WRITER_FENCED,
        }
    }

    /// A short stable name for the code (`full`, `record-too-large`, …).
    pub fn code_name(&self) -> &'static str {
        crate::codes::name(self.code())
    }

    /// A cheap copy for handing one failure to many waiters.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Config(s) => Error::Config(s.clone()),
            Error::Device(p, e) => Error::Device(p.clone(), io::Error::new(e.kind(), e.to_string())),
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::NoHealthyMirror => Error::NoHealthyMirror,
            Error::Full => Error::Full,
            Error::RecordTooLarge { size, max } => Error::RecordTooLarge { size: *size, max: *max },
            Error::UnknownJournal(s) => Error::UnknownJournal(s.clone()),
            Error::JournalExists(s) => Error::JournalExists(s.clone()),
            Error::InvalidName(s) => Error::InvalidName(s.clone()),
            Error::TooManyJournals(n) => Error::TooManyJournals(*n),
            Error::BelowMark { lsn, mark } => Error::BelowMark { lsn: *lsn, mark: *mark },
            Error::NotYetWritten { lsn, next } => Error::NotYetWritten { lsn: *lsn, next: *next },
            Error::InvalidMark { mark, current, next } => {
                Error::InvalidMark { mark: *mark, current: *current, next: *next }
            }
            Error::Corrupt(s) => Error::Corrupt(s.clone()),
            Error::Closed => Error::Closed,
            Error::Backpressure => Error::Backpressure,
            Error::AppendTooLarge { size, max } => Error::AppendTooLarge { size: *size, max: *max },
            Error::WriterFenced { writer, current } => Error::WriterFenced { writer: *writer, current: *current },
        }
    }
}

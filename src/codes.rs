//! Every error code mirrorlog reports, in one table: the engine's (1–17,
//! [`crate::Error::code`]), the protocol's (100–105,
//! [`crate::protocol::ProtoError::code`]) and the daemon's and client's
//! (200s). The wire, the CLI, metrics and the Java client use these
//! numbers and names; `tests/golden.rs` checks the Java constants and
//! docs/api.md and docs/protocol.md against [`ALL`].
//!
//! Invariants (asserted below): numbers and names are unique, and [`ALL`]
//! is in numeric order.

macro_rules! table {
    ($( $(#[$doc:meta])* $konst:ident = $num:literal, $name:literal; )*) => {
        $( $(#[$doc])* pub const $konst: u16 = $num; )*

        /// Every code with its stable name, in numeric order.
        pub const ALL: &[(u16, &str)] = &[ $( ($num, $name), )* ];

        /// The stable name of `code` (`"unknown"` for a number not in the table).
        pub fn name(code: u16) -> &'static str {
            match code {
                $( $num => $name, )*
                _ => "unknown",
            }
        }
    };
}

table! {
    // The engine (`Error::code`).
    /// Invalid configuration, devices that do not belong together, an unformatted device.
    CONFIG = 1, "config";
    /// A device could not be opened or used.
    DEVICE = 2, "device";
    IO = 3, "io";
    /// Every mirror failed: the set takes no writes.
    NO_HEALTHY_MIRROR = 4, "no-healthy-mirror";
    /// No free segment: set a mark to reclaim space.
    FULL = 5, "full";
    RECORD_TOO_LARGE = 6, "record-too-large";
    UNKNOWN_JOURNAL = 7, "unknown-journal";
    JOURNAL_EXISTS = 8, "journal-exists";
    INVALID_NAME = 9, "invalid-name";
    TOO_MANY_JOURNALS = 10, "too-many-journals";
    /// The LSN was reclaimed by a mark.
    BELOW_MARK = 11, "below-mark";
    NOT_YET_WRITTEN = 12, "not-yet-written";
    INVALID_MARK = 13, "invalid-mark";
    /// No mirror holds a valid copy.
    CORRUPT = 14, "corrupt";
    CLOSED = 15, "closed";
    /// Every batch buffer is in use: retry after writes complete.
    BACKPRESSURE = 16, "backpressure";
    /// One append's records exceed what one write batch holds.
    APPEND_TOO_LARGE = 17, "append-too-large";
    /// An append or mark named a writer epoch that is not the journal's:
    /// a newer writer claimed it (`Claim`). Nothing was done.
    WRITER_FENCED = 18, "writer-fenced";

    // The protocol (`ProtoError::code`).
    BAD_MAGIC = 100, "bad-magic";
    UNSUPPORTED_VERSION = 101, "unsupported-version";
    FRAME_TOO_LARGE = 102, "frame-too-large";
    BAD_CHECKSUM = 103, "bad-checksum";
    UNKNOWN_OPCODE = 104, "unknown-opcode";
    MALFORMED = 105, "malformed";

    // The daemon and the client.
    /// This node does not take appends (it is a replica).
    NOT_PRIMARY = 200, "not-primary";
    /// A higher epoch exists: this node was fenced.
    FENCED = 201, "fenced";
    /// The daemon is at its connection limit; the connection is closed.
    TOO_MANY_CONNECTIONS = 202, "too-many-connections";
    /// A producer's sequence is at or below its newest but not remembered.
    SEQUENCE_UNKNOWN = 203, "sequence-unknown";
    /// `Credit` for a subscription this connection does not have.
    UNKNOWN_SUBSCRIPTION = 204, "unknown-subscription";
    /// The daemon is draining (SIGTERM); the request was not taken.
    SHUTTING_DOWN = 205, "shutting-down";
    /// A frame was started but not finished in time; the connection is closed.
    FRAME_TIMEOUT = 206, "frame-timeout";
    /// A `remote-*` durability was asked of a node with no replica.
    NO_REPLICA = 207, "no-replica";
    /// The client's timeout passed before the response (client side only).
    TIMEOUT = 208, "timeout";
    /// No endpoint could be reached (client side only).
    UNAVAILABLE = 209, "unavailable";
    /// A `remote-*` append was not confirmed by the replica within the
    /// replication ack timeout (its journal blocks on replica loss). The
    /// records are durable here and will still be shipped.
    REPLICA_TIMEOUT = 210, "replica-timeout";
    /// A producer's first send of a sequence it already used (another
    /// writer with its id, or restarted sequences), or a resend whose
    /// records differ from the ones written with that sequence. Nothing
    /// is written.
    SEQUENCE_CONFLICT = 211, "sequence-conflict";
    /// Promote refused: this replica lacks records its primary
    /// acknowledged (a journal is being sent to it whole, or it was never
    /// given its primary's journals). `promote --force` accepts the loss.
    INCOMPLETE = 212, "incomplete";
}

/// Codes after which a client moves to another endpoint and resends what
/// is unanswered (docs/protocol.md); every other code answers the request.
pub fn fails_over(code: u16) -> bool {
    matches!(code, NOT_PRIMARY | FENCED | TOO_MANY_CONNECTIONS | SHUTTING_DOWN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtoError;
    use crate::Error;
    use std::collections::HashSet;

    #[test]
    fn numbers_and_names_are_unique_and_in_order() {
        let mut names = HashSet::new();
        for w in ALL.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?} before {:?}", w[0], w[1]);
        }
        for (code, n) in ALL {
            assert!(names.insert(*n), "name {n} twice");
            assert_eq!(name(*code), *n);
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{n}");
        }
        assert_eq!(name(999), "unknown");
    }

    #[test]
    fn every_engine_and_protocol_error_has_a_row() {
        let engine = [
            Error::Config(String::new()),
            Error::Device("d".into(), std::io::Error::other("x")),
            Error::Io(std::io::Error::other("x")),
            Error::NoHealthyMirror,
            Error::Full,
            Error::RecordTooLarge { size: 2, max: 1 },
            Error::UnknownJournal(String::new()),
            Error::JournalExists(String::new()),
            Error::InvalidName(String::new()),
            Error::TooManyJournals(1),
            Error::BelowMark { lsn: 1, mark: 2 },
            Error::NotYetWritten { lsn: 2, next: 1 },
            Error::InvalidMark { mark: 1, current: 2, next: 3 },
            Error::Corrupt(String::new()),
            Error::Closed,
            Error::Backpressure,
            Error::AppendTooLarge { size: 2, max: 1 },
            Error::WriterFenced { writer: 1, current: 2 },
        ];
        let proto = [
            ProtoError::BadMagic,
            ProtoError::UnsupportedVersion(9),
            ProtoError::TooLarge { len: 2, max: 1 },
            ProtoError::BadChecksum,
            ProtoError::UnknownOpcode(0x70),
            ProtoError::Malformed("x"),
        ];
        let mut seen: Vec<u16> = engine.iter().map(|e| e.code()).chain(proto.iter().map(|e| e.code())).collect();
        for e in &engine {
            assert_ne!(e.code_name(), "unknown", "{e:?}");
        }
        let n = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), n, "two errors share a code");
        for c in seen {
            assert!(ALL.iter().any(|(code, _)| *code == c), "code {c} not in the table");
        }
    }

    #[test]
    fn failover_codes_are_the_documented_four() {
        let f: Vec<u16> = ALL.iter().map(|(c, _)| *c).filter(|c| fails_over(*c)).collect();
        assert_eq!(f, vec![NOT_PRIMARY, FENCED, TOO_MANY_CONNECTIONS, SHUTTING_DOWN]);
    }
}

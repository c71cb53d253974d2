//! The idempotence table: for each producer of a journal, the newest
//! sequence numbers it wrote and the LSNs they got.
//!
//! Invariants:
//! * An entry is added when an append is *placed* (before it is durable),
//!   so a resend that arrives while the original is still being written is
//!   matched to it rather than written twice; the resend is answered when
//!   the original is durable (or with the original's error).
//! * Sequences of one producer only grow: a new append must start above the
//!   producer's newest sequence. The client says which appends it sends
//!   again (`resend`): a first send at or below the newest is a conflict
//!   (two writers share the id, or a producer restarted its sequences),
//!   never matched to what the other one wrote.
//! * A resend is written only if this table knows it was not written: its
//!   producer's sequences are above the newest, or the producer is not
//!   remembered and the append is its first (sequence 1). A resend of a
//!   forgotten producer's later append is refused (`Unknown`), never
//!   written a second time. (The one case left: a producer's first append,
//!   written, then the producer forgotten before that append's resend
//!   arrives; docs/faults.md.)
//! * The table is rebuilt at start from the tags of the records on disk
//!   (`FLAG_TAGGED`), so a resend after a daemon restart is matched too.
//! * Bounded: `window` runs per producer, `max_producers` per journal (the
//!   least recently used producer is forgotten first).

use std::collections::{HashMap, VecDeque};

use crate::codes;
use crate::journal::Ticket;
use crate::{Error, Journal};

/// A run of consecutive sequences written at consecutive LSNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub seq: u64,
    pub count: u64,
    pub lsn: u64,
    /// The ticket of the run's last record while this daemon placed it
    /// (`None` for runs rebuilt from disk: those are durable).
    pub ticket: Option<Ticket>,
}

#[derive(Debug, Default)]
struct Producer {
    runs: VecDeque<Run>,
    last_use: u64,
}

/// What to do with an append from a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// New sequences: write them.
    New,
    /// Already written: the first record's LSN, and the ticket to wait on if
    /// it may not be durable yet.
    Written { lsn: u64, ticket: Option<Ticket> },
    /// A resend at or below the newest sequence but not remembered (too
    /// old), overlapping a remembered run only in part, or of a producer
    /// not remembered: it may have been written; it is not written again.
    Unknown { newest: u64 },
    /// A first send at or below the producer's newest sequence: another
    /// writer with this producer id, or a producer that restarted its
    /// sequences. Not written, not matched.
    Conflict { newest: u64 },
}

/// What the daemon does with a producer's append: the table's decision, with
/// the answer a refused one gets (the daemon and the simulator both act on
/// this, so the idempotence rules are exercised as served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Write the records, tagged; then `record` where they were placed.
    Write,
    /// Matched to records placed before at `lsn`: once they are durable
    /// (`ticket`), read their CRCs back (`stored_crcs`) and answer with
    /// `lsn` only if `verify_resend` agrees.
    Verify { lsn: u64, ticket: Option<Ticket> },
    /// Not written; answered with this code and message.
    Refuse { code: u16, message: String },
}

/// One journal's producers.
#[derive(Debug)]
pub struct Producers {
    map: HashMap<u64, Producer>,
    window: usize,
    max: usize,
    clock: u64,
}

impl Producers {
    pub fn new(window: usize, max_producers: usize) -> Producers {
        Producers { map: HashMap::new(), window: window.max(1), max: max_producers.max(1), clock: 0 }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Classifies an append of `count` records from `first_seq`; `resend`:
    /// the client sent it before (it may have been written).
    pub fn check(&mut self, producer: u64, first_seq: u64, count: u64, resend: bool) -> Check {
        self.clock += 1;
        let Some(p) = self.map.get_mut(&producer) else {
            // Not remembered: a first send is new; so is a resend of the
            // producer's first append (nothing of it was written before
            // that one); a later resend may have been written.
            return if !resend || first_seq == 1 || cfg!(feature = "mutate-forgotten-resend-new") {
                Check::New
            } else {
                Check::Unknown { newest: 0 }
            };
        };
        p.last_use = self.clock;
        let newest = p.runs.back().map(|r| r.seq + r.count - 1).unwrap_or(0);
        if first_seq > newest || p.runs.is_empty() {
            return Check::New;
        }
        if !resend {
            return Check::Conflict { newest };
        }
        // Newest runs first: resends are of recent appends.
        for r in p.runs.iter().rev() {
            if first_seq >= r.seq && first_seq < r.seq + r.count {
                if first_seq + count > r.seq + r.count {
                    return Check::Unknown { newest };
                }
                return Check::Written { lsn: r.lsn + (first_seq - r.seq), ticket: r.ticket };
            }
            if r.seq + r.count <= first_seq {
                break;
            }
        }
        Check::Unknown { newest }
    }

    /// `check`, as the daemon answers it. `count` is at least 1.
    pub fn admit(&mut self, producer: u64, first_seq: u64, count: u64, resend: bool) -> Admit {
        let last = first_seq + count.max(1) - 1;
        match self.check(producer, first_seq, count, resend) {
            Check::New => Admit::Write,
            Check::Written { lsn, ticket } => Admit::Verify { lsn, ticket },
            Check::Unknown { newest } => Admit::Refuse {
                code: codes::SEQUENCE_UNKNOWN,
                message: format!(
                    "producer {producer}: the resend of sequence {first_seq}..{last} is not remembered here \
                     (newest remembered: {newest}); it may have been written before, so it is not written again"
                ),
            },
            Check::Conflict { newest } => Admit::Refuse {
                code: codes::SEQUENCE_CONFLICT,
                message: format!(
                    "producer {producer}: sequence {first_seq}..{last} was already used (newest {newest}) and \
                     this is not a resend: another writer uses this producer id, or the producer restarted \
                     its sequences; not written"
                ),
            },
        }
    }

    /// The table a daemon starts with: the producer tags of the records
    /// from the start of `j`'s newest `scan_segments` segments, below the
    /// mark too (a record a consumer already marked may still be the answer
    /// to a producer's resend). Returns the table (what was read, if the
    /// scan failed midway), how many tagged records it read, and whether
    /// the scan failed.
    pub fn from_journal(
        j: &Journal,
        window: usize,
        max_producers: usize,
        scan_segments: usize,
    ) -> (Producers, u64, crate::Result<()>) {
        let mut producers = Producers::new(window, max_producers);
        let starts = j.segment_starts();
        if starts.is_empty() {
            // Nothing held (a new journal, or every record reclaimed).
            return (producers, 0, Ok(()));
        }
        let from = starts.get(starts.len().saturating_sub(scan_segments)).copied().unwrap_or(1);
        let mut tagged = 0u64;
        let res = j.visit_retained(from, 1 << 20, |r| {
            if let Some(t) = r.tag {
                producers.record(t.producer, t.seq, 1, r.lsn, None, u64::MAX);
                tagged += 1;
            }
            true
        });
        (producers, tagged, res)
    }

    /// Records that `count` sequences from `seq` were placed at `lsn`.
    /// `durable` is the journal's durable end: past `max_producers`, the
    /// least recently used producer whose appends are all durable is
    /// forgotten; one with an append still being written never is (so the
    /// table may exceed the bound by the appends in flight, themselves
    /// bounded per connection).
    pub fn record(&mut self, producer: u64, seq: u64, count: u64, lsn: u64, ticket: Option<Ticket>, durable: u64) {
        self.clock += 1;
        if !self.map.contains_key(&producer) && self.map.len() >= self.max {
            let settled = |p: &Producer| p.runs.back().is_none_or(|r| r.lsn + r.count <= durable);
            if let Some((&old, _)) = self.map.iter().filter(|(_, p)| settled(p)).min_by_key(|(_, p)| p.last_use) {
                self.map.remove(&old);
            }
        }
        let window = self.window;
        let p = self.map.entry(producer).or_default();
        p.last_use = self.clock;
        if let Some(last) = p.runs.back_mut() {
            // Extend a run rebuilt from disk record by record.
            if ticket.is_none() && last.ticket.is_none() && last.seq + last.count == seq && last.lsn + last.count == lsn
            {
                last.count += count;
                return;
            }
        }
        p.runs.push_back(Run { seq, count, lsn, ticket });
        while p.runs.len() > window {
            p.runs.pop_front();
        }
    }
}

/// The CRC32C of each of the `n` stored payloads from `first` (durable
/// records; below the mark too): what a matched resend is compared with.
pub fn stored_crcs(j: &Journal, first: u64, n: usize) -> crate::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(n);
    j.visit_retained(first, 1 << 20, |r| {
        out.push(crc32c::crc32c(r.payload));
        out.len() < n
    })?;
    Ok(out)
}

/// A matched resend's verdict, from the CRCs of the payloads resent and of
/// the ones stored at `first`: `Ok` answers with `first`; otherwise the
/// code and message it is refused with. Invariant (issue 16, item 5): a
/// producer id reused with other records is never acknowledged with their
/// LSNs.
pub fn verify_resend(first: u64, sent: &[u32], stored: crate::Result<Vec<u32>>) -> Result<(), (u16, String)> {
    let last = first + (sent.len() as u64).max(1) - 1;
    match stored {
        Ok(s) if s == sent => Ok(()),
        Ok(s) if s.len() == sent.len() && cfg!(feature = "mutate-resend-unverified") => Ok(()),
        Ok(s) if s.len() == sent.len() => Err((
            codes::SEQUENCE_CONFLICT,
            format!(
                "the records written at lsn {first}..{last} with this producer's sequences differ from the \
                 ones resent: another writer uses this producer id, or it restarted its sequences; not written"
            ),
        )),
        Ok(_) | Err(Error::BelowMark { .. }) => Err((
            codes::SEQUENCE_UNKNOWN,
            format!("lsn {first}..{last}, where this resend was written, is no longer held: it cannot be checked"),
        )),
        Err(e) => Err((e.code(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_resend_and_unknown() {
        let mut t = Producers::new(4, 10);
        assert_eq!(t.check(1, 1, 1, false), Check::New);
        t.record(1, 1, 1, 100, None, u64::MAX);
        t.record(1, 2, 3, 105, None, u64::MAX); // 2..4 at 105..107
        assert_eq!(t.check(1, 1, 1, true), Check::Written { lsn: 100, ticket: None });
        assert_eq!(t.check(1, 3, 2, true), Check::Written { lsn: 106, ticket: None });
        assert_eq!(t.check(1, 3, 3, true), Check::Unknown { newest: 4 }, "overlaps the run only in part");
        assert_eq!(t.check(1, 5, 1, true), Check::New);
        assert_eq!(t.check(1, 5, 1, false), Check::New);
        assert_eq!(t.check(2, 1, 1, false), Check::New, "producers are separate");
    }

    #[test]
    fn rebuilt_records_merge_into_runs_and_window_bounds() {
        let mut t = Producers::new(2, 10);
        for i in 0..100 {
            t.record(9, 10 + i, 1, 1000 + i, None, u64::MAX);
        }
        assert_eq!(t.check(9, 10, 1, true), Check::Written { lsn: 1000, ticket: None }, "one merged run");
        assert_eq!(t.check(9, 109, 1, true), Check::Written { lsn: 1099, ticket: None });
        t.record(9, 200, 1, 5000, None, u64::MAX);
        t.record(9, 300, 1, 6000, None, u64::MAX);
        assert_eq!(t.check(9, 10, 1, true), Check::Unknown { newest: 300 }, "fell out of the window");
        assert_eq!(t.check(9, 200, 1, true), Check::Written { lsn: 5000, ticket: None });
    }

    #[test]
    fn a_producer_with_an_append_in_flight_is_never_forgotten() {
        let mut t = Producers::new(4, 2);
        t.record(1, 1, 1, 10, None, 11); // durable
        t.record(2, 1, 1, 11, None, 11); // lsn 11 not yet durable
        let _ = t.check(1, 1, 1, true); // 1 is the more recently used
        t.record(3, 1, 1, 12, None, 11);
        assert_eq!(t.check(2, 1, 1, true), Check::Written { lsn: 11, ticket: None }, "in flight: kept");
        assert_eq!(
            t.check(1, 2, 1, true),
            Check::Unknown { newest: 0 },
            "settled: forgotten, though used more recently"
        );
    }

    /// Issue 16, item 6: a forgotten producer's resend used to be `New`,
    /// and written a second time (this test asserted it), although the
    /// protocol promises `sequence-unknown`.
    #[test]
    fn a_forgotten_producers_resend_is_never_written_again() {
        let mut t = Producers::new(4, 2);
        t.record(1, 1, 2, 1, None, u64::MAX); // 1..2 at 1..2
        t.record(2, 1, 2, 3, None, u64::MAX);
        let _ = t.check(1, 1, 1, true); // 1 is used again
        t.record(3, 1, 1, 5, None, u64::MAX);
        assert_eq!(t.len(), 2, "bounded: 2 was the least recently used and is forgotten");
        assert_eq!(t.check(2, 2, 1, true), Check::Unknown { newest: 0 }, "a resend of a forgotten producer");
        assert_eq!(t.check(2, 3, 1, false), Check::New, "its new appends are taken");
        assert_eq!(t.check(1, 1, 1, true), Check::Written { lsn: 1, ticket: None });
    }

    /// Issue 16, item 5: a first send that reuses a written sequence (a
    /// restarted producer, or two writers with one id) used to be answered
    /// with the LSN of the other record.
    #[test]
    fn a_first_send_at_or_below_the_newest_is_a_conflict() {
        let mut t = Producers::new(4, 10);
        t.record(7, 100, 50, 1000, None, u64::MAX); // 100..149
        assert_eq!(t.check(7, 120, 1, false), Check::Conflict { newest: 149 });
        assert_eq!(t.check(7, 120, 1, true), Check::Written { lsn: 1020, ticket: None });
        assert_eq!(t.check(7, 150, 1, false), Check::New);
        assert_eq!(t.check(8, 120, 1, false), Check::New, "a producer not seen is new");
        assert_eq!(t.check(8, 1, 3, true), Check::New, "the resend of a producer's first append");
    }

    #[test]
    fn a_matched_resend_is_answered_only_when_the_stored_records_are_the_ones_resent() {
        let sent = [1u32, 2, 3];
        assert_eq!(verify_resend(7, &sent, Ok(vec![1, 2, 3])), Ok(()));
        let code = |r: Result<(), (u16, String)>| r.map_err(|e| e.0);
        assert_eq!(code(verify_resend(7, &sent, Ok(vec![1, 2, 4]))), Err(codes::SEQUENCE_CONFLICT));
        // Fewer stored than resent (a cut-back, the journal's end): cannot be checked.
        assert_eq!(code(verify_resend(7, &sent, Ok(vec![1, 2]))), Err(codes::SEQUENCE_UNKNOWN));
        assert_eq!(
            code(verify_resend(7, &sent, Err(Error::BelowMark { lsn: 7, mark: 9 }))),
            Err(codes::SEQUENCE_UNKNOWN)
        );
        assert_eq!(code(verify_resend(7, &sent, Err(Error::Closed))), Err(Error::Closed.code()));
    }

    #[test]
    fn admit_answers_each_decision_with_its_code() {
        let mut t = Producers::new(4, 10);
        assert_eq!(t.admit(1, 1, 2, false), Admit::Write);
        t.record(1, 1, 2, 10, None, 0);
        assert_eq!(t.admit(1, 2, 1, true), Admit::Verify { lsn: 11, ticket: None });
        assert!(matches!(t.admit(1, 2, 1, false), Admit::Refuse { code: codes::SEQUENCE_CONFLICT, .. }));
        assert!(matches!(t.admit(2, 5, 1, true), Admit::Refuse { code: codes::SEQUENCE_UNKNOWN, .. }));
    }
}

//! The primary's replication outbox: what the engine ships (`ShipSink`),
//! queued for the sender thread, bounded in bytes.
//!
//! Invariants:
//! * Events are queued in the order the engine produced them; per journal
//!   that is LSN order, and a mark comes before any batch that reuses the
//!   slots it freed (`ship.rs`).
//! * Bounded: past `limit` bytes the queue is dropped and marked
//!   overflowed; the sender then ends its session and catches the replica
//!   up from the segments. Appends never wait for the outbox.
//! * `claimed` and `marks` are kept whether or not a session is active, so
//!   a session that activates the outbox knows, per journal, the LSN from
//!   which every batch will be in the queue (below it: read from disk).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::ship::{ShipSink, ShipView};

/// One thing to ship.
#[derive(Debug)]
pub enum Event {
    /// A BATCH frame of records `first_lsn..next_lsn` of `journal`,
    /// encoded but not sealed: the sender computes its CRC (`seal_frame`),
    /// outside the engine's lock. One copy of the batch.
    Batch {
        journal: u64,
        first_lsn: u64,
        next_lsn: u64,
        frame: Vec<u8>,
    },
    Mark {
        journal: u64,
        lsn: u64,
    },
    /// A writer claim raised the journal's writer epoch (queued before the
    /// claim's record).
    Writer {
        journal: u64,
        writer: u64,
    },
    Create {
        journal: u64,
        name: String,
    },
    Delete {
        journal: u64,
    },
}

/// What the outbox knew when a session activated it.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Per journal: every batch from this LSN on is (or will be) queued.
    pub claimed: HashMap<u64, u64>,
    /// Per journal: its mark (marks set later are queued).
    pub marks: HashMap<u64, u64>,
}

struct State {
    active: bool,
    overflowed: bool,
    q: VecDeque<Event>,
    bytes: usize,
    snap: Snapshot,
    /// Per journal: bytes claimed since start, and recent (next_lsn, bytes
    /// claimed up to it), for lag in bytes.
    claimed_bytes: HashMap<u64, u64>,
    history: HashMap<u64, VecDeque<(u64, u64)>>,
}

/// The outbox dropped events (past its bound) since it was activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflowed;

pub struct Outbox {
    st: Mutex<State>,
    cv: Condvar,
    limit: usize,
}

const HISTORY: usize = 8192;

impl Outbox {
    /// `journals`: (id, next lsn, mark) of every journal now.
    pub fn new(limit: usize, journals: &[(u64, u64, u64)]) -> Outbox {
        let mut snap = Snapshot::default();
        for &(id, next, mark) in journals {
            snap.claimed.insert(id, next);
            snap.marks.insert(id, mark);
        }
        Outbox {
            st: Mutex::new(State {
                active: false,
                overflowed: false,
                q: VecDeque::new(),
                bytes: 0,
                snap,
                claimed_bytes: HashMap::new(),
                history: HashMap::new(),
            }),
            cv: Condvar::new(),
            limit,
        }
    }

    /// Starts queueing (dropping what was queued) and returns where the
    /// queue begins per journal.
    pub fn activate(&self) -> Snapshot {
        let mut st = self.st.lock();
        st.active = true;
        st.overflowed = false;
        st.q.clear();
        st.bytes = 0;
        st.snap.clone()
    }

    /// Stops queueing (no session).
    pub fn deactivate(&self) {
        let mut st = self.st.lock();
        st.active = false;
        st.q.clear();
        st.bytes = 0;
    }

    /// Waits up to `wait` for events; moves every queued one into `out`.
    /// `Err(Overflowed)` if the queue overflowed since activation.
    pub fn take(&self, out: &mut Vec<Event>, wait: Duration) -> Result<(), Overflowed> {
        let mut st = self.st.lock();
        if st.q.is_empty() && !st.overflowed {
            let deadline = Instant::now() + wait;
            while st.q.is_empty() && !st.overflowed {
                if self.cv.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
        }
        if st.overflowed {
            return Err(Overflowed);
        }
        out.extend(st.q.drain(..));
        st.bytes = 0;
        Ok(())
    }

    /// Wakes a sender waiting in `take`.
    pub fn nudge(&self) {
        self.cv.notify_all();
    }

    /// Bytes queued and not yet taken by the sender.
    pub fn queued_bytes(&self) -> usize {
        self.st.lock().bytes
    }

    /// Bytes of journal `id` claimed after LSN `durable` (what its replica
    /// still lacks), as far as the recent history tells.
    pub fn bytes_after(&self, id: u64, durable: u64) -> u64 {
        let st = self.st.lock();
        let total = st.claimed_bytes.get(&id).copied().unwrap_or(0);
        let Some(h) = st.history.get(&id) else { return 0 };
        // The newest entry whose next_lsn is at or below `durable`; older
        // than the whole history: at least what the history covers.
        let i = h.partition_point(|&(next, _)| next <= durable);
        match i {
            0 => total.saturating_sub(h.front().map(|f| f.1).unwrap_or(total)),
            _ => total.saturating_sub(h[i - 1].1),
        }
    }

    /// Queues the event `make` builds, counted as `bytes`; built only if it
    /// fits (a batch is copied only then).
    fn push(&self, st: &mut State, bytes: usize, make: impl FnOnce() -> Event) {
        if !st.active || st.overflowed {
            return;
        }
        if st.bytes + bytes > self.limit {
            tracing::warn!(limit = self.limit, "replication backlog full: the replica will catch up from the segments");
            st.overflowed = true;
            st.q.clear();
            st.bytes = 0;
            self.cv.notify_all();
            return;
        }
        st.bytes += bytes;
        st.q.push_back(make());
        self.cv.notify_one();
    }
}

impl ShipSink for Outbox {
    fn batch(&self, b: &ShipView<'_>) {
        let mut st = self.st.lock();
        st.snap.claimed.insert(b.journal_id, b.next_lsn);
        let total = {
            let t = st.claimed_bytes.entry(b.journal_id).or_insert(0);
            *t += b.bytes.len() as u64;
            *t
        };
        let h = st.history.entry(b.journal_id).or_default();
        h.push_back((b.next_lsn, total));
        if h.len() > HISTORY {
            h.pop_front();
        }
        self.push(&mut st, b.bytes.len() + 64, || {
            let mut frame = Vec::with_capacity(b.bytes.len() + 128);
            super::wire::encode_batch_unsealed(&mut frame, b);
            Event::Batch { journal: b.journal_id, first_lsn: b.first_lsn, next_lsn: b.next_lsn, frame }
        });
    }

    fn mark(&self, journal: u64, lsn: u64) {
        let mut st = self.st.lock();
        st.snap.marks.insert(journal, lsn);
        self.push(&mut st, 64, || Event::Mark { journal, lsn });
    }

    fn writer(&self, journal: u64, writer: u64) {
        let mut st = self.st.lock();
        self.push(&mut st, 64, || Event::Writer { journal, writer });
    }

    fn created(&self, journal: u64, name: &str) {
        let mut st = self.st.lock();
        st.snap.claimed.insert(journal, 1);
        st.snap.marks.insert(journal, 0);
        self.push(&mut st, 128, || Event::Create { journal, name: name.to_string() });
    }

    fn deleted(&self, journal: u64) {
        let mut st = self.st.lock();
        st.snap.claimed.remove(&journal);
        st.snap.marks.remove(&journal);
        st.claimed_bytes.remove(&journal);
        st.history.remove(&journal);
        self.push(&mut st, 64, || Event::Delete { journal });
    }
}

//! An asynchronous batch writer for one thread: its own io_uring with many
//! batch writes in flight, so one thread can serve many appenders without a
//! thread (and a wake-up) per append. This is the engine's event loop; the
//! daemon runs one per core.
//!
//! ```no_run
//! # fn main() -> mirrorlog::Result<()> {
//! # let log = mirrorlog::MirrorLog::open(&mirrorlog::Config::new(["/d0", "/d1"]))?;
//! let j = log.journal("default")?;
//! let mut driver = mirrorlog::Driver::new()?;
//! let tickets: Vec<_> = (0..64).map(|i| j.submit(&[i as u8; 1024])).collect::<Result<_, _>>()?;
//! while !tickets.iter().all(|t| j.poll(t).unwrap_or(true)) {
//!     driver.pump(&[&j], true)?;
//! }
//! # Ok(()) }
//! ```
//!
//! Invariant: a batch is handed back to its journal (and so may be
//! acknowledged) only after the write to every member it was sent to has
//! completed, and failed members were marked failed and persisted.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::format::MAX_MEMBERS;
use crate::journal::Journal;
use crate::mirror::Failed;
use crate::pipeline::{Batch, JournalInner};
use crate::storage::{Op, Queue, Storage};

const RING_ENTRIES: u32 = 256;
const MAX_FLIGHTS: usize = RING_ENTRIES as usize / MAX_MEMBERS;

struct Flight {
    journal: Arc<JournalInner>,
    batch: Batch,
    members: [usize; MAX_MEMBERS],
    /// The healthy members among the targets (`Targets::counted`).
    counted: u8,
    remaining: usize,
    failed: Failed,
    started: Instant,
}

/// Writes batches of any number of journals asynchronously on the calling
/// thread. Not `Send`: one per thread.
pub struct Driver {
    /// The device layer's asynchronous queue (an io_uring of the driver's
    /// own, for real devices).
    ring: Box<dyn Queue>,
    /// Which storage's devices `ring` reaches: journals on another are
    /// refused (their device ids mean nothing here).
    storage: u64,
    flights: Vec<Option<Flight>>,
    free: Vec<usize>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Driver {
    /// A driver for journals on the real devices (the default storage).
    pub fn new() -> Result<Driver> {
        Self::on(&crate::storage::default_storage())
    }

    /// A driver for the journals of `log` (on whatever storage it uses).
    pub fn for_log(log: &crate::MirrorLog) -> Result<Driver> {
        Self::on(log.storage())
    }

    fn on(storage: &Arc<dyn Storage>) -> Result<Driver> {
        Ok(Driver {
            ring: storage.queue(RING_ENTRIES).map_err(Error::Io)?,
            storage: storage.storage_id(),
            flights: (0..MAX_FLIGHTS).map(|_| None).collect(),
            free: (0..MAX_FLIGHTS).rev().collect(),
            _not_send: std::marker::PhantomData,
        })
    }

    /// Has the kernel signal `fd` (an eventfd) whenever a write of this
    /// driver completes, so an event loop can sleep until then.
    pub fn register_eventfd(&self, fd: std::os::fd::RawFd) -> Result<()> {
        self.ring.register_eventfd(fd).map_err(Error::Io)
    }

    /// Batches being written.
    pub fn in_flight(&self) -> usize {
        MAX_FLIGHTS - self.free.len()
    }

    /// Starts a write for every batch of `journals` that may be written now,
    /// then reaps completions, waiting for at least one if `wait` and any
    /// write is in flight. Returns how many batch writes finished.
    pub fn pump(&mut self, journals: &[&Journal], wait: bool) -> Result<usize> {
        self.pump_any(journals, wait)
    }

    /// `pump` over owned handles (an event loop's journal list, without
    /// building a slice of references on every turn).
    pub fn pump_all(&mut self, journals: &[Journal], wait: bool) -> Result<usize> {
        self.pump_any(journals, wait)
    }

    fn pump_any<J: std::borrow::Borrow<Journal>>(&mut self, journals: &[J], wait: bool) -> Result<usize> {
        let mut finished = 0;
        for j in journals {
            let j = j.borrow();
            if j.inner.shared.set.storage().storage_id() != self.storage {
                return Err(Error::Config(format!(
                    "journal {} is on another storage than this driver (Driver::for_log)",
                    j.name()
                )));
            }
            // Claim only with a flight slot in hand: a claimed batch must be written.
            while let Some(idx) = self.free.pop() {
                match j.inner.claim_async() {
                    Some(b) => finished += self.start(idx, &j.inner, b),
                    None => {
                        self.free.push(idx);
                        break;
                    }
                }
            }
        }
        if self.in_flight() == 0 {
            return Ok(finished);
        }
        // Enter the kernel only to submit new writes or to wait: completions
        // are read from the shared ring without a system call.
        let want = if wait && finished == 0 { 1 } else { 0 };
        // (The queue itself knows what is pushed and not yet submitted, also
        // after an EBUSY or a failed submit left entries in it.)
        if want > 0 || self.ring.unsubmitted() {
            self.ring.submit(want).map_err(Error::Io)?;
        }
        let mut done: [(u64, i32); 64] = [(0, 0); 64];
        loop {
            let n = self.ring.complete(&mut done);
            if n == 0 {
                break;
            }
            for &(ud, res) in &done[..n] {
                finished += self.on_cqe(ud, res);
            }
        }
        Ok(finished)
    }

    /// Queues the writes of one batch in flight slot `idx`. Returns 1 if it
    /// finished at once.
    fn start(&mut self, idx: usize, journal: &Arc<JournalInner>, batch: Batch) -> usize {
        let set = &journal.shared.set;
        let t = set.write_targets();
        let mut f = Flight {
            journal: journal.clone(),
            batch,
            members: [0; MAX_MEMBERS],
            counted: t.counted,
            remaining: t.n_go,
            failed: t.failed,
            started: Instant::now(),
        };
        let (off, bytes) = f.batch.region(set.segment_size);
        let dsync = set.dsync_writes();
        for (k, &(m, dev)) in t.go[..t.n_go].iter().enumerate() {
            f.members[k] = m;
            let op = Op::write(dev, off, bytes, dsync);
            let ud = (idx * MAX_MEMBERS + k) as u64;
            // SAFETY: the batch buffer lives in the flight until its
            // completion is taken. The queue has room: at most
            // MAX_FLIGHTS * MAX_MEMBERS ops are in it.
            if !unsafe { self.ring.push(&op, ud) } {
                let _ = self.ring.submit(0);
                // SAFETY: as above.
                if !unsafe { self.ring.push(&op, ud) } {
                    f.failed.push(m);
                    f.remaining -= 1;
                    continue;
                }
            }
        }
        if f.remaining == 0 {
            self.free.push(idx);
            Self::settle(f);
            return 1;
        }
        self.flights[idx] = Some(f);
        0
    }

    fn on_cqe(&mut self, ud: u64, res: i32) -> usize {
        let idx = ud as usize / MAX_MEMBERS;
        let k = ud as usize % MAX_MEMBERS;
        let Some(f) = self.flights.get_mut(idx).and_then(|f| f.as_mut()) else { return 0 };
        let m = f.members[k];
        let set = &f.journal.shared.set;
        let (off, bytes) = f.batch.region(set.segment_size);
        if !set.write_done(m, off, res, bytes.len(), f.started.elapsed().as_nanos() as u64) {
            f.failed.push(m);
        }
        f.remaining -= 1;
        if f.remaining > 0 {
            return 0;
        }
        let Some(f) = self.flights[idx].take() else { return 0 };
        self.free.push(idx);
        Self::settle(f);
        1
    }

    fn settle(f: Flight) {
        let res = f.journal.shared.set.settle_write(f.counted, f.failed.as_slice());
        f.journal.finish_async(f.batch, res);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Never free a buffer the device may still write from: every batch
        // in flight is finished (and handed back to its journal) first.
        let mut done: [(u64, i32); 64] = [(0, 0); 64];
        while self.in_flight() > 0 {
            if self.ring.submit(1).is_err() {
                std::process::abort();
            }
            let n = self.ring.complete(&mut done);
            for &(ud, res) in &done[..n] {
                self.on_cqe(ud, res);
            }
        }
    }
}

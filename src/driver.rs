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

use io_uring::{opcode, types, IoUring};

use crate::error::{Error, Result};
use crate::format::MAX_MEMBERS;
use crate::journal::Journal;
use crate::mirror::Failed;
use crate::pipeline::{Batch, JournalInner};

const RING_ENTRIES: u32 = 256;
const MAX_FLIGHTS: usize = RING_ENTRIES as usize / MAX_MEMBERS;

struct Flight {
    journal: Arc<JournalInner>,
    batch: Batch,
    members: [usize; MAX_MEMBERS],
    attempted: usize,
    remaining: usize,
    failed: Failed,
    started: Instant,
}

/// Writes batches of any number of journals asynchronously on the calling
/// thread. Not `Send`: one per thread.
pub struct Driver {
    ring: IoUring,
    flights: Vec<Option<Flight>>,
    free: Vec<usize>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Driver {
    pub fn new() -> Result<Driver> {
        Ok(Driver {
            ring: IoUring::new(RING_ENTRIES).map_err(Error::Io)?,
            flights: (0..MAX_FLIGHTS).map(|_| None).collect(),
            free: (0..MAX_FLIGHTS).rev().collect(),
            _not_send: std::marker::PhantomData,
        })
    }

    /// Has the kernel signal `fd` (an eventfd) whenever a write of this
    /// driver completes, so an event loop can sleep until then.
    pub fn register_eventfd(&self, fd: std::os::fd::RawFd) -> Result<()> {
        self.ring.submitter().register_eventfd(fd).map_err(Error::Io)
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
        // (The ring itself knows what is queued and not yet submitted, also
        // after an EBUSY or a failed submit left entries in it.)
        if want > 0 || !self.ring.submission().is_empty() {
            loop {
                match self.ring.submit_and_wait(want) {
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                    Err(e) => return Err(Error::Io(e)),
                }
            }
        }
        let mut done: [(u64, i32); 64] = [(0, 0); 64];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion().take(done.len()) {
                done[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
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
            attempted: t.attempted(),
            remaining: t.n_go,
            failed: t.failed,
            started: Instant::now(),
        };
        let (off, bytes) = f.batch.region(set.segment_size);
        let flags = if set.dsync_writes() { libc::RWF_DSYNC } else { 0 };
        for (k, &(m, fd)) in t.go[..t.n_go].iter().enumerate() {
            f.members[k] = m;
            let e = opcode::Write::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
                .offset(off)
                .rw_flags(flags)
                .build()
                .user_data((idx * MAX_MEMBERS + k) as u64);
            // SAFETY: the batch buffer lives in the flight until its CQE is reaped.
            // The ring has room: at most MAX_FLIGHTS * MAX_MEMBERS entries are queued.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                let _ = self.ring.submit();
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&e) }.is_err() {
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
        let res = f.journal.shared.set.settle_write(f.attempted, f.failed.as_slice());
        f.journal.finish_async(f.batch, res);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Never free a buffer the kernel may still write from.
        while self.in_flight() > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                std::process::abort();
            }
            let cqes: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (ud, res) in cqes {
                self.on_cqe(ud, res);
            }
        }
    }
}

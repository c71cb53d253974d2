//! A journal: one named log in a mirror set. `Journal` is the public handle:
//! appends (through the pipeline in `pipeline.rs`), verified reads, marks.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{ChainPos, Tag};
use crate::pipeline::{IndexEntry, JournalInner};
pub use crate::pipeline::{JournalCounters, Lsn, RecoveryStats, Ticket};
pub use crate::read::Rec;
use crate::read::SegmentScan;
use crate::shipment::{ChainEnd, ShipView, Shipment};

/// A handle to one journal. Cheap to clone; all methods take `&self` and may
/// be called from many threads at once.
#[derive(Clone)]
pub struct Journal {
    pub(crate) inner: Arc<JournalInner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("name", &self.inner.name).finish()
    }
}

/// A journal's state as reported by `Journal::info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalInfo {
    pub name: String,
    pub id: u64,
    /// Records below the mark may be reclaimed (0: no mark set).
    pub mark: Lsn,
    /// Lowest lsn that can still be read.
    pub first_lsn: Lsn,
    /// The lsn the next append will get; `next_lsn - 1` is the last durable record.
    pub next_lsn: Lsn,
    pub segments: usize,
    /// Bytes of segment slots the journal holds.
    pub bytes: u64,
    /// Segments recovery found missing on every mirror at open (their
    /// records cannot be read); 0 when the journal is whole.
    pub missing_segments: u64,
}

/// What a scrub of one journal did (`Journal::scrub`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Members whose copies were read (the healthy ones).
    pub members: usize,
    /// Records verified, counted once per member.
    pub records: u64,
    /// Payload bytes verified, counted once per member.
    pub bytes: u64,
    /// Bad copies rewritten from a good member meanwhile (the set's
    /// repairs, reads' heals included).
    pub repaired: u64,
    /// `go_on` stopped it before the end.
    pub stopped: bool,
}

impl JournalInner {
    /// Scans records from `from`, handing each verified record to `visit`
    /// until it returns false or the durable end is reached.
    pub(crate) fn scan(&self, from: Lsn, visit: impl FnMut(&Rec<'_>) -> bool, chunk: usize) -> Result<()> {
        self.scan_from(from, visit, chunk, false)
    }

    /// `scan`; with `below_mark`, records below the mark are read too while
    /// their segment is still held (not yet reclaimed).
    pub(crate) fn scan_from(
        &self,
        from: Lsn,
        visit: impl FnMut(&Rec<'_>) -> bool,
        chunk: usize,
        below_mark: bool,
    ) -> Result<()> {
        self.scan_members(from, visit, chunk, below_mark, None)
    }

    /// `scan_from`, reading each segment from member `first` when given
    /// (a scrub of that member's copies): a segment on which the read had
    /// to go to another member (it healed a bad copy on `first`) is read
    /// again from `first`, from its start, until `first` verifies through
    /// it or fails (at most `MAX_REREADS` times). `visit` then sees those
    /// records again.
    fn scan_members(
        &self,
        from: Lsn,
        mut visit: impl FnMut(&Rec<'_>) -> bool,
        chunk: usize,
        below_mark: bool,
        first: Option<usize>,
    ) -> Result<()> {
        const MAX_REREADS: u32 = 64;
        let bs = self.shared.set.block_size;
        let mut lsn = from;
        let mut prefer = self.shared.set.healthy_indexes().next().unwrap_or(0);
        let mut rereads = 0;
        loop {
            if let Some(m) = first {
                prefer = m;
            }
            let (slot, start, bound, end_lsn, durable, _pin, seen) = {
                let st = self.st.lock();
                let seen = self.cut_gate.generation();
                if st.deleted {
                    return Err(Error::UnknownJournal(self.name.clone()));
                }
                if lsn < st.mark && !below_mark {
                    return Err(Error::BelowMark { lsn, mark: st.mark });
                }
                if lsn >= st.durable_lsn {
                    return Ok(());
                }
                let i = st.segs.partition_point(|s| s.first_lsn <= lsn);
                if i == 0 {
                    return Err(Error::BelowMark { lsn, mark: st.mark });
                }
                let seg = &st.segs[i - 1];
                let end_lsn = st.seg_end_lsn(i - 1);
                // Pinned while we read (and maybe heal) it: see `SlotTable`.
                let Some(pin) = self.shared.pin(seg.slot, self.id) else {
                    return Err(Error::BelowMark { lsn, mark: st.mark });
                };
                (seg.slot, seg.entry_for(lsn, bs), seg.end_off, end_lsn, st.durable_lsn, pin, seen)
            };
            let scan = SegmentScan { chunk, prefer, ..self.seg_scan_at(slot, bound, end_lsn, seen) };
            let mut indexed = Vec::new();
            let stride = self.shared.cfg.index_stride as u64;
            let mut last_idx = start.off;
            let end =
                scan.run(ChainPos { off: start.off as usize, lsn: start.lsn, prev_crc: start.prev_crc }, |r| {
                    if r.flags & crate::format::FLAG_BATCH_END != 0 && r.next_off >= last_idx + stride {
                        indexed.push(IndexEntry { lsn: r.lsn + 1, off: r.next_off, prev_crc: r.crc });
                        last_idx = r.next_off;
                    }
                    if r.lsn < lsn {
                        return true;
                    }
                    visit(r)
                })?;
            prefer = end.member;
            if let Some(m) = first {
                let healthy = self.shared.set.members().get(m).is_some_and(|x| x.is_healthy());
                if end.member != m && !end.stopped && healthy && rereads < MAX_REREADS {
                    rereads += 1;
                    continue;
                }
                rereads = 0;
            }
            if !indexed.is_empty() {
                let mut st = self.st.lock();
                if let Some(seg) = st.segs.iter_mut().find(|s| s.slot == slot && s.first_lsn <= start.lsn) {
                    for e in indexed {
                        seg.add_index(e, stride);
                    }
                }
            }
            if end.stopped {
                return Ok(());
            }
            if end.pos.lsn < end_lsn {
                let st = self.st.lock();
                if lsn < st.mark {
                    return Err(Error::BelowMark { lsn, mark: st.mark });
                }
                return Err(Error::Corrupt(format!(
                    "journal {}: the record chain breaks at lsn {} on every mirror (durable up to {})",
                    self.name,
                    end.pos.lsn,
                    durable - 1
                )));
            }
            lsn = end_lsn;
        }
    }
}

impl Journal {
    /// The journal's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Appends one record; returns its LSN once it is durable on every
    /// healthy mirror.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn> {
        self.inner.append_many(std::slice::from_ref(&payload))
    }

    /// Appends records with consecutive LSNs; returns the first LSN once all
    /// are durable. Either all are placed, or (`full`, too large) none is.
    pub fn append_batch(&self, payloads: &[&[u8]]) -> Result<Lsn> {
        self.inner.append_many(payloads)
    }

    /// Places a record without waiting for it to be written; returns a
    /// ticket holding its LSN. Nothing is written until a writer runs: a
    /// blocking `append`/`wait` on this journal, or a `Driver` pumped by the
    /// caller. `Err(Backpressure)` when every batch buffer is in use.
    pub fn submit(&self, payload: &[u8]) -> Result<Ticket> {
        self.inner.submit(payload, None)
    }

    /// Places records with consecutive LSNs without waiting (like `submit`),
    /// all or none. With `tag`, record `i` carries the producer tag
    /// `(tag.producer, tag.seq + i)`, returned by reads in `Rec::tag`. When no
    /// batch buffer is free midway, `make_room` is called (with no lock held)
    /// and must write batches, for example by pumping a `Driver`. Returns
    /// the first LSN and the ticket of the last record (which is durable
    /// only once all of them are).
    pub fn submit_many(
        &self,
        payloads: &[&[u8]],
        tag: Option<Tag>,
        make_room: impl FnMut() -> Result<()>,
    ) -> Result<(Lsn, Ticket)> {
        self.inner.submit_many(payloads, tag, make_room)
    }

    /// Hands each verified record from `from` to `visit` until it returns
    /// false or the durable end is reached. The payload is borrowed from the
    /// read buffer; `chunk` is the read size in bytes.
    pub fn visit(&self, from: Lsn, chunk: usize, visit: impl FnMut(&Rec<'_>) -> bool) -> Result<()> {
        self.inner.scan(from, visit, chunk.max(self.inner.shared.set.block_size as usize))
    }

    /// `visit`, but from any record the journal still holds, below the mark
    /// too (records below the mark stay on disk until their whole segment is
    /// reclaimed). The daemon rebuilds its idempotence table with it.
    pub fn visit_retained(&self, from: Lsn, chunk: usize, visit: impl FnMut(&Rec<'_>) -> bool) -> Result<()> {
        self.inner.scan_from(from, visit, chunk.max(self.inner.shared.set.block_size as usize), true)
    }

    /// Scrubs the journal: every record from the mark to the durable end
    /// is read and verified (its CRC32C and the chain) on every healthy
    /// member, each read first in turn; a member's bad copy is rewritten
    /// from a member whose copy verifies (the read path's self-heal, which
    /// also counts it in that member's CKSUM and REPAIRED). A record bad on
    /// every member fails the scrub with `corrupt`, as a read does. Runs
    /// alongside appends and reads (segments are pinned while read, heals
    /// wait out cut-backs). `chunk`: bytes per read. `go_on` is called
    /// after each record verified with the report so far (the caller
    /// paces the scrub by sleeping in it); false stops the scrub
    /// (`ScrubReport::stopped`).
    pub fn scrub(&self, chunk: usize, mut go_on: impl FnMut(&ScrubReport) -> bool) -> Result<ScrubReport> {
        let set = &self.inner.shared.set;
        let chunk = chunk.max(set.block_size as usize);
        let from = {
            let info = self.info();
            info.first_lsn.max(info.mark)
        };
        let before = set.repairs();
        let mut report = ScrubReport::default();
        let members: Vec<usize> = set.healthy_indexes().collect();
        for m in members {
            if report.stopped {
                break;
            }
            report.members += 1;
            // A segment read again after a heal hands its records out again.
            let mut next = from;
            let mut cut_retries = 0;
            loop {
                let cuts = self.cut_generation();
                let res = self.inner.scan_members(
                    next,
                    |r| {
                        if r.lsn >= next {
                            next = r.lsn + 1;
                            report.records += 1;
                            report.bytes += r.payload.len() as u64;
                        }
                        report.stopped = !go_on(&report);
                        !report.stopped
                    },
                    chunk,
                    false,
                    Some(m),
                );
                match res {
                    // A consumer's mark passed the scrub (its segment may be
                    // reclaimed): go on from the mark.
                    Err(Error::BelowMark { .. }) if self.mark() > next => next = self.mark(),
                    // A cut-back (a replica following its primary) changed
                    // the chain under the read: read on from what is left.
                    // (Each retry follows a cut made during the last read;
                    // cut-backs come at a session's start, a few at most.)
                    Err(_) if self.cut_since(cuts) && cut_retries < 1000 => {
                        cut_retries += 1;
                        next = next.min(self.next_lsn());
                    }
                    r => {
                        r?;
                        break;
                    }
                }
            }
        }
        report.repaired = set.repairs() - before;
        Ok(report)
    }

    /// Whether a cut-back began since `cuts` (`cut_generation`), once
    /// any cut in progress has finished (one still zeroing when the read
    /// failed has not moved the generation a second time yet).
    fn cut_since(&self, cuts: u64) -> bool {
        self.inner.cut_gate.settled_generation() != cuts
    }

    /// The first LSN of each segment the journal holds, oldest first.
    pub fn segment_starts(&self) -> Vec<Lsn> {
        self.inner.st.lock().segs.iter().map(|s| s.first_lsn).collect()
    }

    /// `Ok(true)` once a submitted record is durable on every healthy mirror;
    /// `Err` if its batch failed.
    pub fn poll(&self, t: &Ticket) -> Result<bool> {
        self.inner.poll(t)
    }

    /// Blocks until a submitted record is durable (writing batches itself
    /// as needed).
    pub fn wait(&self, t: &Ticket) -> Result<()> {
        let mut st = self.inner.st.lock();
        self.inner.wait_batch(&mut st, t.batch)
    }

    /// Reads the record with this LSN, verified.
    pub fn read(&self, lsn: Lsn) -> Result<Vec<u8>> {
        let mut out = None;
        self.inner.scan(
            lsn,
            |r| {
                out = Some(r.payload.to_vec());
                false
            },
            64 << 10,
        )?;
        match out {
            Some(v) => Ok(v),
            None => {
                let st = self.inner.st.lock();
                Err(Error::NotYetWritten { lsn, next: st.durable_lsn })
            }
        }
    }

    /// Iterates over verified records from `from` up to the durable end (as it
    /// moves while iterating).
    pub fn iter(&self, from: Lsn) -> JournalIter {
        JournalIter { journal: self.clone(), next: from, buf: VecDeque::new(), done: false }
    }

    /// Records below `lsn` may be reclaimed. Persisted before it returns;
    /// segments wholly below the mark go back to the free pool.
    pub fn set_mark(&self, lsn: Lsn) -> Result<()> {
        self.set_mark_inner(lsn, None)
    }

    /// `set_mark` by a writer: refused with `WriterFenced` unless `writer`
    /// is the journal's writer epoch (0: none, for a journal never
    /// claimed), checked under the lock a claim raises it under, so a
    /// fenced writer never moves the mark after a claim began.
    pub fn set_mark_as(&self, lsn: Lsn, writer: u64) -> Result<()> {
        self.set_mark_inner(lsn, Some(writer))
    }

    fn set_mark_inner(&self, lsn: Lsn, writer: Option<u64>) -> Result<()> {
        let inner = &self.inner;
        let _g = inner.mark_lock.lock();
        if let Some(w) = writer {
            self.check_writer(w)?;
        }
        {
            let st = inner.st.lock();
            if st.deleted {
                return Err(Error::UnknownJournal(inner.name.clone()));
            }
            if lsn < st.mark || lsn > st.durable_lsn {
                return Err(Error::InvalidMark { mark: lsn, current: st.mark, next: st.durable_lsn });
            }
            if lsn == st.mark {
                return Ok(());
            }
        }
        inner.write_mark(lsn)?;
        // Shipped before the slots it frees are released (see `ship.rs`).
        if let Some(sink) = inner.shared.sink() {
            sink.mark(inner.id, lsn);
        }
        let mut st = inner.st.lock();
        st.mark = lsn;
        // A segment is reclaimable once the next one starts at or below the mark.
        inner.reclaim_marked(&mut st);
        Ok(())
    }

    /// The writer epoch: the newest writer claim (0: never claimed).
    pub fn writer(&self) -> u64 {
        self.inner.writer.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Ok` if `writer` is the journal's writer epoch (0: none, for a
    /// journal never claimed), else `WriterFenced`.
    pub fn check_writer(&self, writer: u64) -> Result<()> {
        let current = self.writer();
        if writer == current {
            Ok(())
        } else {
            Err(Error::WriterFenced { writer, current })
        }
    }

    /// Claims the journal for a new writer: raises the writer epoch above
    /// the current one and above every epoch of earlier terms
    /// (`term << 32 | 1` at least, so writers claimed on two sites that
    /// each thought itself primary never share an epoch), persists it and
    /// ships it to the replica before it returns the new epoch. From the
    /// moment it starts, `check_writer` refuses the epoch it replaces: the
    /// caller writes the claim's record only after this returned, so that
    /// record's LSN is above every record the earlier writer got placed.
    pub fn claim_writer(&self, term: u32) -> Result<u64> {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        let _g = inner.mark_lock.lock();
        if inner.st.lock().deleted {
            return Err(Error::UnknownJournal(inner.name.clone()));
        }
        let cur = inner.writer.load(Ordering::Acquire);
        let new = cur.saturating_add(1).max((term as u64) << 32 | 1);
        // Raised before it is persisted: a crash in between loses an epoch
        // nobody was told, and the earlier writer is refused from now on.
        inner.writer.store(new, Ordering::Release);
        inner.write_writer(new)?;
        if let Some(sink) = inner.shared.sink() {
            sink.writer(inner.id, new);
        }
        debug_assert!(new > cur, "a claim raises the writer epoch");
        Ok(new)
    }

    /// Replica: takes the primary's writer epoch (persisted before it
    /// returns; never lowered).
    pub fn apply_writer(&self, writer: u64) -> Result<()> {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        let _g = inner.mark_lock.lock();
        if writer <= inner.writer.load(Ordering::Acquire) {
            return Ok(());
        }
        inner.writer.store(writer, Ordering::Release);
        inner.write_writer(writer)
    }

    /// The current mark (0: none set).
    pub fn mark(&self) -> Lsn {
        self.inner.st.lock().mark
    }

    /// One past the last durable record: the lsn the next append gets when
    /// no append is in flight.
    pub fn next_lsn(&self) -> Lsn {
        self.inner.st.lock().durable_lsn
    }

    /// The journal's state.
    pub fn info(&self) -> JournalInfo {
        let st = self.inner.st.lock();
        let first = st.segs.front().map(|s| s.first_lsn).unwrap_or(st.durable_lsn).max(st.mark).max(1);
        JournalInfo {
            name: self.inner.name.clone(),
            id: self.inner.id,
            mark: st.mark,
            first_lsn: first.min(st.durable_lsn),
            next_lsn: st.durable_lsn,
            segments: st.segs.len(),
            bytes: st.segs.len() as u64 * self.inner.shared.set.segment_size,
            missing_segments: self.inner.recovery.missing_segments,
        }
    }

    /// What recovery did for this journal when the set was opened.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.inner.recovery.clone()
    }

    /// Appends, bytes and batches written since open.
    pub fn counters(&self) -> JournalCounters {
        self.inner.st.lock().counters
    }
}

/// Iterator over a journal's records (`Journal::iter`).
pub struct JournalIter {
    journal: Journal,
    next: Lsn,
    buf: VecDeque<(Lsn, Vec<u8>)>,
    done: bool,
}

impl Iterator for JournalIter {
    type Item = Result<(Lsn, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(r) = self.buf.pop_front() {
            return Some(Ok(r));
        }
        if self.done {
            return None;
        }
        let mut bytes = 0usize;
        let buf = &mut self.buf;
        let res = self.journal.inner.scan(
            self.next,
            |r| {
                buf.push_back((r.lsn, r.payload.to_vec()));
                bytes += r.payload.len() + 64;
                bytes < (1 << 20)
            },
            1 << 20,
        );
        if let Err(e) = res {
            self.done = true;
            return Some(Err(e));
        }
        match self.buf.pop_front() {
            Some(r) => {
                self.next = self.buf.back().map(|b| b.0).unwrap_or(r.0) + 1;
                Some(Ok(r))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

// Replication: what a primary ships and a replica applies (the work is in
// `ship.rs`, on `JournalInner`).
impl Journal {
    /// Replica: queues a batch shipped by the primary. It is written (by a
    /// `Driver` or a blocking wait) to the same slot and offset as on the
    /// primary, and becomes durable like a batch of this node's own.
    /// Refused (nothing written) unless it continues this journal's chain;
    /// `Backpressure` when every batch buffer is in use or the slot is
    /// still pinned by a reader (write, then retry).
    pub fn apply_shipment(&self, v: &ShipView<'_>) -> Result<()> {
        self.inner.apply(v)
    }

    /// Replica: where this journal's chain ends, once nothing is queued or
    /// being written (`Backpressure` until then).
    pub fn chain_end(&self) -> Result<ChainEnd> {
        self.inner.chain_end()
    }

    /// Primary (catch-up): whole batches from `from` (a batch start, whose
    /// previous record has CRC `prev_crc`) up to `end` or the durable end,
    /// read from the segments (one read of at most `max_bytes`, at least a
    /// batch) and verified, in shipments of at most one batch buffer each,
    /// in order. `hint`: (segment seq, offset) where `from` starts, as the
    /// replica reported it. Empty when nothing is left to send.
    pub fn read_shipment(
        &self,
        from: u64,
        prev_crc: u32,
        hint: Option<(u64, u64)>,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Shipment>> {
        self.inner.read_shipment(from, prev_crc, hint, end, max_bytes)
    }

    /// Replica: cuts the journal back to the last batch end at or below
    /// `keep` (records after it were never its new primary's), zeroing what
    /// lies after on every mirror. Nothing may be queued or in flight.
    pub fn truncate_after(&self, keep: u64) -> Result<ChainEnd> {
        self.inner.truncate_after(keep)
    }

    /// Replica: drops every segment (their headers zeroed) so the journal
    /// can be sent again whole; it continues at `next_lsn`.
    pub fn reset(&self, next_lsn: u64) -> Result<ChainEnd> {
        // As `truncate_after`: no mark may free a slot being zeroed here.
        // (Taken here, not in `JournalInner::reset`, which `truncate_after`
        // calls with the lock held.)
        let _g = self.inner.mark_lock.lock();
        self.inner.reset(next_lsn)
    }

    /// The CRC of the record at `lsn` (its place in the chain: equal CRCs
    /// mean equal histories up to it), read and verified.
    pub fn record_crc(&self, lsn: u64) -> Result<u32> {
        let mut out = None;
        self.inner.scan_from(
            lsn,
            |r| {
                out = Some(r.crc);
                false
            },
            64 << 10,
            true,
        )?;
        out.ok_or(Error::NotYetWritten { lsn, next: self.next_lsn() })
    }

    /// Replica: takes the primary's mark, up (reclaiming segments like
    /// `set_mark`; the records below it must be durable here) or down.
    pub fn apply_mark(&self, lsn: u64) -> Result<()> {
        let cur = self.mark();
        if lsn > cur {
            self.set_mark(lsn)
        } else if lsn < cur {
            // Never below the oldest segment held: the segments before it
            // were reclaimed, and their headers (left on disk) must stay
            // below the mark, or recovery would take them back.
            let _g = self.inner.mark_lock.lock();
            let oldest = self.inner.st.lock().segs.front().map(|s| s.first_lsn);
            let lsn = oldest.map_or(lsn, |o| lsn.max(o));
            if lsn >= cur {
                return Ok(());
            }
            self.inner.persist_mark(lsn)
        } else {
            Ok(())
        }
    }

    /// The first record at or after `from` whose epoch is above `epoch`:
    /// its LSN and epoch (`None` if there is none up to the durable end).
    /// Reads at most about one segment: a chain's epochs never decrease
    /// (each run's epoch is above every earlier one on the node, and a
    /// replica takes a primary's run only at or above its own), so the
    /// segment headers say where the epochs pass `epoch`.
    pub fn first_record_above(&self, from: Lsn, epoch: u64) -> Result<Option<(Lsn, u64)>> {
        let start = {
            let st = self.inner.st.lock();
            if from >= st.durable_lsn {
                return Ok(None);
            }
            let i = st.segs.partition_point(|s| s.first_lsn <= from).saturating_sub(1);
            // The last segment from there on whose header is at or below
            // `epoch`: every record before it is too.
            let k = (i..st.segs.len()).rev().find(|&k| st.segs[k].epoch <= epoch).unwrap_or(i);
            st.segs.get(k).map_or(from, |s| s.first_lsn.max(from))
        };
        let mut found = None;
        self.inner.scan_from(
            start,
            |r| {
                if r.epoch > epoch {
                    found = Some((r.lsn, r.epoch));
                    return false;
                }
                true
            },
            1 << 20,
            true,
        )?;
        Ok(found)
    }

    /// (slot, segment sequence, first LSN) of each segment held, oldest first.
    pub fn segment_slots(&self) -> Vec<(u64, u64, u64)> {
        self.inner.st.lock().segs.iter().map(|s| (s.slot, s.seq, s.first_lsn)).collect()
    }

    /// Changes whenever the journal is cut back or reset (a replica taking
    /// its primary's history): a reader that saw records before may not
    /// find the same ones after.
    pub fn cut_generation(&self) -> u64 {
        self.inner.cut_gate.generation()
    }

    /// Whether a write of this journal failed (it takes no more writes
    /// until reopened).
    pub fn failed(&self) -> bool {
        self.inner.st.lock().failed.is_some()
    }

    /// The journal's id in its set (equal on a primary and its replicas).
    pub fn id(&self) -> u64 {
        self.inner.id
    }
}

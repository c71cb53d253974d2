//! The group-commit pipeline of a journal: placing records in batches,
//! sealing and claiming batches for writers, retiring them in order.
//!
//! # Pipeline (see docs/architecture.md)
//! 1. `append` takes the journal lock, gives the record the next LSN, encodes
//!    it (CRC chained to the previous record) straight into the *open batch*
//!    buffer, and releases the lock.
//! 2. If fewer than `max_inflight_batches` batches are being written, the
//!    appending thread seals the open batch (marks its last record
//!    `BATCH_END`, zero-pads it to a block) and writes it itself, through its
//!    own io_uring, to every healthy mirror at once. Otherwise it sleeps and
//!    the batch waits: appends arriving meanwhile join it (group commit). A
//!    `Driver` may claim and write batches instead (`claim_async`).
//! 3. When a batch's writes complete, batches are *retired* strictly in order:
//!    the durable LSN advances only over a prefix of completed batches, and
//!    only then are their appenders woken with success.
//!
//! # Invariants
//! - An append returns `Ok` only after its batch and every earlier batch
//!   completed durably on every healthy mirror.
//! - Each batch starts on a fresh block and is padded to a block, so a block
//!   that holds acknowledged data is never written again by the append path.
//! - LSNs are dense and strictly increasing per journal.
//! - The first batch of a new segment (which carries its header) is written
//!   only after every earlier batch retired. So a valid segment header implies
//!   the previous segment's chain is complete, and recovery scans one segment.
//! - After a failed batch nothing later is acknowledged: the journal refuses
//!   writes until reopened (recovery then decides what is durable).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};
use rand::RngCore;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{
    align_up, encode_record_header, set_batch_end, slot_offset, SegmentHeader, Tag, FLAG_TAGGED, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN, TAG_LEN,
};
use crate::io::AlignedBuf;
use crate::mirror::MirrorSet;
use crate::shipment::{Ship, ShipView};

/// Log sequence number: per journal, dense, starting at 1.
pub type Lsn = u64;

/// State shared by all journals of a set.
pub(crate) struct Shared {
    pub set: MirrorSet,
    pub cfg: Config,
    pub slots: Mutex<SlotTable>,
    /// Where batches, marks and journal changes are shipped (a primary's
    /// replication outbox), if anywhere. See `ship.rs`.
    pub sink: parking_lot::RwLock<Option<Arc<dyn crate::shipment::ShipSink>>>,
}

/// Ownership of segment slots.
///
/// Invariant: a slot is handed to a journal only when it has no owner and no
/// reader has it pinned, so a reader that heals a bad copy in a slot (writing
/// back that journal's old bytes) can never write over another journal's new
/// data after the slot was reclaimed and reused.
pub(crate) struct SlotTable {
    /// Owner journal id of each slot (`None`: free).
    pub owner: Vec<Option<u64>>,
    /// Readers currently scanning each slot.
    pins: Vec<u32>,
}

impl SlotTable {
    pub(crate) fn new(n: usize) -> SlotTable {
        SlotTable { owner: vec![None; n], pins: vec![0; n] }
    }
    pub(crate) fn free_count(&self) -> usize {
        self.owner.iter().filter(|o| o.is_none()).count()
    }
}

/// A reader's pin on a slot (see `SlotTable`); unpinned on drop.
pub(crate) struct SlotPin<'a> {
    shared: &'a Shared,
    slot: usize,
}

impl Drop for SlotPin<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.shared.slots.lock().pins.get_mut(self.slot) {
            *p = p.saturating_sub(1);
        }
    }
}

impl Shared {
    fn take_slots(&self, journal: u64, n: usize) -> Result<Vec<u64>> {
        let mut t = self.slots.lock();
        let free: Vec<u64> =
            (0..t.owner.len()).filter(|&i| t.owner[i].is_none() && t.pins[i] == 0).map(|i| i as u64).take(n).collect();
        if free.len() < n {
            return Err(Error::Full);
        }
        for &s in &free {
            t.owner[s as usize] = Some(journal);
        }
        Ok(free)
    }

    /// Takes one given slot for `journal` (a replica applying its
    /// primary's segment). `Backpressure` while a reader still has it
    /// pinned; `Corrupt` if another journal owns it.
    pub(crate) fn take_slot_exact(&self, journal: u64, slot: u64) -> Result<()> {
        let mut t = self.slots.lock();
        let i = slot as usize;
        match t.owner.get(i).copied() {
            None => Err(Error::Corrupt(format!("slot {slot} is outside this set"))),
            Some(Some(o)) if o == journal => Ok(()),
            Some(Some(o)) => Err(Error::Corrupt(format!("slot {slot} is held by journal id {o} here"))),
            Some(None) if t.pins[i] > 0 => Err(Error::Backpressure),
            Some(None) => {
                t.owner[i] = Some(journal);
                Ok(())
            }
        }
    }

    /// Takes `slot` for `journal` only if no journal holds it and no reader
    /// has it pinned; whether it did.
    pub(crate) fn take_slot_if_free(&self, journal: u64, slot: u64) -> bool {
        let mut t = self.slots.lock();
        let i = slot as usize;
        if t.owner.get(i).copied() == Some(None) && t.pins.get(i).copied() == Some(0) {
            t.owner[i] = Some(journal);
            true
        } else {
            false
        }
    }

    pub(crate) fn sink(&self) -> Option<Arc<dyn crate::shipment::ShipSink>> {
        self.sink.read().clone()
    }

    pub(crate) fn release_slot(&self, slot: u64) {
        if let Some(s) = self.slots.lock().owner.get_mut(slot as usize) {
            *s = None;
        }
    }

    /// Pins `slot` if no journal owns it (it then stays free until the
    /// pin drops: a resilver clearing its header).
    pub(crate) fn pin_free(&self, slot: u64) -> Option<SlotPin<'_>> {
        let mut t = self.slots.lock();
        let i = slot as usize;
        if t.owner.get(i).copied()?.is_some() {
            return None;
        }
        t.pins[i] += 1;
        Some(SlotPin { shared: self, slot: i })
    }

    /// Pins `slot` for reading if `journal` still owns it.
    pub(crate) fn pin(&self, slot: u64, journal: u64) -> Option<SlotPin<'_>> {
        let mut t = self.slots.lock();
        let i = slot as usize;
        if t.owner.get(i).copied().flatten() != Some(journal) {
            return None;
        }
        t.pins[i] += 1;
        Some(SlotPin { shared: self, slot: i })
    }
}

/// One index entry: a batch start (a record boundary) in a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub lsn: u64,
    pub off: u64,
    pub prev_crc: u32,
}

/// A live segment of a journal.
#[derive(Debug)]
pub(crate) struct Seg {
    pub slot: u64,
    pub seq: u64,
    pub first_lsn: u64,
    pub header_crc: u32,
    /// The epoch in its header: that of the run that began it. Records in
    /// a segment carry epochs from this one up to the next segment's (a
    /// chain's epochs never decrease).
    pub epoch: u64,
    /// Reads never go past this segment offset: the durable end for the tail
    /// segment, the segment size for older ones.
    pub end_off: u64,
    /// Sparse, sorted by lsn: at most one entry per `index_stride` bytes.
    pub index: Vec<IndexEntry>,
}

impl Seg {
    fn start(&self, block: u32) -> IndexEntry {
        IndexEntry { lsn: self.first_lsn, off: block as u64, prev_crc: self.header_crc }
    }
    /// The last index entry at or below `lsn`.
    pub(crate) fn entry_for(&self, lsn: u64, block: u32) -> IndexEntry {
        let i = self.index.partition_point(|e| e.lsn <= lsn);
        if i == 0 {
            self.start(block)
        } else {
            self.index[i - 1]
        }
    }
    pub(crate) fn add_index(&mut self, e: IndexEntry, stride: u64) {
        let last = self.index.last().map(|l| (l.lsn, l.off)).unwrap_or((0, 0));
        if e.lsn > last.0 && e.off >= last.1 + stride {
            self.index.push(e);
        }
    }
}

pub(crate) struct Batch {
    pub(crate) seq: u64,
    pub(crate) buf: AlignedBuf,
    /// Bytes used in `buf` (a leading header block included).
    pub(crate) len: usize,
    /// Where records start in `buf` (0, or one block after a header).
    pub(crate) data_start: usize,
    pub(crate) slot: u64,
    pub(crate) seg_seq: u64,
    /// Segment offset of `buf[0]`.
    pub(crate) seg_off: u64,
    pub(crate) first_lsn: u64,
    pub(crate) next_lsn: u64,
    pub(crate) first_prev: u32,
    pub(crate) last_rec: usize,
    pub(crate) last_pcrc: u32,
    pub(crate) opened: Instant,
    pub(crate) header: bool,
    /// Set when sealed: bytes to write (a multiple of the block size).
    pub(crate) padded: usize,
    /// Set when sealed: the CRC of the batch's last record.
    pub(crate) end_crc: u32,
}

impl Batch {
    /// Device offset and bytes of this batch's write (sealed batches only).
    pub(crate) fn region(&self, segment_size: u64) -> (u64, &[u8]) {
        (slot_offset(self.slot, segment_size) + self.seg_off, &self.buf.as_slice()[..self.padded])
    }
}

/// An append placed with `Journal::submit`. It is durable once
/// `Journal::poll` returns `Ok(true)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The record's LSN.
    pub lsn: Lsn,
    pub(crate) batch: u64,
}

pub(crate) struct Pending {
    seq: u64,
    done: Option<(Batch, Result<()>)>,
}

/// What a placement does when no batch buffer is free (and while another
/// caller holds the journal exclusively): the one thing the ways into the
/// append path differ in.
enum Room<'a> {
    /// `submit`: nothing is placed; `Backpressure` (the caller writes and
    /// tries again).
    Refuse,
    /// `submit_many`: the caller's writer runs with the lock released
    /// (it pumps a `Driver`).
    Make(&'a mut dyn FnMut() -> Result<()>),
    /// `append`: a batch is written on this thread, or the caller waits for
    /// the writer that has one.
    Wait,
}

/// What must fit in the batch where a record is placed.
#[derive(Clone, Copy)]
enum Fit {
    /// The record alone.
    Record,
    /// The first record of a `submit_many` group: the whole group (bytes
    /// with headers), so the group lands in one batch and a crash keeps all
    /// of it or none (recovery cuts at batch ends).
    Group(u64),
    /// A later record of that group: it joins the open batch unconditionally.
    Continue,
}

pub(crate) struct JState {
    pub deleted: bool,
    /// (first failed batch seq, why): that batch and all later ones fail.
    pub(crate) failed: Option<(u64, Error)>,
    pub epoch: u64,
    pub mark: u64,
    /// Next lsn to hand out; `last_crc` is the chain value it must carry.
    pub next_assign: u64,
    pub(crate) last_crc: u32,
    /// Next lsn not yet durable: everything below it is acknowledged.
    pub durable_lsn: u64,
    pub segs: VecDeque<Seg>,
    /// Segment offset (block aligned) where the next new batch starts.
    pub(crate) tail_off: u64,
    pub(crate) next_seg_seq: u64,
    pub(crate) open: Option<Batch>,
    pub(crate) sealed: VecDeque<Batch>,
    pub(crate) writing: usize,
    pub(crate) pending: VecDeque<Pending>,
    pub(crate) next_batch_seq: u64,
    /// Every batch with a lower seq is retired.
    pub(crate) retired: u64,
    /// Free batch buffers. Allocated on first need, up to
    /// `Config::batch_buffers` of them (`buffers` counts them), then reused:
    /// memory per journal is bounded, and an idle journal holds none.
    pub(crate) pool: Vec<AlignedBuf>,
    pub(crate) buffers: usize,
    /// Slots reserved by the append being placed.
    reserved: Vec<u64>,
    /// Appends, bytes and batches retired since open.
    pub counters: JournalCounters,
    /// An append_batch is mid-placement: others wait so LSNs stay contiguous.
    pub(crate) exclusive: bool,
}

impl JState {
    /// Records placed and not yet durable: an open or sealed batch, or one
    /// being written.
    pub(crate) fn busy(&self) -> bool {
        self.open.is_some() || !self.sealed.is_empty() || self.writing > 0
    }

    /// The durable records of segment `i` are below this LSN (the next
    /// segment's first, or the durable end).
    pub(crate) fn seg_end_lsn(&self, i: usize) -> u64 {
        self.segs.get(i + 1).map_or(self.durable_lsn, |n| n.first_lsn).min(self.durable_lsn)
    }
}

/// Counters of one journal.
#[derive(Debug, Default, Clone, Copy)]
pub struct JournalCounters {
    pub appends: u64,
    pub bytes: u64,
    pub batches: u64,
}

pub(crate) struct JournalInner {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub name: String,
    pub st: Mutex<JState>,
    cvs: Box<[Condvar]>,
    excl_cv: Condvar,
    pub mark_lock: Mutex<()>,
    /// The writer epoch (`JournalEntry::writer`): raised under `mark_lock`
    /// before the superblock that records it is written, so an append
    /// checked against it after a claim began sees the new one. Never lowered.
    pub writer: std::sync::atomic::AtomicU64,
    /// Keeps readers' self-heal from writing back what a cut-back removed.
    pub(crate) cut_gate: crate::read::CutGate,
    pub recovery: RecoveryStats,
}

/// What recovery did for one journal at open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryStats {
    /// Records found in the tail segment.
    pub tail_records: u64,
    /// Bytes of the tail segment's chain scanned.
    pub tail_bytes: u64,
    /// Seconds spent scanning the tail chain.
    pub scan_seconds: f64,
    /// Seconds for the whole recovery of this journal (scan, mirror sync, zeroing).
    pub total_seconds: f64,
    /// Records past the last complete batch that were dropped.
    pub dropped_records: u64,
    /// Segments missing on every mirror between two that were found (their
    /// records cannot be read; everything else was kept).
    pub missing_segments: u64,
}

/// What recovery found for a journal.
pub(crate) struct Recovered {
    pub stats: RecoveryStats,
    pub segs: VecDeque<Seg>,
    pub next_lsn: u64,
    pub last_crc: u32,
    pub tail_off: u64,
    pub next_seg_seq: u64,
    pub mark: u64,
    pub writer: u64,
    pub epoch: u64,
}

impl JournalInner {
    pub(crate) fn new(shared: Arc<Shared>, id: u64, name: String, rec: Recovered) -> JournalInner {
        let cfg = &shared.cfg;
        let nbufs = cfg.batch_buffers();
        let st = JState {
            deleted: false,
            failed: None,
            epoch: rec.epoch,
            mark: rec.mark,
            next_assign: rec.next_lsn,
            last_crc: rec.last_crc,
            durable_lsn: rec.next_lsn,
            segs: rec.segs,
            tail_off: rec.tail_off,
            next_seg_seq: rec.next_seg_seq,
            open: None,
            sealed: VecDeque::new(),
            writing: 0,
            pending: VecDeque::new(),
            next_batch_seq: 0,
            retired: 0,
            pool: Vec::with_capacity(nbufs),
            buffers: 0,
            reserved: Vec::new(),
            counters: JournalCounters::default(),
            exclusive: false,
        };
        JournalInner {
            shared,
            id,
            name,
            st: Mutex::new(st),
            cvs: (0..nbufs).map(|_| Condvar::new()).collect(),
            excl_cv: Condvar::new(),
            mark_lock: Mutex::new(()),
            writer: std::sync::atomic::AtomicU64::new(rec.writer),
            cut_gate: Default::default(),
            recovery: rec.stats,
        }
    }

    pub(crate) fn block(&self) -> u64 {
        self.shared.set.block_size as u64
    }

    fn cv(&self, seq: u64) -> &Condvar {
        &self.cvs[(seq % self.cvs.len() as u64) as usize]
    }

    pub(crate) fn check_writable(&self, st: &JState) -> Result<()> {
        if st.deleted {
            return Err(Error::UnknownJournal(self.name.clone()));
        }
        if let Some((_, e)) = &st.failed {
            return Err(e.duplicate());
        }
        Ok(())
    }

    /// The placement rule, shared by `place` and `segments_needed`: a
    /// record of `t` bytes joins a batch that holds `rb` record bytes and
    /// ends at segment offset `end` if the batch stays under the byte limit
    /// (a batch takes at least one record) and within the segment.
    fn fits_batch(&self, rb: u64, end: u64, t: u64) -> bool {
        (rb == 0 || rb + t <= self.shared.cfg.max_batch_bytes as u64) && self.fits_segment(end, t)
    }

    /// Whether `t` bytes starting at segment offset `at` fit in the segment.
    fn fits_segment(&self, at: u64, t: u64) -> bool {
        align_up(at + t, self.block()) <= self.shared.set.segment_size
    }

    /// How many new segments placing records of these sizes needs: `place`'s
    /// decisions, made on numbers only. (A group, placed as one run, counts
    /// as one record of the group's size.)
    fn segments_needed(&self, st: &JState, lens: impl Iterator<Item = usize>) -> usize {
        let bs = self.block();
        let mut open = st.open.as_ref().map(|b| (b.seg_off + b.len as u64, (b.len - b.data_start) as u64));
        let mut tail = st.segs.back().map(|_| st.tail_off);
        let mut new = 0;
        for len in lens {
            let t = (RECORD_HEADER_LEN + len) as u64;
            if let Some((end, rb)) = open {
                if self.fits_batch(rb, end, t) {
                    open = Some((end + t, rb + t));
                    continue;
                }
                tail = Some(align_up(end, bs));
            }
            match tail {
                Some(to) if self.fits_segment(to, t) => open = Some((to + t, t)),
                _ => {
                    new += 1;
                    tail = Some(0);
                    open = Some((bs + t, t));
                }
            }
        }
        new
    }

    fn seal_open(&self, st: &mut JState) {
        let Some(mut b) = st.open.take() else { return };
        let bs = self.block() as usize;
        let rec = b.last_rec;
        st.last_crc = set_batch_end(&mut b.buf.as_mut_slice()[rec..rec + RECORD_HEADER_LEN], b.last_pcrc);
        b.end_crc = st.last_crc;
        b.padded = align_up(b.len as u64, bs as u64) as usize;
        let (len, padded) = (b.len, b.padded);
        b.buf.as_mut_slice()[len..padded].fill(0);
        st.tail_off = b.seg_off + padded as u64;
        st.sealed.push_back(b);
    }

    pub(crate) fn new_buffer(&self, st: &mut JState) -> Option<AlignedBuf> {
        if st.buffers >= self.cvs.len() {
            return None;
        }
        st.buffers += 1;
        let bs = self.shared.set.block_size;
        Some(AlignedBuf::new(self.shared.cfg.batch_buf_bytes(bs), bs as usize))
    }

    /// Places one record in the open batch. `Ok(None)`: no batch buffer is
    /// free; write or wait and call again.
    fn place(&self, st: &mut JState, payload: &[u8], tag: Option<Tag>, fit: Fit) -> Result<Option<u64>> {
        let bs = self.block();
        let body = payload.len() + if tag.is_some() { TAG_LEN } else { 0 };
        let t = (RECORD_HEADER_LEN + body) as u64;
        let need = match fit {
            Fit::Record => t,
            Fit::Group(g) => g.max(t),
            // Room for the whole group was made at its first record, and the
            // open batch's buffer holds any group `submit_many` accepts.
            Fit::Continue => 0,
        };
        if let Some(b) = &st.open {
            if need > 0 && !self.fits_batch((b.len - b.data_start) as u64, b.seg_off + b.len as u64, need) {
                self.seal_open(st);
            }
        }
        debug_assert!(need > 0 || st.open.is_some(), "a group continues in its open batch");
        if st.open.is_none() {
            let in_tail = st.segs.back().is_some() && self.fits_segment(st.tail_off, need);
            let Some(mut buf) = st.pool.pop().or_else(|| self.new_buffer(st)) else {
                return Ok(None);
            };
            let seq = st.next_batch_seq;
            let (slot, seg_seq, seg_off, data_start, header) = if in_tail {
                let s = st.segs.back().map(|s| (s.slot, s.seq)).unwrap_or((0, 0));
                (s.0, s.1, st.tail_off, 0usize, false)
            } else {
                let Some(slot) = st.reserved.pop() else {
                    st.pool.push(buf);
                    return Err(Error::Full);
                };
                let seg_seq = st.next_seg_seq;
                let h = SegmentHeader {
                    set_uuid: self.shared.set.set_uuid,
                    journal_id: self.id,
                    seq: seg_seq,
                    epoch: st.epoch,
                    first_lsn: st.next_assign,
                    prev_crc: st.last_crc,
                    nonce: rand::thread_rng().next_u64(),
                };
                let hb = buf.as_mut_slice();
                let crc = h.encode(hb);
                hb[SEGMENT_HEADER_LEN..bs as usize].fill(0);
                st.next_seg_seq += 1;
                st.segs.push_back(Seg {
                    slot,
                    seq: seg_seq,
                    first_lsn: st.next_assign,
                    header_crc: crc,
                    epoch: h.epoch,
                    end_off: bs,
                    index: Vec::new(),
                });
                st.last_crc = crc;
                st.tail_off = 0;
                if !cfg!(feature = "mutate-marked-segment-kept") {
                    self.reclaim_marked(st);
                }
                (slot, seg_seq, 0, bs as usize, true)
            };
            st.next_batch_seq += 1;
            st.open = Some(Batch {
                seq,
                buf,
                len: data_start,
                data_start,
                slot,
                seg_seq,
                seg_off,
                first_lsn: st.next_assign,
                next_lsn: st.next_assign,
                first_prev: st.last_crc,
                last_rec: 0,
                last_pcrc: 0,
                opened: Instant::now(),
                header,
                padded: 0,
                end_crc: 0,
            });
        }
        let lsn = st.next_assign;
        let (epoch, prev) = (st.epoch, st.last_crc);
        let b = st.open.as_mut().ok_or(Error::Closed)?;
        let off = b.len;
        let out = &mut b.buf.as_mut_slice()[off..off + t as usize];
        let (flags, at) = match tag {
            Some(tag) => {
                tag.encode(&mut out[RECORD_HEADER_LEN..RECORD_HEADER_LEN + TAG_LEN]);
                (FLAG_TAGGED, RECORD_HEADER_LEN + TAG_LEN)
            }
            None => (0, RECORD_HEADER_LEN),
        };
        out[at..].copy_from_slice(payload);
        let pcrc = crc32c::crc32c(&out[RECORD_HEADER_LEN..]);
        let crc = encode_record_header(out, pcrc, body as u32, lsn, epoch, prev, flags);
        b.last_rec = off;
        b.last_pcrc = pcrc;
        b.len += t as usize;
        b.next_lsn = lsn + 1;
        let seq = b.seq;
        st.last_crc = crc;
        st.next_assign = lsn + 1;
        Ok(Some(seq))
    }

    /// The open batch, if it holds a record.
    fn open_batch(st: &JState) -> Option<&Batch> {
        st.open.as_ref().filter(|b| b.next_lsn > b.first_lsn)
    }

    /// Whether the open batch may be written now (group-commit wait elapsed).
    fn open_ready(&self, st: &JState) -> bool {
        let wait = self.shared.cfg.group_commit_wait;
        Self::open_batch(st).is_some_and(|b| wait.is_zero() || b.opened.elapsed() >= wait)
    }

    /// The seq of a batch that a writer could take now.
    fn claimable(&self, st: &JState) -> Option<u64> {
        if st.failed.is_some() || st.writing >= self.shared.cfg.max_inflight_batches {
            return None;
        }
        match st.sealed.front() {
            Some(b) if b.header && st.retired != b.seq => None,
            Some(b) => Some(b.seq),
            None if self.open_ready(st) => st.open.as_ref().map(|b| b.seq),
            None => None,
        }
    }

    /// Takes a batch to write, if one may be written now.
    fn claim(&self, st: &mut JState) -> Option<Batch> {
        self.claimable(st)?;
        if st.sealed.is_empty() {
            self.seal_open(st);
        }
        let front = st.sealed.front()?;
        if front.header && st.retired != front.seq {
            return None;
        }
        let b = st.sealed.pop_front()?;
        st.writing += 1;
        st.pending.push_back(Pending { seq: b.seq, done: None });
        // Invariant (ordering of the shipped stream): a batch is handed to the
        // sink when it is claimed, under the journal lock, so a journal's
        // batches are shipped in LSN order, and after any mark that freed the
        // slot it reuses (the mark is shipped before its slots are released).
        if let Some(sink) = self.shared.sink() {
            sink.batch(&b.view(self.id));
        }
        Some(b)
    }

    fn write_batch(&self, b: &Batch) -> Result<()> {
        let (off, bytes) = b.region(self.shared.set.segment_size);
        self.shared.set.write_all(off, bytes)
    }

    /// Claims a batch for an asynchronous writer (`Driver`).
    pub(crate) fn claim_async(&self) -> Option<Batch> {
        let mut st = self.st.lock();
        self.claim(&mut st)
    }

    /// Hands back a batch an asynchronous writer finished.
    pub(crate) fn finish_async(&self, b: Batch, res: Result<()>) {
        let mut st = self.st.lock();
        self.complete(&mut st, b, res);
    }

    /// The append path: every record any caller appends is placed here.
    /// 1. Sizes: each record within `max_record_size`; a `grouped` append
    ///    (`submit`, `submit_many`) within one batch, as its records land in
    ///    one batch, so a crash keeps all of them or none (recovery cuts at
    ///    batch ends).
    /// 2. Lock; another caller's exclusive placement is waited out as
    ///    `room` says.
    /// 3. The segments all the records need are reserved: all or none
    ///    (`full` places nothing).
    /// 4. Each record is placed in the open batch (consecutive LSNs, record
    ///    `i` tagged `(producer, seq + i)`). When no batch buffer is free,
    ///    other callers are held off (`exclusive`) and room is made as
    ///    `room` says; a delete or a failed batch meanwhile ends the append
    ///    (records placed stay placed: a writer writes them).
    /// 5. The segments reserved and not used are given back.
    ///
    /// Returns the first LSN and the last record's ticket, with the journal
    /// still locked for a caller that waits next.
    fn place_all<'s>(
        &'s self,
        payloads: &[&[u8]],
        tag: Option<Tag>,
        grouped: bool,
        mut room: Room<'_>,
    ) -> Result<(MutexGuard<'s, JState>, Lsn, Ticket)> {
        let max = self.shared.cfg.max_record_size as usize;
        if payloads.is_empty() {
            return Err(Error::Config("an append needs at least one record".into()));
        }
        if let Some(p) = payloads.iter().find(|p| p.len() > max) {
            return Err(Error::RecordTooLarge { size: p.len(), max });
        }
        let extra = if tag.is_some() { TAG_LEN } else { 0 };
        let group: u64 = if grouped {
            let group = payloads.iter().map(|p| (RECORD_HEADER_LEN + extra + p.len()) as u64).sum();
            let max_group = self.shared.cfg.max_batch_bytes.max(RECORD_HEADER_LEN + extra + max) as u64;
            if payloads.len() > 1 && group > max_group {
                return Err(Error::AppendTooLarge { size: group as usize, max: max_group as usize });
            }
            group
        } else {
            0
        };
        debug_assert!(grouped || tag.is_none(), "only grouped appends are tagged");
        debug_assert!(!matches!(room, Room::Refuse) || payloads.len() == 1, "a refusal places nothing");
        let mut st = self.st.lock();
        loop {
            self.check_writable(&st)?;
            if !st.exclusive {
                break;
            }
            // Another caller is mid-placement (only on another thread).
            match &mut room {
                Room::Refuse => return Err(Error::Backpressure),
                Room::Make(make_room) => MutexGuard::unlocked(&mut st, &mut **make_room)?,
                Room::Wait => self.excl_cv.wait(&mut st),
            }
        }
        let need = if grouped {
            self.segments_needed(&st, std::iter::once(group as usize - RECORD_HEADER_LEN))
        } else {
            self.segments_needed(&st, payloads.iter().map(|p| p.len()))
        };
        if need > 0 {
            st.reserved = self.shared.take_slots(self.id, need)?;
        }
        let first = st.next_assign;
        let mut last = Ticket { lsn: first, batch: 0 };
        let mut i = 0;
        while i < payloads.len() {
            // (Re)checked after every wait: a delete or a failed batch ends it.
            if let Err(e) = self.check_writable(&st) {
                self.end_exclusive(&mut st);
                return Err(e);
            }
            let t = tag.map(|t| Tag { producer: t.producer, seq: t.seq + i as u64 });
            let lsn = st.next_assign;
            // A group must fit where its first record goes; the others follow
            // it in the same batch, never sealing it.
            let fit = match (grouped, i) {
                (false, _) => Fit::Record,
                (true, 0) => Fit::Group(group),
                (true, _) => Fit::Continue,
            };
            let made = match self.place(&mut st, payloads[i], t, fit) {
                Ok(Some(batch)) => {
                    last = Ticket { lsn, batch };
                    i += 1;
                    Ok(())
                }
                Ok(None) => match &mut room {
                    Room::Refuse => Err(Error::Backpressure),
                    Room::Make(make_room) => {
                        st.exclusive = true;
                        MutexGuard::unlocked(&mut st, &mut **make_room)
                    }
                    Room::Wait => {
                        st.exclusive = true;
                        if !self.help(&mut st) {
                            let oldest = st.retired;
                            self.cv(oldest).wait(&mut st);
                        }
                        Ok(())
                    }
                },
                Err(e) => Err(e),
            };
            if let Err(e) = made {
                self.end_exclusive(&mut st);
                return Err(e);
            }
        }
        self.end_exclusive(&mut st);
        Ok((st, first, last))
    }

    /// Places one record without waiting. `Err(Backpressure)` when every
    /// batch buffer is in use: write (pump a `Driver`) and try again.
    pub(crate) fn submit(&self, payload: &[u8], tag: Option<Tag>) -> Result<Ticket> {
        self.place_all(std::slice::from_ref(&payload), tag, true, Room::Refuse).map(|(_, _, t)| t)
    }

    /// Places records with consecutive LSNs without waiting for them to be
    /// written, all in one batch; with `tag`, record `i` is tagged
    /// `(producer, seq + i)`. When no batch buffer is free midway,
    /// `make_room` runs, unlocked, to write batches (pump a `Driver`).
    /// Returns the first LSN and the last record's ticket.
    pub(crate) fn submit_many(
        &self,
        payloads: &[&[u8]],
        tag: Option<Tag>,
        mut make_room: impl FnMut() -> Result<()>,
    ) -> Result<(Lsn, Ticket)> {
        self.place_all(payloads, tag, true, Room::Make(&mut make_room)).map(|(_, first, last)| (first, last))
    }

    /// What became of batch `seq`: `None` while it is not retired yet,
    /// `Some(Ok)` once it (and every batch before it) is durable, `Some(Err)`
    /// if it failed or comes after a failed batch.
    fn outcome(st: &JState, seq: u64) -> Option<Result<()>> {
        match &st.failed {
            Some((from, e)) if seq >= *from => Some(Err(e.duplicate())),
            _ if seq < st.retired => Some(Ok(())),
            _ => None,
        }
    }

    /// Whether a submitted record is durable.
    pub(crate) fn poll(&self, t: &Ticket) -> Result<bool> {
        Self::outcome(&self.st.lock(), t.batch).map_or(Ok(false), |r| r.map(|()| true))
    }

    /// Records a written batch and retires every completed batch in order.
    fn complete(&self, st: &mut JState, b: Batch, res: Result<()>) {
        st.writing -= 1;
        let seq = b.seq;
        if let Some(p) = st.pending.iter_mut().find(|p| p.seq == seq) {
            p.done = Some((b, res));
        }
        let stride = self.shared.cfg.index_stride as u64;
        let bs = self.block();
        while st.pending.front().is_some_and(|p| p.done.is_some()) {
            let Some(Pending { seq, done: Some((b, res)) }) = st.pending.pop_front() else {
                break;
            };
            match res {
                Ok(()) if st.failed.is_none() => {
                    st.durable_lsn = b.next_lsn;
                    if let Some(seg) = st.segs.iter_mut().rev().find(|s| s.seq == b.seg_seq) {
                        seg.end_off = b.seg_off + b.padded as u64;
                        seg.add_index(
                            IndexEntry {
                                lsn: b.first_lsn,
                                off: b.seg_off + b.data_start as u64,
                                prev_crc: b.first_prev,
                            },
                            stride.max(bs),
                        );
                    }
                    let c = &mut st.counters;
                    c.batches += 1;
                    c.appends += b.next_lsn - b.first_lsn;
                    c.bytes += (b.len - b.data_start) as u64;
                }
                Ok(()) => {}
                Err(e) => {
                    // This batch and everything after it fail. A failure already
                    // recorded for a later batch (a delete) moves back to here.
                    if st.failed.as_ref().is_none_or(|(from, _)| seq < *from) {
                        tracing::error!(journal = %self.name, error = %e, "batch write failed; the journal refuses writes until reopened");
                        st.failed = Some((seq, e));
                        for cv in self.cvs.iter() {
                            cv.notify_all();
                        }
                        self.excl_cv.notify_all();
                    }
                }
            }
            st.pool.push(b.buf);
            st.retired = seq + 1;
            self.cv(seq).notify_all();
        }
        // A writer slot is free: wake one thread that can write the next batch
        // (threads wait on the first unclaimed batch; see `sleep`).
        if let Some(s) = self.claimable(st) {
            self.cv(s).notify_one();
        }
        // A deleted journal gives its slots back once nothing writes to them.
        if st.deleted && st.writing == 0 {
            for seg in std::mem::take(&mut st.segs) {
                self.shared.release_slot(seg.slot);
            }
        }
    }

    /// The first batch no writer has taken yet.
    fn first_unclaimed(&self, st: &JState) -> Option<u64> {
        st.sealed.front().or(Self::open_batch(st)).map(|b| b.seq)
    }

    /// Writes batches or sleeps until batch `seq` is retired.
    pub(crate) fn wait_batch(&self, st: &mut MutexGuard<'_, JState>, seq: u64) -> Result<()> {
        loop {
            if let Some(r) = Self::outcome(st, seq) {
                // Done. If a batch is waiting for a writer, wake one of its appenders.
                if let Some(s) = self.claimable(st) {
                    self.cv(s).notify_one();
                }
                return r;
            }
            if self.help(st) {
                continue;
            }
            self.sleep(st, seq);
        }
    }

    /// Writes one claimable batch, if any. Returns whether it did.
    fn help(&self, st: &mut MutexGuard<'_, JState>) -> bool {
        match self.claim(st) {
            Some(b) => {
                let res = MutexGuard::unlocked(st, || self.write_batch(&b));
                self.complete(st, b, res);
                true
            }
            None => false,
        }
    }

    /// Sleeps until batch `seq` may have retired or a batch it depends on may
    /// be written. Invariant (no lost wake-up): a thread waiting for `seq`
    /// sleeps on the first batch no writer has taken, if that comes at or
    /// before `seq`, so whoever makes that batch claimable (`complete`,
    /// `wait_batch`) wakes a thread that will write it; otherwise it sleeps on
    /// `seq`, which is notified when it retires.
    fn sleep(&self, st: &mut MutexGuard<'_, JState>, seq: u64) {
        let on = self.first_unclaimed(st).map_or(seq, |u| u.min(seq));
        let wait = self.shared.cfg.group_commit_wait;
        let open_age = Self::open_batch(st).map(|b| b.opened.elapsed());
        match open_age {
            Some(age) if !wait.is_zero() && age < wait => {
                self.cv(on).wait_for(st, wait - age);
            }
            _ => {
                self.cv(on).wait(st);
            }
        }
    }

    /// Places records with consecutive LSNs (a batch may end between them)
    /// and waits until all are durable, writing batches on this thread
    /// when no writer has them. Returns the first LSN.
    pub(crate) fn append_many(&self, payloads: &[&[u8]]) -> Result<Lsn> {
        let (mut st, first, last) = self.place_all(payloads, None, false, Room::Wait)?;
        self.wait_batch(&mut st, last.batch)?;
        Ok(first)
    }

    fn end_exclusive(&self, st: &mut JState) {
        for s in st.reserved.drain(..) {
            self.shared.release_slot(s);
        }
        if st.exclusive {
            st.exclusive = false;
            self.excl_cv.notify_all();
        }
    }

    /// Gives back the slots of the segments the mark covers wholly (the
    /// next segment starts at or below it), as `set_mark` does and as
    /// recovery does at open; called too when a segment begins (on a
    /// primary and on a replica alike), so that a segment the mark covered
    /// only once the next one began is not held by a node that did not
    /// restart while one that did reuses its slot. The mark that covers them
    /// was shipped when it was set, before any slot it frees is reused.
    pub(crate) fn reclaim_marked(&self, st: &mut JState) {
        while st.segs.len() > 1 && st.segs[1].first_lsn <= st.mark {
            if let Some(s) = st.segs.pop_front() {
                self.shared.release_slot(s.slot);
            }
        }
        debug_assert!(st.segs.len() <= 1 || st.segs[1].first_lsn > st.mark, "a segment the mark covers is held");
    }

    /// Records the journal's mark in the superblock (durably), nothing else.
    pub(crate) fn write_mark(&self, lsn: u64) -> Result<()> {
        self.update_entry(|j| j.mark = lsn)
    }

    /// Records the journal's writer epoch in the superblock (durably).
    pub(crate) fn write_writer(&self, writer: u64) -> Result<()> {
        self.update_entry(|j| j.writer = j.writer.max(writer))
    }

    fn update_entry(&self, f: impl FnOnce(&mut crate::format::JournalEntry)) -> Result<()> {
        let id = self.id;
        self.shared.set.update_superblock(|sb| {
            match sb.journals.iter_mut().find(|j| j.id == id) {
                Some(j) => f(j),
                None => return Err(Error::UnknownJournal(self.name.clone())),
            }
            Ok(())
        })
    }

    /// Marks the journal deleted: appends in progress and to come fail with
    /// `unknown-journal`. Does not wait for batches being written (their
    /// writer may be the calling thread's `Driver`); returns the slots that can
    /// be freed now, and `complete` frees the rest when the last write ends.
    pub(crate) fn shut(&self) -> Vec<u64> {
        let mut st = self.st.lock();
        st.deleted = true;
        // Batches not yet being written fail (their appenders get
        // unknown-journal); batches being written finish first.
        let first_unwritten = st.sealed.front().map(|b| b.seq).or(st.open.as_ref().map(|b| b.seq));
        if st.failed.is_none() {
            let from = first_unwritten.unwrap_or(st.next_batch_seq);
            st.failed = Some((from, Error::UnknownJournal(self.name.clone())));
        }
        st.open = None;
        st.sealed.clear();
        for cv in self.cvs.iter() {
            cv.notify_all();
        }
        self.excl_cv.notify_all();
        let mut slots: Vec<u64> = st.reserved.drain(..).collect();
        if st.writing == 0 {
            slots.extend(std::mem::take(&mut st.segs).into_iter().map(|s| s.slot));
        }
        slots
    }
}

impl Batch {
    /// The batch as a replica needs it, its bytes borrowed.
    pub(crate) fn view(&self, journal_id: u64) -> ShipView<'_> {
        Ship {
            journal_id,
            slot: self.slot,
            seg_seq: self.seg_seq,
            seg_off: self.seg_off,
            first_lsn: self.first_lsn,
            next_lsn: self.next_lsn,
            end_crc: self.end_crc,
            header: self.header,
            bytes: &self.buf.as_slice()[..self.padded],
        }
    }
}

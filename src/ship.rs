//! The engine's side of remote-site replication: the same blocks, shipped.
//!
//! A primary hands every batch it claims for writing to a [`ShipSink`] (the
//! daemon's replication outbox) together with where it goes (slot, segment
//! offset) and which LSNs it holds, and reads older batches back from its
//! segments for catch-up ([`Journal::read_shipment`]). A replica *applies*
//! shipped batches ([`Journal::apply_shipment`]): they enter its pipeline
//! as sealed batches and are written like its own, to the same slot and
//! offset, so the two sites hold the same blocks.
//!
//! Invariants:
//! * A shipment is applied only if its bytes continue the replica's chain:
//!   the segment header (for a segment's first batch) names this set, this
//!   journal, the next segment sequence and the next LSN, and every record
//!   verifies (CRC, LSN, `prev_crc`) up to a `BATCH_END` that ends the
//!   shipment. A bad shipment is refused and nothing of it is written.
//! * `read_shipment` returns only bytes whose chain it verified, whole
//!   batches, durable on this node.
//! * `truncate_after` leaves no trace of the cut records on any mirror:
//!   headers of dropped segments and the bytes after the new tail are
//!   zeroed durably before the new tail is used, so recovery cannot revive
//!   them.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{align_up, scan_chain, slot_offset, ChainPos, ScanStop, SegmentHeader, FLAG_BATCH_END};
use crate::io::AlignedBuf;
use crate::pipeline::{Batch, IndexEntry, JournalInner, Seg};
use crate::read::SegmentScan;

pub use crate::shipment::{ChainEnd, Ship, ShipSink, ShipView, Shipment};

impl JournalInner {
    /// The longest record body a read or a shipment accepts: what fits in
    /// a segment (see `format::max_record_body`), not the configured limit.
    pub(crate) fn max_body(&self) -> u32 {
        let set = &self.shared.set;
        crate::format::max_record_body(set.segment_size, set.block_size)
    }

    /// A verified scan of `slot` below segment offset `bound` and LSN
    /// `end_lsn`, in 1 MiB reads, trying the first healthy member first.
    pub(crate) fn seg_scan(&self, slot: u64, bound: u64, end_lsn: u64) -> SegmentScan<'_> {
        let set = &self.shared.set;
        SegmentScan {
            set,
            slot,
            bound,
            end_lsn,
            max_record: self.max_body(),
            chunk: 1 << 20,
            prefer: set.healthy_indexes().next().unwrap_or(0),
            gate: None,
        }
    }

    /// `seg_scan` for a reader that took its snapshot of the journal at cut
    /// generation `seen`: it heals only if no cut-back happened since.
    pub(crate) fn seg_scan_at(&self, slot: u64, bound: u64, end_lsn: u64, seen: u64) -> SegmentScan<'_> {
        SegmentScan { gate: Some((&self.cut_gate, seen)), ..self.seg_scan(slot, bound, end_lsn) }
    }

    /// See `Journal::apply_shipment`.
    pub(crate) fn apply(&self, v: &ShipView<'_>) -> Result<()> {
        let bs = self.block() as usize;
        let len = v.bytes.len();
        let mut st = self.st.lock();
        self.check_writable(&st)?;
        if st.open.is_some() {
            return Err(Error::Corrupt("replica journal has an open batch of its own".into()));
        }
        if len == 0 || len % bs != 0 || len > self.shared.cfg.batch_buf_bytes(bs as u32) {
            return Err(Error::Corrupt(format!("shipment of {len} bytes is not whole blocks within a batch buffer")));
        }
        if v.seg_off % bs as u64 != 0 || v.seg_off + len as u64 > self.shared.set.segment_size {
            return Err(Error::Corrupt(format!("shipment at segment offset {} runs past the segment", v.seg_off)));
        }
        // Always the next LSN: a reset journal continues where `reset` put it.
        if v.first_lsn != st.next_assign {
            return Err(Error::Corrupt(format!(
                "shipment starts at lsn {} but this journal continues at {}",
                v.first_lsn, st.next_assign
            )));
        }
        let (start, new_seg) = if v.header {
            let (h, hcrc) = SegmentHeader::decode(&v.bytes[..bs])
                .map_err(|e| Error::Corrupt(format!("shipped segment header: {e}")))?;
            let ok = v.seg_off == 0
                && h.set_uuid == self.shared.set.set_uuid
                && h.journal_id == self.id
                && h.seq == v.seg_seq
                && h.first_lsn == v.first_lsn
                && (st.segs.is_empty() || (h.seq == st.next_seg_seq && h.prev_crc == st.last_crc));
            if !ok {
                return Err(Error::Corrupt(format!(
                    "shipped segment header (journal {}, seq {}, lsn {}) does not continue this journal (seq {}, lsn {})",
                    h.journal_id, h.seq, h.first_lsn, st.next_seg_seq, st.next_assign
                )));
            }
            (ChainPos { off: bs, lsn: v.first_lsn, prev_crc: hcrc }, Some((hcrc, h.epoch)))
        } else {
            let tail = st.segs.back().map(|s| (s.slot, s.seq));
            if tail != Some((v.slot, v.seg_seq)) || v.seg_off != st.tail_off {
                return Err(Error::Corrupt(format!(
                    "shipment for segment {} at offset {} does not continue this journal's tail (segment {:?}, offset {})",
                    v.seg_seq,
                    v.seg_off,
                    tail.map(|t| t.1),
                    st.tail_off
                )));
            }
            (ChainPos { off: 0, lsn: v.first_lsn, prev_crc: st.last_crc }, None)
        };
        // Every record verified, ending with a batch end exactly at the end.
        let mut pos = start;
        let mut last_flags = 0;
        // Padding after each batch end is zero (no CRC covers it, and both
        // sites must hold the same blocks).
        let mut pad_ok = true;
        let stop = scan_chain(v.bytes, &mut pos, bs, self.max_body(), |f| {
            last_flags = f.header.flags;
            if f.header.flags & FLAG_BATCH_END != 0 {
                let end = f.off + f.header.total_len();
                let padded = (align_up(end as u64, bs as u64) as usize).min(v.bytes.len());
                pad_ok &= v.bytes[end..padded].iter().all(|&b| b == 0);
            }
            f.header.lsn + 1 < v.next_lsn
        });
        if v.header {
            pad_ok &= v.bytes[crate::format::SEGMENT_HEADER_LEN..bs].iter().all(|&b| b == 0);
        }
        let complete = pad_ok
            && stop == ScanStop::Stopped
            && pos.lsn == v.next_lsn
            && pos.off == len
            && pos.prev_crc == v.end_crc
            && last_flags & FLAG_BATCH_END != 0;
        if !complete || v.next_lsn <= v.first_lsn {
            return Err(Error::Corrupt(format!(
                "shipment of lsn {}..{} does not verify (chain ends at lsn {}, offset {})",
                v.first_lsn, v.next_lsn, pos.lsn, pos.off
            )));
        }
        if new_seg.is_some() {
            // (What the mark covers now goes first, as the primary's did.)
            if !cfg!(feature = "mutate-marked-segment-kept") {
                self.reclaim_marked(&mut st);
            }
            // A slot is used by one live segment at a time: an older segment
            // of this journal still in it means a mark has not reached us.
            if st.segs.iter().any(|s| s.slot == v.slot) {
                return Err(Error::Corrupt(format!(
                    "slot {} still holds an older segment of journal {}: its mark has not arrived",
                    v.slot, self.name
                )));
            }
            self.shared.take_slot_exact(self.id, v.slot)?;
            // The slot may hold an older copy of this very segment: a reset
            // replica taking its former history again finds its old segment
            // (the same bytes, nonce and all) in the slot its mark had freed.
            // Its records past this batch would continue the chain after a
            // restart and revive records the reset dropped (found by the
            // two-site simulator). So if the block after this batch holds a
            // record that continues it, the rest of the slot is zeroed first.
            if self.stale_continues(v.slot, len as u64, v.next_lsn, v.end_crc)
                && !cfg!(feature = "mutate-stale-segment")
            {
                if let Err(e) = self.zero(v.slot, len as u64, self.shared.set.segment_size) {
                    self.shared.release_slot(v.slot);
                    return Err(e);
                }
            }
        }
        let Some(mut buf) = st.pool.pop().or_else(|| self.new_buffer(&mut st)) else {
            if new_seg.is_some() {
                self.shared.release_slot(v.slot);
            }
            return Err(Error::Backpressure);
        };
        buf.as_mut_slice()[..len].copy_from_slice(v.bytes);
        if let Some((hcrc, epoch)) = new_seg {
            st.segs.push_back(Seg {
                slot: v.slot,
                seq: v.seg_seq,
                first_lsn: v.first_lsn,
                header_crc: hcrc,
                epoch,
                end_off: bs as u64,
                index: Vec::new(),
            });
            st.next_seg_seq = v.seg_seq + 1;
            if !cfg!(feature = "mutate-marked-segment-kept") {
                self.reclaim_marked(&mut st);
            }
        }
        let seq = st.next_batch_seq;
        st.next_batch_seq += 1;
        st.sealed.push_back(Batch {
            seq,
            buf,
            len,
            data_start: start.off,
            slot: v.slot,
            seg_seq: v.seg_seq,
            seg_off: v.seg_off,
            first_lsn: v.first_lsn,
            next_lsn: v.next_lsn,
            first_prev: start.prev_crc,
            last_rec: 0,
            last_pcrc: 0,
            opened: std::time::Instant::now(),
            header: new_seg.is_some(),
            padded: len,
            end_crc: v.end_crc,
        });
        st.last_crc = v.end_crc;
        st.tail_off = v.seg_off + len as u64;
        st.next_assign = v.next_lsn;
        Ok(())
    }

    /// See `Journal::chain_end`.
    pub(crate) fn chain_end(&self) -> Result<ChainEnd> {
        let st = self.st.lock();
        self.check_writable(&st)?;
        if st.busy() {
            return Err(Error::Backpressure);
        }
        let first = st.segs.front().map(|s| s.first_lsn).unwrap_or(st.durable_lsn).max(st.mark).max(1);
        Ok(ChainEnd {
            next_lsn: st.durable_lsn,
            last_crc: st.last_crc,
            seg_seq: st.segs.back().map(|s| s.seq).unwrap_or(u64::MAX),
            tail_off: st.segs.back().map(|_| st.tail_off).unwrap_or(u64::MAX),
            mark: st.mark,
            first_lsn: first.min(st.durable_lsn),
        })
    }

    /// See `Journal::read_shipment`.
    pub(crate) fn read_shipment(
        &self,
        from: u64,
        prev_crc: u32,
        hint: Option<(u64, u64)>,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Shipment>> {
        let set = &self.shared.set;
        let bs = set.block_size as usize;
        let (slot, seg_seq, start, header, bound, end_lsn, _pin, header_crc, seen) = {
            let st = self.st.lock();
            let seen = self.cut_gate.generation();
            if st.deleted {
                return Err(Error::UnknownJournal(self.name.clone()));
            }
            let end = end.min(st.durable_lsn);
            if from >= end {
                // A failed journal's durable end never moves again.
                if let Some((_, e)) = &st.failed {
                    return Err(e.duplicate());
                }
                return Ok(Vec::new());
            }
            let i = st.segs.partition_point(|s| s.first_lsn <= from);
            if i == 0 {
                return Err(Error::BelowMark { lsn: from, mark: st.mark });
            }
            let seg = &st.segs[i - 1];
            let end_lsn = st.segs.get(i).map(|n| n.first_lsn).unwrap_or(end).min(end);
            let Some(pin) = self.shared.pin(seg.slot, self.id) else {
                return Err(Error::BelowMark { lsn: from, mark: st.mark });
            };
            let start = if from == seg.first_lsn {
                Some(ChainPos { off: bs, lsn: from, prev_crc: seg.header_crc })
            } else {
                match hint {
                    Some((s, off)) if s == seg.seq && off < set.segment_size => {
                        Some(ChainPos { off: off as usize, lsn: from, prev_crc })
                    }
                    _ => None,
                }
            };
            let start = match start {
                Some(s) => s,
                None => {
                    let e = seg.entry_for(from, bs as u32);
                    ChainPos { off: e.off as usize, lsn: e.lsn, prev_crc: e.prev_crc }
                }
            };
            (seg.slot, seg.seq, start, from == seg.first_lsn, seg.end_off, end_lsn, pin, seg.header_crc, seen)
        };
        // Find where record `from` starts if we began at an index entry before
        // it (verified; heals a bad copy on the way).
        let mut start = start;
        if start.lsn < from {
            let scan = self.seg_scan_at(slot, bound, from, seen);
            let e = scan.run(start, |_| true)?;
            if e.pos.lsn != from {
                return Err(Error::Corrupt(format!("journal {}: the chain breaks before lsn {from}", self.name)));
            }
            start = e.pos;
        }
        if start.off % bs != 0 {
            return Err(Error::Corrupt(format!("journal {}: lsn {from} does not start a batch", self.name)));
        }
        let read_from = if header { 0 } else { start.off };
        // At least one whole batch fits: a batch never exceeds a batch buffer.
        let piece = self.shared.cfg.batch_buf_bytes(bs as u32);
        let max_bytes = max_bytes.max(piece);
        let len = ((bound as usize).saturating_sub(read_from)).min(max_bytes) / bs * bs;
        if len <= start.off - read_from {
            return Err(Error::Corrupt(format!("journal {}: nothing to ship at lsn {from}", self.name)));
        }
        let base = slot_offset(slot, set.segment_size);
        let mut buf = AlignedBuf::new(len, bs);
        let members: Vec<usize> = set.healthy_indexes().collect();
        for attempt in 0..2 {
            for &m in &members {
                if set.read_member(m, base + read_from as u64, &mut buf.as_mut_slice()[..len]).is_err() {
                    continue;
                }
                // The header block goes out as read: it must be the one the
                // chain hangs on (a rotten copy is read from another member).
                if header && SegmentHeader::decode(&buf.as_slice()[..bs]).map(|(_, c)| c).ok() != Some(header_crc) {
                    continue;
                }
                let mut pos = ChainPos { off: start.off - read_from, lsn: start.lsn, prev_crc: start.prev_crc };
                // Every batch end the chain reaches: (offset after it, next lsn, crc).
                let mut cuts: Vec<(usize, u64, u32)> = Vec::new();
                let mut pads: Vec<(usize, usize)> = Vec::new();
                scan_chain(&buf.as_slice()[..len], &mut pos, bs, self.max_body(), |f| {
                    if f.header.flags & FLAG_BATCH_END != 0 {
                        let end = f.off + f.header.total_len();
                        let next = align_up(end as u64, bs as u64) as usize;
                        cuts.push((next, f.header.lsn + 1, f.header.crc));
                        pads.push((end, next));
                    }
                    f.header.lsn + 1 < end_lsn
                });
                if cuts.is_empty() {
                    continue;
                }
                // Padding is zero by definition and no CRC covers it: ship it
                // as zero whatever this copy holds there, so the replica gets
                // the blocks as written (and a rotten padding byte here cannot
                // make it refuse the shipment forever).
                let b = buf.as_mut_slice();
                for (from, to) in pads {
                    b[from..to.min(len)].fill(0);
                }
                if header {
                    b[crate::format::SEGMENT_HEADER_LEN..bs].fill(0);
                }
                // Whole batches, in pieces of at most one batch buffer (what
                // a replica applies at once).
                let mut out = Vec::new();
                let (mut p0, mut lsn0) = (0usize, from);
                let mut prev: Option<(usize, u64, u32)> = None;
                let emit = |out: &mut Vec<Shipment>, p0: usize, lsn0: u64, c: (usize, u64, u32)| {
                    out.push(Shipment {
                        journal_id: self.id,
                        slot,
                        seg_seq,
                        seg_off: (read_from + p0) as u64,
                        first_lsn: lsn0,
                        next_lsn: c.1,
                        end_crc: c.2,
                        header: header && p0 == 0,
                        bytes: buf.as_slice()[p0..c.0].to_vec(),
                    });
                };
                for &c in &cuts {
                    if let Some(pc) = prev {
                        if c.0 - p0 > piece {
                            emit(&mut out, p0, lsn0, pc);
                            (p0, lsn0) = (pc.0, pc.1);
                        }
                    }
                    prev = Some(c);
                }
                if let Some(pc) = prev {
                    emit(&mut out, p0, lsn0, pc);
                }
                return Ok(out);
            }
            if attempt == 0 {
                // No member's copy held a whole batch: let the verified scan
                // find (and rewrite from) a good copy, then read again.
                let scan = SegmentScan {
                    prefer: members.first().copied().unwrap_or(0),
                    ..self.seg_scan_at(slot, bound, end_lsn, seen)
                };
                scan.run(start, |_| true)?;
            }
        }
        Err(Error::Corrupt(format!("journal {}: no mirror holds a whole batch at lsn {from}", self.name)))
    }

    /// See `Journal::truncate_after`.
    pub(crate) fn truncate_after(&self, keep: u64) -> Result<ChainEnd> {
        let set = &self.shared.set;
        let bs = set.block_size as u64;
        let _g = self.mark_lock.lock();
        let mut _cutting = None;
        let (segs, keep_seg, tail_end, mark) = {
            let st = self.st.lock();
            self.check_writable(&st)?;
            if st.busy() {
                return Err(Error::Backpressure);
            }
            // Nothing after `keep`. (No segment is ever begun without a
            // record after it: recovery drops a tail segment that holds
            // none, see `recovery::recover_journal`.)
            debug_assert!(
                keep.saturating_add(1) < st.durable_lsn
                    || st.segs.back().is_none_or(|s| s.first_lsn <= keep)
                    || cfg!(feature = "mutate-empty-tail-kept"),
                "a segment begun after the cut point holds a record"
            );
            if keep.saturating_add(1) >= st.durable_lsn {
                drop(st);
                return self.chain_end();
            }
            // Taken with the state: a reader's snapshot is before it (its
            // heals are refused) or after the new end is in place.
            _cutting = Some(self.cut_gate.begin_cut());
            let i = st.segs.partition_point(|s| s.first_lsn <= keep);
            let segs: Vec<(u64, u64, u64, u32, u64)> =
                st.segs.iter().map(|s| (s.slot, s.seq, s.first_lsn, s.header_crc, s.end_off)).collect();
            (segs, i, st.tail_off, st.mark)
        };
        // The last batch end at or below `keep` in segment keep_seg - 1.
        let mut cut: Option<(usize, IndexEntry)> = None;
        if keep_seg > 0 {
            let (slot, _, first, hcrc, end_off) = segs[keep_seg - 1];
            let bound = if keep_seg == segs.len() { tail_end } else { end_off };
            let scan = self.seg_scan(slot, bound, keep.saturating_add(1));
            let mut last = None;
            scan.run(ChainPos { off: bs as usize, lsn: first, prev_crc: hcrc }, |r| {
                if r.flags & FLAG_BATCH_END != 0 {
                    last = Some(IndexEntry { lsn: r.lsn + 1, off: r.next_off, prev_crc: r.crc });
                }
                true
            })?;
            cut = last.map(|e| (keep_seg - 1, e));
        }
        // No batch end there: cut at the end of the segment before it.
        if cut.is_none() && keep_seg >= 2 {
            let (slot, _, first, hcrc, end_off) = segs[keep_seg - 2];
            let scan = self.seg_scan(slot, end_off, segs[keep_seg - 1].2);
            let e = scan.run(ChainPos { off: bs as usize, lsn: first, prev_crc: hcrc }, |_| true)?;
            if e.pos.lsn == segs[keep_seg - 1].2 {
                cut = Some((
                    keep_seg - 2,
                    IndexEntry { lsn: e.pos.lsn, off: e.pos.off as u64, prev_crc: e.pos.prev_crc },
                ));
            }
        }
        let Some((kept, at)) = cut else {
            let next = segs.first().map(|s| s.2).unwrap_or(1);
            return self.reset(next);
        };
        // A mark above the cut comes down first: a crash part-way must never
        // leave the mark above the chain's end (the next append would get
        // the mark's LSN where the chain expects its end's; found by the
        // simulator). A lower mark frees nothing.
        let lower_mark_late = cfg!(feature = "mutate-mark-above-end");
        if mark > at.lsn && !lower_mark_late {
            self.persist_mark(at.lsn)?;
        }
        // Drop later segments: zero their headers (durably) first, so no
        // later open finds them, then their bodies (the same header may be
        // shipped into the same slot again, and records left behind it would
        // chain on), then the kept segment past the cut.
        let last = segs.len() - 1;
        let written = |k: usize| if k == last { tail_end } else { set.segment_size };
        let dropped: Vec<(u64, u64)> = (kept + 1..segs.len()).map(|k| (segs[k].0, written(k))).collect();
        self.drop_segments(&dropped)?;
        self.zero(segs[kept].0, at.off, written(kept))?;
        let mut st = self.st.lock();
        let dropped: Vec<Seg> = st.segs.drain(kept + 1..).collect();
        for s in &dropped {
            self.shared.release_slot(s.slot);
        }
        if let Some(seg) = st.segs.back_mut() {
            seg.end_off = at.off;
            seg.index.retain(|e| e.lsn <= at.lsn);
            st.next_seg_seq = seg.seq + 1;
        }
        st.durable_lsn = at.lsn;
        st.next_assign = at.lsn;
        st.last_crc = at.prev_crc;
        st.tail_off = at.off;
        drop(st);
        if lower_mark_late && mark > at.lsn {
            // The defect the simulator found (the mark lowered last), for it
            // to find again.
            self.persist_mark(at.lsn)?;
        }
        tracing::warn!(journal = %self.name, next_lsn = at.lsn, "cut the journal back to its primary's history");
        self.chain_end()
    }

    /// See `Journal::reset`.
    pub(crate) fn reset(&self, next_lsn: u64) -> Result<ChainEnd> {
        let set = &self.shared.set;
        let _cutting;
        let slots: Vec<(u64, u64)> = {
            let st = self.st.lock();
            self.check_writable(&st)?;
            if st.busy() {
                return Err(Error::Backpressure);
            }
            _cutting = self.cut_gate.begin_cut();
            let last = st.segs.len().saturating_sub(1);
            st.segs
                .iter()
                .enumerate()
                .map(|(k, s)| (s.slot, if k == last { st.tail_off } else { set.segment_size }))
                .collect()
        };
        self.drop_segments(&slots)?;
        {
            let mut st = self.st.lock();
            for s in std::mem::take(&mut st.segs) {
                self.shared.release_slot(s.slot);
            }
            st.durable_lsn = next_lsn.max(1);
            st.next_assign = next_lsn.max(1);
            st.last_crc = 0;
            st.tail_off = 0;
        }
        self.drop_stale_headers()?;
        self.persist_mark(if next_lsn > 1 { next_lsn } else { 0 })?;
        tracing::warn!(journal = %self.name, next_lsn, "journal reset: every segment dropped, to be sent again whole");
        self.chain_end()
    }

    /// Zeroes the header of every segment of this journal left in a slot it
    /// no longer holds (freed by a mark, its bytes still there). Before a
    /// reset they were older than every segment the journal held, and
    /// recovery passes over them; after it, the journal takes another
    /// history whose segment numbers may be lower, and recovery would take
    /// such a leftover for the journal's newest segment (found by the
    /// two-site simulator). Slots another journal holds are left alone.
    fn drop_stale_headers(&self) -> Result<()> {
        if cfg!(feature = "mutate-stale-segment") {
            return Ok(());
        }
        let bs = self.shared.set.block_size as u64;
        for c in crate::recovery::read_headers(&self.shared)? {
            // Only a slot nobody holds: one this journal holds (a slot an
            // append reserved) or another journal's is not ours to zero.
            if c.header.journal_id != self.id || !self.shared.take_slot_if_free(self.id, c.slot) {
                continue;
            }
            let r = self.zero(c.slot, 0, bs);
            self.shared.release_slot(c.slot);
            r?;
        }
        Ok(())
    }

    /// Zeroes whole segments `(slot, bytes written)`, oldest first in
    /// `segs`, on every mirror: every header first, newest first, then the
    /// bodies, so a restart in between finds no segment to revive, and a
    /// crash part-way leaves the older segments a contiguous run (a hole in
    /// the sequence would be a lost segment to recovery; see `recovery.rs`).
    fn drop_segments(&self, segs: &[(u64, u64)]) -> Result<()> {
        let bs = self.shared.set.block_size as u64;
        let newest_first: Vec<&(u64, u64)> =
            if cfg!(feature = "mutate-cut-oldest-first") { segs.iter().collect() } else { segs.iter().rev().collect() };
        for &&(slot, _) in &newest_first {
            self.zero(slot, 0, bs)?;
        }
        for &(slot, end) in segs {
            self.zero(slot, bs, end)?;
        }
        Ok(())
    }

    /// Whether, on any healthy mirror, the block at `off` of `slot` starts
    /// a record that would continue a chain ending at `next_lsn` with CRC
    /// `end_crc` (or cannot tell: a read error counts as yes).
    fn stale_continues(&self, slot: u64, off: u64, next_lsn: u64, end_crc: u32) -> bool {
        let set = &self.shared.set;
        let bs = set.block_size as usize;
        if off + bs as u64 > set.segment_size {
            return false;
        }
        let mut b = AlignedBuf::new(bs, bs);
        let at = slot_offset(slot, set.segment_size) + off;
        set.healthy_indexes().any(|m| match set.read_member(m, at, b.as_mut_slice()) {
            Ok(()) => crate::format::parse_record_header(b.as_slice())
                .is_some_and(|h| h.lsn == next_lsn && h.prev_crc == end_crc),
            Err(_) => true,
        })
    }

    /// Zeroes `[from, to)` of a slot on every healthy mirror, durably.
    fn zero(&self, slot: u64, from: u64, to: u64) -> Result<()> {
        let set = &self.shared.set;
        let bs = set.block_size as usize;
        let z = AlignedBuf::new(1 << 20, bs);
        let mut off = from;
        while off < to {
            let n = (to - off).min(1 << 20) as usize;
            set.write_all(slot_offset(slot, set.segment_size) + off, &z.as_slice()[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    /// Sets the mark to exactly `lsn` (up or down) and persists it.
    pub(crate) fn persist_mark(&self, lsn: u64) -> Result<()> {
        self.write_mark(lsn)?;
        self.st.lock().mark = lsn;
        Ok(())
    }
}

/// Installs (or removes) the sink a primary ships through.
pub(crate) fn set_sink(shared: &crate::pipeline::Shared, sink: Option<Arc<dyn ShipSink>>) {
    *shared.sink.write() = sink;
}

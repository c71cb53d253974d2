//! Verified reads of a segment's record chain, with fallback across mirrors
//! and self-heal.
//!
//! Invariant: a record is handed to a caller only after its CRC and its place
//! in the chain (`lsn`, `prev_crc`) were checked in the bytes actually read.
//! When a member's bytes end the chain early (checksum mismatch, stale data, a
//! read error), the same region is read from the other healthy members; if one
//! continues the chain further, its bytes are used and the differing blocks of
//! the bad member are rewritten from it (counted in that member's `MemberErrors::repaired`).

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::format::{align_up, scan_chain, slot_offset, ChainPos, ScanStop, RECORD_HEADER_LEN};
use crate::io::AlignedBuf;
use crate::mirror::MirrorSet;

/// A verified record, as seen by a scan visitor.
#[derive(Debug, Clone, Copy)]
pub struct Rec<'a> {
    pub lsn: u64,
    pub epoch: u64,
    pub flags: u16,
    pub crc: u32,
    /// The producer tag of a tagged record (`FLAG_TAGGED`).
    pub tag: Option<crate::format::Tag>,
    /// The payload, without the tag.
    pub payload: &'a [u8],
    /// Offset of the byte after this record (after padding, for a batch end)
    /// within the segment: where the chain continues.
    pub next_off: u64,
}

/// Where a segment scan ended.
#[derive(Debug, Clone, Copy)]
pub struct ScanEnd {
    /// Where the chain continues (or would): segment offset, next lsn, prev crc.
    pub pos: ChainPos,
    /// True if the visitor asked to stop.
    pub stopped: bool,
    /// The member whose bytes were used last.
    pub member: usize,
}

/// A journal's cut-backs as seen by a reader that may heal: a heal writes
/// old bytes read before it, so it is allowed only if no cut-back ran or
/// runs on the journal since the reader took its snapshot.
///
/// Invariant: a cut-back (`truncate_after`, `reset`) moves the generation
/// under the write lock before it zeroes anything and again after its new
/// end is in place; a heal writes only while holding the read lock with
/// the generation its scan started at and no cut in progress. So bytes a
/// cut removed are never written back by a reader that read them before.
#[derive(Debug, Default)]
pub(crate) struct CutGate {
    state: parking_lot::RwLock<(u64, u32)>,
}

impl CutGate {
    /// The generation a scan starts at (taken with the journal's state).
    pub(crate) fn generation(&self) -> u64 {
        self.state.read().0
    }

    /// The generation once no cut-back is in progress (waits, sleeping, up
    /// to 10 s for one to finish; cuts are short).
    pub(crate) fn settled_generation(&self) -> u64 {
        for _ in 0..10_000 {
            let (g, cutting) = *self.state.read();
            if cutting == 0 {
                return g;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.generation()
    }

    /// Holds cut-backs off while old bytes read since generation `seen`
    /// are written back (a heal, a resilver's copy): `None` if a cut ran
    /// or runs since, and then nothing may be written. A cut waits for the
    /// guard.
    pub(crate) fn hold(&self, seen: u64) -> Option<parking_lot::RwLockReadGuard<'_, (u64, u32)>> {
        let st = self.state.read();
        (st.0 == seen && st.1 == 0).then_some(st)
    }

    /// Marks a cut-back in progress until the guard drops.
    pub(crate) fn begin_cut(&self) -> CutGuard<'_> {
        let mut s = self.state.write();
        s.0 += 1;
        s.1 += 1;
        CutGuard(self)
    }
}

/// A cut-back in progress (`CutGate::begin_cut`).
pub(crate) struct CutGuard<'a>(&'a CutGate);

impl Drop for CutGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.write();
        s.0 += 1;
        s.1 -= 1;
    }
}

/// Parameters of one segment scan.
pub struct SegmentScan<'s> {
    pub set: &'s MirrorSet,
    pub slot: u64,
    /// Never read at or past this segment offset.
    pub bound: u64,
    /// Stop before this lsn (exclusive).
    pub end_lsn: u64,
    pub max_record: u32,
    /// Bytes per read.
    pub chunk: usize,
    /// Member to try first.
    pub prefer: usize,
    /// Heals only while no cut-back of the journal ran since this
    /// generation (`None`: no concurrent cut possible, as at recovery).
    pub(crate) gate: Option<(&'s CutGate, u64)>,
}

impl SegmentScan<'_> {
    /// Walks the chain from `start` (a record boundary, segment-relative
    /// offset), calling `visit` for each verified record until `end_lsn`, the
    /// bound, or the end of the chain on every member.
    pub fn run(&self, start: ChainPos, mut visit: impl FnMut(&Rec<'_>) -> bool) -> Result<ScanEnd> {
        let bs = self.set.block_size as usize;
        let base = slot_offset(self.slot, self.set.segment_size);
        let mut cur = start;
        let mut member = self.prefer;
        let mut delivered = start.lsn; // records below this were handed out
        let mut buf = AlignedBuf::new(self.chunk + bs, bs);
        let mut alt: Option<AlignedBuf> = None;
        let mut need = 0usize; // bytes a record at `cur` is known to need
                               // A member whose copy of the record at this segment offset was bad,
                               // found while that record ran past the read: healed once a later read
                               // has verified the good copy past it.
        let mut pending_heal: Option<(usize, usize)> = None;
        loop {
            if cur.lsn >= self.end_lsn {
                return Ok(ScanEnd { pos: cur, stopped: false, member });
            }
            let chunk_start = cur.off & !(bs - 1);
            let in_chunk = cur.off - chunk_start;
            let want = align_up((in_chunk + need.max(self.chunk)) as u64, bs as u64) as usize;
            let want = want.min((self.bound as usize).saturating_sub(chunk_start));
            if want <= in_chunk {
                // Nothing left before the bound.
                return Ok(ScanEnd { pos: cur, stopped: false, member });
            }
            if buf.capacity() < want {
                buf = AlignedBuf::new(want, bs);
            }
            // Read from the preferred member; on failure try the others.
            let first = self.try_members(member, chunk_start, want, &mut buf, cur, delivered, &mut visit)?;
            let (mut outcome, mut used) = match first {
                Some(found) => found,
                None => return Err(Error::Corrupt("no healthy member could be read".into())),
            };
            if outcome.stop == ScanStop::End && outcome.pos.lsn < self.end_lsn {
                // Ask the other members whether the chain goes further there.
                let alt_buf = alt.get_or_insert_with(|| AlignedBuf::new(want, bs));
                if alt_buf.capacity() < want {
                    *alt_buf = AlignedBuf::new(want, bs);
                }
                let candidates: Vec<usize> = self.set.healthy_indexes().filter(|&i| i != used).collect();
                for i in candidates {
                    let Ok(()) =
                        self.set.read_member(i, base + chunk_start as u64, &mut alt_buf.as_mut_slice()[..want])
                    else {
                        continue;
                    };
                    let mut pos = ChainPos { off: in_chunk, ..cur };
                    let skip = outcome.pos.lsn.max(delivered);
                    let mut stopped = false;
                    let stop = scan_chain(&alt_buf.as_slice()[..want], &mut pos, bs, self.max_record, |f| {
                        self.deliver(f, chunk_start, skip, &mut visit, &mut stopped)
                    });
                    // Further: past the first member's end, or stopped at the same
                    // record only because that record runs past this read (so it
                    // may be good there while the first member's copy is bad).
                    let further =
                        pos.lsn > outcome.pos.lsn || (stop == ScanStop::NeedMore && pos.lsn == outcome.pos.lsn);
                    if further {
                        if pos.lsn == outcome.pos.lsn {
                            pending_heal = Some((used, chunk_start + pos.off));
                        }
                        // Heal the member we read first: rewrite every block that
                        // differs, up to the last block this member verified.
                        let good_end = (pos.off & !(bs - 1)).min(want);
                        self.heal(
                            used,
                            base + chunk_start as u64,
                            &buf.as_slice()[..good_end],
                            &alt_buf.as_slice()[..good_end],
                        );
                        std::mem::swap(&mut buf, alt_buf);
                        outcome = Outcome { stop: if stopped { ScanStop::Stopped } else { stop }, pos };
                        used = i;
                        // Go on from there; at the next end every member is asked
                        // again, the first one included.
                        break;
                    }
                }
            }
            member = used;
            if let Some((bad, from)) = pending_heal {
                let verified = chunk_start + (outcome.pos.off & !(bs - 1)).min(want);
                if bad != used && verified > from {
                    // The good copy is now verified past the bad record: compare.
                    let alt_buf = alt.get_or_insert_with(|| AlignedBuf::new(want, bs));
                    if alt_buf.capacity() < want {
                        *alt_buf = AlignedBuf::new(want, bs);
                    }
                    let len = verified - chunk_start;
                    if self.set.read_member(bad, base + chunk_start as u64, &mut alt_buf.as_mut_slice()[..len]).is_ok()
                    {
                        self.heal(bad, base + chunk_start as u64, &alt_buf.as_slice()[..len], &buf.as_slice()[..len]);
                    }
                    pending_heal = None;
                }
            }
            let abs = ChainPos { off: chunk_start + outcome.pos.off, ..outcome.pos };
            delivered = delivered.max(abs.lsn);
            match outcome.stop {
                ScanStop::Stopped => return Ok(ScanEnd { pos: abs, stopped: true, member }),
                // Progress was made: continue from the new position, where the
                // members are asked again. No member got further: the end.
                ScanStop::End if abs.lsn > cur.lsn => {
                    cur = abs;
                    need = 0;
                }
                ScanStop::End => return Ok(ScanEnd { pos: abs, stopped: false, member }),
                ScanStop::NeedMore => {
                    if abs.off == cur.off && abs.lsn == cur.lsn && need >= want - in_chunk {
                        // No progress possible: the record would cross the bound.
                        return Ok(ScanEnd { pos: abs, stopped: false, member });
                    }
                    need = record_need(&buf.as_slice()[..want], outcome.pos.off);
                    cur = abs;
                }
            }
        }
    }

    /// Reads the chunk from `member` (or, on a read error, from another healthy
    /// member) into `buf` and scans it.
    #[allow(clippy::too_many_arguments)]
    fn try_members(
        &self,
        member: usize,
        chunk_start: usize,
        want: usize,
        buf: &mut AlignedBuf,
        cur: ChainPos,
        delivered: u64,
        visit: &mut impl FnMut(&Rec<'_>) -> bool,
    ) -> Result<Option<(Outcome, usize)>> {
        let base = slot_offset(self.slot, self.set.segment_size);
        let bs = self.set.block_size as usize;
        let order: Vec<usize> =
            std::iter::once(member).chain(self.set.healthy_indexes().filter(|&i| i != member)).collect();
        for i in order {
            if !self.set.members().get(i).is_some_and(|m| m.is_healthy()) {
                continue;
            }
            if let Err(e) = self.set.read_member(i, base + chunk_start as u64, &mut buf.as_mut_slice()[..want]) {
                tracing::warn!(device = %self.set.member_path(i).display(), error = %e, "read failed; trying another mirror");
                continue;
            }
            let mut pos = ChainPos { off: cur.off - chunk_start, ..cur };
            let mut stopped = false;
            let stop = scan_chain(&buf.as_slice()[..want], &mut pos, bs, self.max_record, |f| {
                self.deliver(f, chunk_start, delivered, visit, &mut stopped)
            });
            let stop = if stopped { ScanStop::Stopped } else { stop };
            return Ok(Some((Outcome { stop, pos }, i)));
        }
        Ok(None)
    }

    fn deliver(
        &self,
        f: &crate::format::Found<'_>,
        chunk_start: usize,
        skip_below: u64,
        visit: &mut impl FnMut(&Rec<'_>) -> bool,
        stopped: &mut bool,
    ) -> bool {
        if f.header.lsn >= self.end_lsn {
            return false;
        }
        if f.header.lsn < skip_below {
            return true;
        }
        let end = (chunk_start + f.off + f.header.total_len()) as u64;
        let next_off = if f.header.flags & crate::format::FLAG_BATCH_END != 0 {
            align_up(end, self.set.block_size as u64)
        } else {
            end
        };
        let (tag, payload) = crate::format::split_tag(f.header.flags, f.payload);
        let go = visit(&Rec {
            lsn: f.header.lsn,
            epoch: f.header.epoch,
            flags: f.header.flags,
            crc: f.header.crc,
            tag,
            payload,
            next_off,
        });
        if !go {
            *stopped = true;
        }
        go
    }

    fn heal(&self, bad: usize, off: u64, bad_bytes: &[u8], good: &[u8]) {
        // Held across the writes: a cut-back waits for them (see `CutGate`).
        let _held = match self.gate {
            Some((g, seen)) => match g.hold(seen) {
                Some(held) => Some(held),
                None => {
                    tracing::debug!(offset = off, "not healing: the journal was cut back since these bytes were read");
                    return;
                }
            },
            None => None,
        };
        let bs = self.set.block_size as usize;
        // One bad copy counts once, however many runs of blocks differ.
        let mut counted = false;
        let mut i = 0;
        while i < good.len() {
            // Coalesce runs of differing blocks into one write.
            if bad_bytes[i..i + bs] != good[i..i + bs] {
                let start = i;
                while i < good.len() && bad_bytes[i..i + bs] != good[i..i + bs] {
                    i += bs;
                }
                if !counted {
                    self.set.note_checksum_error(bad);
                    counted = true;
                }
                let mut b = AlignedBuf::new(i - start, bs);
                b.as_mut_slice()[..i - start].copy_from_slice(&good[start..i]);
                if let Err(e) = self.set.repair(bad, off + start as u64, &b.as_slice()[..i - start]) {
                    tracing::error!(error = %e, "self-heal write failed");
                }
            } else {
                i += bs;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    stop: ScanStop,
    pos: ChainPos,
}

/// Bytes needed from `off` to hold the record whose header starts there (or
/// just its header if it cannot be parsed yet).
pub(crate) fn record_need(buf: &[u8], off: usize) -> usize {
    match buf.get(off..).and_then(crate::format::parse_record_header) {
        Some(h) => h.total_len(),
        None => RECORD_HEADER_LEN,
    }
}

/// Reads in flight in `SegmentScan::run_sequential`.
const READ_AHEAD: usize = 4;

impl SegmentScan<'_> {
    /// Fast path for long scans (recovery): walks the chain on one member
    /// with `READ_AHEAD` chunk reads in flight on a private ring, so parsing
    /// overlaps I/O. Stops where that member's chain ends (or at a read
    /// error) and returns the position; the caller continues with `run`,
    /// which consults the other members from there.
    pub fn run_sequential(
        &self,
        member: usize,
        start: ChainPos,
        visit: &mut impl FnMut(&Rec<'_>) -> bool,
    ) -> Result<ChainPos> {
        use crate::storage::Op;
        let set = self.set;
        let m = set.members().get(member).ok_or_else(|| Error::Corrupt("no such member".into()))?;
        if !m.is_healthy() {
            return Ok(start);
        }
        let Some(dev) = set.member_dev(member) else { return Ok(start) };
        let bs = set.block_size as usize;
        let chunk = self.chunk.max(bs) & !(bs - 1);
        let base = slot_offset(self.slot, set.segment_size);
        let bound = self.bound as usize;
        let mut bufs: Vec<AlignedBuf> = (0..READ_AHEAD).map(|_| AlignedBuf::new(chunk, bs)).collect();
        // Declared after the buffers: dropped first, and a queue's drop waits
        // for its reads, so no read can land in a freed buffer.
        let mut ring = set.storage().queue(2 * READ_AHEAD as u32).map_err(Error::Io)?;
        // (segment offset, length, buffer index); results by buffer index
        let mut queue: VecDeque<(usize, usize, usize)> = VecDeque::new();
        let mut results: Vec<Option<i32>> = vec![None; READ_AHEAD];
        let mut free: Vec<usize> = (0..READ_AHEAD).collect();
        let mut next = start.off & !(bs - 1);
        let mut pos = start;
        let mut carry: Vec<u8> = Vec::new(); // bytes of a record spanning chunks
        let mut carry_start = 0usize;
        let mut outcome = Ok(());
        loop {
            // keep reads in flight
            while let Some(&b) = free.last() {
                if next >= bound {
                    break;
                }
                free.pop();
                let len = chunk.min(bound - next);
                let op = Op::read(dev, base + next as u64, &mut bufs[b].as_mut_slice()[..len]);
                // SAFETY: the buffer stays alive and untouched until its completion is taken below.
                if !unsafe { ring.push(&op, b as u64) } {
                    free.push(b);
                    break;
                }
                results[b] = None;
                queue.push_back((next, len, b));
                next += len;
            }
            let Some(&(off, len, b)) = queue.front() else { break };
            let mut done = [(0u64, 0i32); READ_AHEAD];
            while results[b].is_none() {
                if let Err(e) = ring.submit(1) {
                    outcome = Err(Error::Io(e));
                    break;
                }
                let n = ring.complete(&mut done);
                for &(ud, res) in &done[..n] {
                    if let Some(r) = results.get_mut(ud as usize) {
                        *r = Some(res);
                    }
                }
            }
            if outcome.is_err() || crate::io::check_full(results[b].unwrap_or(-libc::EIO), len).is_err() {
                break;
            }
            queue.pop_front();
            let data = &bufs[b].as_slice()[..len];
            let mut stop = false;
            if !carry.is_empty() {
                // finish the record that spans into this chunk
                carry.extend_from_slice(data);
                let need = record_need(&carry, pos.off - carry_start);
                if carry.len() < pos.off - carry_start + need && next < bound + chunk {
                    free.push(b);
                    continue; // still incomplete: take the next chunk too
                }
                let mut p = ChainPos { off: pos.off - carry_start, ..pos };
                let mut stopped = false;
                let s = scan_chain(&carry, &mut p, bs, self.max_record, |f| {
                    self.deliver(f, carry_start, 0, &mut *visit, &mut stopped);
                    false
                });
                if s != ScanStop::Stopped || stopped || p.lsn == pos.lsn {
                    stop = true;
                } else {
                    pos = ChainPos { off: carry_start + p.off, ..p };
                    carry.clear();
                }
            }
            if !stop && carry.is_empty() && pos.off >= off && pos.off < off + len {
                let mut p = ChainPos { off: pos.off - off, ..pos };
                let mut stopped = false;
                let s = scan_chain(data, &mut p, bs, self.max_record, |f| {
                    self.deliver(f, off, 0, &mut *visit, &mut stopped)
                });
                pos = ChainPos { off: off + p.off, ..p };
                match s {
                    ScanStop::NeedMore if !stopped => {
                        carry_start = pos.off & !(bs - 1);
                        carry.clear();
                        carry.extend_from_slice(&data[carry_start - off..]);
                    }
                    _ => stop = true,
                }
            } else if !stop && carry.is_empty() && pos.off >= off + len {
                // nothing of the chain in this chunk (cannot happen in order)
            } else if !stop && carry.is_empty() {
                stop = true;
            }
            free.push(b);
            if stop || pos.lsn >= self.end_lsn {
                break;
            }
        }
        // (Reads still in flight are reaped by the queue's drop, before the
        // buffers go.)
        drop(ring);
        outcome.map(|()| pos)
    }
}

//! Resilver: copies the log onto a rebuilding member (`MirrorSet::replace`)
//! from verified copies on the healthy members, while appends go on.
//!
//! Invariants (each one argued where it is enforced):
//! - From the moment the member joins, every write goes to it too
//!   (`MirrorSet::write_targets` reads the member's state when a write
//!   starts, after its batch was claimed). So for a journal whose next LSN
//!   was `L` when the resilver took its snapshot (under the journal lock,
//!   after the member joined), every batch holding an LSN at or above `L`
//!   was claimed after the snapshot and reaches the member by itself. The
//!   resilver copies the rest: every record below `L`, once all of them are
//!   durable (`wait_durable`), so the bytes it reads are final and no
//!   write of them to the member is still in flight.
//! - Every record copied was verified in the bytes read (its CRC32C and its
//!   place in the chain, from the segment header's CRC); a copy that does
//!   not verify is read from another healthy member. Only whole verified
//!   blocks are written.
//! - A slot is pinned while it is copied (never reused under the copy);
//!   a free slot's header block is zeroed on the member while it is pinned
//!   free, so no stale header of an earlier life of the device survives.
//! - A copy is written only while no cut-back ran on its journal since its
//!   bytes were read (`CutGate::hold`); after a cut the pass starts again
//!   from the slot it was on, with a new snapshot.
//! - Progress (`next_slot`) is persisted in the superblock only after
//!   every slot below it was copied. A restart resumes there: what a crash
//!   left in flight, recovery makes identical on the rebuilding member too
//!   (`recovery::sync_window`), so a slot once copied stays whole.
//! - The member becomes healthy (`MirrorSet::finish_rebuild`) only after
//!   the last slot was copied.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{align_up, scan_chain, slot_offset, ChainPos, ScanStop, SegmentHeader};
use crate::io::AlignedBuf;
use crate::journal::Journal;
use crate::MirrorLog;

/// How far a resilver is (`MirrorLog::resilver`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResilverProgress {
    /// The member being resilvered.
    pub member: usize,
    /// Slots passed in this run (copied, or free and cleared), and the
    /// slots the run has to pass.
    pub slots_done: u64,
    pub slots_total: u64,
    /// Bytes written to the member, and an estimate of the bytes to copy
    /// (what the journals held when the run began).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Resumed after a restart (from a persisted slot above 0).
    pub resumed: bool,
    /// `go_on` stopped it before the end (the member stays rebuilding).
    pub stopped: bool,
    /// The member was detached meanwhile (`mirrorlog detach`).
    pub cancelled: bool,
    /// Segments a re-added member held whole, not copied.
    pub slots_skipped: u64,
}

/// How long records placed before the snapshot may take to become
/// durable (a journal whose writes fail never gets there).
const DURABLE_WAIT: Duration = Duration::from_secs(60);
/// Progress is persisted at most this often (and at the end).
const PERSIST_EVERY: Duration = Duration::from_millis(100);

/// One journal as the snapshot saw it.
struct Snap {
    journal: Journal,
    /// Records below it are copied; the rest reach the member by themselves.
    below: u64,
}

/// A segment to copy.
struct SegCopy {
    slot: u64,
    first_lsn: u64,
    header_crc: u32,
    /// Copy records below this LSN.
    end_lsn: u64,
    /// Never read at or past this segment offset.
    bound: u64,
    /// The cut-back generation when the segment was looked up.
    cuts: u64,
}

/// How a segment's copy ended.
enum SegEnd {
    Done,
    Stopped,
    /// A cut-back ran on the journal: take a new snapshot.
    Cut,
}

fn cancelled(mut p: ResilverProgress) -> ResilverProgress {
    p.cancelled = true;
    p
}

impl MirrorLog {
    /// Resilvers the rebuilding member, if there is one (`Ok(None)` when
    /// there is not), from its persisted position. Runs alongside appends
    /// and reads; blocking (run it on a thread of its own). `chunk`: bytes
    /// per read and write. `go_on` is called after each write with the
    /// progress (the caller paces the resilver by sleeping in it); false
    /// stops it, persisted where it is (`ResilverProgress::stopped`).
    pub fn resilver(
        &self,
        chunk: usize,
        go_on: impl FnMut(&ResilverProgress) -> bool,
    ) -> Result<Option<ResilverProgress>> {
        self.resilver_with(&|| chunk, go_on)
    }

    /// `resilver`, asking `chunk` for the bytes of each read and write (a
    /// daemon copies in large pieces while the node is idle, in small ones
    /// while appends wait behind them).
    pub fn resilver_with(
        &self,
        chunk: &dyn Fn() -> usize,
        mut go_on: impl FnMut(&ResilverProgress) -> bool,
    ) -> Result<Option<ResilverProgress>> {
        let set = &self.shared.set;
        let Some(bay) = set.rebuilding() else { return Ok(None) };
        let bs = set.block_size as usize;
        let chunk = &|| align_up(chunk().max(bs) as u64, bs as u64) as usize;
        let start = match set.members()[bay].health() {
            Some(crate::format::Health::Rebuilding { next_slot, .. }) => next_slot as u64,
            _ => return Ok(None),
        };
        let mut p = ResilverProgress { member: bay, resumed: start > 0, ..Default::default() };
        p.slots_total = set.slot_count.saturating_sub(start);
        p.bytes_total = self.bytes_to_copy(start);
        let mut next = start;
        let mut last_persist = Instant::now();
        let mut buf = AlignedBuf::new(chunk(), bs);
        let hint = set.rebuild_hint(bay);
        let hint = hint.as_deref().map(Vec::as_slice);
        'pass: loop {
            let snaps = self.snapshot()?;
            while next < set.slot_count {
                let end = match self.resilver_slot(bay, next, &snaps, hint, chunk, &mut buf, &mut p, &mut go_on) {
                    Err(_) if !set.members()[bay].is_present() => return Ok(Some(cancelled(p))),
                    r => r?,
                };
                match end {
                    SegEnd::Cut => continue 'pass,
                    SegEnd::Stopped => return self.stop(bay, next, p),
                    SegEnd::Done => {}
                }
                next += 1;
                p.slots_done += 1;
                if last_persist.elapsed() >= PERSIST_EVERY {
                    set.set_rebuilt(bay, next)?;
                    last_persist = Instant::now();
                }
                if !go_on(&p) {
                    return self.stop(bay, next, p);
                }
            }
            break;
        }
        set.finish_rebuild(bay)?;
        Ok(Some(p))
    }

    fn stop(&self, bay: usize, next: u64, mut p: ResilverProgress) -> Result<Option<ResilverProgress>> {
        let set = &self.shared.set;
        if !set.members()[bay].is_present() {
            return Ok(Some(cancelled(p)));
        }
        set.set_rebuilt(bay, next)?;
        p.stopped = true;
        Ok(Some(p))
    }

    /// Each journal's next LSN, taken after the member joined, once every
    /// record below it is durable.
    fn snapshot(&self) -> Result<Vec<Snap>> {
        let snaps: Vec<Snap> = self
            .journals()
            .into_iter()
            .map(|journal| {
                let below = journal.inner.st.lock().next_assign;
                Snap { journal, below }
            })
            .collect();
        for s in &snaps {
            let t0 = Instant::now();
            loop {
                let st = s.journal.inner.st.lock();
                if st.deleted || st.durable_lsn >= s.below {
                    break;
                }
                if let Some((_, e)) = &st.failed {
                    return Err(Error::Config(format!(
                        "journal {}: its writes failed ({e}); resilver stopped",
                        s.journal.name()
                    )));
                }
                drop(st);
                if t0.elapsed() > DURABLE_WAIT {
                    return Err(Error::Config(format!(
                        "journal {}: records below lsn {} did not become durable in {DURABLE_WAIT:?}; resilver stopped",
                        s.journal.name(),
                        s.below
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(snaps)
    }

    /// Estimated bytes to copy: the held segments from slot `start` on.
    fn bytes_to_copy(&self, start: u64) -> u64 {
        self.journals()
            .iter()
            .map(|j| {
                let st = j.inner.st.lock();
                st.segs.iter().filter(|s| s.slot >= start).map(|s| s.end_off).sum::<u64>()
            })
            .sum()
    }

    /// Copies slot `s` to member `bay` (or clears its header if free).
    #[allow(clippy::too_many_arguments)]
    fn resilver_slot(
        &self,
        bay: usize,
        s: u64,
        snaps: &[Snap],
        hint: Option<&[Option<u32>]>,
        chunk: &dyn Fn() -> usize,
        buf: &mut AlignedBuf,
        p: &mut ResilverProgress,
        go_on: &mut impl FnMut(&ResilverProgress) -> bool,
    ) -> Result<SegEnd> {
        let shared = &self.shared;
        let set = &shared.set;
        if !set.members()[bay].is_rebuilding() {
            return Err(Error::Config("the member is no longer being resilvered (detached or failed)".into()));
        }
        let owner = shared.slots.lock().owner.get(s as usize).copied().flatten();
        let Some(owner) = owner else {
            // Free: clear a header an earlier life of the device may hold.
            // (Pinned free, so no journal begins a segment here meanwhile;
            // if one took it since, its header reaches the member itself.)
            if let Some(_pin) = shared.pin_free(s) {
                let zero = AlignedBuf::new(set.block_size as usize, set.block_size as usize);
                set.write_member(bay, slot_offset(s, set.segment_size), zero.as_slice())?;
            }
            return Ok(SegEnd::Done);
        };
        // A journal created after the snapshot writes the member itself.
        let Some(snap) = snaps.iter().find(|x| x.journal.inner.id == owner) else { return Ok(SegEnd::Done) };
        let inner = &snap.journal.inner;
        let (seg, _pin) = {
            let st = inner.st.lock();
            let Some(i) = st.segs.iter().position(|g| g.slot == s) else { return Ok(SegEnd::Done) };
            let g = &st.segs[i];
            let end_lsn = st.seg_end_lsn(i).min(snap.below);
            if g.first_lsn >= end_lsn {
                // Begun after the snapshot: every byte of it reached the member.
                return Ok(SegEnd::Done);
            }
            // A re-added member holds it whole: its header, and the next
            // segment's, which began only once this one was complete.
            let on_member = |slot: u64| hint.and_then(|h| h.get(slot as usize).copied().flatten());
            if let Some(n) = st.segs.get(i + 1) {
                if on_member(s) == Some(g.header_crc) && on_member(n.slot) == Some(n.header_crc) {
                    p.slots_skipped += 1;
                    p.bytes_total = p.bytes_total.saturating_sub(g.end_off);
                    return Ok(SegEnd::Done);
                }
            }
            let Some(pin) = shared.pin(s, owner) else { return Ok(SegEnd::Done) };
            let seg = SegCopy {
                slot: s,
                first_lsn: g.first_lsn,
                header_crc: g.header_crc,
                end_lsn,
                bound: g.end_off.max(set.block_size as u64),
                cuts: inner.cut_gate.generation(),
            };
            (seg, pin)
        };
        self.copy_segment(bay, inner, &seg, chunk, buf, p, go_on)
    }

    /// Copies the verified chain of one segment (header block included)
    /// up to `seg.end_lsn` to member `bay`.
    #[allow(clippy::too_many_arguments)]
    fn copy_segment(
        &self,
        bay: usize,
        inner: &crate::pipeline::JournalInner,
        seg: &SegCopy,
        chunk: &dyn Fn() -> usize,
        buf: &mut AlignedBuf,
        p: &mut ResilverProgress,
        go_on: &mut impl FnMut(&ResilverProgress) -> bool,
    ) -> Result<SegEnd> {
        let set = &self.shared.set;
        let bs = set.block_size as usize;
        let base = slot_offset(seg.slot, set.segment_size);
        let max_record = crate::format::max_record_body(set.segment_size, set.block_size);
        let mut pos = ChainPos { off: bs, lsn: seg.first_lsn, prev_crc: seg.header_crc };
        // Bytes of the slot copied so far (whole blocks).
        let mut at = 0usize;
        let mut need = 0usize;
        let mut prefer = set.healthy_indexes().next().ok_or(Error::NoHealthyMirror)?;
        // Bytes to read from `at` for a chain at `pos` (`need`: the length
        // of a record that ran past the last read).
        let want_at = |at: usize, pos: ChainPos, need: usize| {
            let want = align_up((pos.off - at + need.max(chunk())) as u64, bs as u64) as usize;
            want.min((seg.bound as usize).saturating_sub(at))
        };
        // The next chunk, read from `prefer` along with the last write
        // (`prefetched`: `buf` holds that many bytes from `at`).
        let mut next = AlignedBuf::new(buf.capacity(), bs);
        let mut prefetched = 0;
        while pos.lsn < seg.end_lsn {
            let in_buf = pos.off - at;
            let want = if prefetched > 0 { prefetched } else { want_at(at, pos, need) };
            if want <= in_buf {
                return Err(self.unreadable(inner, seg, pos.lsn));
            }
            if buf.capacity() < want {
                *buf = AlignedBuf::new(want, bs);
                prefetched = 0;
            }
            // The preferred member first, then the others while a copy
            // breaks the chain before the end (a bad copy: counted; a read
            // or a scrub heals it).
            let order: Vec<usize> =
                std::iter::once(prefer).chain(set.healthy_indexes().filter(|&m| m != prefer)).collect();
            let mut got = None;
            // Where the chain breaks on the member that got furthest.
            let mut furthest = pos.lsn;
            for m in order {
                let have = std::mem::take(&mut prefetched) > 0 && m == prefer;
                if !have && set.read_member(m, base + at as u64, &mut buf.as_mut_slice()[..want]).is_err() {
                    continue;
                }
                let b = &buf.as_slice()[..want];
                if at == 0 && SegmentHeader::decode(&b[..bs]).map(|(_, c)| c).ok() != Some(seg.header_crc) {
                    set.note_checksum_error(m);
                    continue;
                }
                let mut q = ChainPos { off: in_buf, ..pos };
                let stop = scan_chain(b, &mut q, bs, max_record, |f| f.header.lsn + 1 < seg.end_lsn);
                if q.lsn >= seg.end_lsn || stop == ScanStop::NeedMore {
                    got = Some((m, q, stop));
                    break;
                }
                furthest = furthest.max(q.lsn);
                set.note_checksum_error(m);
            }
            let Some((m, q, stop)) = got else { return Err(self.unreadable(inner, seg, furthest)) };
            prefer = m;
            if q.lsn == pos.lsn {
                // Not one record whole in the read: read enough for it.
                let need_now = crate::read::record_need(&buf.as_slice()[..want], q.off);
                if stop != ScanStop::NeedMore || need_now <= need {
                    return Err(self.unreadable(inner, seg, pos.lsn));
                }
                need = need_now;
                continue;
            }
            // Whole verified blocks only: the rest is read again (or, past
            // the end, was written to the member by the batch holding it).
            let verified = q.off & !(bs - 1);
            let (new_at, new_pos) = (at + verified, ChainPos { off: at + q.off, ..q });
            if verified > 0 {
                let Some(_held) = inner.cut_gate.hold(seg.cuts) else { return Ok(SegEnd::Cut) };
                let woff = base + at as u64;
                let wbuf = &buf.as_slice()[..verified];
                let next_want = want_at(new_at, new_pos, 0);
                if new_pos.lsn < seg.end_lsn && next_want > new_pos.off - new_at {
                    // Read the next chunk while this one is written.
                    if next.capacity() < next_want {
                        next = AlignedBuf::new(next_want, bs);
                    }
                    let rbuf = &mut next.as_mut_slice()[..next_want];
                    if set.copy_step(bay, woff, wbuf, m, base + new_at as u64, rbuf)? {
                        prefetched = next_want;
                        std::mem::swap(buf, &mut next);
                    }
                } else {
                    set.write_member(bay, woff, wbuf)?;
                }
                p.bytes_done += verified as u64;
            }
            pos = new_pos;
            at = new_at;
            need = 0;
            if !go_on(p) {
                return Ok(SegEnd::Stopped);
            }
        }
        Ok(SegEnd::Done)
    }

    fn unreadable(&self, inner: &crate::pipeline::JournalInner, seg: &SegCopy, lsn: u64) -> Error {
        Error::Corrupt(format!(
            "resilver: journal {}, slot {}: no healthy member holds a good copy of lsn {lsn}; the member stays rebuilding \
             (see mirrorlog scrub)",
            inner.name, seg.slot
        ))
    }
}

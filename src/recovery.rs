//! Crash recovery: run at open, before any append is accepted.
//!
//! 1. Read every slot's header block on every healthy member. A header valid
//!    on some members is copied to the members that lack it.
//! 2. Per journal: its segments are the headers with its id, in sequence
//!    order, minus those wholly below its mark (already reclaimed). A
//!    sequence number missing among them is reported, and nothing is freed
//!    because of it.
//! 3. Scan the tail segment's record chain, falling back across members (see
//!    `read`), so the longest valid chain on any member wins. The tail is cut
//!    back to the last complete batch (a record flagged `BATCH_END`): a
//!    partly written batch was never acknowledged.
//! 4. Make every healthy member hold the same bytes for the last
//!    `inflight_window` bytes of the chain (copying from a member whose chain
//!    verifies), then zero `inflight_window` bytes past the end on all
//!    members, so an unacknowledged batch that landed past a hole can never be
//!    revived by a later append that happens to chain up to it.
//!
//! Invariant: every acknowledged record is in the chain (it was durable on
//! every healthy member, the chain is contiguous, and only unacknowledged
//! batches lie past the first hole).

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::format::{slot_offset, ChainPos, JournalEntry, SegmentHeader, Superblock, FLAG_BATCH_END};
use crate::io::AlignedBuf;
use crate::pipeline::{IndexEntry, Recovered, Seg, Shared};
use crate::read::SegmentScan;

pub(crate) struct Candidate {
    pub slot: u64,
    pub header: SegmentHeader,
    crc: u32,
    raw: Vec<u8>,
    on: Vec<usize>,
}

/// Reads every slot header on every healthy member, 256 slots at a time
/// (32 reads per submission).
pub(crate) fn read_headers(shared: &Shared) -> Result<Vec<Candidate>> {
    const GROUP: u64 = 256;
    let set = &shared.set;
    let bs = set.block_size as usize;
    let mut out: Vec<Candidate> = Vec::new();
    let mut buf = AlignedBuf::new(GROUP as usize * bs, bs);
    let members: Vec<usize> = set.healthy_indexes().collect();
    let mut first = 0;
    while first < set.slot_count {
        let last = (first + GROUP).min(set.slot_count);
        let offsets: Vec<u64> = (first..last).map(|s| slot_offset(s, set.segment_size)).collect();
        let start = out.len();
        for &m in &members {
            let ok = set.read_blocks(m, &offsets, &mut buf).map_err(Error::Io)?;
            for (k, slot) in (first..last).enumerate() {
                if !ok[k] {
                    tracing::warn!(device = %set.member_path(m).display(), slot, "cannot read segment header");
                    continue;
                }
                let block = &buf.as_slice()[k * bs..(k + 1) * bs];
                let Ok((h, crc)) = SegmentHeader::decode(block) else { continue };
                if h.set_uuid != set.set_uuid {
                    continue;
                }
                match out[start..].iter_mut().find(|c| c.slot == slot && c.crc == crc && c.header == h) {
                    Some(c) => c.on.push(m),
                    None => out.push(Candidate { slot, header: h, crc, raw: block.to_vec(), on: vec![m] }),
                }
            }
        }
        first = last;
    }
    Ok(out)
}

/// Recovers every journal in the superblock. Returns their states and marks
/// their slots as owned in `shared.slots`.
pub(crate) fn recover(shared: &Shared, sb: &Superblock) -> Result<Vec<(JournalEntry, Recovered)>> {
    let cands = read_headers(shared)?;
    let mut result = Vec::new();
    for entry in &sb.journals {
        let rec = recover_journal(shared, sb, entry, &cands)?;
        {
            let mut slots = shared.slots.lock();
            for s in &rec.segs {
                slots.owner[s.slot as usize] = Some(entry.id);
            }
        }
        result.push((entry.clone(), rec));
    }
    Ok(result)
}

fn recover_journal(shared: &Shared, sb: &Superblock, entry: &JournalEntry, cands: &[Candidate]) -> Result<Recovered> {
    let set = &shared.set;
    let bs = set.block_size as u64;
    let mut mine: Vec<&Candidate> = cands.iter().filter(|c| c.header.journal_id == entry.id).collect();
    mine.sort_by_key(|c| (c.header.seq, std::cmp::Reverse(c.on.len())));
    mine.dedup_by(|b, a| {
        if a.header.seq == b.header.seq {
            tracing::error!(journal = %entry.name, seq = a.header.seq, "two segments with one sequence number; keeping the one on most mirrors");
            true
        } else {
            false
        }
    });
    let mut next_seg_seq = mine.last().map(|c| c.header.seq + 1).unwrap_or(0);
    // Drop segments wholly below the mark (reclaimed, slot not reused yet).
    while mine.len() > 1 && mine[1].header.first_lsn <= entry.mark {
        mine.remove(0);
    }
    // A sequence number missing on every mirror (its header unreadable or
    // rotten everywhere) leaves a hole: the records of that segment cannot
    // be chained, and reads of them fail as corrupt. Every other segment is
    // kept: acknowledged history on either side of the hole is never freed
    // because of it. (A cut-back drops segments newest first, so a crash in
    // one never makes a hole; see `JournalInner::drop_segments`.)
    if cfg!(feature = "mutate-cut-oldest-first") {
        // The defect of issue 16, item 3 (with the cut-back's order), for
        // the simulator to find: keep only the newest unbroken run.
        if let Some(gap) = (1..mine.len()).rev().find(|&i| mine[i].header.seq != mine[i - 1].header.seq + 1) {
            mine.drain(..gap);
        }
    }
    let mut missing_segments = 0;
    for w in mine.windows(2) {
        let (a, b) = (&w[0].header, &w[1].header);
        if b.seq != a.seq + 1 {
            missing_segments += b.seq - a.seq - 1;
            tracing::error!(journal = %entry.name, missing_seq = a.seq + 1, count = b.seq - a.seq - 1,
                before_lsn = b.first_lsn,
                "segment missing on every mirror: the records between lsn {} and {} that it held cannot be read; \
                 every other segment is kept", a.first_lsn, b.first_lsn);
        }
    }
    // Copy headers to members that lack them.
    for c in &mine {
        for m in set.healthy_indexes() {
            if !c.on.contains(&m) {
                let mut b = AlignedBuf::new(bs as usize, bs as usize);
                b.as_mut_slice().copy_from_slice(&c.raw);
                set.repair(m, slot_offset(c.slot, set.segment_size), b.as_slice())?;
            }
        }
    }
    let mut segs: VecDeque<Seg> = mine
        .iter()
        .map(|c| Seg {
            slot: c.slot,
            seq: c.header.seq,
            first_lsn: c.header.first_lsn,
            header_crc: c.crc,
            epoch: c.header.epoch,
            end_off: set.segment_size,
            index: Vec::new(),
        })
        .collect();
    let Some(tail) = segs.back_mut() else {
        return Ok(Recovered {
            stats: crate::pipeline::RecoveryStats { missing_segments, ..Default::default() },
            segs,
            next_lsn: entry.mark.max(1),
            last_crc: 0,
            tail_off: 0,
            next_seg_seq,
            mark: entry.mark,
            writer: entry.writer,
            epoch: sb.epoch,
        });
    };
    next_seg_seq = next_seg_seq.max(tail.seq + 1);

    // Scan the tail segment's chain across all members.
    let start = IndexEntry { lsn: tail.first_lsn, off: bs, prev_crc: tail.header_crc };
    let window = sb.inflight_window.max(bs);
    let stride = shared.cfg.index_stride as u64;
    let mut end = start; // the last complete batch end
    let mut batch_starts: Vec<IndexEntry> = vec![start];
    let scan = SegmentScan {
        set,
        slot: tail.slot,
        bound: set.segment_size,
        end_lsn: u64::MAX,
        max_record: if cfg!(feature = "mutate-record-bound") {
            // The defect of issue 16, item 1, for the simulator to find.
            shared.cfg.max_record_size + crate::format::TAG_LEN as u32
        } else {
            crate::format::max_record_body(set.segment_size, set.block_size)
        },
        chunk: 1 << 20,
        prefer: set.healthy_indexes().next().unwrap_or(0),
        gate: None,
    };
    let t0 = std::time::Instant::now();
    let mut visit = |r: &crate::read::Rec<'_>| {
        if r.flags & FLAG_BATCH_END != 0 {
            end = IndexEntry { lsn: r.lsn + 1, off: r.next_off, prev_crc: r.crc };
            batch_starts.push(end);
        }
        true
    };
    // Fast sequential pass on one member, then the careful pass from where it
    // stopped, which asks the other members whether the chain goes further.
    let from = ChainPos { off: bs as usize, lsn: start.lsn, prev_crc: start.prev_crc };
    let fast = scan.run_sequential(scan.prefer, from, &mut visit).unwrap_or(from);
    let scanned = scan.run(fast, &mut visit)?;
    let scan_seconds = t0.elapsed().as_secs_f64();
    tracing::info!(journal = %entry.name, records = end.lsn - start.lsn, bytes = end.off, ms = t0.elapsed().as_millis() as u64,
        "scanned tail segment");
    if scanned.pos.lsn > end.lsn {
        tracing::info!(journal = %entry.name, dropped = scanned.pos.lsn - end.lsn, "dropped a partly written, unacknowledged batch");
    }
    // Invariant: a recovered journal's tail segment holds a record. One
    // with none (a crash tore its first batch after its header block
    // landed) held nothing acknowledged: it is dropped. Its header and the
    // window after it are zeroed on every member, its slot is free, and the
    // next batch begins a new segment with its sequence number, at its LSN,
    // continuing the chain its header continued; so a replica is never
    // shipped a batch of a segment whose header it was not sent, and a
    // cut-back never finds a segment with nothing in it. (Found by the
    // two-site simulator; `mutate-empty-tail-kept` puts it back.)
    let empty_tail = end.lsn == start.lsn && !cfg!(feature = "mutate-empty-tail-kept");
    let slot = tail.slot;
    let (next_lsn, last_crc, tail_off, zero_from) = if empty_tail {
        next_seg_seq = tail.seq;
        let prev_crc = mine.last().map(|c| c.header.prev_crc).unwrap_or(0);
        segs.pop_back();
        tracing::warn!(journal = %entry.name, seq = next_seg_seq, lsn = start.lsn,
            "dropped a tail segment that held no record (its first batch was torn by a crash)");
        // Full: the next batch begins a new segment. Its header goes too.
        (start.lsn, prev_crc, set.segment_size, 0)
    } else {
        // Index of the tail segment: batch starts at least `stride` apart.
        for e in batch_starts.iter().skip(1).filter(|e| e.lsn < end.lsn) {
            tail.add_index(*e, stride);
        }
        tail.end_off = end.off;
        // All members must hold the same bytes for the window before the end.
        let from = batch_starts.iter().rev().find(|e| e.off + window <= end.off).copied().unwrap_or(start);
        sync_window(shared, slot, tail.header_crc, from, end)?;
        (end.lsn, end.prev_crc, end.off, end.off)
    };
    // Zero what lies past the end, where unacknowledged batches may have
    // landed (and, for a dropped tail segment, its header).
    let zero_to = (end.off + window).min(set.segment_size);
    if zero_to > zero_from {
        let z = AlignedBuf::new((zero_to - zero_from) as usize, bs as usize);
        set.write_all(
            slot_offset(slot, set.segment_size) + zero_from,
            &z.as_slice()[..(zero_to - zero_from) as usize],
        )?;
    }
    // Invariant: the mark is at most the chain's end (the next append's
    // LSN is where the chain continues). A mark above it (left by a cut-back
    // that a crash interrupted, before the cut lowered the mark first) comes
    // down to the end: the records between were cut.
    let mut mark = entry.mark;
    if mark > next_lsn && !cfg!(feature = "mutate-mark-above-end") {
        tracing::error!(journal = %entry.name, mark, end = next_lsn,
            "the mark was above the end of the chain (an interrupted cut-back): lowered to the end");
        mark = next_lsn;
        let id = entry.id;
        set.update_superblock(|sb| {
            if let Some(j) = sb.journals.iter_mut().find(|j| j.id == id) {
                j.mark = mark;
            }
            Ok(())
        })?;
    }
    debug_assert!(mark <= next_lsn || cfg!(feature = "mutate-mark-above-end"));
    Ok(Recovered {
        stats: crate::pipeline::RecoveryStats {
            tail_records: end.lsn - start.lsn,
            tail_bytes: end.off - bs,
            scan_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
            dropped_records: scanned.pos.lsn.saturating_sub(end.lsn),
            missing_segments,
        },
        next_lsn: if cfg!(feature = "mutate-mark-above-end") { next_lsn.max(mark) } else { next_lsn }.max(1),
        last_crc,
        tail_off,
        next_seg_seq,
        segs,
        mark,
        writer: entry.writer,
        epoch: sb.epoch,
    })
}

/// Makes every healthy member hold, in `[from.off, end.off)` of `slot`, bytes
/// whose chain runs from `from` to `end`. The chain the scan chose may be
/// held in pieces (writes in flight at a crash complete on different
/// members): then it is assembled from the members' bytes, each stretch
/// taken from a member whose records verify there (CRC, LSN, `prev_crc`),
/// and written to every member that holds other bytes.
fn sync_window(shared: &Shared, slot: u64, header_crc: u32, from: IndexEntry, end: IndexEntry) -> Result<()> {
    let set = &shared.set;
    if end.off <= from.off {
        return Ok(());
    }
    let bs = set.block_size as usize;
    let len = (end.off - from.off) as usize;
    let off = slot_offset(slot, set.segment_size) + from.off;
    let start = ChainPos { off: 0, lsn: from.lsn, prev_crc: from.prev_crc };
    let mut copies: Vec<(usize, AlignedBuf)> = Vec::new();
    for m in set.healthy_indexes().collect::<Vec<_>>() {
        let mut b = AlignedBuf::new(len, bs);
        if set.read_member(m, off, &mut b.as_mut_slice()[..len]).is_ok() {
            copies.push((m, b));
        }
    }
    let whole = |b: &AlignedBuf| {
        let mut pos = start;
        crate::format::scan_chain(&b.as_slice()[..len], &mut pos, bs, u32::MAX, |_| true);
        pos.lsn == end.lsn && pos.prev_crc == end.prev_crc && pos.off == len
    };
    let assembled;
    let good: &AlignedBuf = match copies.iter().find(|(_, b)| whole(b)) {
        Some((_, b)) => b,
        None if cfg!(feature = "mutate-tail-one-member") => {
            // The defect the simulator found (one member had to hold it all).
            return Err(Error::Corrupt("recovery: no member holds the chosen tail".into()));
        }
        None => {
            assembled = assemble(&copies, start, end, len, bs)?;
            &assembled
        }
    };
    let read: Vec<usize> = copies.iter().map(|(m, _)| *m).collect();
    for m in set.healthy_indexes().collect::<Vec<_>>() {
        let same =
            copies.iter().find(|(i, _)| *i == m).is_some_and(|(_, b)| b.as_slice()[..len] == good.as_slice()[..len]);
        if !same {
            tracing::warn!(device = %set.member_path(m).display(), bytes = len, unread = !read.contains(&m),
                "copying the log tail to a mirror that lacks it");
            set.repair(m, off, &good.as_slice()[..len])?;
        }
    }
    // A rebuilding member (never read) takes the window as it now is, and
    // the segment's header (its first batch may be in the window): what
    // this recovery made part of the log must be on it as on the healthy
    // members, or a resilver that already passed this slot leaves it short
    // for good. (Found by `mirrorlog-sim --resilver`, seed 584.)
    if let Some(r) = set.rebuilding().filter(|_| !cfg!(feature = "mutate-window-not-rebuilt")) {
        let header = header_block(set, slot, header_crc);
        let wrote = header
            .map(|h| set.write_member(r, slot_offset(slot, set.segment_size), h.as_slice()))
            .unwrap_or(Ok(()))
            .and_then(|()| set.write_member(r, off, &good.as_slice()[..len]));
        if let Err(e) = wrote {
            tracing::error!(error = %e, "could not bring the log tail to the member being resilvered");
        }
    }
    Ok(())
}

/// The header block of `slot` from a healthy member whose copy carries
/// `crc`.
fn header_block(set: &crate::mirror::MirrorSet, slot: u64, crc: u32) -> Option<AlignedBuf> {
    let bs = set.block_size as usize;
    let mut b = AlignedBuf::new(bs, bs);
    set.healthy_indexes().collect::<Vec<_>>().into_iter().find_map(|m| {
        set.read_member(m, slot_offset(slot, set.segment_size), b.as_mut_slice()).ok()?;
        (SegmentHeader::decode(b.as_slice()).ok()?.1 == crc).then_some(())
    })?;
    Some(b)
}

/// The window's chain from `start` to `end` built from the members'
/// copies: from each position, the stretch of verified records of the copy
/// that carries the chain furthest. Fails if no copy continues it.
fn assemble(
    copies: &[(usize, AlignedBuf)],
    start: ChainPos,
    end: IndexEntry,
    len: usize,
    bs: usize,
) -> Result<AlignedBuf> {
    let mut good = AlignedBuf::new(len, bs);
    let mut pos = start;
    while pos.off < len {
        let mut best: Option<(ChainPos, usize)> = None;
        for (k, (_, b)) in copies.iter().enumerate() {
            let mut p = pos;
            crate::format::scan_chain(&b.as_slice()[..len], &mut p, bs, u32::MAX, |_| true);
            if p.off > pos.off && best.is_none_or(|(q, _)| p.off > q.off) {
                best = Some((p, k));
            }
        }
        let Some((p, k)) = best else {
            return Err(Error::Corrupt(format!("recovery: no member continues the chosen tail at lsn {}", pos.lsn)));
        };
        let to = p.off.min(len);
        good.as_mut_slice()[pos.off..to].copy_from_slice(&copies[k].1.as_slice()[pos.off..to]);
        pos = p;
    }
    if pos.lsn != end.lsn || pos.prev_crc != end.prev_crc {
        return Err(Error::Corrupt(format!(
            "recovery: the members' pieces of the tail end at lsn {}, not {}",
            pos.lsn, end.lsn
        )));
    }
    tracing::warn!(bytes = len, "the log tail was held in pieces by different mirrors: assembled");
    Ok(good)
}

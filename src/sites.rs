//! Cross-site scrub, the engine's part. A primary and its replica hold the
//! same blocks (a replica applies its primary's batches in the same slots
//! at the same offsets), so one site can repair a stretch of a segment
//! that the other lost on every mirror:
//!
//! - `Journal::digests`: each segment as this site holds it, read and
//!   verified (a bad copy on one mirror is healed from another on the
//!   way): where its chain ends here (`SegmentDigest`). Whole, that is the
//!   CRC of its last record, which the chain makes a digest of every
//!   record before it.
//! - `Journal::read_stretch`: verified bytes of a segment from a chain
//!   position on, for the other site.
//! - `Journal::repair_stretch`: the other site's bytes written over a
//!   stretch where this site's chain breaks on every mirror, once this
//!   site's chain still breaks exactly there and the bytes continue it
//!   (every record's CRC32C and its place in the chain). Only whole
//!   verified blocks below this site's durable end are written, on every
//!   healthy mirror, with the slot pinned and no cut-back since the check.
//!
//! Which side is right is never guessed: a stretch is repaired only from a
//! site whose chain verifies through it onto one whose chain breaks. Two
//! sites whose chains both verify but differ hold different histories (a
//! split brain): reported, not repaired (docs/replication.md).

use crate::error::{Error, Result};
use crate::format::{align_up, scan_chain, slot_offset, ChainPos, ScanStop};
use crate::io::AlignedBuf;
use crate::journal::Journal;

/// A segment as one site holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentDigest {
    pub slot: u64,
    pub first_lsn: u64,
    /// Its records are below this LSN (the next segment's first, or the
    /// durable end).
    pub end_lsn: u64,
    pub header_crc: u32,
    /// Where the chain stands after the records that verify here: segment
    /// offset, next LSN, the CRC that record must chain to. `lsn ==
    /// end_lsn` when the segment is whole here.
    pub off: u64,
    pub lsn: u64,
    pub prev_crc: u32,
}

impl SegmentDigest {
    /// Every record of it verifies on some mirror here.
    pub fn whole(&self) -> bool {
        self.lsn >= self.end_lsn
    }

    /// Where its chain stands (`off`, `lsn`, `prev_crc`).
    pub fn pos(&self) -> ChainPos {
        ChainPos { off: self.off as usize, lsn: self.lsn, prev_crc: self.prev_crc }
    }

    /// The same segment (the same use of the same slot) as `other`.
    pub fn same_segment(&self, other: &SegmentDigest) -> bool {
        self.slot == other.slot && self.first_lsn == other.first_lsn && self.header_crc == other.header_crc
    }
}

/// One segment held (a snapshot taken under the journal's lock).
struct Held {
    slot: u64,
    first_lsn: u64,
    end_lsn: u64,
    header_crc: u32,
    bound: u64,
}

impl Journal {
    fn held(&self) -> Result<Vec<Held>> {
        let st = self.inner.st.lock();
        if st.deleted {
            return Err(Error::UnknownJournal(self.inner.name.clone()));
        }
        Ok(st
            .segs
            .iter()
            .enumerate()
            .map(|(i, g)| Held {
                slot: g.slot,
                first_lsn: g.first_lsn,
                end_lsn: st.seg_end_lsn(i),
                header_crc: g.header_crc,
                bound: g.end_off,
            })
            .filter(|h| h.first_lsn < h.end_lsn)
            .collect())
    }

    /// Each segment this site holds, read and verified on its mirrors (as
    /// a scrub: a copy bad on one mirror is healed from another), and
    /// where its chain ends here.
    pub fn digests(&self) -> Result<Vec<SegmentDigest>> {
        self.digests_of(None)
    }

    /// `digests` of the segment in `slot` only, when given.
    pub fn digests_of(&self, slot: Option<u64>) -> Result<Vec<SegmentDigest>> {
        let inner = &self.inner;
        let bs = inner.shared.set.block_size as u64;
        let mut out = Vec::new();
        for h in self.held()?.into_iter().filter(|h| slot.is_none_or(|s| s == h.slot)) {
            let Some(_pin) = inner.shared.pin(h.slot, inner.id) else { continue };
            let seen = inner.cut_gate.generation();
            let start = ChainPos { off: bs as usize, lsn: h.first_lsn, prev_crc: h.header_crc };
            let end = inner.seg_scan_at(h.slot, h.bound, h.end_lsn, seen).run(start, |_| true)?;
            out.push(SegmentDigest {
                slot: h.slot,
                first_lsn: h.first_lsn,
                end_lsn: h.end_lsn,
                header_crc: h.header_crc,
                off: end.pos.off as u64,
                lsn: end.pos.lsn,
                prev_crc: end.pos.prev_crc,
            });
        }
        Ok(out)
    }

    /// Verified bytes of segment `slot` from chain position `from` on (for
    /// the other site to repair with): from the block holding `from.off`,
    /// about `max` bytes, ending on a block boundary. Read from each mirror
    /// here in turn until one verifies at least one record. `Corrupt` if
    /// none does.
    pub fn read_stretch(&self, slot: u64, from: ChainPos, max: usize) -> Result<(u64, Vec<u8>)> {
        let inner = &self.inner;
        let set = &inner.shared.set;
        let bs = set.block_size as usize;
        let h = self.held()?.into_iter().find(|h| h.slot == slot).ok_or_else(|| self.no_segment(slot))?;
        let Some(_pin) = inner.shared.pin(slot, inner.id) else { return Err(self.no_segment(slot)) };
        let start = from.off & !(bs - 1);
        let mut need = 0;
        loop {
            let want = align_up((from.off - start + need.max(max)) as u64, bs as u64) as usize;
            let want = want.min((h.bound as usize).saturating_sub(start));
            let mut buf = AlignedBuf::new(want.max(bs), bs);
            let mut progress = false;
            for m in set.healthy_indexes().collect::<Vec<_>>() {
                if set
                    .read_member(m, slot_offset(slot, set.segment_size) + start as u64, &mut buf.as_mut_slice()[..want])
                    .is_err()
                {
                    continue;
                }
                let mut q = ChainPos { off: from.off - start, ..from };
                let stop =
                    scan_chain(&buf.as_slice()[..want], &mut q, bs, inner.max_body(), |f| f.header.lsn + 1 < h.end_lsn);
                if q.lsn > from.lsn {
                    let end =
                        if q.lsn >= h.end_lsn { align_up(q.off as u64, bs as u64) as usize } else { q.off & !(bs - 1) };
                    let end = end.min(want);
                    return Ok((start as u64, buf.as_slice()[..end].to_vec()));
                }
                if stop == ScanStop::NeedMore {
                    let n = crate::read::record_need(&buf.as_slice()[..want], q.off);
                    if n > need && want < (h.bound as usize).saturating_sub(start) {
                        need = n;
                        progress = true;
                        break;
                    }
                }
            }
            if !progress {
                return Err(Error::Corrupt(format!(
                    "journal {}, slot {slot}: no mirror here verifies lsn {} either",
                    inner.name, from.lsn
                )));
            }
        }
    }

    /// Writes `bytes` (from the other site's `read_stretch`, starting at
    /// segment offset `start`) over the stretch of segment `slot` where
    /// this site's chain breaks at `at` on every mirror. Checked first:
    /// this site's chain still breaks exactly at `at`, and the bytes
    /// continue it. Writes whole verified blocks below this site's durable
    /// end to every healthy mirror; returns where the chain now stands.
    pub fn repair_stretch(&self, slot: u64, at: ChainPos, start: u64, bytes: &[u8]) -> Result<ChainPos> {
        let inner = &self.inner;
        let set = &inner.shared.set;
        let bs = set.block_size as usize;
        let refuse = |why: String| Error::Corrupt(format!("journal {}, slot {slot}: not repaired: {why}", inner.name));
        if start % bs as u64 != 0 || start as usize > at.off || at.off - start as usize >= bytes.len().max(1) {
            return Err(refuse(format!(
                "the stretch from offset {start} ({} bytes) does not hold offset {}",
                bytes.len(),
                at.off
            )));
        }
        let h = self.held()?.into_iter().find(|h| h.slot == slot).ok_or_else(|| self.no_segment(slot))?;
        let Some(_pin) = inner.shared.pin(slot, inner.id) else { return Err(self.no_segment(slot)) };
        let seen = inner.cut_gate.settled_generation();
        let here = inner
            .seg_scan_at(slot, h.bound, h.end_lsn, seen)
            .run(ChainPos { off: bs, lsn: h.first_lsn, prev_crc: h.header_crc }, |_| true)?
            .pos;
        if here != at {
            return Err(refuse(format!(
                "its chain here stands at lsn {} (offset {}), not at lsn {} (offset {})",
                here.lsn, here.off, at.lsn, at.off
            )));
        }
        let mut q = ChainPos { off: at.off - start as usize, ..at };
        scan_chain(bytes, &mut q, bs, inner.max_body(), |f| f.header.lsn + 1 < h.end_lsn);
        if q.lsn == at.lsn {
            return Err(refuse(format!("the bytes sent do not continue its chain at lsn {}", at.lsn)));
        }
        let end = if q.lsn >= h.end_lsn && q.off % bs == 0 { q.off } else { q.off & !(bs - 1) };
        if end > 0 {
            let mut b = AlignedBuf::new(end, bs);
            b.as_mut_slice()[..end].copy_from_slice(&bytes[..end]);
            let Some(_held) = inner.cut_gate.hold(seen) else {
                return Err(refuse("the journal was cut back meanwhile".into()));
            };
            let off = slot_offset(slot, set.segment_size) + start;
            for m in set.healthy_indexes().collect::<Vec<_>>() {
                set.repair(m, off, &b.as_slice()[..end])?;
            }
        }
        tracing::warn!(journal = %inner.name, slot, from_lsn = at.lsn, to_lsn = q.lsn, "repaired a stretch lost on every mirror from the other site");
        Ok(ChainPos { off: start as usize + q.off, ..q })
    }

    fn no_segment(&self, slot: u64) -> Error {
        Error::Corrupt(format!("journal {} holds no segment in slot {slot} here", self.inner.name))
    }
}

/// A cross-site scrub request (`Op::Sites`'s JSON body).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SitesRequest {
    /// `Journal::digests`, of one slot's segment only when `slot` is given.
    Digests { journal: String, slot: Option<u64> },
    /// `Journal::read_stretch`.
    Read { journal: String, slot: u64, off: u64, lsn: u64, prev_crc: u32, max: usize },
    /// `Journal::repair_stretch` (`bytes` in base64).
    Repair { journal: String, slot: u64, off: u64, lsn: u64, prev_crc: u32, start: u64, bytes: String },
}

/// Most bytes one `Read` returns (a frame carries them in base64).
pub const MAX_STRETCH: usize = 256 << 10;

/// Answers a cross-site scrub request against this site's engine (blocking:
/// it reads and may write the devices). The answer is JSON.
pub fn answer(log: &crate::MirrorLog, req: &str) -> Result<String> {
    use base64::Engine as _;
    let req: SitesRequest =
        serde_json::from_str(req).map_err(|e| Error::Config(format!("cross-site scrub request: {e}")))?;
    let pos = |off: u64, lsn: u64, prev_crc: u32| ChainPos { off: off as usize, lsn, prev_crc };
    let v = match req {
        SitesRequest::Digests { journal, slot } => {
            let d = log.journal(&journal)?.digests_of(slot)?;
            serde_json::json!({ "journal": journal, "segments": d })
        }
        SitesRequest::Read { journal, slot, off, lsn, prev_crc, max } => {
            let (start, bytes) =
                log.journal(&journal)?.read_stretch(slot, pos(off, lsn, prev_crc), max.clamp(1, MAX_STRETCH))?;
            serde_json::json!({ "start": start, "bytes": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
        SitesRequest::Repair { journal, slot, off, lsn, prev_crc, start, bytes } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(bytes)
                .map_err(|e| Error::Config(format!("cross-site scrub request: bytes: {e}")))?;
            let q = log.journal(&journal)?.repair_stretch(slot, pos(off, lsn, prev_crc), start, &bytes)?;
            serde_json::json!({ "off": q.off, "lsn": q.lsn, "prev_crc": q.prev_crc })
        }
    };
    Ok(v.to_string())
}

/// What comparing two sites' digests of one journal found, per segment
/// both hold (`plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The chains agree as far as both reach.
    Same(SegmentDigest),
    /// Site `to`'s chain breaks where the other's verifies on: repair it
    /// from the other (0: the first site, 1: the second).
    Repair { to: usize, seg: SegmentDigest },
    /// Both chains break at the same record: no site can repair it.
    Lost(SegmentDigest),
    /// Both verify through the same records to different CRCs: different
    /// histories (a split brain), not rot; never repaired.
    Diverged(SegmentDigest, SegmentDigest),
}

/// Compares two sites' digests of a journal, segment by segment (the
/// segments both hold; a replica's lagging tail is compared as far as it
/// reaches). Pure.
pub fn plan(a: &[SegmentDigest], b: &[SegmentDigest]) -> Vec<Finding> {
    let mut out = Vec::new();
    for x in a {
        let Some(y) = b.iter().find(|y| y.same_segment(x)) else { continue };
        let broken = |d: &SegmentDigest| !d.whole();
        out.push(if broken(x) && y.lsn > x.lsn {
            Finding::Repair { to: 0, seg: *x }
        } else if broken(y) && x.lsn > y.lsn {
            Finding::Repair { to: 1, seg: *y }
        } else if broken(x) || broken(y) {
            Finding::Lost(if broken(x) { *x } else { *y })
        } else if x.lsn == y.lsn && x.prev_crc != y.prev_crc {
            Finding::Diverged(*x, *y)
        } else {
            Finding::Same(*x)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(slot: u64, end: u64, at: u64, crc: u32) -> SegmentDigest {
        SegmentDigest { slot, first_lsn: slot * 100, end_lsn: end, header_crc: 7, off: 0, lsn: at, prev_crc: crc }
    }

    #[test]
    fn the_plan_repairs_the_broken_side_from_the_whole_one_and_never_guesses() {
        // Whole on both, equal: same. The replica's lagging tail: same.
        assert_eq!(plan(&[d(1, 200, 200, 5)], &[d(1, 200, 200, 5)]), vec![Finding::Same(d(1, 200, 200, 5))]);
        assert_eq!(plan(&[d(1, 200, 200, 5)], &[d(1, 150, 150, 9)]), vec![Finding::Same(d(1, 200, 200, 5))]);
        // Broken on one: repaired from the other, either way round.
        assert_eq!(
            plan(&[d(1, 200, 120, 5)], &[d(1, 200, 200, 5)]),
            vec![Finding::Repair { to: 0, seg: d(1, 200, 120, 5) }]
        );
        assert_eq!(
            plan(&[d(1, 200, 200, 5)], &[d(1, 180, 130, 5)]),
            vec![Finding::Repair { to: 1, seg: d(1, 180, 130, 5) }]
        );
        // Broken on both: each from the other where it reaches further;
        // at the same record, lost.
        assert_eq!(
            plan(&[d(1, 200, 120, 5)], &[d(1, 200, 160, 5)]),
            vec![Finding::Repair { to: 0, seg: d(1, 200, 120, 5) }]
        );
        assert_eq!(plan(&[d(1, 200, 120, 5)], &[d(1, 200, 120, 5)]), vec![Finding::Lost(d(1, 200, 120, 5))]);
        // A lagging replica whose chain is whole as far as it has records
        // is not a repair of the primary.
        assert_eq!(plan(&[d(1, 200, 120, 5)], &[d(1, 110, 110, 5)]), vec![Finding::Lost(d(1, 200, 120, 5))]);
        // Whole on both to different CRCs: a split brain, not rot.
        assert_eq!(
            plan(&[d(1, 200, 200, 5)], &[d(1, 200, 200, 6)]),
            vec![Finding::Diverged(d(1, 200, 200, 5), d(1, 200, 200, 6))]
        );
        // Segments one side does not hold (another use of the slot) are
        // not compared.
        let mut other = d(1, 200, 200, 5);
        other.header_crc = 8;
        assert!(plan(&[d(1, 200, 120, 5)], &[other]).is_empty());
    }
}

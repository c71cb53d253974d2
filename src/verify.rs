//! Offline verification and dumping of a mirror set. **Read-only.**
//!
//! Invariant: nothing in this module writes to a device, ever. Devices are
//! opened `O_RDONLY` (with `O_DIRECT` where the device allows it, so the page
//! cache cannot show bytes that are not on the medium); no recovery runs,
//! nothing is repaired, no superblock is rewritten. The engine's exclusive
//! `flock` is not taken: a shared, non-blocking lock is tried and held while
//! the devices are read (so an engine cannot open the set meanwhile), and a
//! device already locked by a running engine is read anyway and reported as
//! in use, as a warning in `VerifyReport::notes`.
//!
//! [`verify`] checks:
//! - both superblock copies of every device (a bad copy is a problem when the
//!   other is good; a device with neither is a problem), that every device
//!   belongs to the same set and is one of its members, and each member's
//!   health as recorded in the newest superblock;
//! - for each journal, on **each member independently**: its segments, found
//!   from the slot headers by the rules of recovery (headers carrying the
//!   journal's id and the set's uuid, in sequence order, minus those wholly
//!   below the mark; a missing sequence number is reported), and the record chain of
//!   every segment, walked with `format::scan_chain` (every CRC, every link).
//!   A chain must reach the next segment's first LSN (and its `prev_crc`);
//! - that the members agree: on the segment list, on where the tail chain
//!   ends, and byte for byte over every block holding chain data (each
//!   segment's header block through the block holding the end of the
//!   longest chain among the members).
//!
//! Members marked failed in the superblock are walked and listed, but not
//! compared: what differs on them is a note, not a problem.
//!
//! [`dump`] reads one journal's records in LSN order, verified, taking each
//! chunk from the member whose chain goes furthest there (so a record that
//! is bad on one member is read from another), up to the end of the last
//! complete batch: the records an open of the set would keep.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    align_up, parse_record_header, scan_chain, slot_offset, split_tag, ChainPos, Health, JournalEntry, MemberInfo,
    ScanStop, SegmentHeader, Superblock, Tag, FLAG_BATCH_END, RECORD_HEADER_LEN, SUPERBLOCK_REGION,
};
use crate::io::AlignedBuf;
use crate::mirror::hex_id;

/// Bytes per read when walking or comparing chains.
const CHUNK: usize = 1 << 20;

// ---------------------------------------------------------------------------
// public types

/// What `verify` does.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Journals to check, by name; empty: every journal in the superblock.
    pub journals: Vec<String>,
    /// Compare the members block by block (default true).
    pub compare: bool,
    /// Most runs of differing blocks reported one by one per journal
    /// (default 32); further runs are counted in one problem.
    pub max_reported_diffs: usize,
    /// Read with `O_DIRECT` where the device allows it (default true).
    pub direct_io: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { journals: Vec::new(), compare: true, max_reported_diffs: 32, direct_io: true }
    }
}

/// The findings of `verify`. `ok()` when there is no problem; notes are
/// informational (warnings included).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The set, from the newest valid superblock (None if no device has one).
    pub set: Option<SetSummary>,
    pub devices: Vec<DeviceReport>,
    pub journals: Vec<JournalReport>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// The mirror set as the newest superblock describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetSummary {
    pub set_uuid: String,
    pub generation: u64,
    pub epoch: u64,
    pub block_size: u32,
    pub segment_size: u64,
    pub device_size: u64,
    pub slot_count: u64,
    pub members: Vec<MemberReport>,
}

/// One member listed in the superblock.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberReport {
    pub uuid: String,
    pub slot: u16,
    #[serde(serialize_with = "ser_health")]
    pub health: Health,
    /// The given device that is this member, if any.
    pub device: Option<String>,
}

/// One given device.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeviceReport {
    pub path: String,
    pub opened: bool,
    pub direct_io: bool,
    /// Locked by another process (a running engine) while verified.
    pub in_use: bool,
    pub size: u64,
    /// Superblock copies A and B.
    #[serde(rename = "superblock_copies")]
    pub copies: Vec<CopyReport>,
    pub set_uuid: Option<String>,
    pub member_uuid: Option<String>,
    /// Generation of the device's newest valid superblock copy.
    pub generation: Option<u64>,
    /// Its member slot and health in the newest superblock.
    pub member_slot: Option<u16>,
    #[serde(serialize_with = "ser_opt_health")]
    pub health: Option<Health>,
}

/// One superblock copy of a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub offset: u64,
    pub generation: Option<u64>,
    pub error: Option<String>,
}

/// One journal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JournalReport {
    pub name: String,
    pub id: u64,
    pub mark: u64,
    /// The journal as found on each member.
    pub members: Vec<MemberChain>,
    /// Blocks found to differ between members.
    pub differing_blocks: u64,
}

/// A journal's chain on one member.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberChain {
    pub device: String,
    pub failed: bool,
    /// Verified records in all its segments.
    pub records: u64,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    pub segments: Vec<SegmentChain>,
    /// Where the chain ends in the tail segment.
    pub tail: Option<TailEnd>,
}

/// The chain of one segment on one member.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentChain {
    pub slot: u64,
    pub seq: u64,
    pub first_lsn: u64,
    pub records: u64,
    /// The LSN the chain would continue with.
    pub end_lsn: u64,
    /// Device offset where the chain ends (where its next record would start).
    pub end_offset: u64,
}

/// Where a member's chain ends in the tail segment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TailEnd {
    pub slot: u64,
    /// The LSN after the last verified record.
    pub next_lsn: u64,
    /// Device offset of the end of the chain.
    pub end_offset: u64,
    /// The LSN after the last complete batch: the end an open would keep.
    pub complete_lsn: u64,
    /// Device offset of the end of the last complete batch.
    pub complete_offset: u64,
}

/// A record handed out by `dump`.
#[derive(Debug, Clone, Copy)]
pub struct DumpRecord<'a> {
    pub lsn: u64,
    pub epoch: u64,
    /// The payload, without the producer tag.
    pub payload: &'a [u8],
    /// The producer tag of a tagged record.
    pub tag: Option<Tag>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

// ---------------------------------------------------------------------------
// read-only devices

/// A device opened read-only. Never written.
struct Dev {
    name: String,
    file: File,
    size: u64,
    direct: bool,
    in_use: bool,
}

fn open_read_only(path: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

impl Dev {
    /// Opens `path` read-only (O_DIRECT if `direct` and the device allows
    /// it) and tries a shared, non-blocking lock.
    fn open(path: &Path, direct: bool) -> io::Result<Dev> {
        let mut direct = direct;
        let mut file = match open_read_only(path, direct) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                open_read_only(path, false)?
            }
            Err(e) => return Err(e),
        };
        let size = (&file).seek(SeekFrom::End(0))?;
        if direct && size >= 4096 {
            // Some filesystems accept the flag at open and fail at I/O time.
            let mut b = AlignedBuf::new(4096, 4096);
            if let Err(e) = file.read_exact_at(&mut b.as_mut_slice()[..4096], 0) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
                direct = false;
                file = open_read_only(path, false)?;
            }
        }
        // SAFETY: flock on a valid fd.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        let in_use = !locked && io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
        Ok(Dev { name: path.display().to_string(), file, size, direct, in_use })
    }

    /// Reads `buf.len()` bytes at `off` (aligned buffer, offset and length
    /// when the device is read with O_DIRECT).
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
}

/// A given device: opened or not, and its superblock copies.
struct DevState {
    name: String,
    dev: Option<Dev>,
    open_error: Option<String>,
    /// Copies A and B (empty if the device could not be opened).
    copies: Vec<std::result::Result<Superblock, String>>,
}

impl DevState {
    /// The valid copy with the highest generation.
    fn best(&self) -> Option<&Superblock> {
        self.copies.iter().filter_map(|c| c.as_ref().ok()).max_by_key(|sb| sb.generation)
    }
}

fn load(devices: &[PathBuf], direct: bool) -> Vec<DevState> {
    let mut out = Vec::with_capacity(devices.len());
    for p in devices {
        let name = p.display().to_string();
        match Dev::open(p, direct) {
            Err(e) => out.push(DevState { name, dev: None, open_error: Some(e.to_string()), copies: Vec::new() }),
            Ok(d) => {
                let mut copies = Vec::with_capacity(2);
                let mut buf = AlignedBuf::new(SUPERBLOCK_REGION as usize, 4096);
                for copy in 0..2u64 {
                    let c = match d.read(copy * SUPERBLOCK_REGION, buf.as_mut_slice()) {
                        Ok(()) => Superblock::decode(buf.as_slice()).map_err(|e| e.to_string()),
                        Err(e) => Err(format!("read error: {e}")),
                    };
                    copies.push(c);
                }
                out.push(DevState { name, dev: Some(d), open_error: None, copies });
            }
        }
    }
    out
}

/// Which devices make up the set, per the newest superblock.
struct SetView {
    sb: Superblock,
    /// Per device: its member entry, if it is a member of the set.
    member: Vec<Option<MemberInfo>>,
    /// Per device: why it is left out (another set, not a member, a duplicate).
    excluded: Vec<Option<String>>,
}

/// The set is the first device's (with a valid superblock); the newest
/// superblock of that set describes it.
fn classify(devs: &[DevState]) -> Option<SetView> {
    let (first_i, first) = devs.iter().enumerate().find_map(|(i, d)| d.best().map(|sb| (i, sb)))?;
    let set_uuid = first.set_uuid;
    let sb = devs
        .iter()
        .filter_map(|d| d.best())
        .filter(|sb| sb.set_uuid == set_uuid)
        .max_by_key(|sb| sb.generation)?
        .clone();
    let mut member = vec![None; devs.len()];
    let mut excluded = vec![None; devs.len()];
    for (i, d) in devs.iter().enumerate() {
        let Some(own) = d.best() else { continue };
        if own.set_uuid != set_uuid {
            excluded[i] = Some(format!(
                "{} belongs to mirror set {}, {} to {}: the devices do not belong together",
                d.name,
                hex_id(&own.set_uuid),
                devs[first_i].name,
                hex_id(&set_uuid)
            ));
            continue;
        }
        let Some(info) = sb.members.iter().find(|m| m.uuid == own.member_uuid) else {
            excluded[i] = Some(format!(
                "{} carries this set's id but is not one of its members (member {})",
                d.name,
                hex_id(&own.member_uuid)
            ));
            continue;
        };
        if let Some(j) = member.iter().position(|m: &Option<MemberInfo>| m.is_some_and(|m| m.uuid == info.uuid)) {
            excluded[i] = Some(format!(
                "{} and {} are the same member ({}): the second is left out",
                devs[j].name,
                d.name,
                hex_id(&info.uuid)
            ));
            continue;
        }
        member[i] = Some(*info);
    }
    Some(SetView { sb, member, excluded })
}

/// The valid segment headers of the set on one device: `(slot, header, crc)`.
/// Unreadable header blocks are summed up in the returned message.
fn read_headers(dev: &Dev, sb: &Superblock) -> (Vec<(u64, SegmentHeader, u32)>, Option<String>) {
    let bs = sb.block_size as usize;
    let mut buf = AlignedBuf::new(bs, bs);
    let mut out = Vec::new();
    let mut failed = 0u64;
    let mut first_err = None;
    for slot in 0..sb.slot_count() {
        let off = slot_offset(slot, sb.segment_size);
        match dev.read(off, &mut buf.as_mut_slice()[..bs]) {
            Err(e) => {
                failed += 1;
                first_err.get_or_insert_with(|| format!("slot {slot} at device offset {off}: {e}"));
            }
            Ok(()) => {
                if let Ok((h, crc)) = SegmentHeader::decode(&buf.as_slice()[..bs]) {
                    if h.set_uuid == sb.set_uuid {
                        out.push((slot, h, crc));
                    }
                }
            }
        }
    }
    let err =
        first_err.map(|e| format!("{}: cannot read the segment header of {failed} slot(s) (first: {e})", dev.name));
    (out, err)
}

// ---------------------------------------------------------------------------
// segment selection (the rules of recovery)

/// A segment header found in a slot.
#[derive(Debug, Clone, Copy)]
struct Cand {
    slot: u64,
    header: SegmentHeader,
    crc: u32,
    /// On how many members this exact header is (breaks ties between two
    /// headers with one sequence number, as recovery does).
    weight: usize,
}

/// A journal's segments from its headers: in sequence order, one per
/// sequence number, minus the leading ones wholly below the mark.
fn select_segments(mut mine: Vec<Cand>, entry: &JournalEntry, issues: &mut Vec<String>) -> Vec<Cand> {
    mine.sort_by_key(|c| (c.header.seq, std::cmp::Reverse(c.weight), c.slot));
    let mut out: Vec<Cand> = Vec::with_capacity(mine.len());
    for c in mine {
        match out.last() {
            Some(l) if l.header.seq == c.header.seq => issues.push(format!(
                "journal {}: two segments with sequence number {} (slots {} and {}); slot {} is used",
                entry.name, c.header.seq, l.slot, c.slot, l.slot
            )),
            _ => out.push(c),
        }
    }
    while out.len() > 1 && out[1].header.first_lsn <= entry.mark {
        out.remove(0);
    }
    // Every gap is reported; the segments on both sides are kept, as
    // recovery keeps them (see recovery.rs).
    for w in out.windows(2) {
        if w[1].header.seq != w[0].header.seq.saturating_add(1) {
            issues.push(format!(
                "journal {}: segment sequence {} is missing: records from the end of segment {} to lsn {} cannot be read",
                entry.name,
                w[0].header.seq.saturating_add(1),
                w[0].header.seq,
                w[1].header.first_lsn
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// chain walking

/// A verified record seen by `scan`.
struct Seen<'a> {
    lsn: u64,
    epoch: u64,
    flags: u16,
    /// The record body (tag included, if any).
    body: &'a [u8],
}

/// Where `scan` ended.
#[derive(Debug, Clone)]
struct ScanEnd {
    /// Where the chain would continue (segment-relative offset).
    pos: ChainPos,
    /// Just past the last record flagged `BATCH_END` (segment-relative).
    batch_end: ChainPos,
    /// The visitor asked to stop.
    stopped: bool,
    /// The member whose bytes were used last.
    member: usize,
    /// Set when no member could be read at `pos`.
    error: Option<String>,
}

/// The geometry a scan needs.
#[derive(Clone, Copy)]
struct Geometry {
    bs: usize,
    segment_size: u64,
    /// Bytes per read (a multiple of `bs`).
    chunk: usize,
}

/// Walks the chain of the segment at device offset `base` from `start` to
/// `end_lsn` (exclusive), the end of the chain, or the end of the segment,
/// calling `visit` for every verified record in order. Each chunk is read
/// from `devs[prefer]` first; where its chain ends, the same chunk is read
/// from the other devices and the one that goes furthest is used (and
/// preferred from then on), so every member is asked again at every break.
fn scan(
    devs: &[&Dev],
    prefer: usize,
    base: u64,
    geo: Geometry,
    start: ChainPos,
    end_lsn: u64,
    visit: &mut dyn FnMut(&Seen<'_>) -> bool,
) -> ScanEnd {
    let bs = geo.bs;
    let bound = geo.segment_size as usize;
    let mut cur = start;
    let mut batch_end = start;
    let mut member = prefer.min(devs.len().saturating_sub(1));
    let max_record = crate::format::max_record_body(geo.segment_size, bs as u32);
    let mut need = 0usize;
    let mut bufs: Vec<Option<AlignedBuf>> = devs.iter().map(|_| None).collect();
    let done = |pos, batch_end, stopped, member, error| ScanEnd { pos, batch_end, stopped, member, error };
    loop {
        if cur.lsn >= end_lsn || devs.is_empty() {
            return done(cur, batch_end, false, member, None);
        }
        let chunk_start = cur.off & !(bs - 1);
        let in_chunk = cur.off - chunk_start;
        let avail = bound.saturating_sub(chunk_start);
        if in_chunk + RECORD_HEADER_LEN > avail {
            return done(cur, batch_end, false, member, None); // the end of the segment
        }
        let want = (align_up((in_chunk + need.max(geo.chunk)) as u64, bs as u64) as usize).min(avail);
        // Find the member whose bytes carry the chain furthest in this chunk.
        let mut best: Option<(usize, (u64, u8))> = None;
        let mut all_ended_there = true;
        let mut tried: Vec<(ScanStop, u64)> = Vec::new();
        let mut last_err = None;
        let order = std::iter::once(member).chain((0..devs.len()).filter(|&i| i != member));
        for i in order {
            let buf = match &mut bufs[i] {
                Some(b) if b.capacity() >= want => b,
                slot => slot.insert(AlignedBuf::new(want, bs)),
            };
            let off = base + chunk_start as u64;
            if let Err(e) = devs[i].read(off, &mut buf.as_mut_slice()[..want]) {
                last_err = Some(format!("{}: reading {want} bytes at device offset {off}: {e}", devs[i].name));
                continue;
            }
            let mut p = ChainPos { off: in_chunk, ..cur };
            let stop = scan_chain(&buf.as_slice()[..want], &mut p, bs, max_record, |f| {
                f.header.lsn.saturating_add(1) < end_lsn
            });
            let rank = (
                p.lsn,
                match stop {
                    ScanStop::End => 0u8,
                    ScanStop::NeedMore => 1,
                    ScanStop::Stopped => 2,
                },
            );
            tried.push((stop, p.lsn));
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((i, rank));
            }
            if stop != ScanStop::End {
                all_ended_there = false;
                break;
            }
        }
        let Some((b, (best_lsn, _))) = best else {
            return done(cur, batch_end, false, member, last_err);
        };
        // Every member read ends the chain at the same record: no use asking
        // them again from there.
        all_ended_there = all_ended_there && tried.iter().all(|&(s, l)| s == ScanStop::End && l == best_lsn);
        member = b;
        let Some(buf) = bufs[b].as_ref() else {
            return done(cur, batch_end, false, member, Some("internal: buffer missing".into()));
        };
        let data = &buf.as_slice()[..want];
        let mut p = ChainPos { off: in_chunk, ..cur };
        let mut stopped = false;
        let stop = scan_chain(data, &mut p, bs, max_record, |f| {
            let lsn = f.header.lsn;
            if f.header.flags & FLAG_BATCH_END != 0 {
                let next = align_up((chunk_start + f.off + f.header.total_len()) as u64, bs as u64) as usize;
                batch_end = ChainPos { off: next, lsn: lsn.saturating_add(1), prev_crc: f.header.crc };
            }
            if !visit(&Seen { lsn, epoch: f.header.epoch, flags: f.header.flags, body: f.payload }) {
                stopped = true;
                return false;
            }
            lsn.saturating_add(1) < end_lsn
        });
        let abs = ChainPos { off: chunk_start + p.off, ..p };
        if stopped {
            return done(abs, batch_end, true, member, None);
        }
        match stop {
            ScanStop::Stopped => return done(abs, batch_end, false, member, None), // reached end_lsn
            ScanStop::End => {
                if abs.lsn == cur.lsn || all_ended_there {
                    return done(abs, batch_end, false, member, None);
                }
                cur = abs;
                need = 0;
            }
            ScanStop::NeedMore => {
                if abs.lsn != cur.lsn || abs.off != cur.off {
                    cur = abs;
                    need = 0;
                } else if want >= avail {
                    // The record would run past the end of the segment.
                    return done(abs, batch_end, false, member, None);
                } else {
                    let rel = p.off;
                    let rec = if rel + RECORD_HEADER_LEN <= data.len() {
                        parse_record_header(&data[rel..]).map_or(RECORD_HEADER_LEN, |h| h.total_len())
                    } else {
                        RECORD_HEADER_LEN
                    };
                    need = rec.max(want - in_chunk + bs);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// verify

/// A member of the set that could be opened.
struct Mem<'a> {
    dev: &'a Dev,
    failed: bool,
}

/// A finding about a member: a problem, or a note if the member is failed.
fn issue(r: &mut VerifyReport, failed: bool, msg: String) {
    if failed {
        r.notes.push(format!("{msg} (not a problem: the member is marked failed)"));
    } else {
        r.problems.push(msg);
    }
}

/// Verifies a mirror set offline, **read-only** (see the module docs for
/// what is checked). `Err` only if no device is given; everything found,
/// unreadable devices included, is in the report.
pub fn verify(devices: &[PathBuf], opts: &VerifyOptions) -> Result<VerifyReport> {
    if devices.is_empty() {
        return Err(Error::Config("no devices given".into()));
    }
    let states = load(devices, opts.direct_io);
    let view = classify(&states);
    let mut r = VerifyReport::default();

    for (i, st) in states.iter().enumerate() {
        let info = view.as_ref().and_then(|v| v.member[i]);
        // A member being resilvered is not a whole copy yet: as a failed one.
        let failed = info.is_some_and(|m| m.health != Health::Healthy);
        let mut dr = DeviceReport { path: st.name.clone(), ..Default::default() };
        let Some(d) = &st.dev else {
            r.problems.push(format!("{}: cannot open: {}", st.name, st.open_error.as_deref().unwrap_or("?")));
            r.devices.push(dr);
            continue;
        };
        dr.opened = true;
        dr.direct_io = d.direct;
        dr.in_use = d.in_use;
        dr.size = d.size;
        if d.in_use {
            r.notes.push(format!(
                "warning: {} is in use (locked by another owner, such as a running engine, which may write to it while it is read)",
                st.name
            ));
        }
        if opts.direct_io && !d.direct {
            r.notes.push(format!("{} refuses O_DIRECT: read through the page cache", st.name));
        }
        for (c, copy) in st.copies.iter().enumerate() {
            let offset = c as u64 * SUPERBLOCK_REGION;
            dr.copies.push(match copy {
                Ok(sb) => CopyReport { offset, generation: Some(sb.generation), error: None },
                Err(e) => CopyReport { offset, generation: None, error: Some(e.clone()) },
            });
        }
        match st.best() {
            None => {
                let errs: Vec<String> = dr
                    .copies
                    .iter()
                    .zip(["A", "B"])
                    .map(|(c, n)| format!("copy {n}: {}", c.error.as_deref().unwrap_or("?")))
                    .collect();
                r.problems.push(format!("{}: no valid mirrorlog superblock ({})", st.name, errs.join("; ")));
            }
            Some(best) => {
                dr.set_uuid = Some(hex_id(&best.set_uuid));
                dr.member_uuid = Some(hex_id(&best.member_uuid));
                dr.generation = Some(best.generation);
                for (c, n) in dr.copies.iter().zip(["A", "B"]) {
                    if let Some(e) = &c.error {
                        issue(
                            &mut r,
                            failed,
                            format!("{}: superblock copy {n} (device offset {}) is bad: {e}", st.name, c.offset),
                        );
                    }
                }
            }
        }
        if let Some(v) = &view {
            if let Some(why) = &v.excluded[i] {
                r.problems.push(why.clone());
            }
            if let Some(m) = info {
                dr.member_slot = Some(m.slot);
                dr.health = Some(m.health);
                if let Some(g) = dr.generation {
                    if g < v.sb.generation && !failed {
                        r.notes.push(format!(
                            "{}: superblock generation {g} is behind the newest, {} (a superblock write was \
                             interrupted; the next open rewrites it)",
                            st.name, v.sb.generation
                        ));
                    }
                }
                if d.size < v.sb.device_size {
                    issue(
                        &mut r,
                        failed,
                        format!("{}: {} bytes, smaller than the set's {}", st.name, d.size, v.sb.device_size),
                    );
                }
                if failed {
                    r.notes.push(format!(
                        "{} is marked failed in the superblock: its chains are listed but not compared",
                        st.name
                    ));
                }
            }
        }
        r.devices.push(dr);
    }

    let Some(view) = view else {
        r.problems.push("no device holds a valid mirrorlog superblock".into());
        return Ok(r);
    };
    let sb = &view.sb;
    let members: Vec<MemberReport> = sb
        .members
        .iter()
        .map(|m| MemberReport {
            uuid: hex_id(&m.uuid),
            slot: m.slot,
            health: m.health,
            device: view
                .member
                .iter()
                .position(|x| x.is_some_and(|x| x.uuid == m.uuid))
                .map(|i| states[i].name.clone()),
        })
        .collect();
    for m in &members {
        if m.device.is_none() {
            match m.health {
                Health::Failed | Health::Rebuilding { .. } => r.notes.push(format!(
                    "member {} (slot {}) is marked {} and is not among the devices",
                    m.uuid,
                    m.slot,
                    m.health.name()
                )),
                Health::Healthy => r.problems.push(format!(
                    "member {} (slot {}), healthy in the superblock, is not among the devices: it was not verified",
                    m.uuid, m.slot
                )),
            }
        }
    }
    r.set = Some(SetSummary {
        set_uuid: hex_id(&sb.set_uuid),
        generation: sb.generation,
        epoch: sb.epoch,
        block_size: sb.block_size,
        segment_size: sb.segment_size,
        device_size: sb.device_size,
        slot_count: sb.slot_count(),
        members,
    });

    // The members to walk, in the order the devices were given.
    let mems: Vec<Mem<'_>> = states
        .iter()
        .enumerate()
        .filter_map(|(i, st)| {
            let info = view.member[i]?;
            Some(Mem { dev: st.dev.as_ref()?, failed: info.health != Health::Healthy })
        })
        .collect();
    let mut headers = Vec::with_capacity(mems.len());
    for m in &mems {
        let (h, err) = read_headers(m.dev, sb);
        if let Some(e) = err {
            issue(&mut r, m.failed, e);
        }
        headers.push(h);
    }
    let mut weights: HashMap<(u64, u32), usize> = HashMap::new();
    for (m, hs) in mems.iter().zip(&headers) {
        if !m.failed {
            for &(slot, _, crc) in hs {
                *weights.entry((slot, crc)).or_default() += 1;
            }
        }
    }
    for name in &opts.journals {
        if !sb.journals.iter().any(|j| &j.name == name) {
            r.problems.push(format!("journal {name} is not in the superblock"));
        }
    }
    for entry in &sb.journals {
        if !opts.journals.is_empty() && !opts.journals.contains(&entry.name) {
            continue;
        }
        let jr = verify_journal(entry, sb, &mems, &headers, &weights, opts, &mut r);
        r.journals.push(jr);
    }
    Ok(r)
}

/// One journal's segments and chain ends on one member.
struct Walk {
    segs: Vec<Cand>,
    ends: Vec<ScanEnd>,
    chain: MemberChain,
}

fn walk_member(m: &Mem<'_>, entry: &JournalEntry, sb: &Superblock, segs: Vec<Cand>, r: &mut VerifyReport) -> Walk {
    let geo = Geometry { bs: sb.block_size as usize, segment_size: sb.segment_size, chunk: CHUNK };
    let mut chain = MemberChain {
        device: m.dev.name.clone(),
        failed: m.failed,
        records: 0,
        first_lsn: None,
        last_lsn: None,
        segments: Vec::new(),
        tail: None,
    };
    let mut ends = Vec::with_capacity(segs.len());
    let j = &entry.name;
    let name = &m.dev.name;
    if let Some(head) = segs.first() {
        let expect = entry.mark.max(1);
        if head.header.first_lsn > expect {
            issue(
                r,
                m.failed,
                format!(
                    "{name}: journal {j}: its first segment (slot {}) starts at lsn {}, after the first retained lsn \
                     {expect}: records {expect}..{} are missing",
                    head.slot,
                    head.header.first_lsn,
                    head.header.first_lsn - 1
                ),
            );
        }
    }
    for (i, s) in segs.iter().enumerate() {
        let base = slot_offset(s.slot, sb.segment_size);
        let start = ChainPos { off: geo.bs, lsn: s.header.first_lsn, prev_crc: s.crc };
        let (mut n, mut first, mut last) = (0u64, None, None);
        let end = scan(&[m.dev], 0, base, geo, start, u64::MAX, &mut |rec| {
            n += 1;
            first.get_or_insert(rec.lsn);
            last = Some(rec.lsn);
            true
        });
        chain.records += n;
        if chain.first_lsn.is_none() {
            chain.first_lsn = first;
        }
        if last.is_some() {
            chain.last_lsn = last;
        }
        chain.segments.push(SegmentChain {
            slot: s.slot,
            seq: s.header.seq,
            first_lsn: s.header.first_lsn,
            records: n,
            end_lsn: end.pos.lsn,
            end_offset: base + end.pos.off as u64,
        });
        let at = base + end.pos.off as u64;
        if let Some(e) = &end.error {
            issue(r, m.failed, format!("{e} (journal {j}, segment slot {}, at lsn {})", s.slot, end.pos.lsn));
        }
        match segs.get(i + 1) {
            Some(next) => {
                let nh = &next.header;
                if end.pos.lsn < nh.first_lsn {
                    if end.error.is_none() {
                        issue(
                            r,
                            m.failed,
                            format!(
                                "{name}: journal {j}: the chain breaks at lsn {} (device offset {at}, segment slot {}) \
                                 before the end of the segment: the next segment (slot {}) starts at lsn {}",
                                end.pos.lsn, s.slot, next.slot, nh.first_lsn
                            ),
                        );
                    }
                } else if end.pos.lsn > nh.first_lsn {
                    issue(
                        r,
                        m.failed,
                        format!(
                            "{name}: journal {j}: the chain of segment slot {} runs to lsn {}, past the first lsn {} of \
                             the next segment (slot {})",
                            s.slot,
                            end.pos.lsn - 1,
                            nh.first_lsn,
                            next.slot
                        ),
                    );
                } else if end.pos.prev_crc != nh.prev_crc {
                    issue(
                        r,
                        m.failed,
                        format!(
                            "{name}: journal {j}: the header of segment slot {} does not chain to the last record of \
                             slot {} (prev_crc {:08x}, last record's crc {:08x})",
                            next.slot, s.slot, nh.prev_crc, end.pos.prev_crc
                        ),
                    );
                } else if end.batch_end.lsn != end.pos.lsn {
                    issue(
                        r,
                        m.failed,
                        format!(
                            "{name}: journal {j}: segment slot {} does not end with a complete batch (the last batch \
                             end is before lsn {})",
                            s.slot, end.batch_end.lsn
                        ),
                    );
                }
            }
            None => {
                chain.tail = Some(TailEnd {
                    slot: s.slot,
                    next_lsn: end.pos.lsn,
                    end_offset: at,
                    complete_lsn: end.batch_end.lsn,
                    complete_offset: base + end.batch_end.off as u64,
                });
                if end.pos.lsn > end.batch_end.lsn {
                    r.notes.push(format!(
                        "{name}: journal {j}: the chain ends in a partly written batch (lsns {}..{}, past the last \
                         complete batch; an open drops them)",
                        end.batch_end.lsn,
                        end.pos.lsn - 1
                    ));
                }
            }
        }
        ends.push(end);
    }
    Walk { segs, ends, chain }
}

fn seg_list(segs: &[Cand]) -> String {
    let v: Vec<String> = segs.iter().map(|s| format!("{}:{}", s.slot, s.header.seq)).collect();
    format!("[{}]", v.join(", "))
}

fn verify_journal(
    entry: &JournalEntry,
    sb: &Superblock,
    mems: &[Mem<'_>],
    headers: &[Vec<(u64, SegmentHeader, u32)>],
    weights: &HashMap<(u64, u32), usize>,
    opts: &VerifyOptions,
    r: &mut VerifyReport,
) -> JournalReport {
    let j = &entry.name;
    let bs = sb.block_size as u64;
    let mut walks: Vec<Walk> = Vec::with_capacity(mems.len());
    for (m, hs) in mems.iter().zip(headers) {
        let cands: Vec<Cand> = hs
            .iter()
            .filter(|(_, h, _)| h.journal_id == entry.id)
            .map(|&(slot, header, crc)| Cand {
                slot,
                header,
                crc,
                weight: weights.get(&(slot, crc)).copied().unwrap_or(0),
            })
            .collect();
        let mut issues = Vec::new();
        let segs = select_segments(cands, entry, &mut issues);
        for msg in issues {
            issue(r, m.failed, format!("{}: {msg}", m.dev.name));
        }
        walks.push(walk_member(m, entry, sb, segs, r));
    }
    let live: Vec<usize> = (0..mems.len()).filter(|&k| !mems[k].failed).collect();

    // The members must list the same segments.
    if let Some(&k0) = live.first() {
        let key = |w: &Walk| w.segs.iter().map(|s| (s.slot, s.header.seq, s.crc)).collect::<Vec<_>>();
        for &k in &live[1..] {
            if key(&walks[k]) != key(&walks[k0]) {
                r.problems.push(format!(
                    "journal {j}: the mirrors do not agree on its segments (slot:seq): {} has {}, {} has {}",
                    mems[k0].dev.name,
                    seg_list(&walks[k0].segs),
                    mems[k].dev.name,
                    seg_list(&walks[k].segs)
                ));
            }
        }
    }

    // The members must agree on where the tail chain ends.
    let tail_lsn = |k: usize| walks[k].chain.tail.as_ref().map_or(0, |t| t.next_lsn);
    let tail_desc = |k: usize| match &walks[k].chain.tail {
        Some(t) => format!("ends before lsn {} (device offset {})", t.next_lsn, t.end_offset),
        None => "is empty (no segment)".to_string(),
    };
    if let Some(&longest) = live.iter().max_by_key(|&&k| (tail_lsn(k), std::cmp::Reverse(k))) {
        for k in 0..mems.len() {
            if k == longest || tail_lsn(k) >= tail_lsn(longest) {
                continue;
            }
            let msg = format!(
                "journal {j}: the mirrors do not agree on the tail: the chain on {} {}, on {} {}",
                mems[k].dev.name,
                tail_desc(k),
                mems[longest].dev.name,
                tail_desc(longest)
            );
            if mems[k].failed {
                r.notes.push(format!("{msg}; {} is marked failed: skipped", mems[k].dev.name));
            } else {
                r.problems.push(msg);
            }
        }
    }

    // Block by block over every block holding chain data.
    let mut differing = 0u64;
    if opts.compare && live.len() > 1 {
        let mut slots: Vec<(u64, u64)> =
            live.iter().flat_map(|&k| walks[k].segs.iter().map(|s| (s.header.seq, s.slot))).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut reported = 0usize;
        let mut unreported = 0u64;
        for &(_, slot) in &slots {
            // Segment-relative end of the chain on each live member (0: the slot is not in its list).
            let end_on = |k: usize| -> u64 {
                walks[k].segs.iter().position(|s| s.slot == slot).map_or(0, |p| walks[k].ends[p].pos.off as u64)
            };
            let Some(&rk) = live.iter().max_by_key(|&&k| (end_on(k), std::cmp::Reverse(k))) else { continue };
            let ref_end = end_on(rk).max(bs);
            let base = slot_offset(slot, sb.segment_size);
            let len = align_up(ref_end, bs).min(sb.segment_size);
            for &k in live.iter().filter(|&&k| k != rk) {
                let other_end = end_on(k);
                let (a, b) = (mems[k].dev, mems[rk].dev);
                let res = compare_region(a, b, base, len, bs as usize, |run| {
                    differing += run.blocks;
                    if reported >= opts.max_reported_diffs {
                        unreported += 1;
                        return;
                    }
                    reported += 1;
                    let rel = run.first_byte - base;
                    let blocks = if run.blocks == 1 {
                        format!("1 block at offset {}", run.start)
                    } else {
                        format!("{} blocks from offset {}", run.blocks, run.start)
                    };
                    let verifies = if other_end <= rel && rel < ref_end {
                        format!("; the chain verifies there on {} only", b.name)
                    } else {
                        String::new()
                    };
                    r.problems.push(format!(
                        "mirror {} differs from mirror {} at device offset {} (journal {j}, segment slot {slot}; \
                         {blocks}{verifies})",
                        a.name, b.name, run.first_byte
                    ));
                });
                if let Err(e) = res {
                    r.problems.push(format!("journal {j}, segment slot {slot}: cannot compare the mirrors: {e}"));
                }
            }
        }
        if unreported > 0 {
            r.problems.push(format!("journal {j}: {unreported} more run(s) of differing blocks (not listed)"));
        }
    }
    JournalReport {
        name: entry.name.clone(),
        id: entry.id,
        mark: entry.mark,
        members: walks.into_iter().map(|w| w.chain).collect(),
        differing_blocks: differing,
    }
}

/// A run of consecutive differing blocks.
struct Run {
    /// Device offset of the first differing byte.
    first_byte: u64,
    /// Device offset of the first differing block.
    start: u64,
    blocks: u64,
}

/// Compares `len` bytes (whole blocks) at device offset `off` on two
/// devices, calling `on_run` for every run of differing blocks.
fn compare_region(
    a: &Dev,
    b: &Dev,
    off: u64,
    len: u64,
    bs: usize,
    mut on_run: impl FnMut(Run),
) -> std::result::Result<(), String> {
    let cap = (len as usize).min(CHUNK);
    let mut ba = AlignedBuf::new(cap, bs);
    let mut bb = AlignedBuf::new(cap, bs);
    let mut run: Option<Run> = None;
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(cap as u64) as usize;
        let at = off + pos;
        a.read(at, &mut ba.as_mut_slice()[..n]).map_err(|e| format!("{}: device offset {at}: {e}", a.name))?;
        b.read(at, &mut bb.as_mut_slice()[..n]).map_err(|e| format!("{}: device offset {at}: {e}", b.name))?;
        for (k, (x, y)) in ba.as_slice()[..n].chunks(bs).zip(bb.as_slice()[..n].chunks(bs)).enumerate() {
            let block = at + (k * bs) as u64;
            if x != y {
                match &mut run {
                    Some(r) => r.blocks += 1,
                    None => {
                        let first = x.iter().zip(y).position(|(p, q)| p != q).unwrap_or(0);
                        run = Some(Run { first_byte: block + first as u64, start: block, blocks: 1 });
                    }
                }
            } else if let Some(r) = run.take() {
                on_run(r);
            }
        }
        pos += n as u64;
    }
    if let Some(r) = run.take() {
        on_run(r);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// dump

/// Reads journal `journal`'s records in LSN order, **read-only**, from
/// `from` (or its first retained LSN, if later) to the end of its last
/// complete batch, calling `visit` for each until it returns false. Every
/// record is checked (CRC and place in the chain); each chunk is taken from
/// the member whose chain goes furthest there, starting with the member with
/// the longest tail chain, so a record bad on one member is read from
/// another. Members marked failed are used only if no healthy one can be
/// opened. `Err` if no member of the set can be read, the journal is
/// unknown, or a record is bad on every member (after the records before
/// it were handed out).
pub fn dump(
    devices: &[PathBuf],
    journal: &str,
    from: u64,
    mut visit: impl FnMut(DumpRecord<'_>) -> bool,
) -> Result<()> {
    if devices.is_empty() {
        return Err(Error::Config("no devices given".into()));
    }
    let states = load(devices, true);
    let view = classify(&states).ok_or_else(|| Error::Config("no device holds a valid mirrorlog superblock".into()))?;
    let sb = &view.sb;
    let entry = sb.journals.iter().find(|j| j.name == journal).ok_or_else(|| Error::UnknownJournal(journal.into()))?;
    let (mut healthy, mut failed) = (Vec::new(), Vec::new());
    for (i, st) in states.iter().enumerate() {
        if let (Some(d), Some(m)) = (&st.dev, view.member[i]) {
            if m.health == Health::Healthy {
                healthy.push(d);
            } else {
                failed.push(d);
            }
        }
    }
    let devs: Vec<&Dev> = if healthy.is_empty() { failed } else { healthy };
    if devs.is_empty() {
        return Err(Error::Config("no member of the set could be opened".into()));
    }
    // The journal's segments from the headers on all members (as recovery).
    let mut cands: Vec<Cand> = Vec::new();
    for d in &devs {
        let (hs, err) = read_headers(d, sb);
        if let Some(e) = err {
            tracing::warn!("{e}");
        }
        for (slot, header, crc) in hs.into_iter().filter(|(_, h, _)| h.journal_id == entry.id) {
            match cands.iter_mut().find(|c| c.slot == slot && c.crc == crc && c.header == header) {
                Some(c) => c.weight += 1,
                None => cands.push(Cand { slot, header, crc, weight: 1 }),
            }
        }
    }
    let mut issues = Vec::new();
    let segs = select_segments(cands, entry, &mut issues);
    for msg in issues {
        tracing::warn!("{msg}");
    }
    let Some(tail) = segs.last() else { return Ok(()) };
    let geo = Geometry { bs: sb.block_size as usize, segment_size: sb.segment_size, chunk: CHUNK };
    let start_of = |s: &Cand| ChainPos { off: geo.bs, lsn: s.header.first_lsn, prev_crc: s.crc };
    let base_of = |s: &Cand| slot_offset(s.slot, sb.segment_size);
    let io_err = |e: String| Error::Io(io::Error::other(e));

    // Where the last complete batch ends, on the member that goes furthest.
    let t = scan(&devs, 0, base_of(tail), geo, start_of(tail), u64::MAX, &mut |_| true);
    if let Some(e) = t.error {
        return Err(io_err(e));
    }
    let end_lsn = t.batch_end.lsn;
    let first = from.max(entry.mark).max(segs[0].header.first_lsn);
    let mut prefer = t.member;
    for (i, s) in segs.iter().enumerate() {
        let seg_end = segs.get(i + 1).map_or(end_lsn, |n| n.header.first_lsn);
        if seg_end <= first {
            continue;
        }
        let res = scan(&devs, prefer, base_of(s), geo, start_of(s), seg_end, &mut |rec| {
            if rec.lsn < first {
                return true;
            }
            let (tag, payload) = split_tag(rec.flags, rec.body);
            visit(DumpRecord { lsn: rec.lsn, epoch: rec.epoch, payload, tag })
        });
        if let Some(e) = res.error {
            return Err(io_err(e));
        }
        if res.stopped {
            return Ok(());
        }
        if res.pos.lsn < seg_end {
            return Err(Error::Corrupt(format!(
                "journal {journal}: record {} (segment slot {}, device offset {}) is bad on every mirror",
                res.pos.lsn,
                s.slot,
                base_of(s) + res.pos.off as u64
            )));
        }
        prefer = res.member;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// JSON

fn ser_health<S: serde::Serializer>(h: &Health, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(h.name())
}

fn ser_opt_health<S: serde::Serializer>(h: &Option<Health>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(h.name()),
        None => s.serialize_none(),
    }
}

impl VerifyReport {
    /// The report as a JSON object, with `ok` added.
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct WithOk<'a> {
            ok: bool,
            #[serde(flatten)]
            report: &'a VerifyReport,
        }
        serde_json::to_string(&WithOk { ok: self.ok(), report: self })
            .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":{:?}}}", e.to_string()))
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.set {
            None => writeln!(f, "mirror set: unknown (no valid superblock)")?,
            Some(s) => {
                writeln!(
                    f,
                    "mirror set {}: generation {}, epoch {}, block {} B, segment {} B, {} slots of {} B devices",
                    s.set_uuid, s.generation, s.epoch, s.block_size, s.segment_size, s.slot_count, s.device_size
                )?;
                for m in &s.members {
                    writeln!(
                        f,
                        "  member slot {} {} {:<7} {}",
                        m.slot,
                        m.uuid,
                        m.health.name(),
                        m.device.as_deref().unwrap_or("(not among the devices)")
                    )?;
                }
            }
        }
        writeln!(f, "devices:")?;
        for d in &self.devices {
            if !d.opened {
                writeln!(f, "  {}: not opened", d.path)?;
                continue;
            }
            let copies: Vec<String> = d
                .copies
                .iter()
                .zip(["A", "B"])
                .map(|(c, n)| match c.generation {
                    Some(g) => format!("{n} gen {g}"),
                    None => format!("{n} bad"),
                })
                .collect();
            let member = match (d.member_slot, d.health) {
                (Some(s), Some(h)) => format!("member slot {s} ({})", h.name()),
                _ => "not a member".to_string(),
            };
            writeln!(
                f,
                "  {}: {member}, {} bytes, superblock {}{}{}",
                d.path,
                d.size,
                copies.join(", "),
                if d.direct_io { ", O_DIRECT" } else { ", buffered" },
                if d.in_use { ", IN USE" } else { "" }
            )?;
        }
        writeln!(f, "journals:")?;
        for j in &self.journals {
            writeln!(f, "  {} (id {}, mark {}):", j.name, j.id, j.mark)?;
            for m in &j.members {
                let range = match (m.first_lsn, m.last_lsn) {
                    (Some(a), Some(b)) => format!("lsn {a}..={b}"),
                    _ => "no records".to_string(),
                };
                let tail = match &m.tail {
                    Some(t) => format!(
                        "tail in slot {} ends before lsn {} at device offset {}",
                        t.slot, t.next_lsn, t.end_offset
                    ),
                    None => "no segments".to_string(),
                };
                writeln!(
                    f,
                    "    {}{}: {} records, {range}, {} segment(s), {tail}",
                    m.device,
                    if m.failed { " (failed)" } else { "" },
                    m.records,
                    m.segments.len()
                )?;
            }
            if j.differing_blocks > 0 {
                writeln!(f, "    {} block(s) differ between mirrors", j.differing_blocks)?;
            }
        }
        if !self.notes.is_empty() {
            writeln!(f, "notes ({}):", self.notes.len())?;
            for n in &self.notes {
                writeln!(f, "  - {n}")?;
            }
        }
        if !self.problems.is_empty() {
            writeln!(f, "problems ({}):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        if self.ok() {
            write!(f, "result: OK")
        } else {
            write!(f, "result: {} problem(s)", self.problems.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_report_is_ok_and_serializes() {
        let r = VerifyReport::default();
        assert!(r.ok());
        assert_eq!(r.to_json(), r#"{"ok":true,"set":null,"devices":[],"journals":[],"problems":[],"notes":[]}"#);
        assert!(r.to_string().ends_with("result: OK"));
    }

    fn cand(slot: u64, seq: u64, first_lsn: u64) -> Cand {
        let header =
            SegmentHeader { set_uuid: [1; 16], journal_id: 1, seq, epoch: 1, first_lsn, prev_crc: 0, nonce: 0 };
        Cand { slot, header, crc: seq as u32, weight: 1 }
    }

    #[test]
    fn segment_selection_follows_recovery() {
        let entry = JournalEntry { id: 1, mark: 130, name: "j".into(), incomplete: false, writer: 0 };
        let mut issues = Vec::new();
        // seq 0 and 1 lie wholly below the mark; seq 4 missing is reported,
        // and 2 and 3 before it are kept (as recovery keeps them).
        let segs = select_segments(
            vec![cand(5, 1, 64), cand(3, 0, 1), cand(9, 2, 127), cand(2, 3, 190), cand(7, 5, 300), cand(8, 6, 360)],
            &entry,
            &mut issues,
        );
        assert_eq!(segs.iter().map(|c| c.slot).collect::<Vec<_>>(), vec![9, 2, 7, 8]);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].contains("sequence 4 is missing"), "{issues:?}");
        let entry = JournalEntry { mark: 100, ..entry };
        let mut issues = Vec::new();
        let segs = select_segments(vec![cand(5, 1, 64), cand(3, 0, 1), cand(9, 2, 127)], &entry, &mut issues);
        assert_eq!(segs.iter().map(|c| c.slot).collect::<Vec<_>>(), vec![5, 9]);
        assert!(issues.is_empty());
    }

    /// Lays out a segment the way the engine does: header block, then
    /// batches of records packed back to back, each batch padded to a block.
    fn segment(bs: usize, size: usize, batches: &[Vec<Vec<u8>>]) -> (Vec<u8>, ChainPos) {
        let mut seg = vec![0u8; size];
        let h =
            SegmentHeader { set_uuid: [1; 16], journal_id: 1, seq: 0, epoch: 1, first_lsn: 10, prev_crc: 0, nonce: 5 };
        let crc = h.encode(&mut seg);
        let start = ChainPos { off: bs, lsn: 10, prev_crc: crc };
        let (mut off, mut lsn, mut prev) = (bs, 10, crc);
        for batch in batches {
            for (i, p) in batch.iter().enumerate() {
                let flags = if i + 1 == batch.len() { FLAG_BATCH_END } else { 0 };
                prev = crate::format::encode_record(&mut seg[off..], p, lsn, 1, prev, flags);
                off += RECORD_HEADER_LEN + p.len();
                lsn += 1;
            }
            off = align_up(off as u64, bs as u64) as usize;
        }
        (seg, start)
    }

    fn record_offset(bs: usize, batches: &[Vec<Vec<u8>>], n: usize) -> usize {
        let (mut off, mut k) = (bs, 0);
        for batch in batches {
            for p in batch {
                if k == n {
                    return off;
                }
                off += RECORD_HEADER_LEN + p.len();
                k += 1;
            }
            off = align_up(off as u64, bs as u64) as usize;
        }
        off
    }

    #[test]
    fn scan_spans_chunks_and_falls_back_across_members() {
        let (bs, size) = (512usize, 64usize << 10);
        // Records larger than a chunk, and records spanning chunk and block
        // boundaries.
        let batches: Vec<Vec<Vec<u8>>> = (0..12u8)
            .map(|b| {
                (0..(1 + b as usize % 3))
                    .map(|k| vec![b.wrapping_mul(31) ^ k as u8; 100 + 977 * k + 211 * b as usize])
                    .collect()
            })
            .collect();
        let (seg, start) = segment(bs, size, &batches);
        let n: usize = batches.iter().map(|b| b.len()).sum();
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            Dev::open(&p, false).expect("open")
        };
        let good = write("good", &seg);
        // Member a is bad at record 3, member b at record 9.
        let mut a = seg.clone();
        a[record_offset(bs, &batches, 3) + RECORD_HEADER_LEN + 5] ^= 1;
        let mut b = seg.clone();
        b[record_offset(bs, &batches, 9) + 40] ^= 1;
        let (a, b) = (write("a", &a), write("b", &b));
        let geo = Geometry { bs, segment_size: size as u64, chunk: 1024 };
        let run = |devs: &[&Dev], end_lsn: u64| {
            let mut got = Vec::new();
            let end = scan(devs, 0, 0, geo, start, end_lsn, &mut |r| {
                got.push((r.lsn, r.body.to_vec()));
                true
            });
            (got, end)
        };
        let want: Vec<(u64, Vec<u8>)> =
            batches.concat().into_iter().enumerate().map(|(i, p)| (10 + i as u64, p)).collect();
        let end_off = record_offset(bs, &batches, n);

        let (got, end) = run(&[&good], u64::MAX);
        assert_eq!(got, want);
        assert_eq!((end.pos.lsn, end.pos.off, end.batch_end.lsn), (10 + n as u64, end_off, 10 + n as u64));
        assert!(end.error.is_none() && !end.stopped);

        let (got, end) = run(&[&a], u64::MAX);
        assert_eq!(got, want[..3].to_vec());
        assert_eq!((end.pos.lsn, end.pos.off), (13, record_offset(bs, &batches, 3)));

        for devs in [[&a, &b], [&b, &a]] {
            let (got, end) = run(&devs, u64::MAX);
            assert_eq!(got, want, "every record from whichever member holds it");
            assert_eq!(end.pos.lsn, 10 + n as u64);
        }
        let (got, end) = run(&[&a, &b], 15);
        assert_eq!(got, want[..5].to_vec());
        assert_eq!(end.pos.lsn, 15);
        assert!(!end.stopped);

        // A visitor that stops.
        let mut k = 0;
        let end = scan(&[&good], 0, 0, geo, start, u64::MAX, &mut |_| {
            k += 1;
            k < 4
        });
        assert!(end.stopped);
        assert_eq!((k, end.pos.lsn), (4, 14));
    }
}

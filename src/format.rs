//! On-disk format: superblock, segment header, record framing, chain scanning.
//!
//! Pure encode/decode, free of I/O, so it can be unit-tested and fuzzed alone.
//! `docs/format.md` describes every byte; keep the two in step.
//!
//! Invariants enforced here:
//! - Every structure carries a CRC32C (Castagnoli) that is checked on decode.
//! - A record is valid only if its CRC matches *and* its `lsn` and `prev_crc`
//!   continue the chain the reader expects. Because the first record of a
//!   segment chains to the segment header's CRC, and the header carries a
//!   random nonce, stale records from an earlier use of a slot (or a misdirected
//!   write) can never be accepted as part of the current chain.

use std::fmt;

/// Length of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 32;
/// Magic in the last two bytes of every record header ("ML" little-endian).
pub const RECORD_MAGIC: u16 = 0x4C4D;
/// Flag: this is the last record of a write batch; the next record starts at
/// the next block boundary (the rest of this block is zero padding).
pub const FLAG_BATCH_END: u16 = 0x0001;
/// Flag: the record body starts with a 16-byte producer tag (`Tag`), used
/// by the daemon for idempotent appends; the payload follows it.
pub const FLAG_TAGGED: u16 = 0x0002;
/// Bytes of a producer tag at the front of a tagged record's body.
pub const TAG_LEN: usize = 16;

/// A producer tag: who wrote a record and its sequence number. Stored in the
/// record (so covered by its CRC and shipped with it) to rebuild the
/// daemon's idempotence table after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    pub producer: u64,
    pub seq: u64,
}

impl Tag {
    pub fn encode(&self, out: &mut [u8]) {
        put_u64(out, 0, self.producer);
        put_u64(out, 8, self.seq);
    }
}

/// Splits a record body into its tag (if `flags` says it has one) and its
/// payload. A tagged body shorter than a tag has none (never written so).
pub fn split_tag(flags: u16, body: &[u8]) -> (Option<Tag>, &[u8]) {
    if flags & FLAG_TAGGED != 0 && body.len() >= TAG_LEN {
        (Some(Tag { producer: get_u64(body, 0), seq: get_u64(body, 8) }), &body[TAG_LEN..])
    } else {
        (None, body)
    }
}

/// Segment header magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MLOGSEGH";
/// Bytes of the segment header that are encoded (the rest of its block is zero).
pub const SEGMENT_HEADER_LEN: usize = 96;

/// Superblock magic.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"MLOGSUPR";
/// Each superblock copy occupies this many bytes; copies are at offsets
/// `0` and `SUPERBLOCK_REGION`.
pub const SUPERBLOCK_REGION: u64 = 64 * 1024;
/// Segment slots start here on every member.
pub const DATA_START: u64 = 1024 * 1024;
/// Format version written in superblocks and segment headers.
pub const FORMAT_VERSION: u16 = 1;
/// Largest journal name in bytes.
pub const MAX_JOURNAL_NAME: usize = 64;
/// Most journals one mirror set holds.
pub const MAX_JOURNALS: usize = 256;
/// Most members of a mirror set.
pub const MAX_MEMBERS: usize = 8;

/// Superblock format version written now: 2 adds the history
/// (`epoch::History`), 3 each journal's writer epoch.
pub const SUPERBLOCK_VERSION: u16 = 3;
/// Fixed part of a version 2 superblock: version 1's, then the history
/// (floor u32, run count u32, `History::MAX_TERMS` × (term, max start,
/// nonce) u32 each).
const SB_FIXED_LEN: usize = SB_FIXED_LEN_V1 + 8 + 12 * crate::epoch::History::MAX_TERMS;
/// Fixed part of a version 1 superblock (still read: its history is its
/// epoch's term and every earlier one, `History::of`).
const SB_FIXED_LEN_V1: usize = 112;
const SB_MEMBER_LEN: usize = 24;
/// A journal's entry: version 3's (with the writer epoch); versions 1 and 2
/// have `SB_JOURNAL_LEN_V2`.
const SB_JOURNAL_LEN: usize = 96;
const SB_JOURNAL_LEN_V2: usize = 88;

/// Why a structure failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    BadMagic,
    BadChecksum,
    BadVersion(u16),
    Truncated,
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic => write!(f, "bad magic"),
            DecodeError::BadChecksum => write!(f, "checksum mismatch"),
            DecodeError::BadVersion(v) => write!(f, "unsupported format version {v}"),
            DecodeError::Truncated => write!(f, "truncated"),
            DecodeError::Invalid(what) => write!(f, "invalid field: {what}"),
        }
    }
}

// ---------------------------------------------------------------------------
// little-endian helpers

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn get_16(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a
}

/// Rounds `v` up to a multiple of `align` (a power of two).
#[inline]
pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

// ---------------------------------------------------------------------------
// records

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub lsn: u64,
    pub epoch: u64,
    pub prev_crc: u32,
    pub flags: u16,
}

impl RecordHeader {
    /// Total bytes of header plus payload.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + self.len as usize
    }
}

/// Encodes the header of a record whose payload CRC32C is `payload_crc` into
/// `out[..32]` and returns the record's CRC.
///
/// The record CRC is `crc32c_append(crc32c(payload), header[4..32])`: the
/// payload's CRC can be computed before the record's place in the chain is
/// known, and the header (holding `lsn`, `epoch`, `prev_crc`) is folded in last.
pub fn encode_record_header(
    out: &mut [u8],
    payload_crc: u32,
    len: u32,
    lsn: u64,
    epoch: u64,
    prev_crc: u32,
    flags: u16,
) -> u32 {
    let h = &mut out[..RECORD_HEADER_LEN];
    put_u32(h, 4, len);
    put_u64(h, 8, lsn);
    put_u64(h, 16, epoch);
    put_u32(h, 24, prev_crc);
    put_u16(h, 28, flags);
    put_u16(h, 30, RECORD_MAGIC);
    let crc = crc32c::crc32c_append(payload_crc, &h[4..RECORD_HEADER_LEN]);
    put_u32(h, 0, crc);
    crc
}

/// Encodes header and payload into `out`, which must hold
/// `RECORD_HEADER_LEN + payload.len()` bytes. Returns the record's CRC.
pub fn encode_record(out: &mut [u8], payload: &[u8], lsn: u64, epoch: u64, prev_crc: u32, flags: u16) -> u32 {
    let pcrc = crc32c::crc32c(payload);
    out[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload.len()].copy_from_slice(payload);
    encode_record_header(out, pcrc, payload.len() as u32, lsn, epoch, prev_crc, flags)
}

/// Sets `FLAG_BATCH_END` on an encoded record header (`hdr[..32]`) whose
/// payload CRC is `payload_crc`, and recomputes the record CRC, which it returns.
pub fn set_batch_end(hdr: &mut [u8], payload_crc: u32) -> u32 {
    let flags = get_u16(hdr, 28) | FLAG_BATCH_END;
    put_u16(hdr, 28, flags);
    let crc = crc32c::crc32c_append(payload_crc, &hdr[4..RECORD_HEADER_LEN]);
    put_u32(hdr, 0, crc);
    crc
}

/// Parses a record header without checking its CRC (the payload is needed
/// for that). Returns `None` if the magic is wrong.
pub fn parse_record_header(b: &[u8]) -> Option<RecordHeader> {
    if b.len() < RECORD_HEADER_LEN || get_u16(b, 30) != RECORD_MAGIC {
        return None;
    }
    Some(RecordHeader {
        crc: get_u32(b, 0),
        len: get_u32(b, 4),
        lsn: get_u64(b, 8),
        epoch: get_u64(b, 16),
        prev_crc: get_u32(b, 24),
        flags: get_u16(b, 28),
    })
}

/// Checks a whole record (header + payload in `rec`) against its CRC.
pub fn record_crc_ok(h: &RecordHeader, rec: &[u8]) -> bool {
    let len = h.len as usize;
    if rec.len() < RECORD_HEADER_LEN + len {
        return false;
    }
    let pcrc = crc32c::crc32c(&rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]);
    crc32c::crc32c_append(pcrc, &rec[4..RECORD_HEADER_LEN]) == h.crc
}

/// Where the chain is expected to continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPos {
    /// Byte offset of the next record, relative to the start of the buffer.
    pub off: usize,
    /// LSN the next record must carry.
    pub lsn: u64,
    /// CRC the next record's `prev_crc` must equal.
    pub prev_crc: u32,
}

/// Why `scan_chain` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// The buffer ends before the next record is complete; read more from
    /// `pos.off` (the record may span past the buffer).
    NeedMore,
    /// The bytes at `pos.off` are not the next record of this chain (zeroes,
    /// stale data, a torn or corrupt write, or the real end of the log).
    End,
    /// The caller's `visit` asked to stop.
    Stopped,
}

/// A record found by `scan_chain`.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub header: RecordHeader,
    /// Offset of the record in the buffer.
    pub off: usize,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Walks the record chain in `buf` from `pos`, calling `visit` for every
/// record that is valid and continues the chain. Stops at the first record
/// that does not. `block` is the block size (batch ends pad to it).
/// `max_len` bounds the payload length accepted. Pure: no I/O.
///
/// `visit` returns `false` to stop early. On return `pos` is where the chain
/// would continue.
pub fn scan_chain<'a>(
    buf: &'a [u8],
    pos: &mut ChainPos,
    block: usize,
    max_len: u32,
    mut visit: impl FnMut(&Found<'a>) -> bool,
) -> ScanStop {
    loop {
        let off = pos.off;
        if off + RECORD_HEADER_LEN > buf.len() {
            return ScanStop::NeedMore;
        }
        let h = match parse_record_header(&buf[off..]) {
            Some(h) => h,
            None => return ScanStop::End,
        };
        if h.lsn != pos.lsn || h.prev_crc != pos.prev_crc || h.len > max_len {
            return ScanStop::End;
        }
        let end = off + h.total_len();
        if end > buf.len() {
            return ScanStop::NeedMore;
        }
        if !record_crc_ok(&h, &buf[off..end]) {
            return ScanStop::End;
        }
        let found = Found { header: h, off, payload: &buf[off + RECORD_HEADER_LEN..end] };
        pos.off = if h.flags & FLAG_BATCH_END != 0 { align_up(end as u64, block as u64) as usize } else { end };
        pos.lsn += 1;
        pos.prev_crc = h.crc;
        if !visit(&found) {
            return ScanStop::Stopped;
        }
    }
}

// ---------------------------------------------------------------------------
// segment header

/// The header in the first block of a segment slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub set_uuid: [u8; 16],
    pub journal_id: u64,
    pub seq: u64,
    pub epoch: u64,
    pub first_lsn: u64,
    /// CRC of the last record of the previous segment (0 for a journal's first).
    pub prev_crc: u32,
    /// Random per use of the slot; makes the header CRC, and so the chain, unique.
    pub nonce: u64,
}

impl SegmentHeader {
    /// Encodes into `out[..SEGMENT_HEADER_LEN]` and returns the header CRC,
    /// which the segment's first record chains to.
    pub fn encode(&self, out: &mut [u8]) -> u32 {
        let b = &mut out[..SEGMENT_HEADER_LEN];
        b.fill(0);
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(b, 12, FORMAT_VERSION);
        b[16..32].copy_from_slice(&self.set_uuid);
        put_u64(b, 32, self.journal_id);
        put_u64(b, 40, self.seq);
        put_u64(b, 48, self.epoch);
        put_u64(b, 56, self.first_lsn);
        put_u32(b, 64, self.prev_crc);
        put_u64(b, 72, self.nonce);
        let crc = crc32c::crc32c(&b[12..SEGMENT_HEADER_LEN]);
        put_u32(b, 8, crc);
        crc
    }

    /// Decodes and checks a segment header; returns it with its CRC.
    pub fn decode(b: &[u8]) -> Result<(SegmentHeader, u32), DecodeError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let crc = get_u32(b, 8);
        if crc32c::crc32c(&b[12..SEGMENT_HEADER_LEN]) != crc {
            return Err(DecodeError::BadChecksum);
        }
        let v = get_u16(b, 12);
        if v != FORMAT_VERSION {
            return Err(DecodeError::BadVersion(v));
        }
        Ok((
            SegmentHeader {
                set_uuid: get_16(b, 16),
                journal_id: get_u64(b, 32),
                seq: get_u64(b, 40),
                epoch: get_u64(b, 48),
                first_lsn: get_u64(b, 56),
                prev_crc: get_u32(b, 64),
                nonce: get_u64(b, 72),
            },
            crc,
        ))
    }
}

// ---------------------------------------------------------------------------
// superblock

/// Health of a mirror member as recorded in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Holds every acknowledged record: read from, counted for durability.
    Healthy,
    /// Out of the set: never read or written.
    Failed,
    /// Being resilvered (md's recovery, ZFS's resilver): written by every
    /// append, neither read from nor counted for durability. Every slot
    /// below `next_slot` was copied (md's `recovery_offset`). `replaces`:
    /// the slot of a healthy member it takes the place of, which leaves the
    /// set once this one is resilvered.
    Rebuilding { next_slot: u32, replaces: Option<u16> },
}

impl Health {
    /// `healthy`, `failed` or `rebuilding`.
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Failed => "failed",
            Health::Rebuilding { .. } => "rebuilding",
        }
    }

    /// (health byte, next slot, replaced member's slot + 1).
    fn code(self) -> (u8, u32, u8) {
        match self {
            Health::Healthy => (0, 0, 0),
            Health::Failed => (1, 0, 0),
            Health::Rebuilding { next_slot, replaces } => (2, next_slot, replaces.map_or(0, |r| r as u8 + 1)),
        }
    }
}

/// One member of the mirror set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    pub uuid: [u8; 16],
    pub slot: u16,
    pub health: Health,
}

/// One journal's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub id: u64,
    /// Records with an LSN below the mark may be reclaimed.
    pub mark: u64,
    pub name: String,
    /// On a replica: this journal may lack records its primary
    /// acknowledged (it is being sent again whole, or was created from the
    /// primary's list with records it does not hold yet). Set before
    /// anything is dropped, cleared once the replica is durable up to where
    /// the primary's journal ended when the session began. A node with an
    /// incomplete journal refuses to be promoted (docs/replication.md).
    pub incomplete: bool,
    /// The journal's writer epoch: the newest writer claim (0: never
    /// claimed). Appends and marks that name a writer epoch are taken only
    /// with this one (docs/protocol.md, `Claim`). Never lowered.
    pub writer: u64,
}

/// Superblock flag: formatted as a replica of a primary
/// (`replication::bootstrap`) and not yet given that primary's journals.
const SB_FLAG_UNSYNCED: u32 = 1;
/// Journal entry flag: see `JournalEntry::incomplete`.
const JOURNAL_FLAG_INCOMPLETE: u8 = 1;

/// The superblock. Every member holds two copies (A at offset 0, B at
/// `SUPERBLOCK_REGION`); generation `g` is written to copy `g % 2`, so a torn
/// write leaves the previous generation intact in the other copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u32,
    pub generation: u64,
    pub set_uuid: [u8; 16],
    /// The member this copy is stored on.
    pub member_uuid: [u8; 16],
    pub segment_size: u64,
    pub epoch: u64,
    /// Bytes of each member used by the set (the smallest member's size).
    pub device_size: u64,
    pub next_journal_id: u64,
    /// Upper bound on bytes that may be in flight past the durable tail of a
    /// journal (batches in flight × batch size). Recovery zeroes this much
    /// past the end of the chain so an unacknowledged batch that landed behind
    /// a hole can never be revived.
    pub inflight_window: u64,
    /// The runs this set's history holds: its own starts and promotions,
    /// and those of the primaries it followed (`epoch::History`).
    pub history: crate::epoch::History,
    /// Formatted as a replica of a primary and not yet given its journals
    /// (until then it holds none of what the primary acknowledged).
    pub unsynced: bool,
    pub members: Vec<MemberInfo>,
    pub journals: Vec<JournalEntry>,
}

impl Superblock {
    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        SB_FIXED_LEN + self.members.len() * SB_MEMBER_LEN + self.journals.len() * SB_JOURNAL_LEN
    }

    /// Encodes into `out` (at least `encoded_len()` bytes, at most
    /// `SUPERBLOCK_REGION`). Bytes after the encoding are left untouched.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        let len = self.encoded_len();
        if len > out.len() || len as u64 > SUPERBLOCK_REGION {
            return Err(DecodeError::Invalid("superblock too large"));
        }
        if self.members.len() > MAX_MEMBERS || self.journals.len() > MAX_JOURNALS {
            return Err(DecodeError::Invalid("too many members or journals"));
        }
        let b = &mut out[..len];
        b.fill(0);
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u16(b, 12, SUPERBLOCK_VERSION);
        put_u32(b, 16, len as u32);
        put_u32(b, 20, self.block_size);
        put_u64(b, 24, self.generation);
        b[32..48].copy_from_slice(&self.set_uuid);
        b[48..64].copy_from_slice(&self.member_uuid);
        put_u16(b, 64, self.members.len() as u16);
        put_u16(b, 66, self.journals.len() as u16);
        put_u32(b, 68, if self.unsynced { SB_FLAG_UNSYNCED } else { 0 });
        put_u64(b, 72, self.segment_size);
        put_u64(b, 80, self.epoch);
        put_u64(b, 88, self.device_size);
        put_u64(b, 96, self.next_journal_id);
        put_u64(b, 104, self.inflight_window);
        put_u32(b, 112, self.history.floor());
        put_u32(b, 116, self.history.runs().len() as u32);
        for (i, r) in self.history.runs().iter().enumerate() {
            let at = 120 + 12 * i;
            put_u32(b, at, r.term);
            put_u32(b, at + 4, r.max_start);
            put_u32(b, at + 8, r.nonce);
        }
        let mut off = SB_FIXED_LEN;
        for m in &self.members {
            b[off..off + 16].copy_from_slice(&m.uuid);
            put_u16(b, off + 16, m.slot);
            let (code, next_slot, replaces) = m.health.code();
            b[off + 18] = code;
            put_u32(b, off + 19, next_slot);
            b[off + 23] = replaces;
            off += SB_MEMBER_LEN;
        }
        for j in &self.journals {
            let name = j.name.as_bytes();
            if name.is_empty() || name.len() > MAX_JOURNAL_NAME {
                return Err(DecodeError::Invalid("journal name length"));
            }
            put_u64(b, off, j.id);
            put_u64(b, off + 8, j.mark);
            put_u16(b, off + 16, name.len() as u16);
            b[off + 18..off + 18 + name.len()].copy_from_slice(name);
            b[off + 82] = if j.incomplete { JOURNAL_FLAG_INCOMPLETE } else { 0 };
            put_u64(b, off + 88, j.writer);
            off += SB_JOURNAL_LEN;
        }
        let crc = crc32c::crc32c(&b[12..len]);
        put_u32(b, 8, crc);
        Ok(len)
    }

    /// Decodes and checks a superblock copy.
    pub fn decode(b: &[u8]) -> Result<Superblock, DecodeError> {
        if b.len() < SB_FIXED_LEN_V1 {
            return Err(DecodeError::Truncated);
        }
        if b[0..8] != SUPERBLOCK_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let len = get_u32(b, 16) as usize;
        if !(SB_FIXED_LEN_V1..=b.len()).contains(&len) {
            return Err(DecodeError::Truncated);
        }
        if crc32c::crc32c(&b[12..len]) != get_u32(b, 8) {
            return Err(DecodeError::BadChecksum);
        }
        let v = get_u16(b, 12);
        let (fixed, jlen) = match v {
            1 => (SB_FIXED_LEN_V1, SB_JOURNAL_LEN_V2),
            2 => (SB_FIXED_LEN, SB_JOURNAL_LEN_V2),
            SUPERBLOCK_VERSION => (SB_FIXED_LEN, SB_JOURNAL_LEN),
            _ => return Err(DecodeError::BadVersion(v)),
        };
        let nm = get_u16(b, 64) as usize;
        let nj = get_u16(b, 66) as usize;
        if nm > MAX_MEMBERS || nj > MAX_JOURNALS {
            return Err(DecodeError::Invalid("member or journal count"));
        }
        if fixed + nm * SB_MEMBER_LEN + nj * jlen != len {
            return Err(DecodeError::Invalid("length"));
        }
        let epoch = get_u64(b, 80);
        let unsynced = match get_u32(b, 68) {
            0 => false,
            SB_FLAG_UNSYNCED => true,
            _ => return Err(DecodeError::Invalid("superblock flags")),
        };
        let history = if v == 1 {
            crate::epoch::History::of(crate::epoch::Epoch::from_raw(epoch))
        } else {
            let n = get_u32(b, 116) as usize;
            if n > crate::epoch::History::MAX_TERMS {
                return Err(DecodeError::Invalid("history length"));
            }
            let runs = (0..n)
                .map(|i| crate::epoch::Run {
                    term: get_u32(b, 120 + 12 * i),
                    max_start: get_u32(b, 124 + 12 * i),
                    nonce: get_u32(b, 128 + 12 * i),
                })
                .collect();
            crate::epoch::History::from_parts(get_u32(b, 112), runs).map_err(DecodeError::Invalid)?
        };
        let mut off = fixed;
        let mut members = Vec::with_capacity(nm);
        for _ in 0..nm {
            let health = match b[off + 18] {
                0 => Health::Healthy,
                1 => Health::Failed,
                2 => Health::Rebuilding {
                    next_slot: get_u32(b, off + 19),
                    replaces: b[off + 23].checked_sub(1).map(u16::from),
                },
                _ => return Err(DecodeError::Invalid("member health")),
            };
            members.push(MemberInfo { uuid: get_16(b, off), slot: get_u16(b, off + 16), health });
            off += SB_MEMBER_LEN;
        }
        let mut journals = Vec::with_capacity(nj);
        for _ in 0..nj {
            let nlen = get_u16(b, off + 16) as usize;
            if nlen == 0 || nlen > MAX_JOURNAL_NAME {
                return Err(DecodeError::Invalid("journal name length"));
            }
            let name = std::str::from_utf8(&b[off + 18..off + 18 + nlen])
                .map_err(|_| DecodeError::Invalid("journal name utf-8"))?
                .to_string();
            let incomplete = match b[off + 82] {
                0 => false,
                JOURNAL_FLAG_INCOMPLETE => true,
                _ => return Err(DecodeError::Invalid("journal flags")),
            };
            let writer = if jlen == SB_JOURNAL_LEN { get_u64(b, off + 88) } else { 0 };
            journals.push(JournalEntry { id: get_u64(b, off), mark: get_u64(b, off + 8), name, incomplete, writer });
            off += jlen;
        }
        let block_size = get_u32(b, 20);
        let segment_size = get_u64(b, 72);
        if !block_size.is_power_of_two()
            || block_size < 512
            || segment_size % block_size as u64 != 0
            || segment_size < 4 * block_size as u64
        {
            return Err(DecodeError::Invalid("block or segment size"));
        }
        Ok(Superblock {
            block_size,
            generation: get_u64(b, 24),
            set_uuid: get_16(b, 32),
            member_uuid: get_16(b, 48),
            segment_size,
            epoch,
            device_size: get_u64(b, 88),
            next_journal_id: get_u64(b, 96),
            inflight_window: get_u64(b, 104),
            history,
            unsynced,
            members,
            journals,
        })
    }

    /// Byte offset of the superblock copy that generation `g` is written to.
    pub fn copy_offset(generation: u64) -> u64 {
        (generation % 2) * SUPERBLOCK_REGION
    }

    /// Number of segment slots that fit on a member.
    pub fn slot_count(&self) -> u64 {
        self.device_size.saturating_sub(DATA_START) / self.segment_size
    }
}

/// The longest record body that fits in a segment of this geometry: the
/// bound for reading records back. Not the configured `max_record_size`,
/// which only limits new appends: a record written under a larger limit is
/// still a valid record, and what recovery or a reader accepts must never
/// depend on a value the operator may change between runs.
pub fn max_record_body(segment_size: u64, block_size: u32) -> u32 {
    let room = segment_size.saturating_sub(block_size as u64 + RECORD_HEADER_LEN as u64);
    room.min(u32::MAX as u64) as u32
}

/// Byte offset of segment slot `slot` on every member.
pub fn slot_offset(slot: u64, segment_size: u64) -> u64 {
    DATA_START + slot * segment_size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            block_size: 4096,
            generation: 7,
            set_uuid: [1; 16],
            member_uuid: [2; 16],
            segment_size: 1 << 20,
            epoch: 3,
            device_size: 64 << 20,
            next_journal_id: 9,
            inflight_window: 1 << 20,
            history: {
                let mut h = crate::epoch::History::of(crate::epoch::Epoch::from_raw(3));
                h.add(crate::epoch::Epoch::from_raw(2 << 32), || 77);
                h
            },
            unsynced: true,
            members: vec![
                MemberInfo { uuid: [2; 16], slot: 0, health: Health::Healthy },
                MemberInfo { uuid: [3; 16], slot: 1, health: Health::Failed },
                MemberInfo {
                    uuid: [4; 16],
                    slot: 2,
                    health: Health::Rebuilding { next_slot: 77_000, replaces: Some(1) },
                },
            ],
            journals: vec![
                JournalEntry { id: 1, mark: 0, name: "default".into(), incomplete: false, writer: 0 },
                JournalEntry { id: 8, mark: 1234, name: "x".repeat(64), incomplete: true, writer: 7 << 32 | 3 },
            ],
        }
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let s = sb();
        let mut buf = vec![0u8; 4096];
        let n = s.encode(&mut buf).unwrap();
        assert_eq!(Superblock::decode(&buf[..n]).unwrap(), s);
        assert_eq!(Superblock::decode(&buf).unwrap(), s);
        for i in [0usize, 9, 20, 70, n - 1] {
            let mut c = buf.clone();
            c[i] ^= 0x40;
            assert!(Superblock::decode(&c).is_err(), "flip at {i} accepted");
        }
    }

    /// `s` encoded in an older layout: version 1 (no history, 88-byte
    /// journal entries) or 2 (88-byte journal entries, no writer epoch).
    fn encode_old(s: &Superblock, version: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = s.encode(&mut buf).unwrap();
        let fixed = if version == 1 { SB_FIXED_LEN_V1 } else { SB_FIXED_LEN };
        let mut old = buf[..fixed].to_vec();
        let members = SB_FIXED_LEN + s.members.len() * SB_MEMBER_LEN;
        old.extend_from_slice(&buf[SB_FIXED_LEN..members]);
        for j in buf[members..n].chunks(SB_JOURNAL_LEN) {
            old.extend_from_slice(&j[..SB_JOURNAL_LEN_V2]);
        }
        put_u16(&mut old, 12, version);
        let len = old.len() as u32;
        put_u32(&mut old, 16, len);
        let crc = crc32c::crc32c(&old[12..]);
        put_u32(&mut old, 8, crc);
        old
    }

    #[test]
    fn a_version_1_superblock_is_read_with_the_history_of_its_epoch() {
        let mut s = Superblock { history: crate::epoch::History::of(crate::epoch::Epoch::from_raw(3)), ..sb() };
        // Versions 1 and 2 have no writer epochs: read as never claimed.
        let claimed = s.clone();
        for j in &mut s.journals {
            j.writer = 0;
        }
        let mut old = encode_old(&claimed, 1);
        assert_eq!(Superblock::decode(&old).unwrap(), s);
        // An unknown version is refused by name, not misread.
        put_u16(&mut old, 12, 4);
        let crc = crc32c::crc32c(&old[12..]);
        put_u32(&mut old, 8, crc);
        assert_eq!(Superblock::decode(&old), Err(DecodeError::BadVersion(4)));
    }

    #[test]
    fn a_version_2_superblock_is_read_with_its_journals_never_claimed() {
        let claimed = sb();
        assert!(claimed.journals.iter().any(|j| j.writer != 0));
        let mut s = claimed.clone();
        for j in &mut s.journals {
            j.writer = 0;
        }
        assert_eq!(Superblock::decode(&encode_old(&claimed, 2)).unwrap(), s);
        // Version 3 keeps the writer epochs.
        let mut buf = vec![0u8; 4096];
        let n = claimed.encode(&mut buf).unwrap();
        assert_eq!(Superblock::decode(&buf[..n]).unwrap(), claimed);
    }

    #[test]
    fn segment_header_round_trip() {
        let h = SegmentHeader {
            set_uuid: [5; 16],
            journal_id: 4,
            seq: 10,
            epoch: 2,
            first_lsn: 999,
            prev_crc: 0xdead_beef,
            nonce: 42,
        };
        let mut b = vec![0u8; 4096];
        let crc = h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b).unwrap(), (h, crc));
        b[40] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(DecodeError::BadChecksum));
        let h2 = SegmentHeader { nonce: 43, ..h };
        assert_ne!(h2.encode(&mut b), crc, "nonce must change the chain seed");
    }

    /// Lays out batches the way the engine does and scans them back.
    fn layout(batches: &[Vec<Vec<u8>>], block: usize, seed: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut prev = seed;
        let mut lsn = 100;
        for batch in batches {
            for (i, p) in batch.iter().enumerate() {
                let start = buf.len();
                buf.resize(start + RECORD_HEADER_LEN + p.len(), 0);
                let flags = if i + 1 == batch.len() { FLAG_BATCH_END } else { 0 };
                prev = encode_record(&mut buf[start..], p, lsn, 1, prev, flags);
                lsn += 1;
            }
            let padded = align_up(buf.len() as u64, block as u64) as usize;
            buf.resize(padded, 0);
        }
        buf
    }

    #[test]
    fn chain_scan_reads_all_and_stops_at_corruption() {
        let batches = vec![
            vec![b"a".to_vec(), vec![7u8; 5000]],
            vec![vec![]],
            vec![b"hello".to_vec(), b"world".to_vec(), vec![1u8; 100]],
        ];
        let buf = layout(&batches, 512, 77);
        let mut pos = ChainPos { off: 0, lsn: 100, prev_crc: 77 };
        let mut got = Vec::new();
        let stop = scan_chain(&buf, &mut pos, 512, 1 << 20, |f| {
            got.push(f.payload.to_vec());
            true
        });
        let want: Vec<Vec<u8>> = batches.concat();
        assert_eq!(got, want);
        assert_eq!(stop, ScanStop::NeedMore);
        assert_eq!(pos.lsn, 106);
        assert_eq!(pos.off, buf.len());

        // wrong seed: nothing is accepted
        let mut pos = ChainPos { off: 0, lsn: 100, prev_crc: 78 };
        assert_eq!(scan_chain(&buf, &mut pos, 512, 1 << 20, |_| true), ScanStop::End);

        // a flipped payload bit ends the chain at that record
        let mut bad = buf.clone();
        bad[RECORD_HEADER_LEN + 1 + RECORD_HEADER_LEN + 10] ^= 4;
        let mut pos = ChainPos { off: 0, lsn: 100, prev_crc: 77 };
        let mut n = 0;
        assert_eq!(
            scan_chain(&bad, &mut pos, 512, 1 << 20, |_| {
                n += 1;
                true
            }),
            ScanStop::End
        );
        assert_eq!(n, 1);
        assert_eq!(pos.lsn, 101);

        // truncated buffer asks for more
        let mut pos = ChainPos { off: 0, lsn: 100, prev_crc: 77 };
        assert_eq!(scan_chain(&buf[..100], &mut pos, 512, 1 << 20, |_| true), ScanStop::NeedMore);
    }

    #[test]
    fn set_batch_end_keeps_record_valid() {
        let mut b = vec![0u8; 64];
        encode_record(&mut b, b"payload", 1, 1, 5, 0);
        let crc = set_batch_end(&mut b, crc32c::crc32c(b"payload"));
        let h = parse_record_header(&b).unwrap();
        assert_eq!(h.crc, crc);
        assert_eq!(h.flags, FLAG_BATCH_END);
        assert!(record_crc_ok(&h, &b));
    }
}

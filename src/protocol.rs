//! The wire protocol, version 1: frames and messages. Pure encode/decode, no
//! I/O, so it can be property-tested and fuzzed alone. `docs/protocol.md`
//! describes every byte; keep the two in step.
//!
//! A frame is a 24-byte header and a body:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `0x4C4D` ("ML") |
//! | 2 | 1 | protocol version (1) |
//! | 3 | 1 | opcode |
//! | 4 | 8 | request id (chosen by the client; echoed in responses) |
//! | 12 | 4 | body length |
//! | 16 | 4 | CRC32C of header bytes 0..16 followed by the body |
//! | 20 | 4 | zero |
//!
//! Invariant: `decode_frame` hands out a body only after its length was
//! checked against the limit and its CRC verified; nothing in a frame is
//! trusted before that.

use std::fmt;

/// Frame header length.
pub const HEADER_LEN: usize = 24;
/// Frame magic ("ML").
pub const MAGIC: u16 = 0x4C4D;
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Default largest frame body a peer accepts.
pub const DEFAULT_MAX_BODY: u32 = 16 << 20;

/// Operation codes. Requests are below 0x80; each response carries its
/// request's opcode with 0x80 set; `ERROR` and `RECORDS` are server frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Hello = 0x01,
    Append = 0x02,
    Read = 0x03,
    Subscribe = 0x04,
    Credit = 0x05,
    SetMark = 0x06,
    GetMark = 0x07,
    CreateJournal = 0x08,
    DeleteJournal = 0x09,
    ListJournals = 0x0A,
    Status = 0x0B,
    /// Make this replica the primary (raises the epoch).
    Promote = 0x0C,
    /// Make this primary a replica (planned; optionally once the replica
    /// holds everything).
    Demote = 0x0D,
    /// Let this replica's next session cut back records of a run its
    /// primary never followed (after a split brain was reported).
    DiscardDiverged = 0x0E,
    /// Start, cancel or ask about a scrub of every journal on every mirror.
    Scrub = 0x0F,
    /// Replace a mirror member by a new device, resilvered in the background.
    Replace = 0x10,
    /// Take a failed or rebuilding member out of the set.
    Detach = 0x11,
    /// Cross-site scrub: a JSON request (digests, a verified stretch, a repair).
    Sites = 0x12,
    /// Claim a journal for a new writer (fences the earlier one).
    Claim = 0x13,
    /// Server push: records of a subscription.
    Records = 0x7E,
    /// Server: a request failed.
    Error = 0x7F,
}

/// Set on a response's opcode.
pub const RESPONSE: u8 = 0x80;

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            0x01 => Op::Hello,
            0x02 => Op::Append,
            0x03 => Op::Read,
            0x04 => Op::Subscribe,
            0x05 => Op::Credit,
            0x06 => Op::SetMark,
            0x07 => Op::GetMark,
            0x08 => Op::CreateJournal,
            0x09 => Op::DeleteJournal,
            0x0A => Op::ListJournals,
            0x0B => Op::Status,
            0x0C => Op::Promote,
            0x0D => Op::Demote,
            0x0E => Op::DiscardDiverged,
            0x0F => Op::Scrub,
            0x10 => Op::Replace,
            0x11 => Op::Detach,
            0x12 => Op::Sites,
            0x13 => Op::Claim,
            0x7E => Op::Records,
            0x7F => Op::Error,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded. Each maps to a documented error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    BadMagic,
    UnsupportedVersion(u8),
    TooLarge { len: u32, max: u32 },
    BadChecksum,
    UnknownOpcode(u8),
    Malformed(&'static str),
}

impl ProtoError {
    /// Numeric code (the 100s are protocol errors; see docs/protocol.md).
    pub fn code(&self) -> u16 {
        match self {
            ProtoError::BadMagic => codes::BAD_MAGIC,
            ProtoError::UnsupportedVersion(_) => codes::UNSUPPORTED_VERSION,
            ProtoError::TooLarge { .. } => codes::FRAME_TOO_LARGE,
            ProtoError::BadChecksum => codes::BAD_CHECKSUM,
            ProtoError::UnknownOpcode(_) => codes::UNKNOWN_OPCODE,
            ProtoError::Malformed(_) => codes::MALFORMED,
        }
    }
    /// Whether the connection must be closed: the byte stream can no longer
    /// be trusted to be in step (the frame boundary itself is in doubt).
    pub fn fatal(&self) -> bool {
        !matches!(self, ProtoError::UnknownOpcode(_) | ProtoError::Malformed(_))
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::BadMagic => write!(f, "bad frame magic"),
            ProtoError::UnsupportedVersion(v) => {
                write!(f, "unsupported protocol version {v} (this peer speaks {VERSION})")
            }
            ProtoError::TooLarge { len, max } => write!(f, "frame body of {len} bytes exceeds the limit of {max}"),
            ProtoError::BadChecksum => write!(f, "frame checksum mismatch"),
            ProtoError::UnknownOpcode(o) => write!(f, "unknown opcode 0x{o:02x}"),
            ProtoError::Malformed(what) => write!(f, "malformed body: {what}"),
        }
    }
}

/// The table of every error code (engine, protocol, daemon): [`crate::codes`].
pub use crate::codes;

/// A checked frame, borrowing its body from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The raw opcode byte (a request opcode, or one with `RESPONSE` set).
    pub opcode: u8,
    pub request_id: u64,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// The operation, with the response bit cleared.
    pub fn op(&self) -> Result<Op, ProtoError> {
        Op::from_u8(self.opcode & !RESPONSE).ok_or(ProtoError::UnknownOpcode(self.opcode))
    }
    pub fn is_response(&self) -> bool {
        self.opcode & RESPONSE != 0 && self.opcode != Op::Records as u8 && self.opcode != Op::Error as u8
    }
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: not enough bytes
/// yet. `Ok(Some((frame, n)))`: a checked frame and the bytes it used.
/// The header is checked before waiting for a body, so an oversized or
/// garbage length is refused at once rather than buffered.
pub fn decode_frame(buf: &[u8], max_body: u32) -> Result<Option<(Frame<'_>, usize)>, ProtoError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if u16::from_le_bytes([buf[0], buf[1]]) != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[2] != VERSION {
        return Err(ProtoError::UnsupportedVersion(buf[2]));
    }
    let len = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if len > max_body {
        return Err(ProtoError::TooLarge { len, max: max_body });
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let crc = u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]);
    let body = &buf[HEADER_LEN..total];
    if crc32c::crc32c_append(crc32c::crc32c(&buf[..16]), body) != crc {
        return Err(ProtoError::BadChecksum);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[4..12]);
    Ok(Some((Frame { opcode: buf[3], request_id: u64::from_le_bytes(id), body }, total)))
}

/// Appends a frame (header and body) to `out`. `body` fills the body.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, request_id: u64, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    encode_frame_unsealed(out, opcode, request_id, body);
    seal_frame(&mut out[start..]);
}

/// `encode_frame` without the CRC: for a sender that sets fields (request
/// id, sequence) later and then calls `seal_frame` once.
pub fn encode_frame_unsealed(out: &mut Vec<u8>, opcode: u8, request_id: u64, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(opcode);
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&[0u8; 12]); // length, crc, zero: filled below
    body(out);
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 12..start + 16].copy_from_slice(&len.to_le_bytes());
}

/// Sets a whole encoded frame's CRC (header bytes 0..16, then the body).
pub fn seal_frame(frame: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..16]), &frame[HEADER_LEN..]);
    frame[16..20].copy_from_slice(&crc.to_le_bytes());
}

// ---------------------------------------------------------------------------
// body fields

/// Reads fields from a body, front to back.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.b.len() < n {
            return Err(ProtoError::Malformed("body ends early"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// A string: u16 length, UTF-8 bytes.
    pub fn str(&mut self) -> Result<&'a str, ProtoError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
    }
    /// A blob: u32 length, bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<(), ProtoError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed("trailing bytes"))
        }
    }
    pub fn remaining(&self) -> usize {
        self.b.len()
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

// ---------------------------------------------------------------------------
// messages

/// How durable an append must be before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Durability {
    /// The journal's configured default.
    Default = 0,
    /// Durable on every healthy local mirror.
    Local = 1,
    /// Also received in the replica's memory.
    RemoteReceived = 2,
    /// Also durable on the replica's mirrors.
    RemoteDurable = 3,
}

/// Bit 7 of an append's durability byte: the client sent this append
/// before (after a reconnect it may have been written).
pub const RESEND: u8 = 0x80;

/// Bit 6 of an append's durability byte: a writer epoch (u64) follows the
/// byte; the append is taken only if it is the journal's (`Claim`).
pub const WRITER: u8 = 0x40;

impl Durability {
    pub fn from_u8(v: u8) -> Result<Durability, ProtoError> {
        Ok(match v {
            0 => Durability::Default,
            1 => Durability::Local,
            2 => Durability::RemoteReceived,
            3 => Durability::RemoteDurable,
            _ => return Err(ProtoError::Malformed("unknown durability mode")),
        })
    }
}

/// A client request. Borrowed from the frame body: no copy of payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Versions the client speaks; the server answers with the one it chose.
    Hello {
        min_version: u8,
        max_version: u8,
        client: &'a str,
    },
    /// Records get consecutive LSNs. With `producer != 0`, the records carry
    /// sequence numbers `first_seq..first_seq + n`; a sequence the server has
    /// already written returns its original LSN instead of writing again.
    Append {
        journal: &'a str,
        durability: Durability,
        producer: u64,
        first_seq: u64,
        /// The client sent this append before (it may have been written):
        /// bit 7 of the durability byte (`RESEND`).
        resend: bool,
        /// The writer epoch this append is sent under (`WRITER`, bit 6):
        /// taken only if it is the journal's.
        writer: Option<u64>,
        records: Vec<&'a [u8]>,
    },
    /// Records from `from`, at most `max_count` and about `max_bytes`.
    Read {
        journal: &'a str,
        from: u64,
        max_count: u32,
        max_bytes: u32,
    },
    /// Stream records from `from` and follow the tail; the server sends
    /// `Records` frames while it has `credit_bytes` of credit.
    Subscribe {
        journal: &'a str,
        from: u64,
        credit_bytes: u32,
    },
    /// More credit for the subscription opened by request `subscription`.
    Credit {
        subscription: u64,
        bytes: u32,
    },
    /// `writer`: a trailing u64 when given; the mark moves only if it is
    /// the journal's writer epoch.
    SetMark {
        journal: &'a str,
        lsn: u64,
        writer: Option<u64>,
    },
    GetMark {
        journal: &'a str,
    },
    CreateJournal {
        journal: &'a str,
    },
    DeleteJournal {
        journal: &'a str,
    },
    ListJournals,
    Status,
    /// Answered with `Status` (the new role and epoch).
    /// `force`: even if this node is incomplete (it then loses what it
    /// lacks). Encoded as one byte after the header only when set.
    Promote {
        force: bool,
    },
    /// With `sync`, waits (up to `timeout_ms`) until the replica is durable
    /// at every journal's end before stepping down. Answered with `Status`.
    Demote {
        sync: bool,
        timeout_ms: u32,
    },
    /// Answered with `Status`.
    DiscardDiverged,
    /// Answered with `Status` (its `scrub` part: progress, what was found).
    Scrub {
        action: ScrubAction,
    },
    /// Replaces mirror member `old` (its device path or UUID) by the
    /// device at `new`, which is resilvered in the background; `force`:
    /// even if `new` holds another set's superblock. `re_add`: `new` is a
    /// failed member's device, brought back: only what it missed is
    /// copied (`old` is ignored). Answered with `Status` (its `resilver`
    /// part).
    Replace {
        old: &'a str,
        new: &'a str,
        force: bool,
        re_add: bool,
    },
    /// Takes mirror member `member` (its device path or UUID), failed or
    /// being resilvered (cancelling that), out of the set. Answered with
    /// `Status`.
    Detach {
        member: &'a str,
    },
    /// Cross-site scrub (`mirrorlog scrub-sites`): `request` is a JSON
    /// object (`sites::SitesRequest`); answered with `Status` holding the
    /// JSON answer.
    Sites {
        request: &'a str,
    },
    /// Raises the journal's writer epoch (fencing every earlier writer:
    /// their appends and marks are refused with `writer-fenced` from now
    /// on) and appends `payload` as the claim's record, answered with
    /// `Claimed` once it is durable at `durability`; every record of an
    /// earlier writer lies below its LSN.
    Claim {
        journal: &'a str,
        durability: Durability,
        payload: &'a [u8],
    },
}

/// What a `Scrub` request asks (its one body byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ScrubAction {
    /// How the running or last scrub goes.
    Status = 0,
    Start = 1,
    Cancel = 2,
}

/// A record as returned by `Read` and `Records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRecord<'a> {
    pub lsn: u64,
    pub epoch: u64,
    pub crc32c: u32,
    pub payload: &'a [u8],
}

/// A server response or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    Hello {
        version: u8,
        server: &'a str,
        epoch: u64,
        primary: bool,
    },
    /// The LSN of the first record; the rest follow densely.
    Appended {
        first_lsn: u64,
        count: u32,
    },
    /// The new writer epoch and the LSN of the claim's record.
    Claimed {
        writer: u64,
        lsn: u64,
    },
    /// Records, and the LSN to read next.
    Records {
        records: Vec<WireRecord<'a>>,
        next_lsn: u64,
    },
    Mark {
        lsn: u64,
    },
    Journals {
        names: Vec<&'a str>,
    },
    /// Status as a JSON document (for people and tools; not parsed here).
    Status {
        json: &'a str,
    },
    /// A request that needs no data back succeeded.
    Ok,
    Error {
        code: u16,
        message: &'a str,
    },
}

impl<'a> Request<'a> {
    pub fn op(&self) -> Op {
        match self {
            Request::Hello { .. } => Op::Hello,
            Request::Append { .. } => Op::Append,
            Request::Read { .. } => Op::Read,
            Request::Subscribe { .. } => Op::Subscribe,
            Request::Credit { .. } => Op::Credit,
            Request::SetMark { .. } => Op::SetMark,
            Request::GetMark { .. } => Op::GetMark,
            Request::CreateJournal { .. } => Op::CreateJournal,
            Request::DeleteJournal { .. } => Op::DeleteJournal,
            Request::ListJournals => Op::ListJournals,
            Request::Status => Op::Status,
            Request::Promote { .. } => Op::Promote,
            Request::Demote { .. } => Op::Demote,
            Request::DiscardDiverged => Op::DiscardDiverged,
            Request::Scrub { .. } => Op::Scrub,
            Request::Replace { .. } => Op::Replace,
            Request::Detach { .. } => Op::Detach,
            Request::Sites { .. } => Op::Sites,
            Request::Claim { .. } => Op::Claim,
        }
    }

    /// Appends this request as a frame.
    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        let start = out.len();
        self.encode_unsealed(request_id, out);
        seal_frame(&mut out[start..]);
    }

    /// Appends this request as a frame without its CRC (`seal_frame`).
    pub fn encode_unsealed(&self, request_id: u64, out: &mut Vec<u8>) {
        encode_frame_unsealed(out, self.op() as u8, request_id, |b| match self {
            Request::Hello { min_version, max_version, client } => {
                b.push(*min_version);
                b.push(*max_version);
                put_str(b, client);
            }
            Request::Append { journal, durability, producer, first_seq, resend, writer, records } => {
                put_str(b, journal);
                b.push(
                    *durability as u8 | if *resend { RESEND } else { 0 } | if writer.is_some() { WRITER } else { 0 },
                );
                if let Some(w) = writer {
                    b.extend_from_slice(&w.to_le_bytes());
                }
                b.extend_from_slice(&producer.to_le_bytes());
                b.extend_from_slice(&first_seq.to_le_bytes());
                b.extend_from_slice(&(records.len() as u32).to_le_bytes());
                for r in records {
                    put_bytes(b, r);
                }
            }
            Request::Read { journal, from, max_count, max_bytes } => {
                put_str(b, journal);
                b.extend_from_slice(&from.to_le_bytes());
                b.extend_from_slice(&max_count.to_le_bytes());
                b.extend_from_slice(&max_bytes.to_le_bytes());
            }
            Request::Subscribe { journal, from, credit_bytes } => {
                put_str(b, journal);
                b.extend_from_slice(&from.to_le_bytes());
                b.extend_from_slice(&credit_bytes.to_le_bytes());
            }
            Request::Credit { subscription, bytes } => {
                b.extend_from_slice(&subscription.to_le_bytes());
                b.extend_from_slice(&bytes.to_le_bytes());
            }
            Request::SetMark { journal, lsn, writer } => {
                put_str(b, journal);
                b.extend_from_slice(&lsn.to_le_bytes());
                if let Some(w) = writer {
                    b.extend_from_slice(&w.to_le_bytes());
                }
            }
            Request::Claim { journal, durability, payload } => {
                put_str(b, journal);
                b.push(*durability as u8);
                put_bytes(b, payload);
            }
            Request::GetMark { journal }
            | Request::CreateJournal { journal }
            | Request::DeleteJournal { journal }
            | Request::Detach { member: journal } => put_str(b, journal),
            Request::Sites { request } => put_bytes(b, request.as_bytes()),
            Request::ListJournals | Request::Status | Request::DiscardDiverged => {}
            Request::Scrub { action } => b.push(*action as u8),
            Request::Replace { old, new, force, re_add } => {
                b.push(*force as u8 | (*re_add as u8) << 1);
                put_str(b, old);
                put_str(b, new);
            }
            Request::Promote { force } => {
                if *force {
                    b.push(1);
                }
            }
            Request::Demote { sync, timeout_ms } => {
                b.push(*sync as u8);
                b.extend_from_slice(&timeout_ms.to_le_bytes());
            }
        });
    }

    /// Decodes a request frame's body. `max_records` bounds an append's
    /// record count (a cheap guard before any allocation).
    pub fn decode(frame: &Frame<'a>, max_records: u32) -> Result<Request<'a>, ProtoError> {
        if frame.opcode & RESPONSE != 0 {
            return Err(ProtoError::UnknownOpcode(frame.opcode));
        }
        let mut r = Reader::new(frame.body);
        let req = match frame.op()? {
            Op::Hello => Request::Hello { min_version: r.u8()?, max_version: r.u8()?, client: r.str()? },
            Op::Append => {
                let journal = r.str()?;
                let d = r.u8()?;
                let resend = d & RESEND != 0;
                let writer = if d & WRITER != 0 { Some(r.u64()?) } else { None };
                let durability = Durability::from_u8(d & !(RESEND | WRITER))?;
                let producer = r.u64()?;
                let first_seq = r.u64()?;
                let n = r.u32()?;
                if n == 0 {
                    return Err(ProtoError::Malformed("append of no records"));
                }
                // every record needs at least its 4-byte length
                if n > max_records || n as usize > r.remaining() / 4 {
                    return Err(ProtoError::Malformed("record count"));
                }
                let mut records = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    records.push(r.bytes()?);
                }
                Request::Append { journal, durability, producer, first_seq, resend, writer, records }
            }
            Op::Read => Request::Read { journal: r.str()?, from: r.u64()?, max_count: r.u32()?, max_bytes: r.u32()? },
            Op::Subscribe => Request::Subscribe { journal: r.str()?, from: r.u64()?, credit_bytes: r.u32()? },
            Op::Credit => Request::Credit { subscription: r.u64()?, bytes: r.u32()? },
            Op::SetMark => Request::SetMark {
                journal: r.str()?,
                lsn: r.u64()?,
                writer: if r.remaining() > 0 { Some(r.u64()?) } else { None },
            },
            Op::Claim => {
                Request::Claim { journal: r.str()?, durability: Durability::from_u8(r.u8()?)?, payload: r.bytes()? }
            }
            Op::GetMark => Request::GetMark { journal: r.str()? },
            Op::CreateJournal => Request::CreateJournal { journal: r.str()? },
            Op::DeleteJournal => Request::DeleteJournal { journal: r.str()? },
            Op::ListJournals => Request::ListJournals,
            Op::Status => Request::Status,
            Op::Promote => Request::Promote { force: r.remaining() > 0 && r.u8()? != 0 },
            Op::Demote => Request::Demote { sync: r.u8()? != 0, timeout_ms: r.u32()? },
            Op::DiscardDiverged => Request::DiscardDiverged,
            Op::Scrub => Request::Scrub {
                action: match r.u8()? {
                    0 => ScrubAction::Status,
                    1 => ScrubAction::Start,
                    2 => ScrubAction::Cancel,
                    _ => return Err(ProtoError::Malformed("unknown scrub action")),
                },
            },
            Op::Replace => {
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(ProtoError::Malformed("replace flags"));
                }
                Request::Replace { force: flags & 1 != 0, re_add: flags & 2 != 0, old: r.str()?, new: r.str()? }
            }
            Op::Detach => Request::Detach { member: r.str()? },
            Op::Sites => Request::Sites {
                request: std::str::from_utf8(r.bytes()?).map_err(|_| ProtoError::Malformed("request is not UTF-8"))?,
            },
            Op::Records | Op::Error => return Err(ProtoError::UnknownOpcode(frame.opcode)),
        };
        r.end()?;
        Ok(req)
    }
}

impl<'a> Response<'a> {
    /// Appends this response to request `op` as a frame.
    pub fn encode(&self, op: Op, request_id: u64, out: &mut Vec<u8>) {
        let opcode = match self {
            Response::Error { .. } => Op::Error as u8,
            Response::Records { .. } if op == Op::Subscribe => Op::Records as u8,
            _ => op as u8 | RESPONSE,
        };
        encode_frame(out, opcode, request_id, |b| match self {
            Response::Hello { version, server, epoch, primary } => {
                b.push(*version);
                put_str(b, server);
                b.extend_from_slice(&epoch.to_le_bytes());
                b.push(*primary as u8);
            }
            Response::Appended { first_lsn, count } => {
                b.extend_from_slice(&first_lsn.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
            }
            Response::Claimed { writer, lsn } => {
                b.extend_from_slice(&writer.to_le_bytes());
                b.extend_from_slice(&lsn.to_le_bytes());
            }
            Response::Records { records, next_lsn } => {
                b.extend_from_slice(&(records.len() as u32).to_le_bytes());
                for w in records {
                    b.extend_from_slice(&w.lsn.to_le_bytes());
                    b.extend_from_slice(&w.epoch.to_le_bytes());
                    b.extend_from_slice(&w.crc32c.to_le_bytes());
                    put_bytes(b, w.payload);
                }
                b.extend_from_slice(&next_lsn.to_le_bytes());
            }
            Response::Mark { lsn } => b.extend_from_slice(&lsn.to_le_bytes()),
            Response::Journals { names } => {
                b.extend_from_slice(&(names.len() as u32).to_le_bytes());
                for n in names {
                    put_str(b, n);
                }
            }
            Response::Status { json } => put_bytes(b, json.as_bytes()),
            Response::Ok => {}
            Response::Error { code, message } => {
                b.extend_from_slice(&code.to_le_bytes());
                put_str(b, message);
            }
        });
    }

    /// Decodes a server frame, given the opcode of the request it answers
    /// (`Records` pushes and `Error` frames carry their own).
    pub fn decode(frame: &Frame<'a>, request: Op) -> Result<Response<'a>, ProtoError> {
        let mut r = Reader::new(frame.body);
        let resp = if frame.opcode == Op::Error as u8 {
            Response::Error { code: r.u16()?, message: r.str()? }
        } else if frame.opcode == Op::Records as u8 || (frame.opcode == request as u8 | RESPONSE && request == Op::Read)
        {
            let n = r.u32()?;
            // every record needs at least 24 bytes
            if n as usize > r.remaining() / 24 {
                return Err(ProtoError::Malformed("record count"));
            }
            let mut records = Vec::with_capacity(n as usize);
            for _ in 0..n {
                records.push(WireRecord { lsn: r.u64()?, epoch: r.u64()?, crc32c: r.u32()?, payload: r.bytes()? });
            }
            Response::Records { records, next_lsn: r.u64()? }
        } else if frame.opcode == request as u8 | RESPONSE {
            match request {
                Op::Hello => {
                    Response::Hello { version: r.u8()?, server: r.str()?, epoch: r.u64()?, primary: r.u8()? != 0 }
                }
                Op::Append => Response::Appended { first_lsn: r.u64()?, count: r.u32()? },
                Op::Claim => Response::Claimed { writer: r.u64()?, lsn: r.u64()? },
                Op::GetMark => Response::Mark { lsn: r.u64()? },
                Op::ListJournals => {
                    let n = r.u32()?;
                    if n as usize > r.remaining() / 2 {
                        return Err(ProtoError::Malformed("name count"));
                    }
                    let mut names = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        names.push(r.str()?);
                    }
                    Response::Journals { names }
                }
                Op::Status
                | Op::Promote
                | Op::Demote
                | Op::DiscardDiverged
                | Op::Scrub
                | Op::Replace
                | Op::Detach
                | Op::Sites => {
                    let b = r.bytes()?;
                    Response::Status {
                        json: std::str::from_utf8(b).map_err(|_| ProtoError::Malformed("status is not UTF-8"))?,
                    }
                }
                _ => Response::Ok,
            }
        } else {
            return Err(ProtoError::UnknownOpcode(frame.opcode));
        };
        r.end()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> Frame<'_> {
        match decode_frame(buf, DEFAULT_MAX_BODY) {
            Ok(Some((f, n))) => {
                assert_eq!(n, buf.len());
                f
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_round_trip() {
        let p1 = b"hello".to_vec();
        let p2 = vec![7u8; 3000];
        let reqs = vec![
            Request::Hello { min_version: 1, max_version: 1, client: "cli" },
            Request::Append {
                journal: "orders",
                durability: Durability::RemoteDurable,
                producer: 42,
                first_seq: 7,
                resend: false,
                writer: None,
                records: vec![&p1, &p2, b""],
            },
            Request::Read { journal: "j", from: 5, max_count: 10, max_bytes: 1 << 20 },
            Request::Subscribe { journal: "j", from: 1, credit_bytes: 65536 },
            Request::Credit { subscription: 9, bytes: 100 },
            Request::SetMark { journal: "j", lsn: 77, writer: None },
            Request::SetMark { journal: "j", lsn: 78, writer: Some(5 << 32 | 2) },
            Request::Append {
                journal: "amq",
                durability: Durability::Local,
                producer: 9,
                first_seq: 1,
                resend: true,
                writer: Some(3 << 32 | 1),
                records: vec![b"x"],
            },
            Request::Claim { journal: "amq", durability: Durability::RemoteDurable, payload: b"broker-1" },
            Request::Claim { journal: "amq", durability: Durability::Default, payload: b"" },
            Request::GetMark { journal: "j" },
            Request::CreateJournal { journal: "new" },
            Request::DeleteJournal { journal: "old" },
            Request::ListJournals,
            Request::Status,
            Request::Promote { force: false },
            Request::Promote { force: true },
            Request::Scrub { action: ScrubAction::Start },
            Request::Scrub { action: ScrubAction::Status },
            Request::Scrub { action: ScrubAction::Cancel },
            Request::Replace { old: "/dev/sdb", new: "/dev/sdc", force: false, re_add: false },
            Request::Replace { old: "0123abcd", new: "/tmp/x.dev", force: true, re_add: false },
            Request::Replace { old: "/dev/sdb", new: "/dev/sdb", force: false, re_add: true },
            Request::Detach { member: "/dev/sdc" },
            Request::Sites { request: r#"{"op":"digests","journal":"j"}"# },
            Request::Demote { sync: true, timeout_ms: 5000 },
        ];
        for (i, q) in reqs.iter().enumerate() {
            let mut out = Vec::new();
            q.encode(i as u64 + 100, &mut out);
            let f = one(&out);
            assert_eq!(f.request_id, i as u64 + 100);
            assert_eq!(&Request::decode(&f, 1000).unwrap(), q);
        }
        // A Promote without force has the empty body older servers take.
        let mut out = Vec::new();
        Request::Promote { force: false }.encode(1, &mut out);
        assert_eq!(out.len(), HEADER_LEN);
    }

    #[test]
    fn responses_round_trip() {
        let p = vec![1u8; 100];
        let cases: Vec<(Op, Response<'_>)> = vec![
            (Op::Hello, Response::Hello { version: 1, server: "mirrorlogd", epoch: 3, primary: true }),
            (Op::Append, Response::Appended { first_lsn: 10, count: 3 }),
            (Op::Claim, Response::Claimed { writer: 4 << 32 | 7, lsn: 99 }),
            (
                Op::Read,
                Response::Records {
                    records: vec![WireRecord { lsn: 1, epoch: 1, crc32c: 5, payload: &p }],
                    next_lsn: 2,
                },
            ),
            (Op::Subscribe, Response::Records { records: vec![], next_lsn: 9 }),
            (Op::GetMark, Response::Mark { lsn: 4 }),
            (Op::ListJournals, Response::Journals { names: vec!["a", "b"] }),
            (Op::Status, Response::Status { json: "{\"ok\":true}" }),
            (Op::SetMark, Response::Ok),
            (Op::Append, Response::Error { code: 5, message: "full" }),
        ];
        for (op, resp) in cases {
            let mut out = Vec::new();
            resp.encode(op, 3, &mut out);
            let f = one(&out);
            assert_eq!(Response::decode(&f, op).unwrap(), resp, "{op:?}");
        }
    }

    #[test]
    fn frames_are_checked() {
        let mut out = Vec::new();
        Request::Status.encode(1, &mut out);
        Request::ListJournals.encode(2, &mut out);
        // two frames back to back; partial input asks for more
        let (f, n) = decode_frame(&out, 1024).unwrap().unwrap();
        assert_eq!(f.request_id, 1);
        assert_eq!(decode_frame(&out[n..n + 10], 1024), Ok(None));
        assert_eq!(decode_frame(&out[..1], 1024), Ok(None));
        let mut bad = out.clone();
        bad[20 - 1] ^= 1; // crc
        assert_eq!(decode_frame(&bad, 1024), Err(ProtoError::BadChecksum));
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(decode_frame(&bad, 1024), Err(ProtoError::BadMagic));
        let mut bad = out.clone();
        bad[2] = 9;
        assert_eq!(decode_frame(&bad, 1024), Err(ProtoError::UnsupportedVersion(9)));
        // an oversize length is refused from the header alone
        let mut big = Vec::new();
        encode_frame(&mut big, Op::Append as u8, 1, |b| b.extend_from_slice(&[0u8; 2000]));
        assert_eq!(decode_frame(&big[..HEADER_LEN], 1000), Err(ProtoError::TooLarge { len: 2000, max: 1000 }));
        // unknown opcode: the frame is fine, the request is not
        let mut unk = Vec::new();
        encode_frame(&mut unk, 0x55, 1, |_| {});
        let f = one(&unk);
        assert_eq!(Request::decode(&f, 10), Err(ProtoError::UnknownOpcode(0x55)));
        assert!(!ProtoError::UnknownOpcode(0x55).fatal() && ProtoError::BadChecksum.fatal());
    }

    #[test]
    fn malformed_bodies_are_refused_not_panicked_on() {
        // an append claiming a billion records in a tiny body
        let mut out = Vec::new();
        encode_frame(&mut out, Op::Append as u8, 1, |b| {
            put_str(b, "j");
            b.push(1);
            b.extend_from_slice(&[0u8; 16]);
            b.extend_from_slice(&1_000_000_000u32.to_le_bytes());
        });
        assert_eq!(Request::decode(&one(&out), u32::MAX), Err(ProtoError::Malformed("record count")));
        // trailing bytes
        let mut out = Vec::new();
        encode_frame(&mut out, Op::Status as u8, 1, |b| b.push(0));
        assert_eq!(Request::decode(&one(&out), 10), Err(ProtoError::Malformed("trailing bytes")));
        // too many records for the limit
        let mut out = Vec::new();
        Request::Append {
            journal: "j",
            durability: Durability::Local,
            producer: 0,
            first_seq: 0,
            resend: false,
            writer: None,
            records: vec![b"a"; 5],
        }
        .encode(1, &mut out);
        assert_eq!(Request::decode(&one(&out), 4), Err(ProtoError::Malformed("record count")));
    }
}

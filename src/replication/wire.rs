//! The replication protocol between a primary and its replica: messages in
//! the client protocol's frames (magic, version, CRC32C over header and
//! body; `protocol::decode_frame`), on their own port. Pure encode/decode.
//! docs/replication.md describes the exchange.
//!
//! Primary → replica: `Hello`, then `Journals`, `Probe`, `Truncate`,
//! `Reset` while the two agree where to continue, then `Batch`, `Mark`,
//! `Create`, `Delete`, `Ping` as they happen. Replica → primary: `HelloOk`
//! or `Fenced`/`Refused`, `Ends` and `Samples` during the handshake, then
//! `Acks` (received and durable LSN per journal) and `Failed`.

use crate::frames::FrameBuf;
use crate::protocol::{encode_frame, encode_frame_unsealed, put_bytes, put_str, seal_frame, Frame, ProtoError, Reader};
use crate::ship::{ChainEnd, ShipView, Shipment};

/// Replication protocol version.
/// 2: `Hello` carries the sender's history; `Diverged`.
/// 3: `Journals` carries each journal's next LSN (where a replica that
/// lacks records is complete again).
/// 4: `Writer` (a journal's writer epoch).
pub const REPL_VERSION: u16 = 4;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    /// Every journal of the primary: (id, name, next LSN). A replica that
    /// lacks records (`JournalEntry::incomplete`) is complete again once
    /// it is durable up to that next LSN: every record acknowledged before
    /// the session began is below it.
    Journals(Vec<(u64, String, u64)>),
    /// Asks the replica for the CRC of its records at these LSNs.
    Probe {
        journal: u64,
        lsns: Vec<u64>,
    },
    /// Cut back to the last batch end at or below `keep`.
    Truncate {
        journal: u64,
        keep: u64,
    },
    /// Drop everything; continue at `next_lsn`.
    Reset {
        journal: u64,
        next_lsn: u64,
    },
    Batch(Shipment),
    Mark {
        journal: u64,
        lsn: u64,
    },
    /// The journal's writer epoch (`Journal::claim_writer`): persisted by
    /// the replica before it handles the next message.
    Writer {
        journal: u64,
        writer: u64,
    },
    Create {
        journal: u64,
        name: String,
    },
    Delete {
        journal: u64,
    },
    Ping,
    HelloOk {
        epoch: u64,
        name: String,
    },
    /// A higher epoch exists: the sender must not act as primary.
    Fenced {
        epoch: u64,
        message: String,
    },
    Refused {
        message: String,
    },
    /// Where each journal's chain ends on the replica.
    Ends(Vec<(u64, ChainEnd)>),
    /// (lsn, crc) for each probed LSN the replica holds.
    Samples {
        journal: u64,
        samples: Vec<(u64, u32)>,
    },
    /// (journal, received next LSN, durable next LSN).
    Acks(Vec<(u64, u64, u64)>),
    /// The replica could not apply something; the session ends.
    Failed {
        message: String,
    },
    /// The replica refuses to cut back or drop a journal that holds
    /// records of a run the primary's history does not hold (a split
    /// brain): both histories are kept until an operator decides. The
    /// session ends.
    Diverged {
        journal: u64,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub epoch: u64,
    /// The runs the sender's history holds (`epoch::History`).
    pub history: crate::epoch::History,
    /// Only asking who is primary (a restarted primary, before it serves).
    pub probe: bool,
    pub set_uuid: [u8; 16],
    pub block_size: u32,
    pub segment_size: u64,
    pub slot_count: u64,
    pub batch_buf: u64,
    pub name: String,
}

mod op {
    pub const HELLO: u8 = 0x41;
    pub const JOURNALS: u8 = 0x42;
    pub const PROBE: u8 = 0x43;
    pub const TRUNCATE: u8 = 0x44;
    pub const RESET: u8 = 0x45;
    pub const BATCH: u8 = 0x46;
    pub const MARK: u8 = 0x47;
    pub const CREATE: u8 = 0x48;
    pub const DELETE: u8 = 0x49;
    pub const PING: u8 = 0x4A;
    pub const WRITER: u8 = 0x4B;
    pub const HELLO_OK: u8 = 0x61;
    pub const FENCED: u8 = 0x62;
    pub const REFUSED: u8 = 0x63;
    pub const ENDS: u8 = 0x64;
    pub const SAMPLES: u8 = 0x65;
    pub const ACKS: u8 = 0x66;
    pub const FAILED: u8 = 0x67;
    pub const DIVERGED: u8 = 0x68;
}

fn put64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}

/// Encodes a batch straight from the pipeline's buffer (no copy into a
/// `Shipment` first).
pub fn encode_batch(out: &mut Vec<u8>, v: &ShipView<'_>) {
    let start = out.len();
    encode_batch_unsealed(out, v);
    seal_frame(&mut out[start..]);
}

/// The same without the frame's CRC (the bytes are copied, nothing is
/// checksummed), for the primary's outbox, which frames a batch under the
/// engine's lock; the sender seals it (`seal_frame`) later.
pub fn encode_batch_unsealed(out: &mut Vec<u8>, v: &ShipView<'_>) {
    encode_frame_unsealed(out, op::BATCH, 0, |o| {
        put64(o, v.journal_id);
        put64(o, v.slot);
        put64(o, v.seg_seq);
        put64(o, v.seg_off);
        put64(o, v.first_lsn);
        put64(o, v.next_lsn);
        put32(o, v.end_crc);
        o.push(v.header as u8);
        put_bytes(o, v.bytes);
    });
}

impl Msg {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Msg::Hello(h) => encode_frame(out, op::HELLO, 0, |o| {
                o.extend_from_slice(&h.version.to_le_bytes());
                put64(o, h.epoch);
                put32(o, h.history.floor());
                put32(o, h.history.runs().len() as u32);
                for r in h.history.runs() {
                    put32(o, r.term);
                    put32(o, r.max_start);
                    put32(o, r.nonce);
                }
                o.push(h.probe as u8);
                o.extend_from_slice(&h.set_uuid);
                put32(o, h.block_size);
                put64(o, h.segment_size);
                put64(o, h.slot_count);
                put64(o, h.batch_buf);
                put_str(o, &h.name);
            }),
            Msg::Journals(js) => encode_frame(out, op::JOURNALS, 0, |o| {
                put32(o, js.len() as u32);
                for (id, name, next) in js {
                    put64(o, *id);
                    put_str(o, name);
                    put64(o, *next);
                }
            }),
            Msg::Probe { journal, lsns } => encode_frame(out, op::PROBE, 0, |o| {
                put64(o, *journal);
                put32(o, lsns.len() as u32);
                for l in lsns {
                    put64(o, *l);
                }
            }),
            Msg::Truncate { journal, keep } => encode_frame(out, op::TRUNCATE, 0, |o| {
                put64(o, *journal);
                put64(o, *keep);
            }),
            Msg::Reset { journal, next_lsn } => encode_frame(out, op::RESET, 0, |o| {
                put64(o, *journal);
                put64(o, *next_lsn);
            }),
            Msg::Batch(s) => encode_batch(out, &s.view()),
            Msg::Mark { journal, lsn } => encode_frame(out, op::MARK, 0, |o| {
                put64(o, *journal);
                put64(o, *lsn);
            }),
            Msg::Writer { journal, writer } => encode_frame(out, op::WRITER, 0, |o| {
                put64(o, *journal);
                put64(o, *writer);
            }),
            Msg::Create { journal, name } => encode_frame(out, op::CREATE, 0, |o| {
                put64(o, *journal);
                put_str(o, name);
            }),
            Msg::Delete { journal } => encode_frame(out, op::DELETE, 0, |o| put64(o, *journal)),
            Msg::Ping => encode_frame(out, op::PING, 0, |_| {}),
            Msg::HelloOk { epoch, name } => encode_frame(out, op::HELLO_OK, 0, |o| {
                put64(o, *epoch);
                put_str(o, name);
            }),
            Msg::Fenced { epoch, message } => encode_frame(out, op::FENCED, 0, |o| {
                put64(o, *epoch);
                put_str(o, message);
            }),
            Msg::Refused { message } => encode_frame(out, op::REFUSED, 0, |o| put_str(o, message)),
            Msg::Ends(es) => encode_frame(out, op::ENDS, 0, |o| {
                put32(o, es.len() as u32);
                for (id, e) in es {
                    put64(o, *id);
                    put64(o, e.next_lsn);
                    put32(o, e.last_crc);
                    put64(o, e.seg_seq);
                    put64(o, e.tail_off);
                    put64(o, e.mark);
                    put64(o, e.first_lsn);
                }
            }),
            Msg::Samples { journal, samples } => encode_frame(out, op::SAMPLES, 0, |o| {
                put64(o, *journal);
                put32(o, samples.len() as u32);
                for (l, c) in samples {
                    put64(o, *l);
                    put32(o, *c);
                }
            }),
            Msg::Acks(acks) => encode_frame(out, op::ACKS, 0, |o| {
                put32(o, acks.len() as u32);
                for (j, r, d) in acks {
                    put64(o, *j);
                    put64(o, *r);
                    put64(o, *d);
                }
            }),
            Msg::Failed { message } => encode_frame(out, op::FAILED, 0, |o| put_str(o, message)),
            Msg::Diverged { journal, message } => encode_frame(out, op::DIVERGED, 0, |o| {
                put64(o, *journal);
                put_str(o, message);
            }),
        }
    }

    /// The next whole message buffered in `buf`, its frame checked and
    /// decoded (`None`: more bytes are needed). What every reader of the
    /// link uses: the sockets' `FrameConn`, the simulator, the tests.
    pub fn next(buf: &mut FrameBuf) -> Result<Option<Msg>, ProtoError> {
        match buf.next_frame()? {
            Some(f) => Msg::decode(&f).map(Some),
            None => Ok(None),
        }
    }

    /// Decodes a checked frame. Counts are bounded by the body's length, so
    /// a hostile count cannot make it allocate more than the frame holds.
    pub fn decode(f: &Frame<'_>) -> Result<Msg, ProtoError> {
        let mut r = Reader::new(f.body);
        // A u32 count, then that many items of at least `each` bytes.
        fn list<'a, T>(
            r: &mut Reader<'a>,
            each: usize,
            mut item: impl FnMut(&mut Reader<'a>) -> Result<T, ProtoError>,
        ) -> Result<Vec<T>, ProtoError> {
            let n = r.u32()? as usize;
            if n.saturating_mul(each) > r.remaining() {
                return Err(ProtoError::Malformed("count exceeds the body"));
            }
            (0..n).map(|_| item(r)).collect()
        }
        let m = match f.opcode {
            op::HELLO => {
                let version = r.u16()?;
                if version != REPL_VERSION {
                    // Other versions lay the rest out otherwise: the
                    // receiver answers with what it speaks.
                    return Ok(Msg::Hello(Hello {
                        version,
                        epoch: 0,
                        history: Default::default(),
                        probe: false,
                        set_uuid: [0; 16],
                        block_size: 0,
                        segment_size: 0,
                        slot_count: 0,
                        batch_buf: 0,
                        name: String::new(),
                    }));
                }
                let epoch = r.u64()?;
                let floor = r.u32()?;
                let runs = list(&mut r, 12, |r| {
                    Ok(crate::epoch::Run { term: r.u32()?, max_start: r.u32()?, nonce: r.u32()? })
                })?;
                let history = crate::epoch::History::from_parts(floor, runs).map_err(ProtoError::Malformed)?;
                let probe = r.u8()? != 0;
                let mut set_uuid = [0u8; 16];
                for b in set_uuid.iter_mut() {
                    *b = r.u8()?;
                }
                Msg::Hello(Hello {
                    version,
                    epoch,
                    history,
                    probe,
                    set_uuid,
                    block_size: r.u32()?,
                    segment_size: r.u64()?,
                    slot_count: r.u64()?,
                    batch_buf: r.u64()?,
                    name: r.str()?.to_string(),
                })
            }
            op::JOURNALS => Msg::Journals(list(&mut r, 18, |r| Ok((r.u64()?, r.str()?.to_string(), r.u64()?)))?),
            op::PROBE => {
                let journal = r.u64()?;
                Msg::Probe { journal, lsns: list(&mut r, 8, |r| r.u64())? }
            }
            op::TRUNCATE => Msg::Truncate { journal: r.u64()?, keep: r.u64()? },
            op::RESET => Msg::Reset { journal: r.u64()?, next_lsn: r.u64()? },
            op::BATCH => {
                let journal_id = r.u64()?;
                let slot = r.u64()?;
                let seg_seq = r.u64()?;
                let seg_off = r.u64()?;
                let first_lsn = r.u64()?;
                let next_lsn = r.u64()?;
                let end_crc = r.u32()?;
                let header = r.u8()? != 0;
                let bytes = r.bytes()?.to_vec();
                Msg::Batch(Shipment { journal_id, slot, seg_seq, seg_off, first_lsn, next_lsn, end_crc, header, bytes })
            }
            op::MARK => Msg::Mark { journal: r.u64()?, lsn: r.u64()? },
            op::WRITER => Msg::Writer { journal: r.u64()?, writer: r.u64()? },
            op::CREATE => Msg::Create { journal: r.u64()?, name: r.str()?.to_string() },
            op::DELETE => Msg::Delete { journal: r.u64()? },
            op::PING => Msg::Ping,
            op::HELLO_OK => Msg::HelloOk { epoch: r.u64()?, name: r.str()?.to_string() },
            op::FENCED => Msg::Fenced { epoch: r.u64()?, message: r.str()?.to_string() },
            op::REFUSED => Msg::Refused { message: r.str()?.to_string() },
            op::ENDS => Msg::Ends(list(&mut r, 52, |r| {
                let id = r.u64()?;
                let end = ChainEnd {
                    next_lsn: r.u64()?,
                    last_crc: r.u32()?,
                    seg_seq: r.u64()?,
                    tail_off: r.u64()?,
                    mark: r.u64()?,
                    first_lsn: r.u64()?,
                };
                Ok((id, end))
            })?),
            op::SAMPLES => {
                let journal = r.u64()?;
                Msg::Samples { journal, samples: list(&mut r, 12, |r| Ok((r.u64()?, r.u32()?)))? }
            }
            op::ACKS => Msg::Acks(list(&mut r, 24, |r| Ok((r.u64()?, r.u64()?, r.u64()?)))?),
            op::FAILED => Msg::Failed { message: r.str()?.to_string() },
            op::DIVERGED => Msg::Diverged { journal: r.u64()?, message: r.str()?.to_string() },
            other => return Err(ProtoError::UnknownOpcode(other)),
        };
        r.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_frame;

    fn round(m: Msg) {
        let mut out = Vec::new();
        m.encode(&mut out);
        let (f, n) = decode_frame(&out, 1 << 24).expect("frame").expect("whole");
        assert_eq!(n, out.len());
        assert_eq!(Msg::decode(&f).expect("decode"), m);
        // Any cut-short body is an error, never a panic.
        for cut in 0..f.body.len() {
            let g = Frame { opcode: f.opcode, request_id: 0, body: &f.body[..cut] };
            let _ = Msg::decode(&g);
        }
    }

    #[test]
    fn every_message_round_trips() {
        round(Msg::Hello(Hello {
            version: REPL_VERSION,
            epoch: 7,
            history: {
                let mut h = crate::epoch::History::of(crate::epoch::Epoch::from_raw(5));
                h.add(crate::epoch::Epoch::from_raw((1 << 32) | 2), || 42);
                h
            },
            probe: true,
            set_uuid: [3; 16],
            block_size: 4096,
            segment_size: 64 << 20,
            slot_count: 15,
            batch_buf: 1 << 20,
            name: "site-a".into(),
        }));
        round(Msg::Journals(vec![(1, "default".into(), 1), (9, "orders".into(), 1 << 40)]));
        round(Msg::Probe { journal: 1, lsns: vec![10, 9, 7, 3] });
        round(Msg::Truncate { journal: 1, keep: 99 });
        round(Msg::Reset { journal: 2, next_lsn: 500 });
        round(Msg::Batch(Shipment {
            journal_id: 1,
            slot: 3,
            seg_seq: 4,
            seg_off: 8192,
            first_lsn: 10,
            next_lsn: 12,
            end_crc: 0xdead_beef,
            header: false,
            bytes: vec![5; 4096],
        }));
        round(Msg::Mark { journal: 1, lsn: 5 });
        round(Msg::Writer { journal: 1, writer: 3 << 32 | 2 });
        round(Msg::Create { journal: 3, name: "x".into() });
        round(Msg::Delete { journal: 3 });
        round(Msg::Ping);
        round(Msg::HelloOk { epoch: 4, name: "b".into() });
        round(Msg::Fenced { epoch: 5, message: "no".into() });
        round(Msg::Refused { message: "different set".into() });
        round(Msg::Ends(vec![(
            1,
            ChainEnd { next_lsn: 5, last_crc: 9, seg_seq: 0, tail_off: 8192, mark: 2, first_lsn: 1 },
        )]));
        round(Msg::Samples { journal: 1, samples: vec![(4, 77), (3, 66)] });
        round(Msg::Acks(vec![(1, 10, 8), (2, 5, 5)]));
        round(Msg::Failed { message: "bad".into() });
        round(Msg::Diverged { journal: 4, message: "split brain".into() });
    }

    #[test]
    fn hostile_counts_are_refused() {
        let mut out = Vec::new();
        encode_frame(&mut out, op::ACKS, 0, |o| put32(o, u32::MAX));
        let (f, _) = decode_frame(&out, 1 << 20).expect("frame").expect("whole");
        assert!(Msg::decode(&f).is_err());
    }
}

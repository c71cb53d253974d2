//! What a primary ships and a replica applies, as plain data: a batch with
//! its place on the devices ([`Ship`]), the sink a primary hands claimed
//! batches to ([`ShipSink`]) and where a journal's chain ends
//! ([`ChainEnd`]). A leaf module: the pipeline hands batches to the sink,
//! `ship` applies and reads them, and neither needs the other for these types.

/// A batch as a replica needs it, with its bytes borrowed (`ShipView`, from
/// the primary's pipeline) or owned (`Shipment`, what travels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ship<B> {
    pub journal_id: u64,
    pub slot: u64,
    pub seg_seq: u64,
    /// Segment offset of `bytes[0]`.
    pub seg_off: u64,
    pub first_lsn: u64,
    /// One past the last record.
    pub next_lsn: u64,
    /// CRC of the last record (where the chain continues).
    pub end_crc: u32,
    /// `bytes` starts with the segment header block.
    pub header: bool,
    /// Whole blocks, exactly as written locally.
    pub bytes: B,
}

/// A batch borrowed from the primary's pipeline.
pub type ShipView<'a> = Ship<&'a [u8]>;
/// An owned shipment.
pub type Shipment = Ship<Vec<u8>>;

impl<B> Ship<B> {
    /// The same batch with other bytes.
    fn with_bytes<C>(&self, bytes: C) -> Ship<C> {
        Ship {
            journal_id: self.journal_id,
            slot: self.slot,
            seg_seq: self.seg_seq,
            seg_off: self.seg_off,
            first_lsn: self.first_lsn,
            next_lsn: self.next_lsn,
            end_crc: self.end_crc,
            header: self.header,
            bytes,
        }
    }
}

impl ShipView<'_> {
    /// An owned copy (the bytes copied).
    pub fn to_shipment(&self) -> Shipment {
        self.with_bytes(self.bytes.to_vec())
    }
}

impl Shipment {
    pub fn view(&self) -> ShipView<'_> {
        self.with_bytes(&self.bytes[..])
    }
}

/// Receives what a primary ships. Called with engine locks held: it must
/// not block and must not call back into the engine.
pub trait ShipSink: Send + Sync {
    /// A batch was claimed for writing (in LSN order per journal).
    fn batch(&self, b: &ShipView<'_>);
    /// A mark was persisted (before the slots it frees are released).
    fn mark(&self, journal_id: u64, lsn: u64);
    /// A journal's writer epoch was raised and persisted (a claim), before
    /// the claim's record is appended.
    fn writer(&self, journal_id: u64, writer: u64);
    /// A journal was created.
    fn created(&self, journal_id: u64, name: &str);
    /// A journal was deleted.
    fn deleted(&self, journal_id: u64);
}

/// Where a journal's chain ends on this node, as a replica states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainEnd {
    /// One past the last durable record.
    pub next_lsn: u64,
    /// CRC of record `next_lsn - 1` (0 when the journal holds none).
    pub last_crc: u32,
    /// The tail segment's sequence number and the offset where the next
    /// batch goes (`u64::MAX` for both when the journal holds no segment).
    pub seg_seq: u64,
    pub tail_off: u64,
    pub mark: u64,
    /// Lowest LSN held.
    pub first_lsn: u64,
}

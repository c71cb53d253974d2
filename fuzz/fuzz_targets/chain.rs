//! Fuzz the on-disk decoders: superblock, segment header, record chain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorlog::format::{scan_chain, ChainPos, SegmentHeader, Superblock};

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data);
    let _ = SegmentHeader::decode(data);
    let seed = data.first().copied().unwrap_or(0) as u32;
    let mut pos = ChainPos { off: 0, lsn: 1, prev_crc: seed };
    scan_chain(data, &mut pos, 512, 1 << 20, |_| true);
});

//! Property tests of the pure format code: encode/scan round trips, and
//! decoders fed arbitrary bytes never panic and never accept garbage.

use mirrorlog::format::{
    align_up, encode_record, scan_chain, ChainPos, JournalEntry, MemberInfo, ScanStop, SegmentHeader, Superblock,
    FLAG_BATCH_END, RECORD_HEADER_LEN,
};
use proptest::prelude::*;

/// Lays out batches as the engine does: records back to back, the last of a
/// batch flagged BATCH_END, each batch padded to `block`.
fn layout(batches: &[Vec<Vec<u8>>], block: usize, seed: u32, first: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let (mut prev, mut lsn) = (seed, first);
    for b in batches {
        for (i, p) in b.iter().enumerate() {
            let at = buf.len();
            buf.resize(at + RECORD_HEADER_LEN + p.len(), 0);
            prev = encode_record(&mut buf[at..], p, lsn, 3, prev, if i + 1 == b.len() { FLAG_BATCH_END } else { 0 });
            lsn += 1;
        }
        buf.resize(align_up(buf.len() as u64, block as u64) as usize, 0);
    }
    buf
}

fn batches() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 1..6), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn records_round_trip(bs in batches(), seed in any::<u32>(), first in 1u64..1_000_000) {
        let buf = layout(&bs, 512, seed, first);
        let mut pos = ChainPos { off: 0, lsn: first, prev_crc: seed };
        let mut got = Vec::new();
        let stop = scan_chain(&buf, &mut pos, 512, 1 << 20, |f| { got.push(f.payload.to_vec()); true });
        prop_assert_eq!(stop, ScanStop::NeedMore);
        prop_assert_eq!(got, bs.concat());
        prop_assert_eq!(pos.off, buf.len());
    }

    #[test]
    fn any_corruption_is_caught(bs in batches(), seed in any::<u32>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let buf = layout(&bs, 512, seed, 1);
        let mut bad = buf.clone();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        // Every record the scan accepts from the damaged buffer is one that was written.
        let want = bs.concat();
        let mut pos = ChainPos { off: 0, lsn: 1, prev_crc: seed };
        let mut k = 0usize;
        scan_chain(&bad, &mut pos, 512, 1 << 20, |f| {
            assert_eq!(f.payload, &want[k][..], "a corrupt record was accepted");
            k += 1;
            true
        });
        prop_assert!(k <= want.len());
    }

    #[test]
    fn scanning_garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..4096), lsn in any::<u64>(), prev in any::<u32>()) {
        let mut pos = ChainPos { off: 0, lsn, prev_crc: prev };
        let mut n = 0;
        scan_chain(&data, &mut pos, 512, 1 << 20, |_| { n += 1; true });
        // random bytes do not form a valid chained record (2^-32 per try)
        prop_assert_eq!(n, 0);
    }

    #[test]
    fn decoders_reject_garbage(data in prop::collection::vec(any::<u8>(), 0..70_000)) {
        prop_assert!(Superblock::decode(&data).is_err());
        prop_assert!(SegmentHeader::decode(&data).is_err());
    }

    #[test]
    fn superblock_round_trip(gen in any::<u64>(), epoch in any::<u64>(), nm in 1usize..8,
                             names in prop::collection::vec("[a-z0-9._-]{1,64}", 0..40)) {
        let sb = Superblock {
            block_size: 4096,
            generation: gen,
            set_uuid: [7; 16],
            member_uuid: [1; 16],
            segment_size: 64 << 20,
            epoch,
            device_size: 1 << 30,
            next_journal_id: 99,
            inflight_window: 3 << 20,
            history: {
                let mut h = mirrorlog::epoch::History::of(mirrorlog::epoch::Epoch::from_raw(epoch / 2));
                h.add(mirrorlog::epoch::Epoch::from_raw(epoch), || gen as u32);
                h
            },
            unsynced: gen % 2 == 0,
            members: (0..nm).map(|i| MemberInfo { uuid: [i as u8; 16], slot: i as u16, health: mirrorlog::format::Health::Healthy }).collect(),
            journals: names.iter().enumerate().map(|(i, n)| JournalEntry { id: i as u64, mark: i as u64 * 3, name: n.clone(), incomplete: i % 2 == 1, writer: gen.wrapping_mul(i as u64) }).collect(),
        };
        let mut buf = vec![0u8; 65536];
        let n = sb.encode(&mut buf).unwrap();
        prop_assert_eq!(Superblock::decode(&buf[..n]).unwrap(), sb);
    }
}

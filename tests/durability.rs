//! Durability defects at the edges of recovery (issue 16), each proven by a
//! test that failed before its fix: configuration that shortened what
//! recovery accepts, a segment gap that freed older history, a crash in the
//! middle of a cut-back.

mod common;

use std::path::PathBuf;

use common::*;
use mirrorlog::format::{slot_offset, SegmentHeader};
use mirrorlog::{Config, Error, FaultInjector, MirrorLog};

const BS: u64 = 4096;

/// A set of `n` 64 MiB file mirrors with 4 MiB segments.
fn set(dir: &std::path::Path, n: usize) -> (Vec<PathBuf>, Config) {
    let devs = devices(dir, n, 64 << 20);
    let mut c = Config::new(devs.iter().cloned());
    c.segment_size = 4 << 20;
    (devs, c)
}

/// Item 1: a record longer than the configured `max_record_size` is still a
/// valid record. Recovery used to bound its chain scan by the configuration,
/// end the chain there, zero what followed and hand the LSNs out again.
#[test]
fn a_smaller_max_record_size_at_restart_keeps_longer_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_devs, mut c) = set(dir.path(), 2);
    c.segment_size = 16 << 20;
    c.max_record_size = 4 << 20;
    let sizes = [100usize, 2 << 20, 100];
    {
        let log = MirrorLog::create(&c).unwrap();
        let j = log.create_journal("j").unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(j.append(&payload(i as u64, n)).unwrap(), i as u64 + 1);
        }
    }
    for limit in [1 << 20, 4 << 20, 1 << 20] {
        c.max_record_size = limit;
        let log = MirrorLog::open(&c).unwrap();
        let j = log.journal("j").unwrap();
        assert_eq!(j.next_lsn(), 4, "max_record_size {limit}: acknowledged records were cut");
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(j.read(i as u64 + 1).unwrap(), payload(i as u64, n), "lsn {} with limit {limit}", i + 1);
        }
        // New appends obey the new limit and continue the chain.
        if limit < 2 << 20 {
            assert!(matches!(j.append(&vec![0u8; 2 << 20]), Err(Error::RecordTooLarge { .. })));
        }
    }
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.append(b"after").unwrap(), 4);
    assert_eq!(j.read(2).unwrap(), payload(1, 2 << 20));
}

/// Appends records of 100 KiB until the journal holds `segs` segments;
/// returns the payload sizes appended (record `i + 1` is `payload(i, ..)`).
fn fill_segments(j: &mirrorlog::Journal, segs: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while j.segment_slots().len() < segs {
        let n = 100 << 10;
        j.append(&payload(sizes.len() as u64, n)).unwrap();
        sizes.push(n);
    }
    // A few more in the last segment.
    for _ in 0..3 {
        j.append(&payload(sizes.len() as u64, 1000)).unwrap();
        sizes.push(1000);
    }
    sizes
}

/// Item 3: one segment header missing on every mirror (a crash in the middle
/// of a cut-back, or rot on the only healthy mirror). Recovery used to keep
/// only the newest unbroken run of segments and free everything older.
#[test]
fn a_missing_segment_header_never_frees_older_history() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, c) = set(dir.path(), 2);
    let (sizes, slots, free_before) = {
        let log = MirrorLog::create(&c).unwrap();
        let j = log.create_journal("j").unwrap();
        let sizes = fill_segments(&j, 4);
        (sizes, j.segment_slots(), log.status().segments_free)
    };
    // Zero segment 2's header block on every device.
    let (slot2, _, first2) = slots[1];
    let (_, _, first3) = slots[2];
    for d in &devs {
        write_at(d, slot_offset(slot2, c.segment_size), &vec![0u8; BS as usize]);
    }
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), sizes.len() as u64 + 1, "the tail is intact");
    assert_eq!(j.read(1).unwrap(), payload(0, sizes[0]), "history before the gap was freed");
    assert_eq!(j.read(first2 - 1).unwrap(), payload(first2 - 2, sizes[first2 as usize - 2]));
    for lsn in [first3, sizes.len() as u64] {
        assert_eq!(j.read(lsn).unwrap(), payload(lsn - 1, sizes[lsn as usize - 1]));
    }
    // The records of the lost segment are reported, never invented.
    match j.read(first2) {
        Err(Error::Corrupt(m)) => assert!(m.contains("breaks"), "{m}"),
        other => panic!("a record of the missing segment: {other:?}"),
    }
    assert_eq!(j.recovery_stats().missing_segments, 1);
    // Nothing was freed: the slots of segments 1, 3 and 4 are still held.
    assert_eq!(log.status().segments_free, free_before + 1, "only the headerless slot may be free");
    assert_eq!(j.segment_slots().len(), 3);
}

/// Item 3, the cause: a crash part-way through a cut-back. Dropped segments
/// are now zeroed newest first, so a crash leaves a shorter run of
/// segments, never a gap, and reopening finds every kept record.
#[test]
fn a_crash_during_a_cut_back_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (_devs, mut c) = set(dir.path(), 2);
    let fault = FaultInjector::new();
    c.storage = Some(fault.clone());
    let (sizes, slots) = {
        let log = MirrorLog::create(&c).unwrap();
        let j = log.create_journal("j").unwrap();
        let sizes = fill_segments(&j, 5);
        (sizes, j.segment_slots())
    };
    // Cut back into segment 2; the power fails after the first zeroing
    // write reached both mirrors.
    let keep = slots[1].2 + 3;
    {
        let log = MirrorLog::open(&c).unwrap();
        let j = log.journal("j").unwrap();
        fault.fail_writes_after(2);
        assert!(j.truncate_after(keep).is_err(), "the cut-back cannot finish without its writes");
    }
    fault.clear();
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.recovery_stats().missing_segments, 0, "a crash in a cut-back left a gap");
    assert!(j.next_lsn() > keep, "records at or below the cut point were lost");
    for lsn in 1..j.next_lsn() {
        assert_eq!(j.read(lsn).unwrap(), payload(lsn - 1, sizes[lsn as usize - 1]), "lsn {lsn}");
    }
    // The cut finishes when asked again.
    let end = j.truncate_after(keep).unwrap();
    assert!(end.next_lsn <= keep + 1);
    drop(j);
    drop(log);
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert!(j.next_lsn() <= keep + 1);
    assert_eq!(j.read(1).unwrap(), payload(0, sizes[0]));
}

/// The headers of a journal's segments decode as its own (sanity for the
/// tests above, which rely on where `segment_slots` says they are).
#[test]
fn segment_slots_name_real_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, c) = set(dir.path(), 2);
    let log = MirrorLog::create(&c).unwrap();
    let j = log.create_journal("j").unwrap();
    fill_segments(&j, 2);
    for (slot, seq, first) in j.segment_slots() {
        let b = read_at(&devs[0], slot_offset(slot, c.segment_size), BS as usize);
        let (h, _) = SegmentHeader::decode(&b).unwrap();
        assert_eq!((h.journal_id, h.seq, h.first_lsn), (j.id(), seq, first));
    }
}

/// Item 7: a reader that read two copies of a block before a cut-back, one
/// of them bad, used to "heal" the bad one after the cut with the good
/// copy's old bytes: it put a cut record back over the new record at that
/// LSN, and recovery then copied it to the other mirror.
#[test]
fn a_heal_racing_a_cut_back_does_not_restore_cut_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 8 << 20);
    let c = small_config(&devs);
    let log = MirrorLog::create(&c).unwrap();
    let j = log.create_journal("j").unwrap();
    for i in 0..20 {
        j.append(&payload(i, 1000)).unwrap(); // record n alone in block n
    }
    let slot = j.segment_slots()[0].0;
    let off11 = slot_offset(slot, c.segment_size) + 11 * BS;
    flip_byte(&devs[0], off11 + 40); // a bad copy of lsn 11 on mirror 0
    let (in_tx, in_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let j = j.clone();
        std::thread::spawn(move || {
            j.visit(11, 1 << 20, |rec| {
                if rec.lsn == 11 {
                    // Both copies are read; the heal comes after this visit.
                    in_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
                true
            })
        })
    };
    in_rx.recv().unwrap();
    assert_eq!(j.truncate_after(10).unwrap().next_lsn, 11);
    assert_eq!(j.append(b"new eleven").unwrap(), 11);
    go_tx.send(()).unwrap();
    let _ = reader.join().unwrap();
    assert_eq!(j.read(11).unwrap(), b"new eleven");
    assert_eq!(
        read_at(&devs[0], off11, BS as usize),
        read_at(&devs[1], off11, BS as usize),
        "mirror 0 holds other bytes than mirror 1 at the new lsn 11"
    );
    drop(j);
    drop(log);
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), 12);
    assert_eq!(j.read(11).unwrap(), b"new eleven", "a cut record came back at restart");
}

/// Item 8: a journal id used again (a replica creates its primary's journal
/// with the primary's id, which may be the id of a journal it deleted) used
/// to take over the deleted journal's segments at the next open.
#[test]
fn a_reused_journal_id_does_not_adopt_a_deleted_journals_segments() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 8 << 20);
    let c = small_config(&devs);
    {
        let log = MirrorLog::create(&c).unwrap();
        let x = log.create_journal("x").unwrap();
        for i in 0..250 {
            x.append(&payload(i, 1000)).unwrap(); // four segments
        }
        assert_eq!(x.segment_slots().len(), 4);
        let id = x.id();
        drop(x);
        log.delete_journal("x").unwrap();
        let y = log.create_journal_with_id("y", id).unwrap();
        for i in 0..100 {
            y.append(&payload(1000 + i, 1000)).unwrap(); // two segments
        }
    }
    let log = MirrorLog::open(&c).unwrap();
    let y = log.journal("y").unwrap();
    assert_eq!(y.next_lsn(), 101, "the deleted journal's segments were adopted");
    assert!(matches!(y.read(150), Err(Error::NotYetWritten { .. })));
    for l in 1..=100 {
        assert_eq!(y.read(l).unwrap(), payload(999 + l, 1000), "lsn {l}");
    }
    assert_eq!(y.recovery_stats().missing_segments, 0);
}

/// Found by the simulator (tools/sim, seed 14): a cut-back below the mark
/// that the power cut short left the mark above the chain's end. Recovery
/// then gave the next append the mark's LSN while the chain continued at
/// its end, so the record did not chain, and the next restart lost it
/// although it was acknowledged.
#[test]
fn a_cut_back_below_the_mark_cut_short_loses_no_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let (_devs, mut c) = set(dir.path(), 2);
    let fault = FaultInjector::new();
    c.storage = Some(fault.clone());
    {
        let log = MirrorLog::create(&c).unwrap();
        let j = log.create_journal("j").unwrap();
        for i in 1..=20u64 {
            assert_eq!(j.append(&payload(i, 300)).unwrap(), i);
        }
        j.set_mark(21).unwrap(); // every record consumed
                                 // Cut back to 15; the power fails after the cut's zeroing reached
                                 // both mirrors, before the lowered mark is written.
        fault.fail_writes_after(2);
        assert!(j.truncate_after(15).is_err());
    }
    fault.clear();
    let lsn = {
        let log = MirrorLog::open(&c).unwrap();
        let j = log.journal("j").unwrap();
        assert!(j.mark() <= j.next_lsn(), "mark {} above the end {}", j.mark(), j.next_lsn());
        j.append(b"after the interrupted cut").unwrap()
    };
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.read(lsn).unwrap(), b"after the interrupted cut", "an acknowledged append was lost");
    assert_eq!(j.next_lsn(), lsn + 1);
}

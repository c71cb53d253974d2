//! Storage faults: torn and corrupt tails, bit rot, failing mirrors, devices
//! that refuse O_DIRECT, members of different sets, real loop devices.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mirrorlog::format::{scan_chain, slot_offset, ChainPos, SegmentHeader, Superblock, DATA_START, SUPERBLOCK_REGION};
use mirrorlog::{Error, FaultInjector, MirrorLog};

const BS: u64 = 4096;

/// Appends `n` small records one at a time: each is its own batch, so with a
/// fresh set record `k` sits alone in block `k` of slot 0.
fn fill(cfg: &mirrorlog::Config, n: u64) {
    let log = MirrorLog::create(cfg).unwrap();
    let j = log.create_journal("j").unwrap();
    for i in 1..=n {
        assert_eq!(j.append(&payload(i, 100 + i as usize)).unwrap(), i);
    }
}

/// A fresh 2-mirror set in a temporary folder holding records 1..=n (see `fill`).
fn filled_set(n: u64) -> (tempfile::TempDir, Vec<PathBuf>, mirrorlog::Config) {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    fill(&cfg, n);
    (dir, devs, cfg)
}

/// Reopens the set and checks that records 1..=n are all there, byte for byte.
fn reopen_expecting(cfg: &mirrorlog::Config, n: u64) -> (MirrorLog, mirrorlog::Journal) {
    let log = MirrorLog::open(cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), n + 1);
    verify_all(&j, n);
    (log, j)
}

fn block_of(lsn: u64) -> u64 {
    DATA_START + lsn * BS
}

fn data_region(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()[DATA_START as usize..].to_vec()
}

fn verify_all(j: &mirrorlog::Journal, n: u64) {
    for i in 1..=n {
        assert_eq!(j.read(i).unwrap(), payload(i, 100 + i as usize), "lsn {i}");
    }
}

#[test]
fn zeroed_tail_on_one_mirror_is_recovered_and_copied_back() {
    let (_dir, devs, cfg) = filled_set(40);
    write_at(&devs[0], block_of(38), &vec![0u8; 3 * BS as usize]);
    let (log, j) = reopen_expecting(&cfg, 40);
    drop(j); // a journal handle keeps the set open
    drop(log);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]), "tail not copied to the mirror that lacked it");
}

#[test]
fn truncated_mirror_is_recovered_from_the_other() {
    let (_dir, devs, cfg) = filled_set(40);
    // cut the file at record 35 and grow it back: the tail reads as zeroes
    let f = std::fs::OpenOptions::new().write(true).open(&devs[1]).unwrap();
    f.set_len(block_of(35)).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    reopen_expecting(&cfg, 40);
}

#[test]
fn zeroed_tail_on_both_mirrors_ends_the_log_cleanly() {
    let (_dir, devs, cfg) = filled_set(40);
    for d in &devs {
        write_at(d, block_of(38), &vec![0u8; 3 * BS as usize]);
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), 38, "records destroyed on every mirror cannot be in the log");
    verify_all(&j, 37);
    assert!(matches!(j.read(38), Err(Error::NotYetWritten { .. })));
    assert_eq!(j.append(b"new 38").unwrap(), 38);
    assert_eq!(j.read(38).unwrap(), b"new 38");
    // the old record 39 and 40 are gone for good, even after another reopen
    drop(j); // a journal handle keeps the set open
    drop(log);
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), 39);
    assert_eq!(j.read(38).unwrap(), b"new 38");
}

#[test]
fn flipped_bits_in_the_tail() {
    let (_dir, devs, cfg) = filled_set(40);
    // one mirror: recovered from the other, bad copy repaired
    flip_byte(&devs[1], block_of(40) + 50);
    flip_byte(&devs[1], block_of(39) + 3);
    let (log, j) = reopen_expecting(&cfg, 40);
    drop(j); // a journal handle keeps the set open
    drop(log);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]));
    // both mirrors, in record 40: it is dropped, nothing corrupt is returned
    flip_byte(&devs[0], block_of(40) + 60);
    flip_byte(&devs[1], block_of(40) + 70);
    reopen_expecting(&cfg, 39);
}

#[test]
fn self_heal_repairs_a_bad_copy_on_read() {
    let (_dir, devs, cfg) = filled_set(40);
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(log.status().repairs, 0);
    // corrupt record 10 on the mirror reads go to first, behind the engine's back
    flip_byte(&devs[0], block_of(10) + 40);
    assert_ne!(data_region(&devs[0]), data_region(&devs[1]));
    assert_eq!(j.read(10).unwrap(), payload(10, 110), "a bad copy must never be returned");
    assert_eq!(log.status().repairs, 1);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]), "bad copy not rewritten");
    // iteration heals too
    flip_byte(&devs[0], block_of(20) + 40);
    let n = j.iter(1).map(|r| r.map(|(l, _)| l).unwrap()).last();
    assert_eq!(n, Some(40));
    assert_eq!(log.status().repairs, 2);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]));
    // corrupt on both: a clear error, not bad bytes
    flip_byte(&devs[0], block_of(30) + 40);
    flip_byte(&devs[1], block_of(30) + 40);
    let e = j.read(30).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    assert_eq!(j.read(29).unwrap(), payload(29, 129));
}

/// Finds the slot holding a journal's newest segment, and the offset of the
/// last record in it, by reading the device file.
fn tail_of(dev: &Path, journal_id: u64, seg: u64, slots: u64) -> (u64, u64, u64) {
    let mut best: Option<(u64, SegmentHeader, u32)> = None;
    for s in 0..slots {
        let b = read_at(dev, slot_offset(s, seg), BS as usize);
        if let Ok((h, crc)) = SegmentHeader::decode(&b) {
            if h.journal_id == journal_id && best.as_ref().is_none_or(|(_, bh, _)| h.seq > bh.seq) {
                best = Some((s, h, crc));
            }
        }
    }
    let (slot, h, crc) = best.expect("a segment");
    let data = read_at(dev, slot_offset(slot, seg), seg as usize);
    let mut pos = ChainPos { off: BS as usize, lsn: h.first_lsn, prev_crc: crc };
    let mut last = (0u64, 0usize);
    scan_chain(&data, &mut pos, BS as usize, 1 << 20, |f| {
        last = (f.header.lsn, f.off);
        true
    });
    (slot, last.0, last.1 as u64)
}

#[test]
fn torn_tail_in_a_reused_slot_never_revives_stale_records() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 256u64 << 10;
    let slots = 6u64;
    let devs = devices(dir.path(), 2, DATA_START + slots * seg);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("j").unwrap();
    let id = j.info().id;
    // Write and reclaim until slots have been reused several times, then stop
    // a little way into a segment so the slot holds stale records past the tail.
    let mut lsn = 0;
    let mut reused = 0;
    while reused < 3 * slots {
        lsn = j.append(&payload(lsn + 1, 2000)).unwrap();
        if lsn % 40 == 0 {
            j.set_mark(lsn - 30).unwrap();
        }
        let info = j.info();
        if info.segments >= 2 && lsn % 97 == 0 {
            reused += 1;
        }
    }
    let (slot, last, _) = tail_of(&devs[0], id, seg, slots);
    // make sure we are early in a segment with old records behind
    while {
        let (_, l, off) = tail_of(&devs[0], id, seg, slots);
        l != lsn || off > seg / 3 || off < 4 * BS
    } {
        lsn = j.append(&payload(lsn + 1, 2000)).unwrap();
        if lsn % 40 == 0 {
            j.set_mark(lsn - 30).unwrap();
        }
    }
    let _ = (slot, last);
    let (slot, last, off) = tail_of(&devs[0], id, seg, slots);
    assert_eq!(last, lsn);
    let stale = read_at(&devs[0], slot_offset(slot, seg) + off + 8 * BS, 64);
    assert!(stale.iter().any(|&b| b != 0), "the slot should hold stale bytes past the tail");
    let mark = j.mark();
    drop(j); // a journal handle keeps the set open
    drop(log);
    // Tear the last record on both mirrors.
    for d in &devs {
        write_at(d, slot_offset(slot, seg) + off, &vec![0u8; BS as usize]);
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), lsn, "recovery must stop at the hole, not continue into stale records");
    for r in j.iter(mark) {
        let (l, p) = r.unwrap();
        assert_eq!(p, payload(l, 2000), "lsn {l}");
    }
    // and it keeps working
    assert_eq!(j.append(b"x").unwrap(), lsn);
}

#[test]
fn failed_mirror_writes_continue_on_the_survivor_and_stay_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, mut cfg, fault) = faulty_mirrors(dir.path());
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("j").unwrap();
    for i in 1..=10 {
        j.append(&payload(i, 110)).unwrap();
    }
    fault.fail_writes(&devs[1]);
    for i in 11..=20 {
        assert_eq!(j.append(&payload(i, 100 + i as usize)).unwrap(), i, "appends must go on degraded");
    }
    let st = log.status();
    assert!(st.mirrors[0].healthy);
    assert!(!st.mirrors[1].healthy);
    assert_eq!(j.read(15).unwrap(), payload(15, 115));
    drop(j); // a journal handle keeps the set open
    drop(log);
    let before = data_region(&devs[1]);
    // reopen without the fault: the member stays out
    cfg.storage = None;
    let log = MirrorLog::open(&cfg).unwrap();
    let st = log.status();
    assert!(!st.mirrors[1].healthy, "failed state must survive reopen");
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), 21);
    for i in 11..=20 {
        assert_eq!(j.read(i).unwrap(), payload(i, 100 + i as usize));
    }
    j.append(b"21").unwrap();
    drop(j); // a journal handle keeps the set open
    drop(log);
    assert_eq!(data_region(&devs[1]), before, "a failed member must not be written");
}

/// `zpool status`'s READ, WRITE and CKSUM columns, per member, and the
/// copies rewritten on it (issue 14): each fault counts on the member it
/// happened on and nowhere else.
#[test]
fn each_member_counts_its_read_write_and_checksum_errors() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let mut cfg = small_config(&devs);
    fill(&cfg, 40);
    let fault = FaultInjector::new();
    cfg.storage = Some(fault.clone());
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    let counts = |log: &MirrorLog| -> Vec<(u64, u64, u64, u64)> {
        log.status().mirrors.iter().map(|m| (m.read_errors, m.write_errors, m.checksum_errors, m.repaired)).collect()
    };
    assert_eq!(counts(&log), vec![(0, 0, 0, 0); 2]);
    // A bad copy on member 0, read first: one checksum error, one repair.
    flip_byte(&devs[0], block_of(10) + 40);
    assert_eq!(j.read(10).unwrap(), payload(10, 110));
    assert_eq!(counts(&log), vec![(0, 0, 1, 1), (0, 0, 0, 0)]);
    // Member 0 fails its reads: counted there, served from member 1.
    fault.fail_reads(&devs[0]);
    verify_all(&j, 40);
    let c = counts(&log);
    assert!(c[0].0 > 0 && c[1] == (0, 0, 0, 0), "{c:?}");
    fault.clear();
    // Member 1 fails a write: counted there, and it is failed.
    fault.fail_writes(&devs[1]);
    j.append(b"41").unwrap();
    let c = counts(&log);
    assert!(c[1].1 > 0 && c[0].1 == 0, "{c:?}");
    assert!(!log.status().mirrors[1].healthy);
}

/// Scrub (issue 14): rot planted on each member in turn, where no read
/// goes, is found on the member it is on and rewritten from the other; the
/// mirrors are then identical block for block.
#[test]
fn a_scrub_repairs_rot_on_each_member_from_the_other() {
    let (_dir, devs, cfg) = filled_set(40);
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    // Behind the engine's back, after its open (whose recovery rewrites a
    // rotten tail on every mirror).
    flip_byte(&devs[0], block_of(10) + 40);
    flip_byte(&devs[1], block_of(20) + 40);
    flip_byte(&devs[0], block_of(33) + 60);
    flip_byte(&devs[1], block_of(40) + 40); // the last record
    let r = j.scrub(64 << 10, |_| true).unwrap();
    assert_eq!((r.members, r.records), (2, 80), "{r:?}");
    assert_eq!(r.repaired, 4, "{r:?}");
    let st = log.status();
    assert_eq!((st.mirrors[0].checksum_errors, st.mirrors[0].repaired), (2, 2));
    assert_eq!((st.mirrors[1].checksum_errors, st.mirrors[1].repaired), (2, 2));
    drop(j);
    drop(log);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]), "the mirrors differ after the scrub");
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.scrub(4096, |_| true).unwrap().repaired, 0, "a second scrub finds nothing");
    verify_all(&j, 40);
}

/// Two bad spots on one member only: once the first is healed the read
/// goes on from the other member, so the scrub reads the segment from the
/// first member again to find the second.
#[test]
fn a_scrub_finds_every_bad_spot_on_one_member() {
    let (_dir, devs, cfg) = filled_set(40);
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    flip_byte(&devs[0], block_of(10) + 40);
    flip_byte(&devs[0], block_of(33) + 40);
    assert_eq!(j.scrub(4096, |_| true).unwrap().repaired, 2);
    let st = log.status();
    assert_eq!((st.mirrors[0].checksum_errors, st.mirrors[1].checksum_errors), (2, 0));
    drop(j);
    drop(log);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]));
}

#[test]
fn a_scrub_reports_a_record_bad_on_every_member_and_keeps_serving() {
    let (_dir, devs, cfg) = filled_set(20);
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    flip_byte(&devs[0], block_of(7) + 40);
    flip_byte(&devs[1], block_of(7) + 40);
    let e = j.scrub(64 << 10, |_| true).unwrap_err();
    assert_eq!(e.code_name(), "corrupt", "{e}");
    assert_eq!(j.read(6).unwrap(), payload(6, 106));
    assert!(j.read(7).is_err());
    assert_eq!(j.append(b"21").unwrap(), 21);
}

#[test]
fn a_scrub_alongside_appends_loses_nothing() {
    let (_dir, devs, cfg) = filled_set(20);
    let log = std::sync::Arc::new(MirrorLog::open(&cfg).unwrap());
    flip_byte(&devs[1], block_of(5) + 40);
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let j = log.journal("j").unwrap();
            for i in 21..=400u64 {
                assert_eq!(j.append(&payload(i, 100 + i as usize)).unwrap(), i);
            }
        })
    };
    let j = log.journal("j").unwrap();
    let mut repaired = 0;
    while !writer.is_finished() {
        repaired += j.scrub(16 << 10, |_| true).unwrap().repaired;
    }
    writer.join().unwrap();
    repaired += j.scrub(16 << 10, |_| true).unwrap().repaired;
    assert_eq!(repaired, 1);
    verify_all(&j, 400);
    drop(j);
    drop(log);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]));
}

/// A consumer's mark passing the scrub (its segments reclaimed under it)
/// is not an error: the scrub goes on from the mark.
#[test]
fn a_scrub_goes_on_from_a_mark_that_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    let log = std::sync::Arc::new(MirrorLog::create(&cfg).unwrap());
    let j = log.create_journal("j").unwrap();
    for i in 1..=600u64 {
        j.append(&payload(i, 2000)).unwrap();
    }
    let marker = {
        let j = j.clone();
        std::thread::spawn(move || {
            for to in (50..=550u64).step_by(50) {
                j.set_mark(to).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let mut scrubs = 0;
    while !marker.is_finished() || scrubs == 0 {
        let r = j.scrub(4096, |_| true).expect("a mark passing the scrub is not an error");
        assert_eq!(r.repaired, 0);
        scrubs += 1;
    }
    marker.join().unwrap();
    for i in 550..=600u64 {
        assert_eq!(j.read(i).unwrap(), payload(i, 2000));
    }
}

/// A cut-back (as a replica's, to its primary's history) under a running
/// scrub is not an error either: the scrub reads on from what is left.
#[test]
fn a_scrub_goes_on_over_a_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("j").unwrap();
    for i in 1..=600u64 {
        j.append(&payload(i, 2000)).unwrap();
    }
    let cutter = {
        let j = j.clone();
        std::thread::spawn(move || {
            for keep in (100..=580u64).rev().step_by(40) {
                j.truncate_after(keep).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let mut scrubs = 0;
    while !cutter.is_finished() || scrubs == 0 {
        j.scrub(4096, |_| true).expect("a cut-back under the scrub is not an error");
        scrubs += 1;
    }
    cutter.join().unwrap();
    assert_eq!(j.next_lsn(), 101);
    for i in 1..=100u64 {
        assert_eq!(j.read(i).unwrap(), payload(i, 2000));
    }
}

#[test]
fn no_healthy_mirror_fails_appends_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, cfg, fault) = faulty_mirrors(dir.path());
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("j").unwrap();
    j.append(b"one").unwrap();
    fault.fail_writes(&devs[0]);
    fault.fail_writes(&devs[1]);
    let e = j.append(b"two").unwrap_err();
    assert!(matches!(e, Error::NoHealthyMirror), "{e}");
    assert_eq!(e.code_name(), "no-healthy-mirror");
    assert!(j.append(b"three").is_err());
}

#[test]
fn read_errors_fall_back_to_the_other_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let mut cfg = small_config(&devs);
    fill(&cfg, 20);
    let fault = FaultInjector::new();
    cfg.storage = Some(fault.clone());
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    fault.fail_reads(&devs[0]);
    verify_all(&j, 20);
    fault.fail_reads(&devs[1]);
    assert!(j.read(5).is_err());
}

struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn device_refusing_o_direct_is_rejected_by_name() {
    // ramfs refuses O_DIRECT (tmpfs accepts it since Linux 6.6).
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("ramfs");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED device_refusing_o_direct_is_rejected_by_name: cannot mount ramfs (needs root)");
        return;
    }
    let _m = Mount(mnt.clone());
    let devs = devices(&mnt, 1, 8 << 20);
    let e = MirrorLog::create(&small_config(&devs)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&devs[0].display().to_string()), "{msg}");
    assert!(msg.contains("O_DIRECT"), "{msg}");
}

#[test]
fn members_of_different_sets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = devices(&dir.path().join("a"), 2, 8 << 20);
    let b = devices(&dir.path().join("b"), 2, 8 << 20);
    MirrorLog::create(&small_config(&a)).unwrap();
    MirrorLog::create(&small_config(&b)).unwrap();
    let mixed = vec![a[0].clone(), b[1].clone()];
    let e = MirrorLog::open(&small_config(&mixed)).unwrap_err();
    assert!(e.to_string().contains("do not belong together"), "{e}");
    // an unformatted device is not silently formatted by open
    let c = devices(&dir.path().join("c"), 1, 8 << 20);
    assert!(MirrorLog::open(&small_config(&c)).is_err());
}

fn newest_copy(dev: &Path) -> (u64, u64) {
    let mut best = (0, 0);
    for c in 0..2 {
        let b = read_at(dev, c * SUPERBLOCK_REGION, SUPERBLOCK_REGION as usize);
        if let Ok(sb) = Superblock::decode(&b) {
            if sb.generation >= best.1 {
                best = (c * SUPERBLOCK_REGION, sb.generation);
            }
        }
    }
    best
}

#[test]
fn superblock_survives_a_torn_copy() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("j").unwrap();
        for i in 0..10 {
            j.append(&[i]).unwrap();
        }
        j.set_mark(5).unwrap();
    }
    // tear the newest copy on one member: the other member's newest wins
    let (off, _) = newest_copy(&devs[0]);
    flip_byte(&devs[0], off + 30);
    let log = MirrorLog::open(&cfg).unwrap();
    assert_eq!(log.journal("j").unwrap().mark(), 5);
    drop(log);
    // open rewrote the superblock: tear the newest copy on both members;
    // the previous generation in the other copy is used
    for d in &devs {
        let (off, _) = newest_copy(d);
        flip_byte(d, off + 30);
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.read(10).unwrap(), vec![9u8]);
}

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Held by every test of this file that attaches loop devices: a detached
/// device's number may be taken by the next attach, and a test that opens
/// it after detaching must not find another test's device there.
static LOOPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn attach_loop(file: &Path) -> Result<Loop, String> {
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

#[test]
fn loop_devices_as_mirrors() {
    let _loops = LOOPS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let files = devices(dir.path(), 2, 32 << 20);
    let mut loops = Vec::new();
    for f in &files {
        match attach_loop(f) {
            Ok(l) => loops.push(l),
            Err(why) => {
                eprintln!("skipped loop_devices_as_mirrors: {why}");
                println!("SKIPPED loop_devices_as_mirrors: {why}");
                return;
            }
        }
    }
    let paths: Vec<PathBuf> = loops.iter().map(|l| PathBuf::from(&l.0)).collect();
    let cfg = small_config(&paths);
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("loop").unwrap();
        let refs: Vec<Vec<u8>> = (0..50).map(|i| payload(i, 3000)).collect();
        let rr: Vec<&[u8]> = refs.iter().map(|v| v.as_slice()).collect();
        j.append_batch(&rr).unwrap();
        for i in 0..300u64 {
            j.append(&payload(1000 + i, (i * 91 % 20_000) as usize)).unwrap();
        }
        let st = log.status();
        assert!(st.mirrors.iter().all(|m| m.healthy));
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("loop").unwrap();
    for i in 0..50u64 {
        assert_eq!(j.read(i + 1).unwrap(), payload(i, 3000));
    }
    for i in 0..300u64 {
        assert_eq!(j.read(51 + i).unwrap(), payload(1000 + i, (i * 91 % 20_000) as usize));
    }
    drop(j); // a journal handle keeps the set open
    drop(log);
    drop(loops);
    assert_eq!(data_region(&files[0]), data_region(&files[1]));
}

#[test]
fn corruption_mid_tail_on_the_first_mirror_is_read_past_from_the_other() {
    // A long tail segment (many read chunks); the first mirror has a bad
    // block in the middle. Recovery must find the full chain on the second
    // mirror and repair the first.
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let mut cfg = mirrorlog::Config::new(devs.iter().cloned());
    cfg.segment_size = 16 << 20;
    let n = 2500u64;
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("j").unwrap();
        for i in 1..=n {
            j.append(&payload(i, 3000)).unwrap();
        }
    }
    // record k is alone in block k (+1 for the header block); corrupt record 1200
    flip_byte(&devs[0], DATA_START + 1200 * BS + 100);
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), n + 1, "acknowledged records past the bad block were lost");
    assert!(log.status().repairs >= 1);
    for i in (1..=n).step_by(37) {
        assert_eq!(j.read(i).unwrap(), payload(i, 3000));
    }
    drop(j); // a journal handle keeps the set open
    drop(log);
    assert_eq!(data_region(&devs[0]), data_region(&devs[1]));
}

#[test]
fn a_set_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let e = MirrorLog::open(&cfg).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(log);
    MirrorLog::open(&cfg).unwrap();
}

/// A mirror that lies (torn writes that report success, then rotten reads
/// on top): no bad byte is ever returned; reads, recovery and the other
/// mirror carry every acknowledged record, and once the lying stops, a
/// reopen heals the liar from the good copy.
#[test]
fn a_lying_mirror_never_returns_bad_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, mut cfg, fault) = faulty_mirrors(dir.path());
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("j").unwrap();
    fault.tear_writes(&devs[0], 512);
    for i in 1..=60u64 {
        assert_eq!(j.append(&payload(i, 2000)).unwrap(), i);
    }
    fault.rot_reads(&devs[0]);
    for i in 1..=60u64 {
        assert_eq!(j.read(i).unwrap(), payload(i, 2000), "lsn {i}");
    }
    drop(j);
    drop(log);
    fault.clear();
    {
        // Reading every record once heals the liar from the good copy.
        let log = MirrorLog::open(&cfg).unwrap();
        let j = log.journal("j").unwrap();
        assert_eq!(j.next_lsn(), 61);
        for i in 1..=60u64 {
            assert_eq!(j.read(i).unwrap(), payload(i, 2000), "lsn {i}");
        }
        assert!(log.status().repairs > 0);
    }
    // The liar now holds the good copy too: the other mirror can go.
    std::fs::remove_file(&devs[1]).unwrap();
    cfg.devices.truncate(1);
    // (A member last seen healthy is left out only when the operator says
    // so: tests/degraded.rs.)
    cfg.start_degraded = true;
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("j").unwrap();
    for i in 1..=60u64 {
        assert_eq!(j.read(i).unwrap(), payload(i, 2000), "lsn {i} on the healed mirror alone");
    }
}

/// Found by the simulator (tools/sim, seed 2979): writes in flight at a
/// crash complete on different mirrors (one batch reaches one mirror, the
/// next batch another). Recovery follows the chain across mirrors, but then
/// wanted one mirror to hold the whole tail window and refused to open
/// ("no member holds the chosen tail"). It now assembles the window from
/// the pieces, verified record by record, and writes it to every mirror.
#[test]
fn a_tail_held_in_pieces_by_different_mirrors_is_assembled() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 3, 16 << 20);
    let cfg = small_config(&devs);
    fill(&cfg, 40);
    // Record 38 only on mirror 0, 39 only on mirror 1, 40 only on mirror 2.
    let zero = vec![0u8; BS as usize];
    for (m, lsns) in [(0, [39, 40]), (1, [38, 40]), (2, [38, 39])] {
        for lsn in lsns {
            write_at(&devs[m], block_of(lsn), &zero);
        }
    }
    let (log, j) = reopen_expecting(&cfg, 40);
    drop(j);
    drop(log);
    for lsn in 38..=40 {
        let b = read_at(&devs[0], block_of(lsn), BS as usize);
        for d in &devs[1..] {
            assert_eq!(read_at(d, block_of(lsn), BS as usize), b, "lsn {lsn}: the mirrors differ after recovery");
        }
    }
}

/// Issue 14: a member whose disk fills up under 64-connection load (a loop
/// device backed by a file on an 8 MiB tmpfs: writes past it fail with a
/// real EIO) fails; no append fails, every acknowledged record reads back,
/// the failure is visible (WRITE count, `health` exits 3), and the next
/// start leaves the member out without asking. Then the runbook: replaced
/// by a new loop device under the same load, resilvered, healthy, the
/// members identical offline.
#[test]
fn a_member_whose_disk_fills_under_load_fails_and_no_append_is_lost() {
    let _loops = LOOPS.lock().unwrap_or_else(|e| e.into_inner());
    use common::daemon::Daemon;
    use mirrorlog::client::{BlockingClient, ClientConfig};
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "SKIPPED a_member_whose_disk_fills_under_load_fails_and_no_append_is_lost: cannot mount tmpfs (needs root)"
        );
        return;
    }
    let _m = Mount(mnt.clone());
    let backing = mnt.join("backing");
    std::fs::File::create(&backing).unwrap().set_len(64 << 20).unwrap(); // sparse
    let lo = match attach_loop(&backing) {
        Ok(l) => l,
        Err(why) => {
            println!("SKIPPED a_member_whose_disk_fills_under_load_fails_and_no_append_is_lost: {why}");
            return;
        }
    };
    let mut d = Daemon::configure(dir.path(), "");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let m0 = format!("{}/m0.dev", dir.path().display());
    std::fs::write(&d.config, text.replace(&m0, &lo.0)).unwrap();
    d.spawn();
    d.wait_ready();

    let addr = d.addr.clone();
    // 64 connections append 48 records of 4 KiB each: what was acknowledged.
    let load = |base: u64, why: &str| -> Vec<(u64, Vec<u8>)> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..64u64)
                .map(|t| {
                    let addr = addr.clone();
                    s.spawn(move || {
                        let c = BlockingClient::connect(ClientConfig::new([addr])).unwrap();
                        (0..48u64)
                            .map(|i| {
                                let p = payload(base + t * 1000 + i, 4096);
                                (c.append("default", &p).expect(why), p)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    };
    let acked = load(0, "no append fails while a member fails");
    let st = d.status();
    assert_eq!(st["mirrors"][0]["healthy"], false, "the filled member must have failed: {st}");
    assert!(st["mirrors"][0]["write_errors"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["mirrors"][1]["healthy"], true, "{st}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &d.addr, "health"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    let check = |d: &Daemon, records: &[(u64, Vec<u8>)]| {
        let c = BlockingClient::connect(ClientConfig::new([d.addr.clone()])).unwrap();
        for (lsn, p) in records {
            let (recs, _) = c.read("default", *lsn, 1, 8192).unwrap();
            assert_eq!(&recs[0].payload, p, "lsn {lsn}");
        }
    };
    check(&d, &acked);
    // The next start leaves the failed member out without asking.
    d.restart();
    assert_eq!(d.status()["mirrors"][0]["healthy"], false);
    check(&d, &acked);

    // The runbook: the dead disk is replaced by a new (blank) block device
    // under the same 64-connection load; resilvered, the set is healthy,
    // and offline the members are identical.
    let new_file = dir.path().join("new.dev");
    mirrorlog::io::create_device_file(&new_file, 64 << 20).unwrap();
    let new_lo = attach_loop(&new_file).expect("a second loop device");
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["--endpoint", &addr])
            .args(args)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
    };
    let (code, out) = cli(&["replace", "--old", &lo.0, "--new", &new_lo.0]);
    assert_eq!(code, Some(0), "{out}");
    let more = load(100_000, "no append fails during a resilver");
    let t0 = std::time::Instant::now();
    while d.status()["resilver"]["state"] != "finished" {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "{}", d.status());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out) = cli(&["health"]);
    assert_eq!(code, Some(0), "healthy again: {out}");
    check(&d, &acked);
    check(&d, &more);
    assert!(d.term().success());
    let m1 = dir.path().join("m1.dev");
    let report = mirrorlog::verify::verify(&[PathBuf::from(&new_lo.0), m1], &Default::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Issue 14 on real block devices: a loop device detached while the set is
/// closed (the disk is gone) refuses the start; told to start degraded,
/// the set opens on the other, every record there.
#[test]
fn a_detached_loop_member_refuses_the_start_until_told() {
    let _loops = LOOPS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let files = devices(dir.path(), 2, 32 << 20);
    let mut loops = Vec::new();
    for f in &files {
        match attach_loop(f) {
            Ok(l) => loops.push(l),
            Err(why) => {
                println!("SKIPPED a_detached_loop_member_refuses_the_start_until_told: {why}");
                return;
            }
        }
    }
    let paths: Vec<PathBuf> = loops.iter().map(|l| PathBuf::from(&l.0)).collect();
    let mut cfg = small_config(&paths);
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("j").unwrap();
        for i in 1..=100u64 {
            j.append(&payload(i, 100 + i as usize)).unwrap();
        }
    }
    drop(loops.pop()); // detach the second: its device node is gone
    let e = MirrorLog::open(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("--start-degraded") && e.contains(&paths[1].display().to_string()), "{e}");
    cfg.start_degraded = true;
    let log = MirrorLog::open(&cfg).unwrap();
    let st = log.status();
    assert!(st.mirrors[0].healthy && !st.mirrors[1].healthy, "{:?}", st.mirrors);
    assert_eq!(st.absent_devices.len(), 1, "{:?}", st.absent_devices);
    verify_all(&log.journal("j").unwrap(), 100);
}

//! Regression tests for faults found in review: cross-mirror fallback at a
//! record that runs past a read, bad spots on different mirrors in one read,
//! lost wake-ups of writers, and deleting a journal with a Driver in flight.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use mirrorlog::format::DATA_START;
use mirrorlog::{Config, Driver, Error, MirrorLog};

const BS: u64 = 4096;

fn cfg(devs: &[PathBuf], max_record: u32) -> Config {
    let mut c = Config::new(devs.iter().cloned());
    c.segment_size = 16 << 20;
    c.max_record_size = max_record;
    c.index_stride = 8 << 10;
    c
}

/// Appends one record per batch and returns (lsn, segment offset) of each.
fn append_all(j: &mirrorlog::Journal, sizes: &[usize]) -> Vec<(u64, u64)> {
    let mut off = BS; // records start after the header block
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let lsn = j.append(&payload(i as u64, n)).unwrap();
            let at = off;
            off += (32 + n as u64).div_ceil(BS) * BS;
            (lsn, at)
        })
        .collect()
}

#[test]
fn read_falls_back_when_the_bad_record_runs_past_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let c = cfg(&devs, 256 << 10);
    let log = MirrorLog::create(&c).unwrap();
    let j = log.create_journal("j").unwrap();
    let sizes = [1000, 100_000, 1000, 150_000, 1000];
    let at = append_all(&j, &sizes);
    // Break the header of the 100 KB record on the mirror reads go to first:
    // its good copy (mirror 1) cannot be finished inside one 64 KiB read.
    flip_byte(&devs[0], DATA_START + at[1].1 + 9);
    assert_eq!(j.read(at[1].0).unwrap(), payload(1, 100_000));
    assert_eq!(j.read(at[3].0).unwrap(), payload(3, 150_000));
    assert!(log.status().repairs >= 1);
}

#[test]
fn recovery_falls_back_for_a_record_larger_than_a_read_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let c = cfg(&devs, 2 << 20);
    let sizes = [500, (1 << 20) + 300_000, 700, 800];
    let at = {
        let log = MirrorLog::create(&c).unwrap();
        let j = log.create_journal("j").unwrap();
        append_all(&j, &sizes)
    };
    flip_byte(&devs[0], DATA_START + at[1].1 + 9);
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), 5, "acknowledged records after the big one were cut off");
    for (i, (lsn, _)) in at.iter().enumerate() {
        assert_eq!(j.read(*lsn).unwrap(), payload(i as u64, sizes[i]));
    }
}

#[test]
fn bad_spots_on_different_mirrors_in_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let c = cfg(&devs, 64 << 10);
    let sizes = vec![1000usize; 40];
    let at = {
        let log = MirrorLog::create(&c).unwrap();
        let j = log.create_journal("j").unwrap();
        let at = append_all(&j, &sizes);
        // while open: iteration must get past both
        flip_byte(&devs[0], DATA_START + at[9].1 + 100);
        flip_byte(&devs[1], DATA_START + at[19].1 + 100);
        let got: Vec<u64> = j.iter(1).map(|r| r.unwrap().0).collect();
        assert_eq!(got, (1..=40).collect::<Vec<_>>());
        at
    };
    // and at recovery (healed above, so break them again)
    flip_byte(&devs[0], DATA_START + at[29].1 + 100);
    flip_byte(&devs[1], DATA_START + at[34].1 + 100);
    let log = MirrorLog::open(&c).unwrap();
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), 41, "recovery stopped at a bad spot that the other mirror holds intact");
    for (i, (lsn, _)) in at.iter().enumerate() {
        assert_eq!(j.read(*lsn).unwrap(), payload(i as u64, sizes[i]));
    }
}

#[test]
fn a_waiter_behind_an_unclaimed_batch_is_woken_to_write_it() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let mut c = cfg(&devs, 64 << 10);
    c.max_inflight_batches = 1;
    c.max_batch_bytes = 8 << 10;
    let log = MirrorLog::create(&c).unwrap();
    let j = log.create_journal("j").unwrap();
    let mut driver = Driver::new().unwrap();
    // batch 0: taken by the driver, in flight (the one writer slot)
    let t0 = j.submit(&payload(0, 100)).unwrap();
    driver.pump(&[&j], false).unwrap();
    // batch 1 (sealed, full) and batch 2 (open): nobody is writing them
    let mut last = t0;
    // (three batch buffers: batch 0 in flight, batches 1 and 2 here)
    for i in 1..9u64 {
        last = j.submit(&payload(i, 1500)).unwrap();
    }
    // a thread waits for the last record; the driver only reaps from now on
    let (tx, rx) = std::sync::mpsc::channel();
    let j2 = j.clone();
    std::thread::spawn(move || {
        let _ = tx.send(j2.wait(&last).map(|_| last.lsn));
    });
    std::thread::sleep(Duration::from_millis(50));
    while driver.in_flight() > 0 {
        driver.pump(&[], true).unwrap();
    }
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("the waiter was never woken to write its batches");
    assert_eq!(got.unwrap(), 9);
    assert!(j.poll(&t0).unwrap());
    assert_eq!(j.read(9).unwrap(), payload(8, 1500));
}

#[test]
fn deleting_a_journal_with_a_driver_in_flight_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let c = cfg(&devs, 64 << 10);
    let log = MirrorLog::create(&c).unwrap();
    let j = log.create_journal("gone").unwrap();
    let free_before = log.status().segments_free;
    let mut driver = Driver::new().unwrap();
    let tickets: Vec<_> = (0..50u64).map(|i| j.submit(&payload(i, 2000)).unwrap()).collect();
    driver.pump(&[&j], false).unwrap();
    // Same thread as the driver: must not wait for its own writes.
    log.delete_journal("gone").unwrap();
    while driver.in_flight() > 0 {
        driver.pump(&[&j], true).unwrap();
    }
    for t in &tickets {
        match j.poll(t) {
            Ok(true) | Err(Error::UnknownJournal(_)) => {}
            other => panic!("ticket {}: {other:?}", t.lsn),
        }
    }
    assert!(matches!(j.submit(b"x"), Err(Error::UnknownJournal(_))));
    assert_eq!(log.status().segments_free, free_before, "the deleted journal's segments come back once its writes end");
}

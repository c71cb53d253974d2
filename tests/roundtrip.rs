//! Round trips: random sizes, batches, segment boundaries, reopen, marks, limits.

mod common;

use common::*;
use mirrorlog::{Error, MirrorLog};

#[test]
fn random_sizes_across_segments_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 32 << 20);
    let cfg = small_config(&devs);
    let max = cfg.max_record_size as u64;
    let mut rng = Rng(7);
    let mut written = Vec::new();
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("t").unwrap();
        for i in 0..600u64 {
            // mostly small, sometimes the maximum, sometimes 1 byte
            let len = match rng.below(10) {
                0 => max,
                1 => 1,
                2 => 0,
                _ => rng.below(4000),
            } as usize;
            if rng.below(4) == 0 {
                let n = 1 + rng.below(8) as usize;
                let ps: Vec<Vec<u8>> = (0..n).map(|k| payload(i * 100 + k as u64, len / (k + 1))).collect();
                let refs: Vec<&[u8]> = ps.iter().map(|p| p.as_slice()).collect();
                let first = j.append_batch(&refs).unwrap();
                for (k, p) in ps.into_iter().enumerate() {
                    written.push((first + k as u64, p));
                }
            } else {
                let p = payload(i, len);
                let lsn = j.append(&p).unwrap();
                written.push((lsn, p));
            }
        }
        // dense from 1
        for (k, (lsn, _)) in written.iter().enumerate() {
            assert_eq!(*lsn, k as u64 + 1);
        }
        for (lsn, p) in &written {
            assert_eq!(&j.read(*lsn).unwrap(), p, "lsn {lsn} before reopen");
        }
        assert!(j.info().segments > 5, "test must cross segments: {:?}", j.info());
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("t").unwrap();
    assert_eq!(j.next_lsn(), written.len() as u64 + 1);
    for (lsn, p) in &written {
        assert_eq!(&j.read(*lsn).unwrap(), p, "lsn {lsn} after reopen");
    }
    let all: Vec<(u64, Vec<u8>)> = j.iter(1).map(|r| r.unwrap()).collect();
    assert_eq!(all, written);
    // appends continue densely after reopen
    assert_eq!(j.append(b"after").unwrap(), written.len() as u64 + 1);
    assert_eq!(j.read(written.len() as u64 + 1).unwrap(), b"after");
    // both mirrors hold identical bytes
    assert_eq!(std::fs::read(&devs[0]).unwrap()[1 << 20..], std::fs::read(&devs[1]).unwrap()[1 << 20..]);
}

#[test]
fn iterate_from_the_middle_and_read_errors() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let log = MirrorLog::create(&small_config(&devs)).unwrap();
    let j = log.create_journal("j").unwrap();
    for i in 1..=300u64 {
        assert_eq!(j.append(&payload(i, (i * 37 % 3000) as usize)).unwrap(), i);
    }
    let got: Vec<u64> = j.iter(123).map(|r| r.unwrap().0).collect();
    assert_eq!(got, (123..=300).collect::<Vec<_>>());
    for (lsn, p) in j.iter(250).map(|r| r.unwrap()) {
        assert_eq!(p, payload(lsn, (lsn * 37 % 3000) as usize));
    }
    assert!(matches!(j.read(301), Err(Error::NotYetWritten { lsn: 301, next: 301 })));
    assert_eq!(j.iter(301).count(), 0);
}

#[test]
fn limits_names_and_journals() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("a").unwrap();
    let big = vec![1u8; cfg.max_record_size as usize + 1];
    let e = j.append(&big).unwrap_err();
    assert!(matches!(e, Error::RecordTooLarge { .. }));
    assert_eq!(e.code_name(), "record-too-large");
    // a batch with one oversize record places nothing
    assert!(j.append_batch(&[b"x", &big]).is_err());
    assert_eq!(j.append(b"ok").unwrap(), 1);
    assert!(matches!(log.create_journal("a"), Err(Error::JournalExists(_))));
    assert!(matches!(log.create_journal("bad name"), Err(Error::InvalidName(_))));
    assert!(matches!(log.create_journal(""), Err(Error::InvalidName(_))));
    assert!(matches!(log.journal("nope"), Err(Error::UnknownJournal(_))));
    let b = log.create_journal("b").unwrap();
    b.append(b"in b").unwrap();
    assert_eq!(log.journal_names(), vec!["a".to_string(), "b".to_string()]);
    log.delete_journal("a").unwrap();
    assert!(matches!(j.append(b"gone"), Err(Error::UnknownJournal(_))));
    drop((j, b)); // journal handles keep the set open
    drop(log);
    let log = MirrorLog::open(&cfg).unwrap();
    assert_eq!(log.journal_names(), vec!["b".to_string()]);
    assert_eq!(log.journal("b").unwrap().read(1).unwrap(), b"in b");
    // a re-created journal starts empty, not with the old one's records
    let a2 = log.create_journal("a").unwrap();
    assert_eq!(a2.next_lsn(), 1);
    assert!(matches!(a2.read(1), Err(Error::NotYetWritten { .. })));
}

#[test]
fn full_set_refuses_appends_keeps_reads_and_marks_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB reserved + 8 slots of 256 KiB
    let devs = devices(dir.path(), 2, (1 << 20) + 8 * (256 << 10));
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("f").unwrap();
    let rec = vec![9u8; 10_000];
    let mut last = 0;
    let err = loop {
        match j.append(&rec) {
            Ok(l) => last = l,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Full), "{err}");
    assert_eq!(err.code_name(), "full");
    assert!(last > 100);
    assert_eq!(log.status().segments_free, 0);
    // reads still work while full
    assert_eq!(j.read(1).unwrap(), rec);
    assert_eq!(j.read(last).unwrap(), rec);
    // marks work while full and free whole segments
    j.set_mark(last / 2).unwrap();
    assert!(log.status().segments_free > 0);
    assert!(matches!(j.read(1), Err(Error::BelowMark { .. })));
    assert!(matches!(j.set_mark(1), Err(Error::InvalidMark { .. })));
    assert!(matches!(j.set_mark(last + 2), Err(Error::InvalidMark { .. })));
    let next = j.append(&rec).unwrap();
    assert_eq!(next, last + 1);
    drop(j); // a journal handle keeps the set open
    drop(log);
    // the mark survives a restart, and reclaimed slots stay free
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("f").unwrap();
    assert_eq!(j.mark(), last / 2);
    assert!(matches!(j.read(1), Err(Error::BelowMark { .. })));
    assert_eq!(j.read(last / 2).unwrap(), rec);
    assert_eq!(j.read(next).unwrap(), rec);
    assert_eq!(j.iter(last / 2).count() as u64, next - last / 2 + 1);
    // reclaimed slots are reused: write until full again, all readable
    let mut n = next;
    while let Ok(l) = j.append(&rec) {
        n = l;
    }
    assert!(n > next + 10);
    for l in (last / 2..=n).step_by(7) {
        assert_eq!(j.read(l).unwrap(), rec);
    }
}

#[test]
fn concurrent_appenders_get_dense_unique_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 32 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("c").unwrap();
    let threads = 16;
    let per = 200u64;
    let results: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let j = j.clone();
                s.spawn(move || {
                    (0..per)
                        .map(|i| {
                            let seed = t * 1_000_000 + i;
                            (j.append(&payload(seed, (seed % 700) as usize)).unwrap(), seed)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<(u64, u64)> = results.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all.len() as u64, threads * per);
    for (k, (lsn, seed)) in all.iter().enumerate() {
        assert_eq!(*lsn, k as u64 + 1);
        assert_eq!(j.read(*lsn).unwrap(), payload(*seed, (*seed % 700) as usize));
    }
    assert!(j.counters().batches < threads * per, "group commit formed no batch larger than one");
}

#[test]
fn recovery_scan_handles_records_spanning_read_chunks() {
    // The tail scan reads 1 MiB chunks; records here straddle chunk edges,
    // and two are larger than a chunk.
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 64 << 20);
    let mut cfg = mirrorlog::Config::new(devs.iter().cloned());
    cfg.segment_size = 16 << 20;
    cfg.max_record_size = 3 << 20;
    let mut rng = Rng(99);
    let mut written = Vec::new();
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("big").unwrap();
        let mut total = 0usize;
        let mut i = 0u64;
        while total < 12 << 20 {
            let len = match i {
                40 => (1 << 20) + 12_345,
                90 => (2 << 20) + 777,
                _ => rng.below(150_000) as usize,
            };
            let p = payload(i, len);
            written.push((j.append(&p).unwrap(), p));
            total += len + 4096;
            i += 1;
        }
        assert_eq!(j.info().segments, 1, "the test needs one long tail segment");
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("big").unwrap();
    let rs = j.recovery_stats();
    assert_eq!(rs.tail_records, written.len() as u64);
    assert_eq!(j.next_lsn(), written.len() as u64 + 1);
    for (lsn, p) in &written {
        assert_eq!(&j.read(*lsn).unwrap(), p, "lsn {lsn}");
    }
}

#[test]
fn deleting_a_journal_under_load_ends_every_append() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 32 << 20);
    let mut cfg = small_config(&devs);
    cfg.max_inflight_batches = 1;
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("doomed").unwrap();
    let other = log.create_journal("other").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..12u64 {
        let j = j.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut ok = 0u64;
            let end = loop {
                match j.append(&payload(t, 500)) {
                    Ok(_) => ok += 1,
                    Err(e) => break e,
                }
            };
            let _ = tx.send((ok, end.code_name()));
        });
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    log.delete_journal("doomed").unwrap();
    for _ in 0..12 {
        let (_, code) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("an appender hung after delete");
        assert_eq!(code, "unknown-journal");
    }
    // the rest of the set is unaffected, and the freed segments are reusable
    assert_eq!(other.append(b"still here").unwrap(), 1);
    assert!(matches!(log.journal("doomed"), Err(Error::UnknownJournal(_))));
    let again = log.create_journal("doomed").unwrap();
    assert_eq!(again.append(b"new").unwrap(), 1);
}

#[test]
fn reopen_finds_segments_past_the_first_header_read_group() {
    // 96 MiB with 256 KiB segments: about 380 slots, read 256 at a time at
    // open. Fill past slot 256 (slots are taken lowest first), then reopen.
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 96 << 20);
    let cfg = small_config(&devs);
    let mut last = 0;
    {
        let log = MirrorLog::create(&cfg).unwrap();
        let j = log.create_journal("far").unwrap();
        let refs: Vec<Vec<u8>> = (0..8).map(|k| payload(k, 8000)).collect();
        while log.status().segments_free > 60 {
            let rs: Vec<&[u8]> = refs.iter().map(|r| r.as_slice()).collect();
            last = j.append_batch(&rs).unwrap() + 7;
        }
        assert!(log.status().segments_total > 256);
    }
    let log = MirrorLog::open(&cfg).unwrap();
    let j = log.journal("far").unwrap();
    assert_eq!(j.next_lsn(), last + 1);
    let mut n = 0u64;
    for r in j.iter(1) {
        let (l, p) = r.unwrap();
        assert_eq!(p, payload((l - 1) % 8, 8000), "lsn {l}");
        n += 1;
    }
    assert_eq!(n, last);
}

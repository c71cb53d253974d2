//! The asynchronous path: `submit` tickets written by a `Driver`.

mod common;

use common::*;
use mirrorlog::{Driver, Error, MirrorLog, Tag, Ticket};

#[test]
fn driver_writes_many_journals_with_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 32 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    let js: Vec<_> = (0..3).map(|i| log.create_journal(&format!("j{i}")).unwrap()).collect();
    let refs: Vec<&mirrorlog::Journal> = js.iter().collect();
    let mut driver = Driver::new().unwrap();
    let mut pending: Vec<(usize, Ticket, u64)> = Vec::new();
    let mut acked: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 3];
    let mut backpressured = 0;
    // pump once, then move every durable ticket to `acked`
    let collect = |driver: &mut Driver, pending: &mut Vec<(usize, Ticket, u64)>, acked: &mut Vec<Vec<(u64, u64)>>| {
        driver.pump(&refs, true).unwrap();
        pending.retain(|(k, t, s)| {
            let done = js[*k].poll(t).unwrap();
            if done {
                acked[*k].push((t.lsn, *s));
            }
            !done
        });
    };
    let mut seed = 0u64;
    while seed < 3000 {
        // submit until back-pressure
        loop {
            let k = (seed % 3) as usize;
            match js[k].submit(&payload(seed, (seed % 5000) as usize)) {
                Ok(t) => {
                    pending.push((k, t, seed));
                    seed += 1;
                }
                Err(Error::Backpressure) => {
                    backpressured += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            if seed % 200 == 0 {
                break;
            }
        }
        collect(&mut driver, &mut pending, &mut acked);
    }
    while !pending.is_empty() {
        collect(&mut driver, &mut pending, &mut acked);
    }
    assert!(backpressured > 0, "the test should hit back-pressure");
    drop(driver);
    drop(refs);
    drop(js); // journal handles keep the set (and its devices) open
    drop(log);
    let log = MirrorLog::open(&cfg).unwrap();
    for (k, a) in acked.iter_mut().enumerate() {
        a.sort();
        let j = log.journal(&format!("j{k}")).unwrap();
        assert_eq!(j.next_lsn(), a.len() as u64 + 1);
        for (i, (lsn, s)) in a.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1);
            assert_eq!(j.read(*lsn).unwrap(), payload(*s, (*s % 5000) as usize));
        }
    }
}

#[test]
fn tickets_are_not_durable_until_written_and_wait_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    let log = MirrorLog::create(&small_config(&devs)).unwrap();
    let j = log.create_journal("w").unwrap();
    let t1 = j.submit(b"one").unwrap();
    let t2 = j.submit(b"two").unwrap();
    assert_eq!((t1.lsn, t2.lsn), (1, 2));
    assert!(!j.poll(&t1).unwrap());
    assert!(matches!(j.read(1), Err(Error::NotYetWritten { .. })), "unacknowledged records are not readable");
    j.wait(&t2).unwrap();
    assert!(j.poll(&t1).unwrap() && j.poll(&t2).unwrap());
    assert_eq!(j.read(2).unwrap(), b"two");
}

#[test]
fn driver_degrades_on_a_failed_mirror_and_fails_with_none_left() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, cfg, fault) = faulty_mirrors(dir.path());
    let log = MirrorLog::create(&cfg).unwrap();
    let j = log.create_journal("d").unwrap();
    let mut driver = Driver::for_log(&log).unwrap();
    let run = |driver: &mut Driver, n: u64| -> Vec<Result<bool, Error>> {
        let ts: Vec<Ticket> = (0..n).map(|i| j.submit(&payload(i, 300)).unwrap()).collect();
        loop {
            let rs: Vec<Result<bool, Error>> = ts.iter().map(|t| j.poll(t)).collect();
            if rs.iter().all(|r| !matches!(r, Ok(false))) {
                return rs;
            }
            driver.pump(&[&j], true).unwrap();
        }
    };
    assert!(run(&mut driver, 20).iter().all(|r| matches!(r, Ok(true))));
    fault.fail_writes(&devs[0]);
    assert!(run(&mut driver, 20).iter().all(|r| matches!(r, Ok(true))), "degraded writes must succeed");
    assert!(!log.status().mirrors[0].healthy);
    fault.fail_writes(&devs[1]);
    let rs = run(&mut driver, 5);
    assert!(rs.iter().all(|r| matches!(r, Err(Error::NoHealthyMirror))), "{rs:?}");
    assert_eq!(j.next_lsn(), 41);
}

/// `submit_many` with a producer tag: consecutive LSNs, tags read back with
/// each record (also after reopen), payloads without the tag. The records
/// of one call land in one write batch (a crash keeps all or none): a group
/// that does not fit the open batch starts a new one, a group larger than
/// a batch is refused whole, and when every batch buffer is in use room is
/// made midway.
#[test]
fn submit_many_tags_records_in_one_batch_and_makes_room() {
    use mirrorlog::format::FLAG_BATCH_END;
    let dir = tempfile::tempdir().expect("tempdir");
    let devs = common::devices(dir.path(), 2, 8 << 20);
    let cfg = common::small_config(&devs); // 32 KiB batches, 64 KiB records
    let big: Vec<Vec<u8>> = (0..40u64).map(|i| common::payload(i, 4000)).collect();
    let big_refs: Vec<&[u8]> = big.iter().map(|p| p.as_slice()).collect();
    let group: Vec<Vec<u8>> = (0..3u64).map(|i| common::payload(100 + i, 8000)).collect();
    let refs: Vec<&[u8]> = group.iter().map(|p| p.as_slice()).collect();
    let (first, filler_last) = {
        let log = MirrorLog::create(&cfg).expect("create");
        let j = log.create_journal("t").expect("journal");
        let mut driver = Driver::new().expect("driver");
        // Too large to be one batch: refused, nothing placed.
        match j.submit_many(&big_refs, Some(Tag { producer: 7, seq: 1 }), || Ok(())) {
            Err(Error::AppendTooLarge { .. }) => {}
            r => panic!("expected append-too-large, got {r:?}"),
        }
        assert_eq!(j.next_lsn(), 1);
        // Occupy every batch buffer with single records (nothing pumped yet).
        let mut filler_last = 0;
        loop {
            match j.submit(&[9u8; 6000]) {
                Ok(t) => filler_last = t.lsn,
                Err(Error::Backpressure) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut rooms = 0;
        let (first, last) = j
            .submit_many(&refs, Some(Tag { producer: 7, seq: 100 }), || {
                rooms += 1;
                driver.pump(&[&j], true).map(|_| ())
            })
            .expect("submit_many");
        assert!(rooms > 0, "every buffer was in use: room must be made");
        assert_eq!(first, filler_last + 1);
        assert_eq!(last.lsn, first + 2);
        let t = j.submit(b"plain").expect("submit");
        while !j.poll(&t).expect("poll") {
            driver.pump(&[&j], true).expect("pump");
        }
        assert!(j.poll(&last).expect("poll last"));
        (first, filler_last)
    };
    let log = MirrorLog::open(&cfg).expect("reopen");
    let j = log.journal("t").expect("journal");
    let mut got = Vec::new();
    j.visit(filler_last, 64 << 10, |r| {
        got.push((r.lsn, r.tag, r.flags, r.payload.to_vec()));
        true
    })
    .expect("visit");
    assert_eq!(got.len(), 5, "the last filler, the group of 3, the plain record");
    assert!(got[0].2 & FLAG_BATCH_END != 0, "the group starts a batch of its own");
    for (i, (lsn, tag, flags, p)) in got[1..4].iter().enumerate() {
        assert_eq!(*lsn, first + i as u64);
        assert_eq!(*tag, Some(Tag { producer: 7, seq: 100 + i as u64 }));
        assert_eq!(p, &group[i]);
        if i < 2 {
            assert_eq!(*flags & FLAG_BATCH_END, 0, "no batch ends inside the group");
        }
    }
    assert_eq!(got[4].1, None);
    assert_eq!(got[4].3, b"plain".to_vec());
    assert_eq!(j.read(first + 1).expect("read"), group[1]);
}

/// A `submit_many` group larger than `max_batch_bytes` but within what one
/// record may take (`max_record_size`) is accepted, and still lands in one
/// batch: its later records must not seal the batch the first one opened.
#[test]
fn a_group_over_the_batch_limit_but_within_a_record_stays_in_one_batch() {
    use mirrorlog::format::FLAG_BATCH_END;
    let dir = tempfile::tempdir().expect("tempdir");
    let devs = common::devices(dir.path(), 2, 8 << 20);
    let cfg = common::small_config(&devs); // 32 KiB batches, 64 KiB records
    let group: Vec<Vec<u8>> = (0..2u64).map(|i| common::payload(200 + i, 20_000)).collect();
    let refs: Vec<&[u8]> = group.iter().map(|p| p.as_slice()).collect();
    let first = {
        let log = MirrorLog::create(&cfg).expect("create");
        let j = log.create_journal("t").expect("journal");
        let mut driver = Driver::new().expect("driver");
        j.submit(b"before").expect("submit");
        let (first, last) = j.submit_many(&refs, None, || driver.pump(&[&j], true).map(|_| ())).expect("submit_many");
        while !j.poll(&last).expect("poll") {
            driver.pump(&[&j], true).expect("pump");
        }
        first
    };
    let log = MirrorLog::open(&cfg).expect("reopen");
    let j = log.journal("t").expect("journal");
    let mut got = Vec::new();
    j.visit(first, 64 << 10, |r| {
        got.push((r.flags, r.payload.to_vec()));
        true
    })
    .expect("visit");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0 & FLAG_BATCH_END, 0, "no batch ends inside the group");
    assert_ne!(got[1].0 & FLAG_BATCH_END, 0, "the group ends its batch");
    assert_eq!(got[0].1, group[0]);
    assert_eq!(got[1].1, group[1]);
}

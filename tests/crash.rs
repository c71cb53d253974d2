//! Crash test: a child process appends from several threads and reports every
//! acknowledged LSN over a pipe; the parent SIGKILLs it at random moments,
//! reopens the set, and checks that every acknowledged record reads back byte
//! for byte, LSNs are dense, and no record is corrupt or stale.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mirrorlog::MirrorLog;

const CHILD_ENV: &str = "MIRRORLOG_CRASH_CHILD";

/// A self-describing record: seed, length, then bytes derived from both.
fn record(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + len);
    v.extend_from_slice(&seed.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend_from_slice(&payload(seed, len));
    v
}

fn check_record(r: &[u8]) -> Option<u64> {
    if r.len() < 12 {
        return None;
    }
    let seed = u64::from_le_bytes(r[..8].try_into().ok()?);
    let len = u32::from_le_bytes(r[8..12].try_into().ok()?) as usize;
    (r.len() == 12 + len && r[12..] == payload(seed, len)[..]).then_some(seed)
}

fn cfg(devs: &[PathBuf]) -> mirrorlog::Config {
    let mut c = small_config(devs);
    c.max_inflight_batches = 3;
    c
}

/// The child: runs only when spawned by `crash_cycles` (env var set).
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(';');
    let cycle: u64 = parts.next().and_then(|s| s.parse().ok()).expect("cycle");
    let devs: Vec<PathBuf> = parts.map(PathBuf::from).collect();
    let log = MirrorLog::open(&cfg(&devs)).expect("child open");
    let j = log.journal("crash").expect("journal");
    println!("ready");
    let stop = Arc::new(AtomicBool::new(false));
    let log = &log;
    std::thread::scope(|s| {
        {
            // keep space free: reclaim all but the last ~300 records
            let j = j.clone();
            s.spawn(move || loop {
                std::thread::sleep(Duration::from_millis(3));
                let m = j.next_lsn().saturating_sub(300).max(j.mark());
                if j.set_mark(m).is_ok() {
                    println!("mark {m}");
                }
            });
        }
        {
            // an event loop: 16 clients on one thread, written by a Driver
            let j = j.clone();
            let stop = stop.clone();
            s.spawn(move || {
                let mut driver = mirrorlog::Driver::new().expect("driver");
                let mut rng = Rng(cycle * 31 + 99);
                let mut pending: Vec<Option<(mirrorlog::Ticket, u64)>> = vec![None; 16];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for p in pending.iter_mut().filter(|p| p.is_none()) {
                        let seed = (cycle << 40) | (9 << 32) | i;
                        let len = rng.below(2000) as usize;
                        match j.submit(&record(seed, len)) {
                            Ok(t) => *p = Some((t, seed)),
                            Err(mirrorlog::Error::Backpressure) => break,
                            Err(e) => {
                                println!("err {e}");
                                return;
                            }
                        }
                        i += 1;
                    }
                    driver.pump(&[&j], true).expect("pump");
                    for p in pending.iter_mut() {
                        if let Some((t, seed)) = p {
                            if j.poll(t).expect("poll") {
                                println!("ack {} {seed}", t.lsn);
                                *p = None;
                            }
                        }
                    }
                }
            });
        }
        for t in 0..4u64 {
            let j = j.clone();
            let stop = stop.clone();
            s.spawn(move || {
                let mut rng = Rng(cycle * 977 + t + 1);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let seed = (cycle << 40) | (t << 32) | i;
                    let len = if rng.below(20) == 0 { rng.below(60_000) } else { rng.below(3000) } as usize;
                    match j.append(&record(seed, len)) {
                        Ok(lsn) => println!("ack {lsn} {seed}"),
                        Err(e) => {
                            println!(
                                "err {e} free={} segs={} mark={} next={}",
                                log.status().segments_free,
                                j.info().segments,
                                j.mark(),
                                j.next_lsn()
                            );
                            return;
                        }
                    }
                    i += 1;
                }
            });
        }
    });
}

#[test]
fn crash_cycles() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let cycles: u64 = std::env::var("MIRRORLOG_CRASH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 2, 16 << 20);
    {
        let log = MirrorLog::create(&cfg(&devs)).unwrap();
        log.create_journal("crash").unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new(); // lsn -> seed
    let mut mark = 0u64;
    let mut rng = Rng(12345);
    let mut total_acked = 0usize;
    for cycle in 1..=cycles {
        let spec = std::iter::once(cycle.to_string())
            .chain(devs.iter().map(|d| d.display().to_string()))
            .collect::<Vec<_>>()
            .join(";");
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // wait for ready, then kill at a random moment
        let t0 = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.ends_with("ready") => break,
                Ok(_) => {}
                Err(_) => panic!("child did not start in cycle {cycle}"),
            }
            assert!(t0.elapsed() < Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(120)));
        // SIGKILL: no chance to flush or close anything
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("ack") => {
                    let lsn: u64 = w.next().unwrap().parse().unwrap();
                    let seed: u64 = w.next().unwrap().parse().unwrap();
                    assert!(acked.insert(lsn, seed).is_none(), "lsn {lsn} acknowledged twice");
                    total_acked += 1;
                }
                Some("mark") => mark = mark.max(w.next().unwrap().parse().unwrap()),
                Some("err") => panic!("child append failed: {line}"),
                _ => {}
            }
        }
        // Reopen and verify.
        let log = MirrorLog::open(&cfg(&devs)).unwrap();
        let j = log.journal("crash").unwrap();
        assert!(j.mark() >= mark, "mark went back: {} < {mark}", j.mark());
        let from = j.mark().max(1);
        let mut expect = from;
        for r in j.iter(from) {
            let (lsn, data) = r.unwrap_or_else(|e| panic!("cycle {cycle}: iteration failed: {e}"));
            assert_eq!(lsn, expect, "cycle {cycle}: LSNs not dense");
            expect += 1;
            let seed = check_record(&data).unwrap_or_else(|| panic!("cycle {cycle}: lsn {lsn} is corrupt"));
            if let Some(&s) = acked.get(&lsn) {
                assert_eq!(s, seed, "cycle {cycle}: lsn {lsn} holds another record");
            }
        }
        let next = j.next_lsn();
        assert_eq!(expect, next);
        for (&lsn, &seed) in acked.range(from..) {
            assert!(lsn < next, "cycle {cycle}: acknowledged lsn {lsn} lost (next lsn {next})");
            let data = j.read(lsn).unwrap();
            assert_eq!(check_record(&data), Some(seed), "cycle {cycle}: lsn {lsn}");
        }
        // Unacknowledged records kept by recovery are now part of the log:
        // remember them so a later cycle may not replace them.
        for lsn in from..next {
            if let std::collections::btree_map::Entry::Vacant(e) = acked.entry(lsn) {
                e.insert(check_record(&j.read(lsn).unwrap()).unwrap());
            }
        }
        // the mirrors agree on the recovered tail
        let st = log.status();
        assert!(st.mirrors.iter().all(|m| m.healthy));
    }
    assert!(total_acked > (cycles as usize) * 10, "too few appends were acknowledged: {total_acked}");
    eprintln!("crash_cycles: {cycles} cycles, {total_acked} acknowledged appends verified");
}

//! One writer per journal, fenced by the appliance (issue 15): `Claim`
//! raises a journal's writer epoch; appends and marks under any other
//! epoch are refused with `writer-fenced` (18) and leave nothing behind;
//! the epoch survives a SIGKILL, a mark past the claim's record, and a
//! promotion of the replica (also one that was given the journal after
//! the mark passed the claim).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{pair, Daemon};
use mirrorlog::client::{BlockingClient, Client, ClientConfig};
use mirrorlog::protocol::{codes, Durability};

fn client(addr: &str) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new([addr.to_string()])).expect("connect")
}

/// Every record of `journal` from its first retained: (LSN, payload).
fn all_records(c: &BlockingClient, journal: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let (recs, next) = c.read(journal, from, 10_000, 4 << 20).expect("read");
        if recs.is_empty() {
            return out;
        }
        out.extend(recs.into_iter().map(|r| (r.lsn, r.payload)));
        from = next;
    }
}

fn promote(d: &Daemon) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &d.addr, "promote"])
        .output()
        .expect("promote");
    assert!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
}

fn writer_of(d: &Daemon, journal: &str) -> u64 {
    let st = d.status();
    let j = st["journals"].as_array().expect("journals").iter().find(|j| j["name"] == journal).cloned();
    j.expect("journal in status")["writer"].as_u64().expect("writer")
}

#[test]
fn a_claim_fences_the_earlier_writer_and_nothing_of_it_lands_after_the_claim() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(tmp.path(), "");
    let c = client(&d.addr);
    // A journal never claimed takes appends without an epoch.
    c.append("default", b"before any writer").expect("unclaimed append");
    assert_eq!(writer_of(&d, "default"), 0);

    // The first writer pipelines appends under its epoch while a second
    // writer claims the journal.
    let (w1, l1) = c.claim("default", Durability::Local, b"claim one").expect("claim");
    assert!(w1 > 0 && l1 == 2, "w1 {w1} l1 {l1}");
    let acked = Arc::new(Mutex::new(Vec::<(u64, Vec<u8>)>::new()));
    let refused = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (acked, refused, addr) = (acked.clone(), refused.clone(), d.addr.clone());
        tasks.push(rt.spawn(async move {
            let c = Client::connect(ClientConfig::new([addr])).await.expect("connect");
            for i in 0u64.. {
                let p = format!("writer one {t} {i}").into_bytes();
                match c.append_as("default", &[&p], Durability::Local, w1).await {
                    Ok(lsn) => acked.lock().expect("acked").push((lsn, p)),
                    Err(e) => {
                        assert_eq!(e.code, codes::WRITER_FENCED, "{e}");
                        assert!(e.message.contains("writer-fenced"), "{e}");
                        refused.lock().expect("refused").push(p);
                        // Fenced for good: every later append is refused too.
                        let again = c.append_as("default", &[b"again"], Durability::Local, w1).await;
                        assert_eq!(again.expect_err("fenced").code, codes::WRITER_FENCED);
                        return;
                    }
                }
            }
            // Every task appends until it is refused: its next append after
            // the claim is.
            unreachable!("appending forever");
        }));
    }
    let t0 = Instant::now();
    while acked.lock().expect("acked").len() < 500 {
        assert!(t0.elapsed() < Duration::from_secs(30), "writer one is not getting appends through");
        std::thread::sleep(Duration::from_millis(5));
    }
    let c2 = client(&d.addr);
    let (w2, l2) = c2.claim("default", Durability::Local, b"claim two").expect("second claim");
    assert!(w2 > w1, "w2 {w2} w1 {w1}");
    for t in tasks {
        rt.block_on(t).expect("writer task");
    }
    assert_eq!(refused.lock().expect("refused").len(), 8, "every writer-one task was refused in the end");

    // The new writer goes on; the old epoch, no epoch, and the old
    // writer's mark are all refused.
    let l3 = c2.append_as("default", &[b"writer two"], Durability::Local, w2).expect("writer two appends");
    for e in [
        c.append_as("default", &[b"late"], Durability::Local, w1).expect_err("old epoch"),
        c.append_batch_with("default", &[b"no epoch"], Durability::Local).expect_err("no epoch"),
        c.set_mark_as("default", 2, w1).expect_err("old writer's mark"),
        c.set_mark("default", 2).expect_err("mark without an epoch"),
        c.append_as("default", &[b"guess"], Durability::Local, w2 + 1).expect_err("an epoch never given"),
    ] {
        assert_eq!(e.code, codes::WRITER_FENCED, "{e}");
    }
    c2.set_mark_as("default", 2, w2).expect("the writer's own mark");
    assert_eq!(c.get_mark("default").expect("mark"), 2);
    assert_eq!(writer_of(&d, "default"), w2);

    // In the journal: every acknowledged append of writer one below the
    // second claim, none of its refused ones at all, and nothing after
    // the claim but writer two's record.
    let recs = all_records(&c, "default");
    let acked = acked.lock().expect("acked").clone();
    let refused: HashSet<Vec<u8>> = refused.lock().expect("refused").iter().cloned().collect();
    for (lsn, p) in &acked {
        assert!(*lsn < l2, "writer one's acknowledged {lsn} is not below the claim at {l2}");
        assert!(recs.iter().any(|(l, q)| l == lsn && q == p), "acknowledged {lsn} not read back");
    }
    for (lsn, p) in &recs {
        assert!(!refused.contains(p), "a refused append was written at {lsn}");
        assert!(*lsn <= l2 || (*lsn == l3 && p == b"writer two"), "{lsn} after the claim: {p:?}");
    }
    let at = |l: u64| recs.iter().find(|(x, _)| *x == l).map(|(_, p)| p.clone());
    assert_eq!(at(l1).as_deref(), Some(&b"claim one"[..]));
    assert_eq!(at(l2).as_deref(), Some(&b"claim two"[..]));
}

#[test]
fn the_writer_epoch_survives_a_sigkill_and_a_mark_past_the_claim() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut d = Daemon::start(tmp.path(), "");
    let c = client(&d.addr);
    let (w1, _) = c.claim("default", Durability::Local, b"one").expect("claim");
    let (w2, claim_lsn) = c.claim("default", Durability::Local, b"two").expect("claim");
    // Past the claim's 4 MiB segment, then a mark past the claim's record:
    // its segment is reclaimed, and only the superblock holds the epoch.
    let big = vec![7u8; 256 << 10];
    let mut last = 0;
    for _ in 0..40 {
        last = c.append_as("default", &[&big], Durability::Local, w2).expect("append");
    }
    c.set_mark_as("default", last, w2).expect("mark");
    assert!(last > claim_lsn);
    drop(c);
    d.kill9();
    d.spawn();
    d.wait_ready();
    let c = client(&d.addr);
    assert_eq!(writer_of(&d, "default"), w2);
    assert_eq!(
        c.append_as("default", &[b"old"], Durability::Local, w1).expect_err("fenced").code,
        codes::WRITER_FENCED
    );
    let lsn = c.append_as("default", &[b"after restart"], Durability::Local, w2).expect("current writer");
    assert_eq!(c.read("default", lsn, 1, 1 << 20).expect("read").0[0].payload, b"after restart");
    // A new claim after the restart is above the persisted one.
    let (w3, _) = c.claim("default", Durability::Local, b"three").expect("claim");
    assert!(w3 > w2);
}

#[test]
fn a_promoted_replica_keeps_the_writer_epoch_and_fences_the_old_writer() {
    let (mut a, b) =
        pair("[[journal]]\nname = \"amq\"\ndurability = \"remote-durable\"\non_replica_loss = \"block\"\n", "", None);
    let c = client(&a.d.addr);
    let (w1, _) = c.claim("amq", Durability::RemoteDurable, b"broker one").expect("claim");
    let one = c.append_as("amq", &[b"from one"], Durability::RemoteDurable, w1).expect("append");
    let (w2, l2) = c.claim("amq", Durability::RemoteDurable, b"broker two").expect("claim");
    let two = c.append_as("amq", &[b"from two"], Durability::RemoteDurable, w2).expect("append");
    drop(c);
    // Site A is lost; B is promoted.
    a.d.kill9();
    promote(&b.d);
    let c = client(&b.d.addr);
    assert_eq!(writer_of(&b.d, "amq"), w2);
    assert_eq!(
        c.append_as("amq", &[b"one again"], Durability::Local, w1).expect_err("fenced").code,
        codes::WRITER_FENCED
    );
    let three = c.append_as("amq", &[b"two at B"], Durability::Local, w2).expect("the current writer goes on at B");
    let recs = all_records(&c, "amq");
    let at = |l: u64| recs.iter().find(|(x, _)| *x == l).map(|(_, p)| p.clone());
    assert_eq!(at(one).as_deref(), Some(&b"from one"[..]));
    assert_eq!(at(l2).as_deref(), Some(&b"broker two"[..]));
    assert_eq!(at(two).as_deref(), Some(&b"from two"[..]));
    assert_eq!(at(three).as_deref(), Some(&b"two at B"[..]));
    // A claim at B, in the new term, is above every epoch of the old one.
    let (w3, _) = c.claim("amq", Durability::Local, b"broker three").expect("claim at B");
    assert!(w3 >> 32 > w2 >> 32, "w3 {w3:#x} w2 {w2:#x}");
}

#[test]
fn a_replica_given_the_journal_after_the_mark_passed_the_claim_still_knows_the_writer() {
    let (mut a, mut b) = pair("", "", None);
    // The replica is down while the journal is claimed and the mark moves
    // past the claim: the claim's record is never shipped.
    b.d.kill9();
    let c = client(&a.d.addr);
    let (w1, _) = c.claim("default", Durability::Local, b"one").expect("claim");
    let (w2, _) = c.claim("default", Durability::Local, b"two").expect("claim");
    let big = vec![9u8; 256 << 10];
    let mut last = 0;
    for _ in 0..40 {
        last = c.append_as("default", &[&big], Durability::Local, w2).expect("append");
    }
    c.set_mark_as("default", last, w2).expect("mark");
    // The replica comes back, is caught up from the mark, and is promoted.
    b.d.spawn();
    b.d.wait_ready();
    let t0 = Instant::now();
    loop {
        let st = a.d.status();
        let j = &st["replication"]["journals"][0];
        if st["replication"]["connected"] == true && j["replica_durable"].as_u64() >= j["next_lsn"].as_u64() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "replica not caught up: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    a.d.kill9();
    promote(&b.d);
    let c = client(&b.d.addr);
    assert_eq!(writer_of(&b.d, "default"), w2);
    assert_eq!(
        c.append_as("default", &[b"old"], Durability::Local, w1).expect_err("fenced").code,
        codes::WRITER_FENCED
    );
    c.append_as("default", &[b"current"], Durability::Local, w2).expect("the current writer goes on at B");
}

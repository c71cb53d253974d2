//! The offline verifier and dumper (`mirrorlog::verify`), on real files:
//! a healthy set, a flipped bit on one mirror, a lost tail block on one
//! mirror, a failed member, a set in use, bad superblock copies and
//! devices of two sets. Verification never modifies a device.

mod common;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use common::*;
use mirrorlog::verify::{dump, verify, VerifyOptions, VerifyReport};
use mirrorlog::{MirrorLog, Tag};

const BS: u64 = 4096;

/// One expected record: lsn, payload, tag.
type Expected = Vec<(u64, Vec<u8>, Option<Tag>)>;

/// What `fill` wrote: every record of journals "a" and "b", and the mark of "a".
struct Written {
    a: Expected,
    b: Expected,
    mark_a: u64,
}

/// Two journals, interleaved, across several segments (small appends are a
/// batch each, 63 to a 256 KiB segment), with multi-record batches, tagged
/// records in "b", and a mark on "a" that frees its first segment.
fn fill(cfg: &mirrorlog::Config) -> Written {
    let log = MirrorLog::create(cfg).expect("create");
    let ja = log.create_journal("a").expect("journal a");
    let jb = log.create_journal("b").expect("journal b");
    let (mut a, mut b) = (Expected::new(), Expected::new());
    for i in 0..200u64 {
        let p = payload(i, 200 + (i as usize * 37) % 3000);
        let lsn = ja.append(&p).expect("append a");
        a.push((lsn, p, None));
        if i % 25 == 7 {
            let ps: Vec<Vec<u8>> = (0..3).map(|k| payload(5000 + i * 3 + k, 900 + k as usize)).collect();
            let refs: Vec<&[u8]> = ps.iter().map(|p| p.as_slice()).collect();
            let first = jb.append_batch(&refs).expect("append_batch b");
            b.extend(ps.into_iter().enumerate().map(|(k, p)| (first + k as u64, p, None)));
        } else if i % 40 == 13 {
            let ps: Vec<Vec<u8>> = (0..4).map(|k| payload(9000 + i * 4 + k, 300 + k as usize)).collect();
            let refs: Vec<&[u8]> = ps.iter().map(|p| p.as_slice()).collect();
            let tag = Tag { producer: 77, seq: i * 10 };
            let (first, last) = jb.submit_many(&refs, Some(tag), || Ok(())).expect("submit_many b");
            jb.wait(&last).expect("wait");
            b.extend(
                ps.into_iter()
                    .enumerate()
                    .map(|(k, p)| (first + k as u64, p, Some(Tag { producer: 77, seq: i * 10 + k as u64 }))),
            );
        } else {
            let p = payload(1000 + i, 100 + (i as usize * 53) % 2000);
            let lsn = jb.append(&p).expect("append b");
            b.push((lsn, p, None));
        }
    }
    let starts = ja.segment_starts();
    assert!(starts.len() >= 4, "journal a should span several segments: {starts:?}");
    let mark_a = 100;
    assert!(starts[1] <= mark_a && mark_a < starts[2], "the mark should free exactly the first segment: {starts:?}");
    ja.set_mark(mark_a).expect("set_mark");
    assert!(jb.segment_starts().len() >= 3, "journal b should span several segments");
    Written { a, b, mark_a }
}

fn fresh_set(dir: &Path) -> (Vec<PathBuf>, mirrorlog::Config, Written) {
    let devs = devices(dir, 2, 16 << 20);
    let cfg = small_config(&devs);
    let w = fill(&cfg); // every handle is dropped on return
    (devs, cfg, w)
}

fn dump_all(devs: &[PathBuf], journal: &str, from: u64) -> Expected {
    let mut got = Expected::new();
    dump(devs, journal, from, |r| {
        got.push((r.lsn, r.payload.to_vec(), r.tag));
        true
    })
    .expect("dump");
    got
}

fn file_hash(p: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(p).expect("read device file").hash(&mut h);
    h.finish()
}

/// Where `needle` first occurs in the file.
fn find_in_file(p: &Path, needle: &[u8]) -> u64 {
    let data = std::fs::read(p).expect("read device file");
    data.windows(needle.len()).position(|w| w == needle).expect("payload not found on the device") as u64
}

fn check(devs: &[PathBuf]) -> VerifyReport {
    let r = verify(devs, &VerifyOptions::default()).expect("verify");
    println!("{r}");
    r
}

fn has(list: &[String], parts: &[&str]) -> bool {
    list.iter().any(|p| parts.iter().all(|s| p.contains(s)))
}

#[test]
fn healthy_set_verifies_and_dumps_from_the_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (devs, _cfg, w) = fresh_set(dir.path());
    let r = check(&devs);
    assert!(r.ok(), "problems: {:?}", r.problems);
    assert!(r.to_string().ends_with("result: OK"));
    let set = r.set.as_ref().expect("set");
    assert_eq!(set.members.len(), 2);
    assert!(set.members.iter().all(|m| m.health == mirrorlog::format::Health::Healthy && m.device.is_some()));
    assert_eq!(r.devices.len(), 2);
    for d in &r.devices {
        assert!(d.opened && !d.in_use);
        assert!(d.copies.iter().all(|c| c.generation.is_some() && c.error.is_none()), "{d:?}");
    }
    assert_eq!(r.journals.len(), 2);
    for (name, want) in [("a", &w.a), ("b", &w.b)] {
        let j = r.journals.iter().find(|j| j.name == name).expect("journal in report");
        assert_eq!(j.differing_blocks, 0);
        assert_eq!(j.members.len(), 2);
        let last = want.last().expect("records").0;
        for m in &j.members {
            assert_eq!(m.last_lsn, Some(last), "{name} on {}", m.device);
            assert!(m.segments.len() >= 3, "{name}: {:?}", m.segments);
            let t = m.tail.as_ref().expect("tail");
            assert_eq!((t.next_lsn, t.complete_lsn), (last + 1, last + 1));
        }
        assert_eq!(j.members[0].records, j.members[1].records);
        assert_eq!(j.members[0].tail.as_ref().map(|t| t.end_offset), j.members[1].tail.as_ref().map(|t| t.end_offset));
    }
    let ja = r.journals.iter().find(|j| j.name == "a").expect("a");
    assert_eq!(ja.mark, w.mark_a);
    // The freed first segment is not part of the journal any more.
    let first = ja.members[0].first_lsn.expect("first lsn");
    assert!(first > 1 && first <= w.mark_a, "first retained segment starts at {first}");

    // The report serializes to valid JSON.
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
    assert_eq!(json["ok"], serde_json::Value::Bool(true));
    assert_eq!(json["journals"].as_array().map(|a| a.len()), Some(2));
    assert_eq!(json["set"]["members"][1]["health"], "healthy");

    // dump: exactly the appended records, from the mark on.
    let want_a: Expected = w.a.iter().filter(|r| r.0 >= w.mark_a).cloned().collect();
    assert_eq!(dump_all(&devs, "a", 0), want_a);
    assert_eq!(dump_all(&devs, "a", 1), want_a);
    assert_eq!(dump_all(&devs, "b", 0), w.b);
    assert!(w.b.iter().any(|r| r.2.is_some()), "some records of b are tagged");
    let from = 150;
    let want_from: Expected = w.a.iter().filter(|r| r.0 >= from).cloned().collect();
    assert_eq!(dump_all(&devs, "a", from), want_from);
    assert!(dump_all(&devs, "a", 10_000).is_empty());
    // The visitor can stop.
    let mut n = 0;
    dump(&devs, "b", 0, |_| {
        n += 1;
        n < 5
    })
    .expect("dump");
    assert_eq!(n, 5);
    assert!(matches!(dump(&devs, "nope", 0, |_| true), Err(mirrorlog::Error::UnknownJournal(_))));

    // Only some journals.
    let opts = VerifyOptions { journals: vec!["b".into()], ..Default::default() };
    let r = verify(&devs, &opts).expect("verify");
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.journals.len(), 1);
}

#[test]
fn flipped_bit_on_one_mirror_is_reported_and_dump_reads_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (devs, _cfg, w) = fresh_set(dir.path());
    // lsn 120 of journal a lies in its second retained segment (not the tail).
    let (lsn, p, _) = w.a.iter().find(|r| r.0 == 120).cloned().expect("record 120");
    let off = find_in_file(&devs[0], &p) + 10;
    flip_byte(&devs[0], off);
    let before: Vec<u64> = devs.iter().map(|d| file_hash(d)).collect();

    let r = check(&devs);
    let after: Vec<u64> = devs.iter().map(|d| file_hash(d)).collect();
    assert_eq!(before, after, "verify modified a device");
    assert!(!r.ok());
    let m0 = devs[0].display().to_string();
    let m1 = devs[1].display().to_string();
    let diff = format!("mirror {m0} differs from mirror {m1} at device offset {off}");
    assert!(has(&r.problems, &[&diff, "journal a"]), "no problem names the flipped byte: {:#?}", r.problems);
    assert!(
        has(&r.problems, &[&m0, &format!("breaks at lsn {lsn}")]),
        "the broken chain is not reported: {:#?}",
        r.problems
    );
    let ja = r.journals.iter().find(|j| j.name == "a").expect("a");
    assert_eq!(ja.differing_blocks, 1);
    assert!(ja.members[0].records < ja.members[1].records);
    // Journal b is untouched.
    assert!(!has(&r.problems, &["journal b"]), "{:#?}", r.problems);
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("valid JSON");
    assert_eq!(json["ok"], serde_json::Value::Bool(false));

    // dump reads the bad record from the other mirror.
    let want_a: Expected = w.a.iter().filter(|r| r.0 >= w.mark_a).cloned().collect();
    let got = dump_all(&devs, "a", 0);
    assert_eq!(got, want_a);
    assert_eq!(got.iter().find(|r| r.0 == lsn).map(|r| &r.1), Some(&p));
    let after_dump: Vec<u64> = devs.iter().map(|d| file_hash(d)).collect();
    assert_eq!(before, after_dump, "dump modified a device");
}

#[test]
fn lost_tail_block_on_one_mirror_is_a_tail_disagreement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (devs, _cfg, w) = fresh_set(dir.path());
    let r = check(&devs);
    assert!(r.ok(), "{:?}", r.problems);
    let tail = r.journals.iter().find(|j| j.name == "b").and_then(|j| j.members[1].tail.clone()).expect("tail of b");
    // The last written block of b's tail segment, lost on mirror 1.
    let last_block = (tail.end_offset - 1) / BS * BS;
    write_at(&devs[1], last_block, &vec![0u8; BS as usize]);
    let before: Vec<u64> = devs.iter().map(|d| file_hash(d)).collect();

    let r = check(&devs);
    assert!(!r.ok());
    let m0 = devs[0].display().to_string();
    let m1 = devs[1].display().to_string();
    assert!(
        has(&r.problems, &["journal b", "do not agree on the tail", &format!("chain on {m1} ends before lsn")]),
        "no tail disagreement: {:#?}",
        r.problems
    );
    assert!(
        has(&r.problems, &[&format!("mirror {m1} differs from mirror {m0}"), "journal b", &tail.slot.to_string()]),
        "{:#?}",
        r.problems
    );
    let jb = r.journals.iter().find(|j| j.name == "b").expect("b");
    let (t0, t1) = (jb.members[0].tail.as_ref().expect("t0"), jb.members[1].tail.as_ref().expect("t1"));
    assert_eq!(t0.next_lsn, w.b.last().expect("b").0 + 1);
    assert!(t1.next_lsn < t0.next_lsn);
    assert!(!has(&r.problems, &["journal a"]), "{:#?}", r.problems);
    let after: Vec<u64> = devs.iter().map(|d| file_hash(d)).collect();
    assert_eq!(before, after, "verify modified a device");

    // Every record is still there, on mirror 0.
    assert_eq!(dump_all(&devs, "b", 0), w.b);
}

#[test]
fn failed_member_is_noted_not_a_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (devs, cfg, fault) = faulty_mirrors(dir.path());
    let mut want = Expected::new();
    {
        let log = MirrorLog::create(&cfg).expect("create");
        let j = log.create_journal("j").expect("journal");
        for i in 0..30u64 {
            if i == 20 {
                fault.fail_writes(&devs[1]);
            }
            let p = payload(i, 700);
            want.push((j.append(&p).expect("append"), p, None));
        }
    }
    let r = check(&devs);
    assert!(r.ok(), "{:?}", r.problems);
    let set = r.set.as_ref().expect("set");
    assert_eq!(set.members[1].health, mirrorlog::format::Health::Failed);
    let m1 = devs[1].display().to_string();
    assert!(has(&r.notes, &[&m1, "marked failed"]), "{:#?}", r.notes);
    assert!(has(&r.notes, &["do not agree on the tail", "skipped"]), "{:#?}", r.notes);
    let j = &r.journals[0];
    assert!(j.members[1].failed && !j.members[0].failed);
    assert_eq!(j.members[0].last_lsn, Some(30));
    assert!(j.members[1].last_lsn < Some(30));
    assert_eq!(dump_all(&devs, "j", 0), want);
}

#[test]
fn set_in_use_is_verified_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).expect("create");
    let j = log.create_journal("j").expect("journal");
    for i in 0..10u64 {
        j.append(&payload(i, 300)).expect("append");
    }
    let r = check(&devs);
    assert!(r.ok(), "{:?}", r.problems);
    assert!(r.devices.iter().all(|d| d.in_use));
    assert!(has(&r.notes, &["warning", "in use"]), "{:#?}", r.notes);
    assert_eq!(r.journals[0].members[0].last_lsn, Some(10));
    drop(j);
    drop(log);
}

#[test]
fn bad_superblock_copy_and_foreign_device_are_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devs = devices(dir.path(), 2, 16 << 20);
    let cfg = small_config(&devs);
    drop(MirrorLog::create(&cfg).expect("create"));
    flip_byte(&devs[0], mirrorlog::format::SUPERBLOCK_REGION + 40);
    let r = check(&devs);
    assert!(!r.ok());
    let m0 = devs[0].display().to_string();
    assert!(has(&r.problems, &[&m0, "superblock copy B"]), "{:#?}", r.problems);
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
    assert!(r.devices[0].copies[1].error.is_some());

    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = devices(other_dir.path(), 1, 16 << 20);
    drop(MirrorLog::create(&small_config(&other)).expect("create other"));
    let mixed = vec![devs[1].clone(), other[0].clone()];
    let r = check(&mixed);
    assert!(has(&r.problems, &["do not belong together"]), "{:#?}", r.problems);
    // The member that was left out is reported too.
    assert!(has(&r.problems, &["not among the devices"]), "{:#?}", r.problems);

    let missing = dir.path().join("missing.dev");
    let r = check(&[devs[0].clone(), devs[1].clone(), missing.clone()]);
    assert!(has(&r.problems, &[&missing.display().to_string(), "cannot open"]), "{:#?}", r.problems);
    assert!(verify(&[], &VerifyOptions::default()).is_err());
}

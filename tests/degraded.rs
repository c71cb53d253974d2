//! Starting degraded (issue 14): a member that is missing, unreadable or
//! blank is left out and reported; the start is refused when the members
//! present cannot show they hold every acknowledged record, unless the
//! operator says so. Real files and O_DIRECT; the fault injector below the
//! engine where a device must fail to read.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mirrorlog::format::SUPERBLOCK_REGION;
use mirrorlog::{Config, Error, FaultInjector, MirrorLog};

/// Appends records `from..=to` (sizes varying with the LSN).
fn append_range(log: &MirrorLog, from: u64, to: u64) {
    let j = log.journal_or_create("j").unwrap();
    for i in from..=to {
        assert_eq!(j.append(&payload(i, 100 + i as usize)).unwrap(), i);
    }
}

/// Every record `1..=n` reads back with its bytes, and the journal ends there.
fn expect_records(log: &MirrorLog, n: u64) {
    let j = log.journal("j").unwrap();
    assert_eq!(j.next_lsn(), n + 1);
    for i in 1..=n {
        assert_eq!(j.read(i).unwrap(), payload(i, 100 + i as usize), "record {i}");
    }
}

/// A 2-mirror set holding records 1..=n, closed.
fn set_with(dir: &Path, n: u64) -> (Vec<PathBuf>, Config) {
    let devs = devices(dir, 2, 16 << 20);
    let cfg = small_config(&devs);
    let log = MirrorLog::create(&cfg).unwrap();
    append_range(&log, 1, n);
    (devs, cfg)
}

fn refused(cfg: &Config) -> String {
    match MirrorLog::open(cfg) {
        Ok(_) => panic!("the open must be refused"),
        Err(e) => {
            assert!(matches!(e, Error::Config(_)), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn a_missing_member_last_seen_healthy_refuses_the_start_until_the_operator_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, mut cfg) = set_with(dir.path(), 20);
    std::fs::remove_file(&devs[1]).unwrap();

    let msg = refused(&cfg);
    assert!(msg.contains("missing") && msg.contains("--start-degraded"), "{msg}");
    assert!(msg.contains(&devs[1].display().to_string()), "the error names the device: {msg}");

    cfg.start_degraded = true;
    let log = MirrorLog::open(&cfg).unwrap();
    let st = log.status();
    assert!(st.mirrors[0].healthy && !st.mirrors[1].healthy, "{:?}", st.mirrors);
    assert_eq!(st.absent_devices.len(), 1, "{:?}", st.absent_devices);
    assert!(st.absent_devices[0].contains("cannot be opened"), "{:?}", st.absent_devices);
    expect_records(&log, 20);
    append_range(&log, 21, 30);
    drop(log);

    // The member is marked failed now: the next start needs no flag.
    cfg.start_degraded = false;
    let log = MirrorLog::open(&cfg).unwrap();
    assert!(!log.status().mirrors[1].healthy);
    expect_records(&log, 30);
}

/// A 2-mirror set whose member 1 failed (every write EIO) after record 10,
/// member 0 going on alone to 20; closed, the fault gone.
fn member_1_failed_after_10(dir: &Path) -> (Vec<PathBuf>, Config) {
    let (devs, mut cfg, fault) = faulty_mirrors(dir);
    let log = MirrorLog::create(&cfg).unwrap();
    append_range(&log, 1, 10);
    fault.fail_writes(&devs[1]);
    append_range(&log, 11, 20);
    assert!(!log.status().mirrors[1].healthy);
    drop(log);
    cfg.storage = None;
    (devs, cfg)
}

#[test]
fn a_member_failed_while_running_is_left_out_at_the_next_start_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, cfg) = member_1_failed_after_10(dir.path());
    // The disk is gone by the next start.
    std::fs::remove_file(&devs[1]).unwrap();
    let log = MirrorLog::open(&cfg).unwrap();
    let st = log.status();
    assert!(!st.mirrors[1].healthy);
    assert_eq!(st.absent_devices.len(), 1);
    expect_records(&log, 20);
}

#[test]
fn a_stale_member_alone_is_refused_it_lacks_what_the_other_acknowledged() {
    // Member 1 fails (a transient error) and member 0 goes on alone; then
    // member 0 is gone and member 1 works again. Member 1's superblock
    // still lists both healthy: opening it alone would lose 11..=20.
    let dir = tempfile::tempdir().unwrap();
    let (devs, mut cfg) = member_1_failed_after_10(dir.path());
    // The operator takes the member that went on out of the configuration
    // (before the fix this opened, at next LSN 11: 11..=20 lost).
    let mut alone = cfg.clone();
    alone.devices = vec![devs[1].clone()];
    let msg = refused(&alone);
    assert!(msg.contains("cannot show that they hold every acknowledged record"), "{msg}");
    assert!(msg.contains("not configured"), "{msg}");
    // Or its disk is gone.
    std::fs::remove_file(&devs[0]).unwrap();
    let msg = refused(&cfg);
    assert!(msg.contains("cannot show that they hold every acknowledged record"), "{msg}");
    // Forced, it opens with what member 1 holds: the loss the flag's
    // documentation warns of.
    cfg.start_degraded = true;
    let log = MirrorLog::open(&cfg).unwrap();
    assert_eq!(log.journal("j").unwrap().next_lsn(), 11);
}

#[test]
fn a_blank_member_is_reported_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, mut cfg) = set_with(dir.path(), 20);
    // Both superblock copies gone: a blank (or replaced) device.
    write_at(&devs[1], 0, &vec![0u8; 2 * SUPERBLOCK_REGION as usize]);
    let msg = refused(&cfg);
    assert!(msg.contains("no valid mirrorlog superblock"), "{msg}");
    cfg.start_degraded = true;
    let log = MirrorLog::open(&cfg).unwrap();
    let st = log.status();
    assert!(!st.mirrors[1].healthy);
    assert!(st.absent_devices[0].contains("no valid mirrorlog superblock"), "{:?}", st.absent_devices);
    expect_records(&log, 20);
    drop(log);
    // Never formatted by a start that may create: the other holds the set.
    let log = MirrorLog::open_or_create(&cfg).unwrap();
    expect_records(&log, 20);
}

#[test]
fn an_unreadable_member_is_reported_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, mut cfg) = set_with(dir.path(), 20);
    let fault = FaultInjector::new();
    fault.fail_reads(&devs[0]);
    cfg.storage = Some(fault.clone());
    cfg.start_degraded = true;
    let log = MirrorLog::open(&cfg).unwrap();
    let st = log.status();
    assert!(!st.mirrors[0].healthy && st.mirrors[1].healthy, "{:?}", st.mirrors);
    expect_records(&log, 20);
}

#[test]
fn a_member_another_process_holds_is_never_started_around() {
    // A runs degraded on member 0 (member 1 marked failed); B, told to
    // start degraded, must not take member 1 alone while A holds member 0.
    let dir = tempfile::tempdir().unwrap();
    let (devs, cfg) = set_with(dir.path(), 5);
    let mut a_cfg = cfg.clone();
    a_cfg.devices = vec![devs[0].clone()];
    a_cfg.start_degraded = true;
    let a = MirrorLog::open(&a_cfg).unwrap();
    append_range(&a, 6, 10);
    let mut b_cfg = cfg.clone();
    b_cfg.start_degraded = true;
    let Err(e) = MirrorLog::open(&b_cfg) else { panic!("B must be refused") };
    assert!(e.to_string().contains("in use by another process"), "{e}");
    expect_records(&a, 10);
}

#[test]
fn no_member_present_or_members_of_two_sets_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, cfg) = set_with(&dir.path().join("a"), 5);
    let (other, _) = set_with(&dir.path().join("b"), 5);
    let mut mixed = cfg.clone();
    mixed.devices = vec![devs[0].clone(), other[1].clone()];
    mixed.start_degraded = true;
    let e = MirrorLog::open(&mixed).unwrap_err();
    assert!(e.to_string().contains("do not belong together"), "{e}");

    let mut none = cfg.clone();
    none.devices = vec![dir.path().join("absent0.dev"), dir.path().join("absent1.dev")];
    none.start_degraded = true;
    let e = MirrorLog::open(&none).unwrap_err();
    assert!(matches!(e, Error::Device(..)), "{e}");
    // open_or_create never formats over a device it could not read.
    let mut half = cfg.clone();
    let blank = devices(&dir.path().join("c"), 1, 16 << 20);
    half.devices = vec![blank[0].clone(), dir.path().join("absent.dev")];
    assert!(MirrorLog::open_or_create(&half).is_err());
    assert!(!mirrorlog::mirror::MirrorSet::is_formatted(&mirrorlog::storage::default_storage(), &blank[0], half.sync)
        .unwrap());
}

#[test]
fn the_daemon_refuses_a_start_without_a_member_last_seen_healthy_and_starts_degraded_when_told() {
    use common::daemon::{bin, Daemon};
    use mirrorlog::client::{BlockingClient, ClientConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), "");
    let c = BlockingClient::connect(ClientConfig::new([d.addr.clone()])).unwrap();
    let lsns: Vec<u64> = (0..50u64).map(|i| c.append("default", &payload(i, 300)).unwrap()).collect();
    drop(c);
    let health = |d: &Daemon| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["--endpoint", &d.addr, "health"])
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string())
    };
    assert_eq!(health(&d), (Some(0), "healthy\n".to_string()));
    assert!(d.http_get("/metrics").contains("kind=\"checksum\"} 0"));
    assert!(d.term().success());
    // The disk is gone while the daemon is stopped (the daemon recreates
    // a missing file blank).
    let devs = d.devices();
    std::fs::remove_file(&devs[1]).unwrap();
    let out = std::process::Command::new(bin()).arg("--config").arg(&d.config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start must be refused:\n{err}");
    assert!(err.contains("--start-degraded") && err.contains("no valid mirrorlog superblock"), "{err}");

    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        text.replace("segment_size = \"4MiB\"", "segment_size = \"4MiB\"\nstart_degraded = true"),
    )
    .unwrap();
    d.spawn();
    d.wait_ready();
    let st = d.status();
    assert_eq!(st["mirrors"][1]["healthy"], false, "{st}");
    assert_eq!(st["absent_devices"].as_array().map(|a| a.len()), Some(1), "{st}");
    assert!(d.http_get("/metrics").contains("mirrorlog_devices_absent 1"));
    let c = BlockingClient::connect(ClientConfig::new([d.addr.clone()])).unwrap();
    for (i, &lsn) in lsns.iter().enumerate() {
        let (recs, _) = c.read("default", lsn, 1, 4096).unwrap();
        assert_eq!(recs[0].payload, payload(i as u64, 300), "lsn {lsn}");
    }
    c.append("default", b"after").unwrap();
    let (code, text) = health(&d);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("DEGRADED: mirror") && text.contains("DEGRADED: left out at start"), "{text}");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &d.addr, "status"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(s.contains("FAILED") && s.contains("left out at start"), "{s}");
    assert!(d.term().success());
}

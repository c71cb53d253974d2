//! The daemon's scrub (issue 14): rot planted on each mirror of a running
//! daemon's set, where no read goes, is found and repaired by
//! `mirrorlog scrub start`; progress, cancel, health and metrics.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use mirrorlog::client::{BlockingClient, ClientConfig};
use mirrorlog::format::DATA_START;

fn cli(d: &Daemon, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mirrorlog")).args(["--endpoint", &d.addr]).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string())
}

fn scrub_json(d: &Daemon) -> serde_json::Value {
    let (code, out) = cli(d, &["scrub", "status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    serde_json::from_str(&out).unwrap()
}

fn wait_scrub(d: &Daemon, state: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let v = scrub_json(d);
        if v["state"] == state {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "scrub not {state}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon (`extra` appended to its config) holding records
/// `payload(i, 1000)` for `i` in `0..n`, and a client.
fn daemon_with_records(dir: &Path, extra: &str, n: u64) -> (Daemon, BlockingClient) {
    let d = Daemon::start(dir, extra);
    let c = BlockingClient::connect(ClientConfig::new([d.addr.clone()])).unwrap();
    for i in 0..n {
        c.append("default", &payload(i, 1000)).unwrap();
    }
    (d, c)
}

/// Flips a byte inside `needle`'s bytes where they are in the device file.
fn rot(dev: &Path, needle: &[u8]) {
    let data = std::fs::read(dev).unwrap();
    let at = data.windows(needle.len()).position(|w| w == needle).expect("record bytes on the device");
    assert!(at as u64 >= DATA_START);
    flip_byte(dev, at as u64 + 7);
}

#[test]
fn the_daemon_scrubs_rot_on_each_mirror_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, c) = daemon_with_records(dir.path(), "[scrub]\nrate = \"0\"\n", 200);
    assert_eq!(cli(&d, &["scrub", "status"]).1, "scrub: none since the daemon started\n");
    let devs = d.devices();
    rot(&devs[0], &payload(50, 1000)[..64]);
    rot(&devs[1], &payload(150, 1000)[..64]);

    let (code, out) = cli(&d, &["scrub", "start"]);
    assert_eq!(code, Some(0), "{out}");
    let v = wait_scrub(&d, "finished");
    assert_eq!((v["records_total"].as_u64(), v["records_done"].as_u64()), (Some(400), Some(400)), "{v}");
    assert_eq!(v["repaired"], 2, "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{v}");
    let st = d.status();
    assert_eq!(st["mirrors"][0]["checksum_errors"], 1, "{st}");
    assert_eq!(st["mirrors"][1]["checksum_errors"], 1, "{st}");
    let m = d.http_get("/metrics");
    assert!(m.contains("mirrorlog_scrub_repaired 2") && m.contains("mirrorlog_scrub_running 0"), "{m}");
    // Repaired errors stay visible, as zpool status shows them.
    let (code, text) = cli(&d, &["health"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("checksum 1"), "{text}");
    let (_, human) = cli(&d, &["scrub", "status"]);
    assert!(human.starts_with("scrub: finished, 400 of 400 records (100%)"), "{human}");
    // Every record reads back with its bytes.
    for i in 0..200u64 {
        let (recs, _) = c.read("default", i + 1, 1, 4096).unwrap();
        assert_eq!(recs[0].payload, payload(i, 1000));
    }
    drop(c);
    assert!(d.term().success());
    let a = std::fs::read(&devs[0]).unwrap();
    let b = std::fs::read(&devs[1]).unwrap();
    assert!(a[DATA_START as usize..] == b[DATA_START as usize..], "the mirrors differ after the scrub");
}

#[test]
fn a_slow_scrub_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, c) = daemon_with_records(dir.path(), "[scrub]\nrate = \"4KiB\"\n", 100);
    cli(&d, &["scrub", "start"]);
    let v = wait_scrub(&d, "running");
    assert_eq!(v["records_total"], 200, "{v}");
    // A second start while one runs starts nothing.
    cli(&d, &["scrub", "start"]);
    assert_eq!(scrub_json(&d)["runs"], 1);
    c.append("default", b"appends go on").unwrap();
    let (code, _) = cli(&d, &["scrub", "cancel"]);
    assert_eq!(code, Some(0));
    let v = wait_scrub(&d, "cancelled");
    assert!(v["records_done"].as_u64().unwrap() < 200, "{v}");
    assert!(d.term().success());
}

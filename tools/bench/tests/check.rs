//! The bench binary end to end: a run with an ack log checks clean, and the
//! checker fails when acknowledged records are destroyed.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_mirrorlog-bench");

fn bench(args: &[&str]) -> std::process::Output {
    let out = Command::new(BENCH).args(args).output().expect("run mirrorlog-bench");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn zero(path: &Path, off: u64, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len], off).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn ack_log_checks_clean_and_detects_loss() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path().join("m0");
    let d1 = dir.path().join("m1");
    let devs = format!("{},{}", d0.display(), d1.display());
    let acks = dir.path().join("acks.txt");
    let acks_s = acks.display().to_string();
    let out = bench(&[
        "run",
        "--embedded",
        "--devices",
        &devs,
        "--device-size",
        "128M",
        "--segment-size",
        "4M",
        "--clients",
        "8",
        "--records",
        "3000",
        "--ack-log",
        &acks_s,
        "--json",
    ]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["records"].as_u64().unwrap() >= 3000);
    assert_eq!(report["errors"].as_u64(), Some(0));
    for key in ["records_per_sec", "mb_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(report[key].is_number(), "{key} missing from --json");
    }
    let lines = std::fs::read_to_string(&acks).unwrap().lines().count();
    assert_eq!(lines as u64, report["records"].as_u64().unwrap(), "one ack-log line per acknowledged record");

    let out = bench(&["check", "--devices", &devs, "--ack-log", &acks_s, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ok"], true);
    assert_eq!(f["acks"].as_u64().unwrap() as usize, lines);

    // Destroy the first segment's records on both mirrors: check must fail.
    for d in [&d0, &d1] {
        zero(d, (1 << 20) + 4096, 1 << 20);
    }
    let out = bench(&["check", "--devices", &devs, "--ack-log", &acks_s, "--json"]);
    assert_eq!(out.status.code(), Some(1), "check must fail when acknowledged records are gone");
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ok"], false);
    assert!(f["missing"].as_u64().unwrap() + f["corrupt"].as_u64().unwrap() > 0);
}

#[test]
fn raw_refuses_a_formatted_set_and_bad_arguments_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let devs = format!("{},{}", dir.path().join("m0").display(), dir.path().join("m1").display());
    let out = bench(&[
        "run",
        "--embedded",
        "--devices",
        &devs,
        "--device-size",
        "64M",
        "--segment-size",
        "4M",
        "--records",
        "10",
    ]);
    assert!(out.status.success());
    let out = bench(&["run", "--raw", "--devices", &devs, "--duration", "0.2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would destroy"));
    let out = bench(&["run", "--devices", &devs]);
    assert_eq!(out.status.code(), Some(2), "no target chosen");
}

#[test]
fn calibrate_measures_devices_and_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let devs = format!("{},{}", dir.path().join("c0").display(), dir.path().join("c1").display());
    // an echo peer on a free loopback port
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut echo = Command::new(BENCH).args(["echo", "--listen", &addr, "--seconds", "60"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = bench(&[
        "calibrate",
        "--devices",
        &devs,
        "--device-size",
        "64M",
        "--seconds",
        "0.15",
        "--peer",
        &addr,
        "--json",
    ]);
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    assert_eq!(v["mirrored_qd1"].as_array().unwrap().len(), 6);
    assert!(v["mirrored_qd1"][0]["p50_us"].as_u64().unwrap() > 0);
    assert!(v["peer"]["rtt_p50_us"].as_u64().unwrap() > 0);
    assert!(v["peer"]["mb_per_sec"].as_f64().unwrap() > 0.0);
    let rec = &v["recommended"];
    let batch = rec["max_batch_bytes"].as_u64().unwrap();
    assert!((64 << 10..=1 << 20).contains(&batch));
    let seg = rec["segment_size"].as_u64().unwrap();
    assert!(seg.is_power_of_two() && seg >= 16 << 20);
    assert!(rec["max_inflight_batches"].as_u64().unwrap() >= 1);
}

/// `--endpoint`: the bench against a running daemon (the real binary),
/// with an ack log checked back through the daemon; a doctored ack log
/// (an LSN that was never written, a wrong checksum) fails the check.
#[test]
fn endpoint_run_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    // The daemon binary is built with the workspace (target/<profile>/mirrorlogd).
    let daemon = Path::new(BENCH).with_file_name("mirrorlogd");
    if !daemon.exists() {
        let st = Command::new(env!("CARGO")).args(["build", "--bin", "mirrorlogd"]).status().unwrap();
        assert!(st.success());
    }
    assert!(daemon.exists(), "{} not built", daemon.display());
    let mut child = Command::new(&daemon)
        .args(["--data-dir", &dir.path().display().to_string(), "--device-size", "128MiB", "--listen", &addr])
        .args(["--metrics", "off"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "daemon not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let acks = dir.path().join("acks.txt");
    let acks_s = acks.display().to_string();
    let out = bench(&[
        "run",
        "--endpoint",
        &addr,
        "--journal",
        "default",
        "--clients",
        "8",
        "--records",
        "2000",
        "--ack-log",
        &acks_s,
        "--durability",
        "local",
        "--json",
    ]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["records"].as_u64().unwrap() >= 2000);
    assert_eq!(report["errors"].as_u64(), Some(0));
    let out = bench(&["check", "--endpoint", &addr, "--journal", "default", "--ack-log", &acks_s, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ok"], true);
    assert!(f["acks"].as_u64().unwrap() >= 2000);

    // The lean generator, and the clients spread over two polling load
    // threads: every acknowledged append is logged and reads back.
    for (i, extra) in [&["--lean"][..], &["--client-threads", "2", "--poll"][..]].iter().enumerate() {
        let log = dir.path().join(format!("acks-{i}.txt")).display().to_string();
        let mut args = vec!["run", "--endpoint", &addr, "--journal", "default", "--clients", "8", "--records", "2000"];
        args.extend(["--ack-log", &log, "--durability", "local", "--json"]);
        args.extend(extra.iter().copied());
        let out = bench(&args);
        assert!(out.status.success(), "{extra:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["records"].as_u64().unwrap() >= 2000, "{extra:?}");
        assert_eq!(report["errors"].as_u64(), Some(0), "{extra:?}");
        let logged = std::fs::read_to_string(&log).unwrap().lines().count() as u64;
        assert_eq!(logged, report["records"].as_u64().unwrap(), "{extra:?}: one line per ack");
        let out = bench(&["check", "--endpoint", &addr, "--journal", "default", "--ack-log", &log, "--json"]);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stdout));
        let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(f["ok"], true, "{extra:?}");
        assert_eq!(f["acks"].as_u64().unwrap(), logged, "{extra:?}");
    }

    // remote-durable without a replica: every append fails, with the code.
    let out = bench(&[
        "run",
        "--endpoint",
        &addr,
        "--journal",
        "default",
        "--duration",
        "1",
        "--durability",
        "remote-durable",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(!out.status.success() || report["records"] == 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-replica"));

    let text = std::fs::read_to_string(&acks).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.push("999999 0 77 deadbeef".into()); // never written
    let mut w: Vec<&str> = lines[0].split_whitespace().collect();
    w[3] = "00000000"; // wrong checksum
    lines[0] = w.join(" ");
    std::fs::write(&acks, lines.join("\n")).unwrap();
    let out = bench(&["check", "--endpoint", &addr, "--journal", "default", "--ack-log", &acks_s, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["missing"], 1);
    assert_eq!(f["corrupt"], 1);
    // The journal also holds the later runs' records, whose clients counted
    // from 0 too: none of them is taken for a duplicate of this run's
    // (issue 16: each run's writer ids carry a run id).
    assert_eq!(f["duplicated"], 0, "{f}");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

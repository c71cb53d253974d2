//! `peers`: mirrorlog against other durable logs on the same machine, same
//! record size, every write durable before it is acknowledged:
//!
//! * fio: buffered write + fdatasync per record (the disk's limit for that pattern);
//! * tikv's raft-engine: `Engine::write(batch, sync = true)` (its own group commit);
//! * okaywal: `begin_entry` / `write_chunk` / `commit` (its own group commit);
//! * mirrorlog on 1 device and on 2 mirrors.
//!
//! Each at QD1 and with 64 writers. Peers run one OS thread per writer, the
//! model of their blocking APIs; mirrorlog is shown both ways: 64 threads
//! blocking in `append`, and 64 clients on one event loop (`submit` +
//! `Driver`, the daemon's model).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::embedded::{run_embedded, EmbeddedOpts};
use crate::load::{drive_threads, payload, Load};
use crate::report::{plot, print, Report};
use crate::{Common, PeersArgs};

fn load(clients: usize, secs: f64, json: bool) -> Load {
    Load { clients, secs, records: None, rate: None, progress: !json, poll: false }
}

fn fresh_dir(p: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(p);
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn raft_engine(dir: &Path, clients: usize, a: &PeersArgs) -> Result<Report, String> {
    use raft_engine::{Config, Engine, LogBatch};
    fresh_dir(dir)?;
    let cfg = Config { dir: dir.display().to_string(), ..Default::default() };
    let engine = Engine::open(cfg).map_err(|e| format!("raft-engine: {e}"))?;
    let size = a.record_size as usize;
    Ok(drive_threads(
        format!("raft-engine sync, {clients} writers"),
        &load(clients, a.duration, a.json),
        a.record_size,
        |c, seq| {
            let mut v = vec![0u8; size];
            payload(&mut v, c, seq);
            let mut b = LogBatch::default();
            b.put(c as u64 + 1, seq.to_le_bytes().to_vec(), v).map_err(|e| e.to_string())?;
            engine.write(&mut b, true).map_err(|e| e.to_string())?;
            Ok(1)
        },
    ))
}

fn okaywal(dir: &Path, clients: usize, a: &PeersArgs) -> Result<Report, String> {
    fresh_dir(dir)?;
    let wal = okaywal::WriteAheadLog::recover(dir, okaywal::LogVoid).map_err(|e| format!("okaywal: {e}"))?;
    let size = a.record_size as usize;
    let r = drive_threads(
        format!("okaywal, {clients} writers"),
        &load(clients, a.duration, a.json),
        a.record_size,
        |c, seq| {
            let mut v = vec![0u8; size];
            payload(&mut v, c, seq);
            let mut w = wal.begin_entry().map_err(|e| e.to_string())?;
            w.write_chunk(&v).map_err(|e| e.to_string())?;
            w.commit().map_err(|e| e.to_string())?;
            Ok(1)
        },
    );
    let _ = wal.shutdown();
    Ok(r)
}

/// fio write + fdatasync per record, `jobs` writers on one file.
fn fio(dir: &Path, jobs: usize, a: &PeersArgs) -> Result<Option<Report>, String> {
    if Command::new("fio").arg("--version").output().is_err() {
        eprintln!("fio not installed (apt-get install fio): skipping the fio rows");
        return Ok(None);
    }
    fresh_dir(dir)?;
    let out = Command::new("fio")
        .args([
            "--name=peers",
            &format!("--filename={}", dir.join("fio.dat").display()),
            "--size=1G",
            "--rw=write",
            &format!("--bs={}", a.record_size),
            "--ioengine=psync",
            "--fdatasync=1",
            &format!("--numjobs={jobs}"),
            "--group_reporting",
            "--time_based",
            &format!("--runtime={}", a.duration.ceil() as u64),
            "--output-format=json",
        ])
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    if !out.status.success() {
        return Err(format!("fio failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("fio json: {e}"))?;
    let job = &v["jobs"][0];
    let ios = job["write"]["total_ios"].as_u64().unwrap_or(0);
    let secs = job["write"]["runtime"].as_f64().unwrap_or(0.0) / 1000.0;
    // latency of one record = its write + its fdatasync, summed percentile by percentile
    let pct = |section: &serde_json::Value, p: &str| section["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let mut hist = crate::report::new_hist();
    // Approximate the distribution from fio's percentiles: the mass between
    // one reported percentile and the next is put at the upper one.
    for (share, key) in [(0.5, "50.000000"), (0.4, "90.000000"), (0.09, "99.000000"), (0.01, "99.900000")] {
        let us = pct(&job["write"]["clat_ns"], key) + pct(&job["sync"]["lat_ns"], key);
        let _ = hist.record_n(us.max(1.0) as u64, ((ios as f64 * share) as u64).max(1));
    }
    Ok(Some(Report {
        label: format!("fio write+fdatasync, {jobs} writers"),
        records: ios,
        errors: 0,
        secs: secs.max(1e-9),
        bytes_per_record: a.record_size,
        hist,
    }))
}

fn mirrorlog(dir: &Path, devices: usize, clients: usize, threads: bool, a: &PeersArgs) -> Result<Report, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let c = Common {
        devices: (0..devices).map(|i| dir.join(format!("m{i}"))).collect::<Vec<PathBuf>>(),
        device_size: a.device_size,
        segment_size: 64 << 20,
        sync: mirrorlog::SyncMode::RwfDsync,
        json: a.json,
    };
    let o = EmbeddedOpts {
        threads,
        loops: 1,
        record_size: crate::load::Sizes::fixed(a.record_size),
        journal: "peers".into(),
        max_batch: None,
        inflight: None,
        format: true,
        ack_log: None,
    };
    let how = if threads || clients == 1 { "writers (threads)" } else { "clients (event loop)" };
    run_embedded(&c, &load(clients, a.duration, a.json), &o, format!("mirrorlog {devices} dev, {clients} {how}"))
}

pub fn peers(a: &PeersArgs) -> Result<(), String> {
    let root = &a.dir;
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let w = a.writers;
    let mut rows: Vec<(&str, Report)> = Vec::new();
    let mut push = |kind: &'static str, r: Report| {
        print(std::slice::from_ref(&r), a.json);
        rows.push((kind, r));
    };
    // QD1: the four alternate, `rounds` times; medians are compared, so the
    // shared disk's drift hits all alike. The last round's runs are kept.
    let mut p50s: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for round in 0..a.rounds.max(1) {
        let last = round + 1 == a.rounds.max(1);
        let mut qd1: Vec<(&'static str, Report)> = Vec::new();
        if let Some(r) = fio(&root.join("fio"), 1, a)? {
            qd1.push(("fio1", r));
        }
        qd1.push(("ml1-1", mirrorlog(&root.join("ml"), 1, 1, true, a)?));
        qd1.push(("ml2-1", mirrorlog(&root.join("ml"), 2, 1, true, a)?));
        qd1.push(("raft-1", raft_engine(&root.join("raft"), 1, a)?));
        qd1.push(("okay-1", okaywal(&root.join("okaywal"), 1, a)?));
        for (k, r) in qd1 {
            p50s.entry(k).or_default().push(r.q(0.5));
            if last {
                push(k, r);
            } else {
                print(std::slice::from_ref(&r), a.json);
            }
        }
    }
    let median = |k: &str| {
        let mut v = p50s.get(k).cloned().unwrap_or_default();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    if let Some(r) = fio(&root.join("fio"), w, a)? {
        push("fioN", r);
    }
    push("ml1-N-loop", mirrorlog(&root.join("ml"), 1, w, false, a)?);
    push("ml1-N-threads", mirrorlog(&root.join("ml"), 1, w, true, a)?);
    push("ml2-N-loop", mirrorlog(&root.join("ml"), 2, w, false, a)?);
    push("ml2-N-threads", mirrorlog(&root.join("ml"), 2, w, true, a)?);
    push("raft-N", raft_engine(&root.join("raft"), w, a)?);
    push("okay-N", okaywal(&root.join("okaywal"), w, a)?);
    let get = |k: &str| rows.iter().find(|(n, _)| *n == k).map(|(_, r)| r);
    if !a.json {
        println!();
        println!(
            "QD1 p50, median of {} rounds: mirrorlog 1 dev {} us, 2 mirrors {} us; raft-engine {} us; okaywal {} us; fio {} us (goal: 1 dev no worse than the peers)",
            a.rounds.max(1),
            median("ml1-1"),
            median("ml2-1"),
            median("raft-1"),
            median("okay-1"),
            median("fio1")
        );
        for k in ["ml1-1", "ml2-1", "raft-1", "okay-1", "fio1"] {
            println!("  {k} p50 by round: {:?}", p50s.get(k).cloned().unwrap_or_default());
        }
        if let (Some(raft), Some(okay)) = (get("raft-N"), get("okay-N")) {
            let best = raft.records_per_sec().max(okay.records_per_sec());
            for k in ["ml1-N-loop", "ml1-N-threads", "ml2-N-loop", "ml2-N-threads"] {
                if let Some(r) = get(k) {
                    println!(
                        "{w} writers: {} {:.0} rec/s = {:.2}x raft-engine, {:.2}x okaywal, {:.2}x the best peer",
                        r.label,
                        r.records_per_sec(),
                        r.records_per_sec() / raft.records_per_sec(),
                        r.records_per_sec() / okay.records_per_sec(),
                        r.records_per_sec() / best
                    );
                }
            }
            println!("goal: 1 dev >= 1.5x the peers, 2 mirrors >= 1x the peers");
        }
    }
    if let Some(p) = &a.plot {
        let rs: Vec<Report> = rows.iter().filter(|(k, _)| !k.starts_with("fio")).map(|(_, r)| r.clone()).collect();
        plot(p, "durable 1 KiB appends: latency by percentile", &rs).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

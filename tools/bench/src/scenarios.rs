//! Fixed scenarios: the engine against raw writes side by side, and recovery.

use std::os::fd::AsRawFd;
use std::time::Instant;

use mirrorlog::io::{open_device, AlignedBuf};
use mirrorlog::MirrorLog;

use crate::embedded::{config, run_embedded, EmbeddedOpts};
use crate::load::{payload, Load, Sizes};
use crate::raw::{ensure_devices, run_raw};
use crate::report::{plot, print, Report};
use crate::{CompareArgs, RecoveryArgs};

pub fn compare(a: &CompareArgs) -> Result<(), String> {
    let c = &a.common;
    let n = c.devices.len();
    let load =
        |clients: usize| Load { clients, secs: a.duration, records: None, rate: None, progress: !c.json, poll: false };
    let emb = EmbeddedOpts {
        threads: false,
        loops: 1,
        record_size: Sizes::fixed(1024),
        journal: "bench".into(),
        max_batch: None,
        inflight: None,
        format: true,
        ack_log: None,
    };
    let mut all: Vec<Report> = Vec::new();
    // QD1 latency: raw and journal alternate, `rounds` times, so drift in a
    // shared disk hits both alike; the medians are compared.
    let (mut raw_p50, mut j_p50) = (Vec::new(), Vec::new());
    for round in 0..a.rounds.max(1) {
        let r = run_raw(c, &load(1), 4096, format!("raw 4KiB x{n} devices, QD1 (round {})", round + 1), 1, true)?;
        let j =
            run_embedded(c, &load(1), &emb, format!("journal 1KiB, 1 appender, {n} mirrors (round {})", round + 1))?;
        print(&[r.clone(), j.clone()], c.json);
        raw_p50.push(r.q(0.5));
        j_p50.push(j.q(0.5));
        all.extend([r, j]);
    }
    raw_p50.sort_unstable();
    j_p50.sort_unstable();
    let (rm, jm) = (raw_p50[raw_p50.len() / 2], j_p50[j_p50.len() / 2]);
    // throughput at 64 and 256 appenders vs the raw write of their largest batch
    let mut pairs = Vec::new();
    for clients in [64usize, 256] {
        let kib = clients as u64;
        let raw = run_raw(
            c,
            &load(1),
            kib * 1024,
            format!("raw {kib}KiB x{n} devices, QD1 (x{clients} rec)"),
            clients as u64,
            true,
        )?;
        let jr = run_embedded(c, &load(clients), &emb, format!("journal 1KiB, {clients} appenders, {n} mirrors"))?;
        print(&[raw.clone(), jr.clone()], c.json);
        pairs.push((raw.clone(), jr.clone()));
        all.extend([raw, jr]);
    }
    if !c.json {
        println!();
        println!(
            "QD1 p50, median of {} rounds: journal {jm} us / raw {rm} us = {:.2}x (goal <= 1.15x)",
            raw_p50.len(),
            jm as f64 / rm as f64
        );
        for (raw, j) in &pairs {
            println!(
                "{}: journal {:.0} rec/s / raw {:.0} rec/s = {:.0}% (goal >= 70%)",
                j.label,
                j.records_per_sec(),
                raw.records_per_sec(),
                100.0 * j.records_per_sec() / raw.records_per_sec()
            );
        }
    }
    if let Some(p) = &a.plot {
        // QD1: the last round of each; then the throughput runs
        let rounds = a.rounds.max(1) * 2;
        let mut shown: Vec<Report> = all[rounds - 2..rounds].to_vec();
        shown.extend(all[rounds..].iter().cloned());
        plot(p, "mirrorlog engine vs raw mirrored writes: latency by percentile", &shown)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

pub fn recovery(a: &RecoveryArgs) -> Result<(), String> {
    let c = &a.common;
    ensure_devices(c)?;
    let cfg = config(c);
    let size = a.record_size as usize;
    let per_batch = (cfg.max_batch_bytes / (size + 32)).clamp(1, 4096);
    let records;
    {
        let log = MirrorLog::create(&cfg).map_err(|e| e.to_string())?;
        let j = log.create_journal("recovery").map_err(|e| e.to_string())?;
        let mut bufs = vec![vec![0u8; size]; per_batch];
        let mut seq = 0u64;
        while seq * (size as u64 + 32) < a.fill.min(cfg.segment_size - (2 << 20)) {
            for b in bufs.iter_mut() {
                payload(b, 0, seq);
                seq += 1;
            }
            let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            j.append_batch(&refs).map_err(|e| e.to_string())?;
        }
        records = seq;
        if j.info().segments != 1 {
            return Err("the fill spilled into a second segment; use a smaller --fill".into());
        }
    }
    let t0 = Instant::now();
    let log = MirrorLog::open(&cfg).map_err(|e| e.to_string())?;
    let open_s = t0.elapsed().as_secs_f64();
    let j = log.journal("recovery").map_err(|e| e.to_string())?;
    if j.next_lsn() != records + 1 {
        return Err(format!("recovered {} records, wrote {records}", j.next_lsn() - 1));
    }
    let bytes = records * (size as u64 + 32);
    let rs = j.recovery_stats();
    drop(j);
    drop(log);
    // sequential O_DIRECT reads of the same span, 1 MiB at a time, one device
    let dev = open_device(&c.devices[0], c.sync).map_err(|e| e.to_string())?;
    let fd = dev.file.as_raw_fd();
    let mut buf = AlignedBuf::new(1 << 20, 4096);
    let t1 = Instant::now();
    let mut off = 0u64;
    while off < bytes {
        mirrorlog::io::pread_exact(fd, (1 << 20) + off, buf.as_mut_slice()).map_err(|e| e.to_string())?;
        off += 1 << 20;
    }
    let read_s = t1.elapsed().as_secs_f64();
    let (open_mb, read_mb) = (bytes as f64 / open_s / 1e6, bytes as f64 / read_s / 1e6);
    let scan_mb = rs.tail_bytes as f64 / rs.scan_seconds / 1e6;
    if c.json {
        println!(
            "{}",
            serde_json::json!({"records": records, "bytes": bytes, "open_seconds": open_s, "open_mb_per_sec": open_mb,
                "scan_seconds": rs.scan_seconds, "scan_mb_per_sec": scan_mb,
                "seq_read_seconds": read_s, "seq_read_mb_per_sec": read_mb})
        );
    } else {
        println!("tail segment: {records} records of {size} B, {:.1} MiB", bytes as f64 / (1 << 20) as f64);
        println!("open (everything):                  {open_s:.3} s = {open_mb:.0} MB/s");
        println!(
            "tail chain scan:                    {:.3} s = {scan_mb:.0} MB/s  (journal recovery in all: {:.3} s)",
            rs.scan_seconds, rs.total_seconds
        );
        println!("sequential O_DIRECT 1 MiB reads:    {read_s:.3} s = {read_mb:.0} MB/s");
        println!(
            "tail scan / sequential read: {:.0}%   open / sequential read: {:.0}%",
            100.0 * scan_mb / read_mb,
            100.0 * open_mb / read_mb
        );
    }
    Ok(())
}

//! mirrorlog-bench: durable-append benchmarks.
//!
//! * `run --raw`: the physical limit. Each operation is one aligned
//!   `O_DIRECT` write of `--record-size` bytes to every device in parallel
//!   (one io_uring submission), made durable with RWF_DSYNC (or O_DSYNC).
//! * `run --embedded`: the engine in process, `--clients` threads appending.
//! * `engine-vs-raw`: the scenarios of the engine issue, raw and journal
//!   measured back to back in one run, printed side by side.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use mirrorlog::io::{create_device_file, open_device, submit_wait, with_ring, AlignedBuf, IoOp};
use mirrorlog::{Config, MirrorLog, SyncMode};

#[derive(Parser)]
#[command(name = "mirrorlog-bench", version, about = "Durable append benchmarks for mirrorlog")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One benchmark run.
    Run(RunArgs),
    /// Raw mirrored writes and the journal, back to back, side by side.
    EngineVsRaw(CompareArgs),
    /// Recovery: time the tail scan of a full segment at open, against
    /// sequential O_DIRECT reads of the same bytes.
    Recovery(RecoveryArgs),
}

#[derive(Args, Clone)]
struct RecoveryArgs {
    #[command(flatten)]
    common: Common,
    /// Record size used to fill the segment.
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    record_size: u64,
    /// Bytes to fill the tail segment with (at most the segment size).
    #[arg(long, default_value = "60M", value_parser = parse_size)]
    fill: u64,
}

#[derive(Args, Clone)]
struct Common {
    /// Device paths, comma separated; missing ones are created as files.
    #[arg(long, value_delimiter = ',', required = true)]
    devices: Vec<PathBuf>,
    /// Size of device files created by the bench (bytes; K, M, G suffixes).
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    device_size: u64,
    /// How writes are made durable: rwf-dsync or o-dsync.
    #[arg(long, default_value = "rwf-dsync", value_parser = parse_sync)]
    sync: SyncMode,
    /// Print one JSON object per run instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Raw aligned O_DIRECT writes to every device (no journal).
    #[arg(long, conflicts_with = "embedded")]
    raw: bool,
    /// The engine in process.
    #[arg(long)]
    embedded: bool,
    /// Concurrent clients (threads), each waiting for its ack (closed loop).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Record size in bytes (raw: the size of each aligned write).
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    record_size: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Journal name (embedded).
    #[arg(long, default_value = "bench")]
    journal: String,
    /// Group commit: batch byte limit (embedded).
    #[arg(long, value_parser = parse_size)]
    max_batch: Option<u64>,
    /// Group commit: batches in flight (embedded).
    #[arg(long)]
    inflight: Option<usize>,
    /// Format the devices before the run (embedded).
    #[arg(long)]
    format: bool,
    /// Embedded: one OS thread per client, each blocking in `append`
    /// (default: clients multiplexed on event loops with `submit`/`Driver`).
    #[arg(long)]
    threads: bool,
    /// Embedded: event-loop threads the clients are spread over.
    #[arg(long, default_value_t = 1)]
    loops: usize,
}

#[derive(Args, Clone)]
struct CompareArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds per run.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// QD1 rounds (raw and journal alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().map(|n| n * mul).map_err(|e| format!("bad size {s:?}: {e}"))
}

fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "rwf-dsync" => Ok(SyncMode::RwfDsync),
        "o-dsync" => Ok(SyncMode::ODsync),
        _ => Err(format!("unknown sync mode {s:?} (rwf-dsync, o-dsync)")),
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
struct Report {
    label: String,
    records: u64,
    errors: u64,
    secs: f64,
    bytes_per_record: u64,
    hist: Histogram<u64>,
}

impl Report {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn mb_per_sec(&self) -> f64 {
        self.records as f64 * self.bytes_per_record as f64 / self.secs / 1e6
    }
    fn q(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "records": self.records,
            "errors": self.errors,
            "seconds": self.secs,
            "records_per_sec": self.records_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "p50_us": self.q(0.5),
            "p90_us": self.q(0.9),
            "p99_us": self.q(0.99),
            "p999_us": self.q(0.999),
            "max_us": self.hist.max(),
        })
    }
    fn line(&self) -> String {
        format!(
            "{:<44} {:>10.0} rec/s {:>8.1} MB/s  p50 {:>6} p90 {:>6} p99 {:>6} p99.9 {:>6} max {:>7} us{}",
            self.label,
            self.records_per_sec(),
            self.mb_per_sec(),
            self.q(0.5),
            self.q(0.9),
            self.q(0.99),
            self.q(0.999),
            self.hist.max(),
            if self.errors > 0 { format!("  errors {}", self.errors) } else { String::new() }
        )
    }
}

fn new_hist() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, 3) {
        Ok(h) => h,
        Err(e) => panic!("histogram: {e}"),
    }
}

fn ensure_devices(c: &Common) -> Result<(), String> {
    for d in &c.devices {
        if !d.exists() {
            eprintln!("creating {} ({} bytes, zero-filled)", d.display(), c.device_size);
            create_device_file(d, c.device_size).map_err(|e| format!("{}: {e}", d.display()))?;
        }
    }
    Ok(())
}

/// Counters shared by a run's worker threads.
struct Progress {
    stop: AtomicBool,
    done: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    fn error(&self, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("error: {e}");
        }
    }
}

/// Runs `workers` threads of `body(worker, progress)` for `secs`, printing
/// progress, and merges the latency histograms they return.
fn run_workers(
    label: String,
    workers: usize,
    secs: f64,
    bytes_per_record: u64,
    progress: bool,
    body: impl Fn(usize, &Progress) -> Histogram<u64> + Sync,
) -> Report {
    let p = Progress { stop: AtomicBool::new(false), done: AtomicU64::new(0), errors: AtomicU64::new(0) };
    let start = Instant::now();
    let hists: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let (p, body) = (&p, &body);
                s.spawn(move || body(w, p))
            })
            .collect();
        let mut last = 0;
        while start.elapsed().as_secs_f64() < secs {
            std::thread::sleep(Duration::from_millis(200).min(Duration::from_secs_f64(secs / 4.0)));
            let n = p.done.load(Ordering::Relaxed);
            if progress {
                eprint!("\r  {label}: {:.0} rec/s   ", (n - last) as f64 / 0.2);
            }
            last = n;
        }
        p.stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| new_hist())).collect()
    });
    if progress {
        eprint!("\r{:80}\r", "");
    }
    let mut hist = new_hist();
    for h in &hists {
        let _ = hist.add(h);
    }
    Report {
        label,
        records: p.done.load(Ordering::Relaxed),
        errors: p.errors.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
        bytes_per_record,
        hist,
    }
}

/// Runs `clients` closed-loop threads for `secs`; `op(client, seq)` does one
/// operation and returns the records it completed.
fn drive(
    label: String,
    clients: usize,
    secs: f64,
    bytes_per_record: u64,
    progress: bool,
    op: impl Fn(usize, u64) -> Result<u64, String> + Sync,
) -> Report {
    run_workers(label, clients, secs, bytes_per_record, progress, |c, p| {
        let mut h = new_hist();
        let mut seq = 0u64;
        while !p.stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match op(c, seq) {
                Ok(n) => {
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    p.done.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    p.error(e);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            seq += 1;
        }
        h
    })
}

/// Raw: each op writes `size` aligned bytes to every device, in parallel, durably.
fn run_raw(
    c: &Common,
    clients: usize,
    size: u64,
    secs: f64,
    label: String,
    records_per_op: u64,
) -> Result<Report, String> {
    ensure_devices(c)?;
    let devs: Vec<_> = c
        .devices
        .iter()
        .map(|p| open_device(p, c.sync).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;
    let dev_size = devs.iter().map(|d| d.size).min().unwrap_or(0);
    let size = size.div_ceil(4096) * 4096;
    let base = 1u64 << 20;
    let region = (dev_size.saturating_sub(base) / clients as u64) / size * size;
    if region < size {
        return Err("devices too small for this many clients".into());
    }
    let fds: Vec<i32> = devs.iter().map(|d| std::os::fd::AsRawFd::as_raw_fd(&d.file)).collect();
    let dsync = c.sync == SyncMode::RwfDsync;
    let bufs: Vec<AlignedBuf> = (0..clients)
        .map(|i| {
            let mut b = AlignedBuf::new(size as usize, 4096);
            b.as_mut_slice().fill(i as u8 | 1);
            b
        })
        .collect();
    let report = drive(label, clients, secs, size / records_per_op.max(1), !c.json, |client, seq| {
        let off = base + client as u64 * region + (seq * size) % region;
        let buf = &bufs[client].as_slice()[..size as usize];
        let ops: Vec<IoOp> = fds.iter().map(|&fd| IoOp::write(fd, off, buf, dsync)).collect();
        let mut res = vec![0i32; ops.len()];
        with_ring(|ring| submit_wait(ring, &ops, &mut res)).map_err(|e| e.to_string())?;
        for r in res {
            if r as u64 != size {
                return Err(format!("raw write returned {r}"));
            }
        }
        Ok(records_per_op)
    });
    Ok(report)
}

fn payload(buf: &mut [u8], client: usize, seq: u64) {
    let n = buf.len();
    if n >= 16 {
        buf[..8].copy_from_slice(&(client as u64).to_le_bytes());
        buf[8..16].copy_from_slice(&seq.to_le_bytes());
    }
    if n >= 20 {
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }
}

struct EmbeddedOpts {
    threads: bool,
    loops: usize,
    clients: usize,
    record_size: u64,
    secs: f64,
    journal: String,
    max_batch: Option<u64>,
    inflight: Option<usize>,
    format: bool,
}

fn run_embedded(c: &Common, o: &EmbeddedOpts, label: String) -> Result<Report, String> {
    ensure_devices(c)?;
    let mut cfg = Config::new(c.devices.iter().cloned());
    cfg.sync = c.sync;
    if let Some(b) = o.max_batch {
        cfg.max_batch_bytes = b as usize;
    }
    if let Some(n) = o.inflight {
        cfg.max_inflight_batches = n;
    }
    let log =
        if o.format { MirrorLog::create(&cfg) } else { MirrorLog::open_or_create(&cfg) }.map_err(|e| e.to_string())?;
    let j = log.journal_or_create(&o.journal).map_err(|e| e.to_string())?;
    // Keep space: a marker reclaims all but the newest records.
    let stop = Arc::new(AtomicBool::new(false));
    let total = log.status().segments_total as usize;
    let marker = {
        let (j, stop) = (j.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                // Reclaim only when the journal holds over half the segments.
                if j.info().segments * 2 <= total {
                    continue;
                }
                let m = j.next_lsn().saturating_sub(10_000).max(j.mark());
                let _ = j.set_mark(m);
            }
        })
    };
    let size = o.record_size as usize;
    let report = if !o.threads {
        drive_loops(label, o, !c.json, &j)
    } else {
        drive(label, o.clients, o.secs, o.record_size, !c.json, |client, seq| {
            let mut buf = [0u8; 4096];
            let mut big;
            let p: &mut [u8] = if size <= buf.len() {
                &mut buf[..size]
            } else {
                big = vec![0u8; size];
                &mut big
            };
            payload(p, client, seq);
            j.append(p).map(|_| 1).map_err(|e| e.to_string())
        })
    };
    stop.store(true, Ordering::Relaxed);
    let _ = marker.join();
    let k = j.counters();
    let mut report = report;
    if k.batches > 0 {
        report.label = format!("{} [{:.1} rec/batch]", report.label, k.appends as f64 / k.batches as f64);
    }
    Ok(report)
}

/// Closed-loop clients multiplexed on `o.loops` event-loop threads: each
/// thread submits for every idle client, pumps its `Driver`, and collects
/// completions. Latency runs from submit to the observed ack.
fn drive_loops(label: String, o: &EmbeddedOpts, progress: bool, j: &mirrorlog::Journal) -> Report {
    let loops = o.loops.clamp(1, o.clients.max(1));
    let size = o.record_size as usize;
    run_workers(label, loops, o.secs, o.record_size, progress, |l, p| {
        let mut h = new_hist();
        let clients: Vec<usize> = (0..o.clients).filter(|c| c % loops == l).collect();
        let mut driver = match mirrorlog::Driver::new() {
            Ok(d) => d,
            Err(e) => {
                p.error(e);
                return h;
            }
        };
        let mut seqs = vec![0u64; clients.len()];
        let mut pending: Vec<Option<(mirrorlog::Ticket, Instant)>> = vec![None; clients.len()];
        let mut buf = vec![0u8; size];
        while !p.stop.load(Ordering::Relaxed) {
            for (k, &c) in clients.iter().enumerate() {
                if pending[k].is_some() {
                    continue;
                }
                payload(&mut buf, c, seqs[k]);
                match j.submit(&buf) {
                    Ok(t) => {
                        pending[k] = Some((t, Instant::now()));
                        seqs[k] += 1;
                    }
                    Err(mirrorlog::Error::Backpressure) => break,
                    Err(e) => {
                        p.error(e);
                        std::thread::sleep(Duration::from_millis(1));
                        break;
                    }
                }
            }
            if let Err(e) = driver.pump(&[j], true) {
                p.error(e);
                break;
            }
            for slot in pending.iter_mut() {
                let Some((t, t0)) = slot else { continue };
                match j.poll(t) {
                    Ok(true) => {
                        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                        p.done.fetch_add(1, Ordering::Relaxed);
                        *slot = None;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        p.error(e);
                        *slot = None;
                    }
                }
            }
        }
        // drain what is in flight
        while pending.iter().any(|s| s.as_ref().is_some_and(|(t, _)| matches!(j.poll(t), Ok(false)))) {
            if driver.pump(&[j], true).is_err() {
                break;
            }
        }
        h
    })
}

fn print(reports: &[Report], json: bool) {
    for r in reports {
        if json {
            println!("{}", r.json());
        } else {
            println!("{}", r.line());
        }
    }
}

fn compare(a: &CompareArgs) -> Result<(), String> {
    let c = &a.common;
    let secs = a.duration;
    let n = c.devices.len();
    let emb = |clients: usize| EmbeddedOpts {
        threads: false,
        loops: 1,
        clients,
        record_size: 1024,
        secs,
        journal: "bench".into(),
        max_batch: None,
        inflight: None,
        format: true,
    };
    let mut rows = Vec::new();
    // QD1 latency: raw and journal alternate, `rounds` times, so drift in the
    // shared virtual disk hits both alike; the medians are compared.
    let mut raw_p50 = Vec::new();
    let mut j_p50 = Vec::new();
    let (mut raw1, mut j1) = (None, None);
    for round in 0..a.rounds.max(1) {
        let r = run_raw(c, 1, 4096, secs, format!("raw 4KiB x{n} devices, QD1 (round {})", round + 1), 1)?;
        let j = run_embedded(c, &emb(1), format!("journal 1KiB, 1 appender, {n} mirrors (round {})", round + 1))?;
        print(&[r.clone(), j.clone()], c.json);
        raw_p50.push(r.q(0.5));
        j_p50.push(j.q(0.5));
        raw1 = Some(r);
        j1 = Some(j);
    }
    let (Some(raw1), Some(j1)) = (raw1, j1) else { return Err("no rounds".into()) };
    raw_p50.sort_unstable();
    j_p50.sort_unstable();
    let (rm, jm) = (raw_p50[raw_p50.len() / 2], j_p50[j_p50.len() / 2]);
    rows.push((raw1.clone(), j1.clone()));
    // throughput at 64 and 256 appenders vs the raw write of their largest batch
    for clients in [64usize, 256] {
        let kib = clients as u64;
        let raw = run_raw(
            c,
            1,
            kib * 1024,
            secs,
            format!("raw {kib}KiB x{n} devices, QD1 (x{clients} rec)"),
            clients as u64,
        )?;
        let jr = run_embedded(c, &emb(clients), format!("journal 1KiB, {clients} appenders, {n} mirrors"))?;
        print(&[raw.clone(), jr.clone()], c.json);
        rows.push((raw, jr));
    }
    if !c.json {
        println!();
        println!(
            "QD1 p50, median of {} rounds: journal {jm} us / raw {rm} us = {:.2}x (goal <= 1.15x)",
            raw_p50.len(),
            jm as f64 / rm as f64
        );
        for (raw, j) in &rows[1..] {
            println!(
                "{}: journal {:.0} rec/s / raw {:.0} rec/s = {:.0}% (goal >= 70%)",
                j.label,
                j.records_per_sec(),
                raw.records_per_sec(),
                100.0 * j.records_per_sec() / raw.records_per_sec()
            );
        }
    }
    Ok(())
}

fn recovery(a: &RecoveryArgs) -> Result<(), String> {
    let c = &a.common;
    ensure_devices(c)?;
    let mut cfg = Config::new(c.devices.iter().cloned());
    cfg.sync = c.sync;
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
    drop(log);
    // sequential O_DIRECT reads of the same span, 1 MiB at a time, one device
    let dev = open_device(&c.devices[0], c.sync).map_err(|e| e.to_string())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev.file);
    let mut buf = AlignedBuf::new(1 << 20, 4096);
    let t1 = Instant::now();
    let mut off = 0u64;
    while off < bytes {
        mirrorlog::io::pread_exact(fd, (1 << 20) + off, buf.as_mut_slice()).map_err(|e| e.to_string())?;
        off += 1 << 20;
    }
    let read_s = t1.elapsed().as_secs_f64();
    let (open_mb, read_mb) = (bytes as f64 / open_s / 1e6, bytes as f64 / read_s / 1e6);
    if c.json {
        println!(
            "{}",
            serde_json::json!({"records": records, "bytes": bytes, "open_seconds": open_s, "open_mb_per_sec": open_mb,
                "scan_seconds": rs.scan_seconds, "scan_mb_per_sec": rs.tail_bytes as f64 / rs.scan_seconds / 1e6,
                "seq_read_seconds": read_s, "seq_read_mb_per_sec": read_mb})
        );
    } else {
        println!("tail segment: {records} records of {size} B, {:.1} MiB", bytes as f64 / (1 << 20) as f64);
        println!("open (everything):                  {open_s:.3} s = {open_mb:.0} MB/s");
        println!(
            "tail chain scan:                    {:.3} s = {:.0} MB/s  (journal recovery in all: {:.3} s)",
            rs.scan_seconds,
            rs.tail_bytes as f64 / rs.scan_seconds / 1e6,
            rs.total_seconds
        );
        println!("sequential O_DIRECT 1 MiB reads:    {read_s:.3} s = {read_mb:.0} MB/s");
        println!(
            "tail scan / sequential read: {:.0}%   open / sequential read: {:.0}%",
            100.0 * rs.tail_bytes as f64 / rs.scan_seconds / 1e6 / read_mb,
            100.0 * open_mb / read_mb
        );
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(r) => {
            if r.raw == r.embedded {
                Err("choose one target: --raw or --embedded".to_string())
            } else if r.raw {
                let label =
                    format!("raw {}B x{} devices, {} clients", r.record_size, r.common.devices.len(), r.clients);
                run_raw(&r.common, r.clients, r.record_size, r.duration, label, 1)
                    .map(|rep| print(&[rep], r.common.json))
            } else {
                let o = EmbeddedOpts {
                    threads: r.threads,
                    loops: r.loops,
                    clients: r.clients,
                    record_size: r.record_size,
                    secs: r.duration,
                    journal: r.journal.clone(),
                    max_batch: r.max_batch,
                    inflight: r.inflight,
                    format: r.format,
                };
                let label =
                    format!("journal {}B, {} appenders, {} mirrors", r.record_size, r.clients, r.common.devices.len());
                run_embedded(&r.common, &o, label).map(|rep| print(&[rep], r.common.json))
            }
        }
        Cmd::EngineVsRaw(a) => compare(&a),
        Cmd::Recovery(a) => recovery(&a),
    };
    if let Err(e) = res {
        eprintln!("mirrorlog-bench: {e}");
        std::process::exit(1);
    }
}

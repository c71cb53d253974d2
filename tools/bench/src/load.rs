//! The load generator: closed-loop and open-loop clients, progress, payloads
//! that verify themselves, and the acknowledgement log.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::report::{new_hist, Report};

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    pub secs: f64,
    /// Stop after this many acknowledged records (instead of `secs`).
    pub records: Option<u64>,
    /// Open loop: total operations per second over all clients, latency
    /// counted from each operation's intended send time. `None`: closed loop.
    pub rate: Option<f64>,
    pub progress: bool,
    /// The load generator polls instead of sleeping while it waits for acks
    /// (`--poll`): on a VM, waking a sleeping thread on a halted vCPU costs
    /// tens of microseconds, which a sleeping generator adds to every round
    /// trip. Applies to the event-loop clients (embedded and endpoint).
    pub poll: bool,
}

impl Load {
    /// Open loop: the intended send time of client `c`'s operation `k`.
    pub fn intended(&self, start: Instant, c: usize, k: u64) -> Option<Instant> {
        let rate = self.rate?;
        let per_client = rate / self.clients.max(1) as f64;
        let offset = c as f64 / rate; // spread clients over the first interval
        Some(start + Duration::from_secs_f64(offset + k as f64 / per_client))
    }
}

/// Counters shared by a run's worker threads.
pub struct Progress {
    pub stop: AtomicBool,
    pub done: AtomicU64,
    pub errors: AtomicU64,
    /// Latencies since the last progress line.
    interval: Mutex<Histogram<u64>>,
    limit: Option<u64>,
    pub start: Instant,
}

impl Progress {
    pub fn error(&self, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("error: {e}");
        }
    }

    /// Counts `n` acknowledged records; stops the run at the record limit.
    pub fn acked(&self, n: u64) {
        let total = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.limit.is_some_and(|l| total >= l) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ends the run early (a worker that cannot go on).
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Adds a worker's recent latencies to the progress interval.
    pub fn share(&self, recent: &mut Histogram<u64>) {
        if recent.is_empty() {
            return;
        }
        if let Some(mut h) = self.interval.try_lock() {
            let _ = h.add(&*recent);
            recent.reset();
        }
    }
}

/// The progress line's histograms: 2 significant digits are plenty for a
/// p99 printed every quarter second, and merging one (every load thread
/// does, every 250 ms) walks 8 times fewer buckets than a 3-digit one.
fn progress_hist() -> Histogram<u64> {
    crate::report::hist_with_digits(2)
}

/// A worker's latency recording: the whole run, plus the part not yet
/// shared with the progress line.
pub struct Lat {
    pub all: Histogram<u64>,
    recent: Histogram<u64>,
    last_share: Instant,
}

impl Lat {
    pub fn new() -> Lat {
        Lat { all: new_hist(), recent: progress_hist(), last_share: Instant::now() }
    }
    pub fn record(&mut self, p: &Progress, since: Instant) {
        let us = since.elapsed().as_micros().max(1) as u64;
        let _ = self.all.record(us.min(60_000_000));
        let _ = self.recent.record(us.min(60_000_000));
        if self.last_share.elapsed() > Duration::from_millis(250) {
            p.share(&mut self.recent);
            self.last_share = Instant::now();
        }
    }
}

/// Runs `workers` threads of `body(worker, progress)` until the time or
/// record limit, printing a progress line, and merges their histograms.
pub fn run_workers(
    label: String,
    workers: usize,
    load: &Load,
    bytes_per_record: u64,
    body: impl Fn(usize, &Progress) -> Histogram<u64> + Sync,
) -> Report {
    let p = Progress {
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        interval: Mutex::new(progress_hist()),
        limit: load.records,
        start: Instant::now(),
    };
    let hists: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let (p, body) = (&p, &body);
                s.spawn(move || body(w, p))
            })
            .collect();
        let mut last = (0u64, Instant::now());
        let limit_secs = if load.records.is_some() { f64::INFINITY } else { load.secs };
        while p.start.elapsed().as_secs_f64() < limit_secs && !p.stopped() {
            std::thread::sleep(Duration::from_millis(250));
            if load.progress {
                let n = p.done.load(Ordering::Relaxed);
                let dt = last.1.elapsed().as_secs_f64();
                let p99 = {
                    let mut h = p.interval.lock();
                    let v = h.value_at_quantile(0.99);
                    h.reset();
                    v
                };
                eprint!(
                    "\r  {label}: {:.0} rec/s, {:.1} MB/s, p99 {p99} us    ",
                    (n - last.0) as f64 / dt,
                    (n - last.0) as f64 * bytes_per_record as f64 / dt / 1e6
                );
                last = (n, Instant::now());
            }
        }
        p.stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| new_hist())).collect()
    });
    if load.progress {
        eprint!("\r{:100}\r", "");
    }
    let mut hist = new_hist();
    for h in &hists {
        let _ = hist.add(h);
    }
    Report {
        label,
        records: p.done.load(Ordering::Relaxed),
        errors: p.errors.load(Ordering::Relaxed),
        secs: p.start.elapsed().as_secs_f64(),
        bytes_per_record,
        hist,
    }
}

/// Runs `load.clients` threads, each doing `op(client, seq)` in a loop
/// (closed loop, or paced to its intended send times in open loop).
/// `op` returns the records it completed.
pub fn drive_threads(
    label: String,
    load: &Load,
    bytes_per_record: u64,
    op: impl Fn(usize, u64) -> Result<u64, String> + Sync,
) -> Report {
    run_workers(label, load.clients, load, bytes_per_record, |c, p| {
        let mut lat = Lat::new();
        let mut seq = 0u64;
        while !p.stopped() {
            let t = match load.intended(p.start, c, seq) {
                Some(at) => {
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    at
                }
                None => Instant::now(),
            };
            match op(c, seq) {
                Ok(n) => {
                    lat.record(p, t);
                    p.acked(n);
                }
                Err(e) => {
                    p.error(e);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            seq += 1;
        }
        lat.all
    })
}

// ---------------------------------------------------------------------------
// record sizes

/// Record sizes: one size, or a uniform range `MIN-MAX` (each record's size
/// derived from its client and sequence, so a run is repeatable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub min: u64,
    pub max: u64,
}

impl Sizes {
    pub fn fixed(n: u64) -> Sizes {
        Sizes { min: n, max: n }
    }
    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }
    pub fn mean(&self) -> u64 {
        (self.min + self.max) / 2
    }
    /// The size of (client, seq)'s record.
    pub fn of(&self, client: usize, seq: u64) -> usize {
        if self.is_fixed() {
            return self.min as usize;
        }
        let mut x = (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_mul(0xD1B5_4A32_D192_ED03);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        (self.min + x % (self.max - self.min + 1)) as usize
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_fixed() {
            write!(f, "{}B", self.min)
        } else {
            write!(f, "{}-{}B", self.min, self.max)
        }
    }
}

// ---------------------------------------------------------------------------
// payloads

/// Fills `out` with bytes derived from (client, seq), 8 at a time (cheap:
/// the load generator must not be what a benchmark measures).
fn filler(out: &mut [u8], client: u64, seq: u64) {
    let mut x = (client << 32) ^ seq ^ 0x9E37_79B9_7F4A_7C15;
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        x = x.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(0x1405_7B7E_F767_814F);
        c.copy_from_slice(&x.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let x = x.wrapping_mul(0x5851_F42D_4C95_7F2D).to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&x[..n]);
}

/// This run's id: random, nonzero, the same for every client of this
/// process. It is the high half of the writer id in payloads and the ack
/// log, so records of earlier runs on the same journal (whose clients also
/// counted from 0) are never taken for this run's.
pub fn run_id() -> u32 {
    static RUN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *RUN.get_or_init(|| loop {
        let r = rand::random::<u32>();
        if r != 0 {
            break r;
        }
    })
}

/// The writer id of client `client` in this run: run id and client number.
pub fn writer(client: usize) -> u64 {
    ((run_id() as u64) << 32) | (client as u64 & 0xFFFF_FFFF)
}

/// Fills `buf` with the payload of (client, seq) of this run: the writer
/// id and seq (8 bytes each), bytes derived from both, and a CRC32C of all
/// that in the last 4 bytes. Payloads shorter than 20 bytes are derived
/// bytes only.
pub fn payload(buf: &mut [u8], client: usize, seq: u64) {
    payload_of(buf, writer(client), seq)
}

fn payload_of(buf: &mut [u8], writer: u64, seq: u64) {
    let n = buf.len();
    if n < 20 {
        filler(buf, writer, seq);
        return;
    }
    buf[..8].copy_from_slice(&writer.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    filler(&mut buf[16..n - 4], writer, seq);
    let crc = crc32c::crc32c(&buf[..n - 4]);
    buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// The (writer id, seq) of a bench payload whose own checksum verifies
/// (of any run).
pub fn parse_payload(buf: &[u8]) -> Option<(u64, u64)> {
    let n = buf.len();
    if n < 20 {
        return None;
    }
    let crc = u32::from_le_bytes(buf[n - 4..].try_into().ok()?);
    if crc32c::crc32c(&buf[..n - 4]) != crc {
        return None;
    }
    let writer = u64::from_le_bytes(buf[..8].try_into().ok()?);
    let seq = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let mut want = vec![0u8; n];
    payload_of(&mut want, writer, seq);
    (want == buf).then_some((writer, seq))
}

// ---------------------------------------------------------------------------
// acknowledgement log

/// One line per acknowledged record: `lsn writer seq crc32c` (the writer
/// id: run and client, see `writer`; crc of the payload, hex). Written as
/// acks arrive, flushed at the end and every second.
pub struct AckLog {
    out: Mutex<(BufWriter<File>, Instant)>,
}

impl AckLog {
    pub fn create(path: &Path) -> std::io::Result<AckLog> {
        Ok(AckLog { out: Mutex::new((BufWriter::new(File::create(path)?), Instant::now())) })
    }
    pub fn ack(&self, lsn: u64, client: usize, seq: u64, payload: &[u8]) {
        let crc = crc32c::crc32c(payload);
        let mut g = self.out.lock();
        let _ = writeln!(g.0, "{lsn} {} {seq} {crc:08x}", writer(client));
        if g.1.elapsed() > Duration::from_secs(1) {
            let _ = g.0.flush();
            g.1 = Instant::now();
        }
    }
    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().0.flush()
    }
}

/// A parsed ack-log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub lsn: u64,
    /// The writer id (run and client).
    pub client: u64,
    pub seq: u64,
    pub crc: u32,
}

/// Parses one ack-log line.
pub fn parse_ack(line: &str) -> Option<Ack> {
    let mut w = line.split_whitespace();
    let a = Ack {
        lsn: w.next()?.parse().ok()?,
        client: w.next()?.parse().ok()?,
        seq: w.next()?.parse().ok()?,
        crc: u32::from_str_radix(w.next()?, 16).ok()?,
    };
    w.next().is_none().then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_verify_and_parse() {
        for len in [0usize, 5, 19, 20, 21, 1024, 4096] {
            let mut b = vec![0u8; len];
            payload(&mut b, 7, 99);
            let mut c = vec![0u8; len];
            payload(&mut c, 7, 99);
            assert_eq!(b, c, "payloads are deterministic");
            if len >= 20 {
                assert_eq!(parse_payload(&b), Some((writer(7), 99)));
                assert_eq!(writer(7) >> 32, run_id() as u64);
                b[len / 2] ^= 1;
                assert_eq!(parse_payload(&b), None);
            }
        }
    }

    #[test]
    fn ack_lines_round_trip() {
        let a = parse_ack("12 3 45 0000abcd").unwrap();
        assert_eq!(a, Ack { lsn: 12, client: 3, seq: 45, crc: 0xabcd });
        assert!(parse_ack("12 3 45").is_none());
        assert!(parse_ack("x 3 45 00").is_none());
    }

    #[test]
    fn size_ranges_stay_in_bounds_and_repeat() {
        let r = Sizes { min: 100, max: 5000 };
        let v: Vec<usize> = (0..1000).map(|i| r.of(3, i)).collect();
        assert!(v.iter().all(|&n| (100..=5000).contains(&n)));
        assert!(v.iter().any(|&n| n < 1000) && v.iter().any(|&n| n > 4000));
        assert_eq!(v, (0..1000).map(|i| r.of(3, i)).collect::<Vec<_>>());
        assert_eq!(Sizes::fixed(7).of(1, 2), 7);
    }

    #[test]
    fn open_loop_schedule() {
        let l = Load { clients: 4, secs: 1.0, records: None, rate: Some(1000.0), progress: false, poll: false };
        let t0 = Instant::now();
        let a = l.intended(t0, 0, 0).unwrap();
        let b = l.intended(t0, 0, 1).unwrap();
        assert_eq!((b - a).as_micros(), 4000, "each client sends at rate/clients");
        assert!(l.intended(t0, 1, 0).unwrap() > a);
    }
}

//! `--embedded`: the engine in process. Clients are multiplexed on event
//! loops (`submit` + `Driver`, the daemon's model) or, with `--threads`, one
//! OS thread per client blocking in `append`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorlog::{Config, Driver, Error, Journal, MirrorLog, Ticket};

use crate::load::{drive_threads, payload, run_workers, AckLog, Lat, Load, Sizes};
use crate::raw::ensure_devices;
use crate::report::Report;
use crate::Common;

pub struct EmbeddedOpts {
    pub threads: bool,
    pub loops: usize,
    pub record_size: Sizes,
    pub journal: String,
    pub max_batch: Option<u64>,
    pub inflight: Option<usize>,
    pub format: bool,
    pub ack_log: Option<Arc<AckLog>>,
}

pub fn config(c: &Common) -> Config {
    let mut cfg = Config::new(c.devices.iter().cloned());
    cfg.sync = c.sync;
    cfg.segment_size = c.segment_size;
    cfg
}

pub fn run_embedded(c: &Common, load: &Load, o: &EmbeddedOpts, label: String) -> Result<Report, String> {
    ensure_devices(c)?;
    let mut cfg = config(c);
    if let Some(b) = o.max_batch {
        cfg.max_batch_bytes = b as usize;
    }
    if let Some(n) = o.inflight {
        cfg.max_inflight_batches = n;
    }
    let log =
        if o.format { MirrorLog::create(&cfg) } else { MirrorLog::open_or_create(&cfg) }.map_err(|e| e.to_string())?;
    let j = log.journal_or_create(&o.journal).map_err(|e| e.to_string())?;
    // Keep space: reclaim all but the newest records once the journal holds
    // over half the set. (Not with an ack log: `check` reads every record back.)
    let stop = Arc::new(AtomicBool::new(false));
    let total = log.status().segments_total as usize;
    let marker = (o.ack_log.is_none()).then(|| {
        let (j, stop) = (j.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if j.info().segments * 2 <= total {
                    continue;
                }
                let m = j.next_lsn().saturating_sub(10_000).max(j.mark());
                let _ = j.set_mark(m);
            }
        })
    });
    let sizes = o.record_size;
    let report = if o.threads {
        drive_threads(label, load, sizes.mean(), |client, seq| {
            let size = sizes.of(client, seq);
            let mut stack = [0u8; 4096];
            let mut heap;
            let p: &mut [u8] = if size <= stack.len() {
                &mut stack[..size]
            } else {
                heap = vec![0u8; size];
                &mut heap
            };
            payload(p, client, seq);
            let lsn = j.append(p).map_err(|e| e.to_string())?;
            if let Some(a) = &o.ack_log {
                a.ack(lsn, client, seq, p);
            }
            Ok(1)
        })
    } else {
        drive_loops(label, load, o, &j)
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(m) = marker {
        let _ = m.join();
    }
    if let Some(a) = &o.ack_log {
        a.flush().map_err(|e| format!("ack log: {e}"))?;
    }
    let k = j.counters();
    let mut report = report;
    if k.batches > 0 {
        report.label = format!("{} [{:.1} rec/batch]", report.label, k.appends as f64 / k.batches as f64);
    }
    Ok(report)
}

struct Client {
    id: usize,
    seq: u64,
    /// The payload in flight (kept for the ack log), reused: no allocation per record.
    buf: Vec<u8>,
    pending: Option<(Ticket, Instant)>,
}

/// Clients multiplexed on `o.loops` event-loop threads: each thread submits
/// for every idle client (whose intended send time has come, in open loop),
/// pumps its `Driver`, and collects completions. Latency runs from submit
/// (open loop: from the intended send time) to the observed ack.
fn drive_loops(label: String, load: &Load, o: &EmbeddedOpts, j: &Journal) -> Report {
    let loops = o.loops.clamp(1, load.clients.max(1));
    let sizes = o.record_size;
    run_workers(label, loops, load, sizes.mean(), |l, p| {
        let mut lat = Lat::new();
        let mut clients: Vec<Client> = (0..load.clients)
            .filter(|c| c % loops == l)
            .map(|id| Client { id, seq: 0, buf: Vec::with_capacity(sizes.max as usize), pending: None })
            .collect();
        let mut driver = match Driver::new() {
            Ok(d) => d,
            Err(e) => {
                p.error(e);
                return lat.all;
            }
        };
        while !p.stopped() {
            let now = Instant::now();
            let mut next_due: Option<Instant> = None;
            for c in clients.iter_mut().filter(|c| c.pending.is_none()) {
                let t0 = match load.intended(p.start, c.id, c.seq) {
                    Some(at) if at > now => {
                        next_due = Some(next_due.map_or(at, |d| d.min(at)));
                        continue;
                    }
                    Some(at) => at,
                    None => now,
                };
                c.buf.resize(sizes.of(c.id, c.seq), 0); // within capacity: no allocation
                payload(&mut c.buf, c.id, c.seq);
                match j.submit(&c.buf) {
                    Ok(t) => {
                        c.pending = Some((t, t0));
                        c.seq += 1;
                    }
                    Err(Error::Backpressure) => break,
                    Err(e) => {
                        p.error(e);
                        std::thread::sleep(Duration::from_millis(1));
                        break;
                    }
                }
            }
            if driver.in_flight() == 0 && clients.iter().all(|c| c.pending.is_none()) {
                if let Some(due) = next_due {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                continue;
            }
            if let Err(e) = driver.pump(&[j], !load.poll) {
                p.error(e);
                break;
            }
            for c in clients.iter_mut() {
                let Some((t, t0)) = &c.pending else { continue };
                match j.poll(t) {
                    Ok(true) => {
                        lat.record(p, *t0);
                        p.acked(1);
                        if let Some(a) = &o.ack_log {
                            a.ack(t.lsn, c.id, c.seq - 1, &c.buf);
                        }
                        c.pending = None;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        p.error(e);
                        c.pending = None;
                    }
                }
            }
        }
        // finish what is in flight, so every submitted record is accounted for
        while clients.iter().any(|c| c.pending.as_ref().is_some_and(|(t, _)| matches!(j.poll(t), Ok(false)))) {
            if driver.pump(&[j], true).is_err() {
                break;
            }
        }
        if let Some(a) = &o.ack_log {
            for c in &clients {
                if let Some((t, _)) = &c.pending {
                    if matches!(j.poll(t), Ok(true)) {
                        a.ack(t.lsn, c.id, c.seq - 1, &c.buf);
                    }
                }
            }
        }
        lat.all
    })
}

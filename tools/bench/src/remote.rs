//! `--endpoint`: a running daemon over the wire protocol. Each bench client
//! is its own `mirrorlog::client::Client` (its own connection and producer
//! id), closed loop (waits for each ack) or open loop (`--rate`, latency
//! from the intended send time).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mirrorlog::client::{Client, ClientConfig};
use mirrorlog::protocol::Durability;

use crate::check::Findings;
use crate::load::{parse_payload, payload, run_workers, Lat, Load, Sizes};
use crate::report::Report;

pub struct RemoteOpts {
    pub endpoints: Vec<String>,
    pub journal: String,
    pub durability: Durability,
    pub record_size: Sizes,
    pub ack_log: Option<std::sync::Arc<crate::load::AckLog>>,
    /// Tokio worker threads for the clients.
    pub threads: usize,
    /// Send a request that touches no disk (GetMark) instead of appends:
    /// the round trip of the protocol and the network alone.
    pub ping: bool,
}

/// A load thread's event loop: its clients, their connection tasks and
/// its load loop all run on it (no cross-thread wake-ups).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

/// A load thread's runtime and its clients (with their global ids).
type LoadLoop = (tokio::runtime::Runtime, Vec<(usize, Client)>);

pub fn run_remote(load: &Load, o: &RemoteOpts, label: String) -> Result<Report, String> {
    // Load threads, each with its own runtime and every threads-th client
    // (client ids stay global: payloads and ack logs are per client).
    let threads = o.threads.clamp(1, load.clients.max(1));
    let mut loops: Vec<LoadLoop> = Vec::with_capacity(threads);
    for _ in 0..threads {
        loops.push((runtime()?, Vec::new()));
    }
    // Connect every client before the clock starts; make the journal.
    for id in 0..load.clients.max(1) {
        let (rt, v) = &mut loops[id % threads];
        let c =
            rt.block_on(Client::connect(ClientConfig::new(o.endpoints.iter().cloned()))).map_err(|e| e.to_string())?;
        v.push((id, c));
    }
    {
        let (rt, v) = &loops[0];
        match rt.block_on(v[0].1.create_journal(&o.journal)) {
            Ok(()) => {}
            Err(e) if e.code == 8 => {} // journal-exists
            Err(e) => return Err(e.to_string()),
        }
    }
    let loops: Vec<parking_lot::Mutex<Option<LoadLoop>>> =
        loops.into_iter().map(|l| parking_lot::Mutex::new(Some(l))).collect();
    let sizes = o.record_size;
    let report = run_workers(label, threads, load, sizes.mean(), |w, p| {
        let Some((rt, clients)) = loops[w].lock().take() else { return crate::report::new_hist() };
        // This load thread's client futures all run inside this one block_on, so
        // they share one latency record: 64 per-client histograms were
        // 64 x 0.5 MB that each ack touched at random (cache misses).
        let shared = std::cell::RefCell::new(Lat::new());
        let lat = &shared;
        rt.block_on(async {
            let futs = clients.iter().map(|(id, c)| {
                let id = *id;
                let (journal, durability, ack_log) = (o.journal.as_str(), o.durability, o.ack_log.as_ref());
                async move {
                    let mut buf = Vec::with_capacity(sizes.max as usize);
                    let mut seq = 0u64;
                    while !p.stopped() {
                        let t0 = match load.intended(p.start, id, seq) {
                            Some(at) => {
                                tokio::time::sleep_until(at.into()).await;
                                at
                            }
                            None => Instant::now(),
                        };
                        if o.ping {
                            match c.get_mark(journal).await {
                                Ok(_) => {
                                    lat.borrow_mut().record(p, t0);
                                    p.acked(1);
                                }
                                Err(e) => {
                                    p.error(e);
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                            }
                            seq += 1;
                            continue;
                        }
                        buf.resize(sizes.of(id, seq), 0);
                        payload(&mut buf, id, seq);
                        match c.append_batch_with(journal, &[&buf], durability).await {
                            Ok(lsn) => {
                                lat.borrow_mut().record(p, t0);
                                p.acked(1);
                                if let Some(a) = ack_log {
                                    a.ack(lsn, id, seq, &buf);
                                }
                            }
                            Err(e) => {
                                p.error(e);
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        seq += 1;
                    }
                }
            });
            let marker = async {
                if o.ack_log.is_none() && w == 0 {
                    keep_space(&clients[0].1, &o.journal, p).await;
                }
            };
            // --poll: a task that only yields keeps the runtime from sleeping:
            // each yield makes it poll its sockets without blocking.
            let poller = async {
                while load.poll && !p.stopped() {
                    tokio::task::yield_now().await;
                }
            };
            futures::future::join3(futures::future::join_all(futs), marker, poller).await;
        });
        shared.into_inner().all
    });
    if let Some(a) = &o.ack_log {
        a.flush().map_err(|e| format!("ack log: {e}"))?;
    }
    Ok(report)
}

/// Appends (or pings) against a daemon, from the client library's
/// connections or, with `lean`, from the lean generator (one endpoint,
/// appends only).
pub fn run_appends(load: &Load, o: &RemoteOpts, label: String, lean: bool) -> Result<Report, String> {
    if !lean || o.ping {
        return run_remote(load, o, label);
    }
    let [endpoint] = o.endpoints.as_slice() else {
        return Err("--lean takes one endpoint (it does not fail over)".into());
    };
    let lo = crate::lean::LeanOpts {
        endpoint,
        journal: &o.journal,
        durability: o.durability,
        record_size: o.record_size,
        ack_log: o.ack_log.as_deref(),
    };
    crate::lean::run_lean(load, &lo, format!("{label}, lean generator"))
}

/// Keeps space for a long run (not with an ack log: `check` reads every
/// record back): once the journal holds over half the set, reclaims all but
/// its newest records.
pub async fn keep_space(c: &Client, journal: &str, p: &crate::load::Progress) {
    while !p.stopped() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(st) = c.status().await else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&st) else { continue };
        let total = v["segments_total"].as_u64().unwrap_or(0);
        let Some(j) = v["journals"].as_array().and_then(|a| a.iter().find(|j| j["name"] == journal)) else {
            continue;
        };
        if j["segments"].as_u64().unwrap_or(0) * 2 > total {
            let m = j["next_lsn"].as_u64().unwrap_or(0).saturating_sub(10_000).max(j["mark"].as_u64().unwrap_or(0));
            let _ = c.set_mark(journal, m).await;
        }
    }
}

/// `check --endpoint`: reads the journal from the first acknowledged LSN
/// through the daemon and checks every ack against it.
pub fn check_remote(endpoints: &[String], journal: &str, acks: &[crate::load::Ack]) -> Result<Findings, String> {
    let rt = runtime()?;
    rt.block_on(async {
        let c = Client::connect(ClientConfig::new(endpoints.iter().cloned())).await.map_err(|e| e.to_string())?;
        let mut out = Findings { acks: acks.len() as u64, ..Default::default() };
        let from = acks.iter().map(|a| a.lsn).min().unwrap_or(1);
        let mut by_lsn: HashMap<u64, (u32, Option<(u64, u64)>)> = HashMap::new();
        let mut seen: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
        let mut next = from;
        loop {
            let (recs, n) = match c.read(journal, next, 100_000, 8 << 20).await {
                Ok(r) => r,
                Err(e) if e.code == 11 => {
                    // below the mark: those acks are reported missing
                    let (r, _) = c.read(journal, 0, 1, 1).await.map_err(|e| e.to_string())?;
                    next = r.first().map(|r| r.lsn).unwrap_or(next + 1);
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            if recs.is_empty() {
                break;
            }
            for r in recs {
                let who = parse_payload(&r.payload);
                if let Some(k) = who {
                    seen.entry(k).or_default().push(r.lsn);
                }
                by_lsn.insert(r.lsn, (r.crc32c, who));
            }
            next = n;
        }
        for a in acks {
            match by_lsn.get(&a.lsn) {
                None => out.missing.push(a.lsn),
                Some((crc, who)) => {
                    if *crc != a.crc || (who.is_some() && *who != Some((a.client, a.seq))) {
                        out.corrupt.push(a.lsn);
                    }
                }
            }
        }
        out.finish(seen);
        Ok(out)
    })
}

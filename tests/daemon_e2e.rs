//! End to end: the real daemon binary on loopback, 16 clients appending
//! with pipelining, the daemon SIGKILLed (or SIGTERMed) mid-load and
//! restarted; every acknowledged append must read back exactly once, at
//! its acknowledged LSN, and no record may be written twice (the clients'
//! resends are idempotent).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::Daemon;
use mirrorlog::client::{Client, ClientConfig};

const CLIENTS: u64 = 16;
const DEPTH: u64 = 4;

fn payload(client: u64, seq: u64) -> Vec<u8> {
    common::tagged_payload(client, seq, 1024)
}

type Acks = Arc<Mutex<Vec<(u64, u64, u64)>>>; // (lsn, client, seq)

/// Starts the load: CLIENTS clients, each with DEPTH appends in flight.
fn start_load(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    stop: Arc<AtomicBool>,
    acks: Acks,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut handles = Vec::new();
    for c in 0..CLIENTS {
        let (stop, acks, addr) = (stop.clone(), acks.clone(), addr.to_string());
        handles.push(rt.spawn(async move {
            let mut cfg = ClientConfig::new([addr]);
            cfg.request_timeout = Duration::from_secs(60);
            cfg.backoff_max = Duration::from_millis(100);
            let client = Client::connect(cfg).await.expect("connect");
            let mut tasks = Vec::new();
            for d in 0..DEPTH {
                let (client, stop, acks) = (client.clone(), stop.clone(), acks.clone());
                let id = c * DEPTH + d;
                tasks.push(tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let lsn = client
                            .append("default", &payload(id, seq))
                            .await
                            .expect("append (resent until acknowledged)");
                        acks.lock().expect("acks").push((lsn, id, seq));
                    }
                    seq
                }));
            }
            let mut n = 0;
            for t in tasks {
                n += t.await.expect("task");
            }
            n
        }));
    }
    handles
}

/// Reads the whole journal and checks the acknowledged appends.
fn check(addr: &str, acks: &[(u64, u64, u64)]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let found = rt.block_on(async {
        let c = Client::connect(ClientConfig::new([addr.to_string()])).await.expect("connect");
        let mut found: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
        let mut next = 1;
        loop {
            let (recs, n) = c.read("default", next, 10_000, 8 << 20).await.expect("read");
            if recs.is_empty() {
                break;
            }
            for r in recs {
                assert!(r.payload.len() >= 16, "record {} too short", r.lsn);
                let client = u64::from_le_bytes(r.payload[..8].try_into().expect("8"));
                let seq = u64::from_le_bytes(r.payload[8..16].try_into().expect("8"));
                assert_eq!(r.payload, payload(client, seq), "record {} corrupt", r.lsn);
                found.entry((client, seq)).or_default().push(r.lsn);
            }
            next = n;
        }
        found
    });
    let dups: Vec<_> = found.iter().filter(|(_, l)| l.len() > 1).collect();
    assert!(dups.is_empty(), "records written twice: {:?}", &dups[..dups.len().min(5)]);
    for &(lsn, client, seq) in acks {
        match found.get(&(client, seq)) {
            Some(l) => assert_eq!(l, &vec![lsn], "client {client} seq {seq} acknowledged at {lsn}"),
            None => panic!("acknowledged append lost: client {client} seq {seq} lsn {lsn}"),
        }
    }
    // Each client task's sequences are contiguous: nothing skipped.
    let mut max: HashMap<u64, u64> = HashMap::new();
    for &(c, s) in found.keys() {
        let m = max.entry(c).or_default();
        *m = (*m).max(s);
    }
    for (c, m) in max {
        for s in 1..=m {
            assert!(found.contains_key(&(c, s)), "client {c} seq {s} missing below its newest {m}");
        }
    }
}

fn run(kill: impl Fn(&mut Daemon), cycles: usize, network: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start_full(dir.path(), "", Vec::new(), network);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let handles = start_load(&rt, &d.addr, stop.clone(), acks.clone());
    let mut last = 0;
    for _ in 0..cycles {
        // Wait for real progress before each kill.
        let t0 = std::time::Instant::now();
        while acks.lock().expect("acks").len() < last + 300 && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut d);
        last = acks.lock().expect("acks").len();
        std::thread::sleep(Duration::from_millis(200));
        d.spawn();
        d.wait_ready();
    }
    let t0 = std::time::Instant::now();
    while acks.lock().expect("acks").len() < last + 300 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for h in handles {
        sent += rt.block_on(h).expect("client");
    }
    let acks = acks.lock().expect("acks").clone();
    assert_eq!(acks.len() as u64, sent, "every append returned an LSN");
    assert!(acks.len() > 300 * (cycles + 1) - 1, "load made progress: {}", acks.len());
    check(&d.addr, &acks);
    // And once more after a clean restart: what was read is what recovery finds.
    d.restart();
    check(&d.addr, &acks);
}

#[test]
fn sigkill_mid_load_loses_and_duplicates_nothing() {
    run(|d| d.kill9(), 3, "epoll");
}

/// The same with the sockets on io_uring (`server.network = "io_uring"`).
#[test]
fn sigkill_mid_load_io_uring_sockets() {
    run(|d| d.kill9(), 2, "io_uring");
}

#[test]
fn sigterm_drains_cleanly() {
    run(
        |d| {
            let st = d.term();
            assert!(st.success(), "mirrorlogd exit after SIGTERM: {st}\n{}", d.log_text());
            let log = d.log_text();
            assert!(log.contains("drained"), "no clean drain in the log:\n{log}");
        },
        2,
        "epoll",
    );
}

/// Failover across an endpoint list: the first endpoint is dead, the client
/// connects to the second; while it appends, that daemon is SIGKILLed and
/// a daemon is started on the first endpoint's address with the same
/// devices (what an operator's restart elsewhere looks like); the client
/// moves there, resends, and nothing acknowledged is lost or written twice.
#[test]
fn client_fails_over_to_the_next_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(dir.path(), "");
    let dead = format!("127.0.0.1:{}", common::daemon::free_port());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acks, stop, eps) = (acks.clone(), stop.clone(), vec![dead.clone(), d.addr.clone()]);
        rt.spawn(async move {
            let mut cfg = ClientConfig::new(eps);
            cfg.request_timeout = Duration::from_secs(60);
            cfg.backoff_max = Duration::from_millis(100);
            let c = Client::connect(cfg).await.expect("connect skips the dead endpoint");
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let lsn = c.append("default", &payload(0, seq)).await.expect("append");
                acks.lock().expect("acks").push((lsn, 0, seq));
            }
            c.server().0
        })
    };
    let wait_for = |n: usize| {
        let t0 = std::time::Instant::now();
        while acks.lock().expect("acks").len() < n {
            assert!(t0.elapsed() < Duration::from_secs(30), "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(200);
    // Move the appliance to the first endpoint's address.
    d.kill9();
    let port: u16 = dead.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let text = std::fs::read_to_string(&d.config).expect("config");
    let old_port = d.addr.rsplit(':').next().expect("port").to_string();
    std::fs::write(&d.config, text.replace(&format!(":{old_port}\""), &format!(":{port}\""))).expect("config");
    d.addr = dead.clone();
    d.spawn();
    d.wait_ready();
    let n = acks.lock().expect("acks").len();
    wait_for(n + 200);
    stop.store(true, Ordering::Relaxed);
    let served_by = rt.block_on(load).expect("load");
    assert_eq!(served_by, dead, "the client followed the appliance to the other endpoint");
    let acks = acks.lock().expect("acks").clone();
    check(&d.addr, &acks);
}

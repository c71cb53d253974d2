//! Two real daemons on loopback, a primary and its replica (optionally
//! through the fault proxy): durability modes under load, a link cut and
//! healed, a replica killed and restarted, site loss with promotion and
//! client failover, and an old primary that returns with a tail the new
//! one never had. After each, the two sites hold the same records in the
//! same blocks (checked offline, byte by byte, and by `mirrorlog verify`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{pair, pair_via, Daemon};
use mirrorlog::client::{Client, ClientConfig};
use mirrorlog::protocol::{codes, Durability};
use mirrorlog_faultproxy::Proxy;

/// A fault proxy for `pair`'s link, started when the pair asks for it,
/// and where to find it.
type ProxySlot = Arc<Mutex<Option<Proxy>>>;

fn proxied() -> (ProxySlot, impl Fn(&str) -> String) {
    let slot: ProxySlot = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    let via = move |upstream: &str| -> String {
        let p = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream.parse().expect("addr")).expect("proxy");
        let addr = p.local_addr().to_string();
        *s2.lock().expect("proxy") = Some(p);
        addr
    };
    (slot, via)
}

fn payload(client: u64, seq: u64) -> Vec<u8> {
    common::tagged_payload(client, seq, 1024)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ack {
    lsn: u64,
    client: u64,
    seq: u64,
    mode: Durability,
}

struct Load {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<Mutex<Vec<(u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` writers, each with one append in flight, cycling through
    /// `modes`; a failed append is recorded and the writer goes on (with
    /// `retry`, it is sent again until acknowledged, as a broker would).
    /// Writers are numbered from `first` (their records name them).
    fn start(endpoints: &[String], clients: u64, modes: &[Durability], retry: bool, journal: &str) -> Load {
        Self::start_from(0, endpoints, clients, modes, retry, journal)
    }

    fn start_from(
        first: u64,
        endpoints: &[String],
        clients: u64,
        modes: &[Durability],
        retry: bool,
        journal: &str,
    ) -> Load {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in first..first + clients {
            let (stop, acks, errors) = (stop.clone(), acks.clone(), errors.clone());
            let eps = endpoints.to_vec();
            let modes = modes.to_vec();
            let journal = journal.to_string();
            tasks.push(rt.spawn(async move {
                let mut cfg = ClientConfig::new(eps);
                cfg.request_timeout = Duration::from_secs(90);
                cfg.backoff_max = Duration::from_millis(100);
                let client = Client::connect(cfg).await.expect("connect");
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let mode = modes[(c as usize) % modes.len()];
                    loop {
                        match client.append_batch_with(&journal, &[&payload(c, seq)], mode).await {
                            Ok(lsn) => {
                                acks.lock().expect("acks").push(Ack { lsn, client: c, seq, mode });
                                break;
                            }
                            Err(e) => {
                                errors.lock().expect("errors").push((e.code, e.message.clone()));
                                if !retry || stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
            }));
        }
        Load { rt, stop, acks, errors, tasks }
    }

    /// Keeps the journal's mark `behind` records behind the newest ack, as
    /// a consumer would (so a long test does not fill the small devices).
    /// `endpoints`: as the writers', so the marks follow a failover.
    fn keep_marking(&mut self, endpoints: &[String], journal: &str, behind: u64) {
        let (stop, acks, eps, journal) =
            (self.stop.clone(), self.acks.clone(), endpoints.to_vec(), journal.to_string());
        self.tasks.push(self.rt.spawn(async move {
            let mut cfg = ClientConfig::new(eps);
            cfg.backoff_max = Duration::from_millis(100);
            let c = Client::connect(cfg).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let top = acks.lock().expect("acks").iter().map(|a| a.lsn).max().unwrap_or(0);
                if top > behind {
                    let _ = c.set_mark(&journal, top - behind).await;
                }
            }
        }));
    }

    fn acked(&self) -> usize {
        self.acks.lock().expect("acks").len()
    }

    fn wait_acks(&self, n: usize, within: Duration) {
        let t0 = Instant::now();
        while self.acked() < n {
            assert!(t0.elapsed() < within, "only {} of {n} appends acknowledged in {within:?}", self.acked());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> (Vec<Ack>, Vec<(u16, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = self.rt.block_on(t);
        }
        let acks = self.acks.lock().expect("acks").clone();
        let errors = self.errors.lock().expect("errors").clone();
        (acks, errors)
    }
}

/// Waits until the primary reports its replica durable at every journal's end.
fn wait_caught_up(primary: &Daemon, within: Duration) {
    let t0 = Instant::now();
    loop {
        let st = primary.status();
        let r = &st["replication"];
        let behind: Vec<String> = r["journals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["replica_durable"].as_u64() < j["next_lsn"].as_u64())
            .map(|j| j.to_string())
            .collect();
        if r["connected"] == true && behind.is_empty() {
            return;
        }
        if t0.elapsed() >= within {
            // The primary's own account of its sessions, for a failure that
            // does not reproduce.
            let log = primary.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("replica not caught up in {within:?}: {behind:?}\n{st}\nprimary log (end):\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `clients` writers append to `journal` in `mode` until `n` appends were
/// acknowledged; returns the acks once the replica is durable at the end
/// of every journal.
fn acked_and_shipped(primary: &Daemon, clients: u64, mode: Durability, journal: &str, n: usize) -> Vec<Ack> {
    let load = Load::start(std::slice::from_ref(&primary.addr), clients, &[mode], false, journal);
    load.wait_acks(n, Duration::from_secs(60));
    let (acks, _) = load.stop();
    wait_caught_up(primary, Duration::from_secs(30));
    acks
}

/// Waits until the primary has begun more than `than` sessions (a cut the
/// primary has not noticed yet still shows the old one as connected).
fn wait_sessions_above(primary: &Daemon, than: u64, within: Duration) {
    let t0 = Instant::now();
    while primary.status()["replication"]["sessions"].as_u64().unwrap_or(0) <= than {
        assert!(t0.elapsed() < within, "no session after {than} in {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn engine_cfg(devs: &[PathBuf]) -> mirrorlog::Config {
    mirrorlog::Config::new(devs.iter().cloned())
}

/// Every record of every journal, offline: name -> (first, [(lsn, epoch, payload)]).
fn records(devs: &[PathBuf]) -> HashMap<String, Vec<(u64, u64, Vec<u8>)>> {
    let log = mirrorlog::MirrorLog::open(&engine_cfg(devs)).expect("open set");
    let mut out = HashMap::new();
    for name in log.journal_names() {
        let j = log.journal(&name).expect("journal");
        let mut v = Vec::new();
        j.visit(j.info().first_lsn, 1 << 20, |r| {
            v.push((r.lsn, r.epoch, r.payload.to_vec()));
            true
        })
        .expect("visit");
        out.insert(name, v);
    }
    out
}

/// Both sites hold the same records, in the same blocks, and each verifies.
fn assert_sites_equal(a: &[PathBuf], b: &[PathBuf]) {
    for devs in [a, b] {
        let list: Vec<String> = devs.iter().map(|p| p.display().to_string()).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["verify", "--devices", &list.join(",")])
            .output()
            .expect("run verify");
        assert!(
            out.status.success(),
            "verify {list:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ra, rb) = (records(a), records(b));
    let mut names: Vec<&String> = ra.keys().collect();
    names.sort();
    let mut nb: Vec<&String> = rb.keys().collect();
    nb.sort();
    assert_eq!(names, nb, "journals differ");
    for n in names {
        let (x, y) = (&ra[n], &rb[n]);
        // The replica may retain less below the mark; compare what both hold.
        let from = x.first().map(|r| r.0).unwrap_or(0).max(y.first().map(|r| r.0).unwrap_or(0));
        let xs: Vec<_> = x.iter().filter(|r| r.0 >= from).collect();
        let ys: Vec<_> = y.iter().filter(|r| r.0 >= from).collect();
        assert_eq!(xs.len(), ys.len(), "journal {n}: {} records here, {} there", xs.len(), ys.len());
        for (p, q) in xs.iter().zip(ys.iter()) {
            assert!(p == q, "journal {n}: lsn {} differs", p.0);
        }
    }
    // The same blocks: each segment of each journal, up to its tail.
    let la = mirrorlog::MirrorLog::open(&engine_cfg(a)).expect("open a");
    let lb = mirrorlog::MirrorLog::open(&engine_cfg(b)).expect("open b");
    let seg = la.geometry().1;
    for name in la.journal_names() {
        let (ja, jb) = (la.journal(&name).expect("a"), lb.journal(&name).expect("b"));
        let (sa, sb) = (ja.segment_slots(), jb.segment_slots());
        let tail = ja.chain_end().expect("end").tail_off;
        for (k, s) in sa.iter().enumerate() {
            let Some(t) = sb.iter().find(|t| t.1 == s.1) else { continue };
            assert_eq!(s, t, "journal {name}: segment {} in a different slot", s.1);
            let len = if k + 1 == sa.len() { tail } else { seg } as usize;
            let off = (1 << 20) + s.0 * seg;
            assert!(
                common::read_at(&a[0], off, len) == common::read_at(&b[1], off, len),
                "journal {name}: segment {} holds different bytes",
                s.1
            );
        }
    }
}

/// A journal's mark, from the node's status.
fn mark_of(d: &Daemon, journal: &str) -> u64 {
    let st = d.status();
    let js = st["journals"].as_array().expect("journals");
    js.iter().find(|j| j["name"] == journal).and_then(|j| j["mark"].as_u64()).expect("mark")
}

fn check_present_once(devs: &[PathBuf], acks: &[Ack], journal: &str, which: impl Fn(&Ack) -> bool) -> usize {
    let recs = records(devs);
    let recs = &recs[journal];
    let by_lsn: HashMap<u64, &Vec<u8>> = recs.iter().map(|r| (r.0, &r.2)).collect();
    let mut seen: HashMap<(u64, u64), u32> = HashMap::new();
    for r in recs {
        let id = (
            u64::from_le_bytes(r.2[..8].try_into().expect("8")),
            u64::from_le_bytes(r.2[8..16].try_into().expect("8")),
        );
        *seen.entry(id).or_default() += 1;
    }
    let mut n = 0;
    for a in acks.iter().filter(|a| which(a)) {
        let got = by_lsn.get(&a.lsn).unwrap_or_else(|| panic!("acknowledged {a:?} is missing"));
        assert!(**got == payload(a.client, a.seq), "lsn {} holds another record than {a:?}", a.lsn);
        assert_eq!(seen.get(&(a.client, a.seq)), Some(&1), "{a:?} is present more than once");
        n += 1;
    }
    n
}

const JOURNALS: &str = "[[journal]]\nname = \"blocking\"\ndurability = \"remote-durable\"\n\n\
    [[journal]]\nname = \"degrading\"\ndurability = \"remote-durable\"\non_replica_loss = \"degrade\"\n";

#[test]
fn every_mode_under_load_then_both_sites_hold_the_same_blocks() {
    let (mut a, mut b) = pair(JOURNALS, "", None);
    let modes = [Durability::Local, Durability::RemoteReceived, Durability::RemoteDurable];
    let load = Load::start(&[a.d.addr.clone()], 12, &modes, false, "default");
    load.wait_acks(3000, Duration::from_secs(60));
    // A second journal, created while replicating, with a mark set.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let c = Client::connect(ClientConfig::new([a.d.addr.clone()])).await.expect("connect");
        c.create_journal("late").await.expect("create");
        for i in 0..200u64 {
            c.append_batch_with("late", &[&payload(99, i)], Durability::RemoteDurable).await.expect("append");
        }
        c.set_mark("late", 50).await.expect("mark");
    });
    let (acks, errors) = load.stop();
    assert!(errors.is_empty(), "errors: {errors:?}");
    for m in modes {
        assert!(acks.iter().filter(|x| x.mode == m).count() > 500, "mode {m:?} under-exercised");
    }
    wait_caught_up(&a.d, Duration::from_secs(30));
    let st = b.d.status();
    assert_eq!(st["role"], "replica");
    assert_eq!(st["replication"]["connected"], true);
    assert_eq!(b.d.term().code(), Some(0));
    assert_eq!(a.d.term().code(), Some(0));
    assert_sites_equal(&a.devices(), &b.devices());
    // The replica alone holds every acknowledged append (any mode: all
    // were shipped before the sites were stopped).
    let n = check_present_once(&b.devices(), &acks, "default", |_| true);
    assert_eq!(n, acks.len());
    assert_eq!(records(&b.devices())["late"].first().map(|r| r.0), Some(50));
}

#[test]
fn a_link_cut_and_black_holed_under_load_heals_and_catches_up() {
    let (proxy, via) = proxied();
    let (mut a, mut b) = pair(JOURNALS, "backlog_bytes = \"4MiB\"\n", Some(&via));
    let guard = proxy.lock().expect("proxy");
    let p = guard.as_ref().expect("proxy started");
    let mut load = Load::start(&[a.d.addr.clone()], 8, &[Durability::Local], false, "default");
    load.keep_marking(&[a.d.addr.clone()], "default", 5000);
    load.wait_acks(1500, Duration::from_secs(60));
    // Cut: the session ends and starts again from what the replica holds.
    let sessions = a.d.status()["replication"]["sessions"].as_u64().unwrap_or(0);
    p.cut();
    load.wait_acks(3000, Duration::from_secs(60));
    wait_sessions_above(&a.d, sessions, Duration::from_secs(60));
    // A partition that drops bytes silently: frames are lost mid-stream,
    // so the replica must refuse what no longer chains, and the primary's
    // backlog (4 MiB) overflows: catch-up from the segments.
    p.set_blackhole(true);
    let before = load.acked();
    load.wait_acks(before + 6000, Duration::from_secs(60));
    // remote-* appends while the replica is unreachable: `block` fails
    // with replica-timeout, `degrade` is acknowledged as local.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let c = Client::connect(ClientConfig::new([a.d.addr.clone()])).await.expect("connect");
        let e = c.append_batch_with("blocking", &[b"x"], Durability::Default).await.expect_err("must time out");
        assert_eq!(e.code, codes::REPLICA_TIMEOUT, "{e}");
        let t0 = Instant::now();
        c.append_batch_with("degrading", &[b"y"], Durability::Default).await.expect("degrades to local");
        assert!(t0.elapsed() >= Duration::from_millis(1500), "waited for the replica first");
        // Degraded now: the next is acknowledged at once.
        let t0 = Instant::now();
        c.append_batch_with("degrading", &[b"z"], Durability::Default).await.expect("local");
        assert!(t0.elapsed() < Duration::from_millis(1500));
    });
    p.set_blackhole(false);
    let sessions = a.d.status()["replication"]["sessions"].as_u64().unwrap_or(0);
    p.cut();
    load.wait_acks(load.acked() + 2000, Duration::from_secs(60));
    let (acks, errors) = load.stop();
    assert!(errors.is_empty(), "local appends never wait for the replica: {errors:?}");
    wait_sessions_above(&a.d, sessions, Duration::from_secs(60));
    wait_caught_up(&a.d, Duration::from_secs(60));
    let st = a.d.status();
    assert!(st["replication"]["sessions"].as_u64() >= Some(3), "{st}");
    let metrics = a.d.http_get("/metrics");
    assert!(metrics.contains("mirrorlog_replication_degraded_acks_total 2"), "{metrics}");
    drop(guard);
    assert_eq!(b.d.term().code(), Some(0));
    assert_eq!(a.d.term().code(), Some(0));
    assert_sites_equal(&a.devices(), &b.devices());
    let first = records(&b.devices())["default"].first().map(|r| r.0).unwrap_or(0);
    assert!(first > 1, "marks reached the replica");
    check_present_once(&b.devices(), &acks, "default", |x| x.lsn >= first);
}

#[test]
fn a_replica_killed_under_load_restarts_and_catches_up() {
    let (mut a, mut b) = pair("", "", None);
    // Three local writers and one remote-durable writer that gives up on
    // replica-timeout (a resend with a new sequence would write twice).
    let modes = [Durability::Local, Durability::Local, Durability::Local, Durability::RemoteDurable];
    let load = Load::start(&[a.d.addr.clone()], 8, &modes, false, "default");
    load.wait_acks(1000, Duration::from_secs(60));
    for _ in 0..2 {
        b.d.kill9();
        let n = load.acked();
        // remote-durable appends wait (and time out into retries); local ones go on.
        load.wait_acks(n + 500, Duration::from_secs(60));
        b.d.spawn();
        b.d.wait_ready();
        load.wait_acks(load.acked() + 1000, Duration::from_secs(60));
    }
    let (acks, errors) = load.stop();
    assert!(errors.iter().all(|e| e.0 == codes::REPLICA_TIMEOUT), "{errors:?}");
    wait_caught_up(&a.d, Duration::from_secs(60));
    assert_eq!(b.d.term().code(), Some(0));
    assert_eq!(a.d.term().code(), Some(0));
    assert_sites_equal(&a.devices(), &b.devices());
    check_present_once(&a.devices(), &acks, "default", |_| true);
}

#[test]
fn site_loss_promotion_and_client_failover_lose_no_remote_durable_append() {
    // `degrade`: once the primary site is gone the new primary has no
    // replica until the old site returns, and keeps taking appends.
    let (mut a, mut b) = pair(
        "[[journal]]\nname = \"orders\"\ndurability = \"remote-durable\"\non_replica_loss = \"degrade\"\n",
        "",
        None,
    );
    let eps = vec![a.d.addr.clone(), b.d.addr.clone()];
    let mut load = Load::start(&eps, 8, &[Durability::Default], true, "orders");
    // A consumer's marks, following the failover too: the load runs as
    // fast as the machine allows between the steps below, and without
    // them it filled the devices on a fast run (and waited on `full`).
    load.keep_marking(&eps, "orders", 5000);
    load.wait_acks(2000, Duration::from_secs(60));
    // The primary site is lost: process and devices.
    a.d.kill9();
    for d in a.devices() {
        std::fs::remove_file(d).expect("delete device");
    }
    let acked_before = load.acked();
    std::thread::sleep(Duration::from_millis(300));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &b.d.addr, "promote", "--json"])
        .output()
        .expect("promote");
    assert!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(st["role"], "primary");
    // The clients follow the promotion and go on.
    load.wait_acks(acked_before + 2000, Duration::from_secs(90));
    // The old site comes back empty, as a replica of the new primary.
    a.d.set_role("replica");
    a.d.spawn();
    a.d.wait_ready();
    load.wait_acks(load.acked() + 1000, Duration::from_secs(60));
    let (acks, _errors) = load.stop();
    wait_caught_up(&b.d, Duration::from_secs(60));
    let mark = mark_of(&b.d, "orders");
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    // Every append acknowledged as remote-durable, before and after the
    // loss, is on the new primary exactly once (at or above the mark: a
    // consumer released the rest).
    assert!(acks.len() >= acked_before + 3000, "{} acks", acks.len());
    let n = check_present_once(&b.devices(), &acks, "orders", |a| a.lsn >= mark);
    assert!(n >= 3000, "{n} acks at or above the mark {mark}");
    assert_sites_equal(&b.devices(), &a.devices());
}

#[test]
fn an_old_primary_returning_with_a_tail_is_fenced_cut_back_and_caught_up() {
    let (proxy, via) = proxied();
    let (mut a, mut b) = pair("", "", Some(&via));
    let durable_acks = acked_and_shipped(&a.d, 4, Durability::RemoteDurable, "default", 500);
    // The link stops forwarding; the primary goes on alone in local mode:
    // a tail the replica never gets.
    proxy.lock().expect("p").as_ref().expect("p").pause();
    let load = Load::start_from(100, &[a.d.addr.clone()], 4, &[Durability::Local], false, "default");
    load.wait_acks(400, Duration::from_secs(60));
    let (tail_acks, _) = load.stop();
    a.d.kill9();
    proxy.lock().expect("p").as_ref().expect("p").cut();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &b.d.addr, "promote"])
        .output()
        .expect("promote");
    assert!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
    let load = Load::start_from(200, &[b.d.addr.clone()], 4, &[Durability::Local], false, "default");
    load.wait_acks(300, Duration::from_secs(60));
    let (new_acks, _) = load.stop();
    // The old primary restarts as primary, learns of the newer epoch from
    // its peer and becomes its replica; its tail is cut back.
    a.d.spawn();
    a.d.wait_ready();
    let t0 = Instant::now();
    while a.d.status()["role"] != "replica" {
        assert!(t0.elapsed() < Duration::from_secs(20), "old primary not fenced:\n{}", a.d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client that still appends there is refused.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let e = rt.block_on(async {
        let mut cfg = ClientConfig::new([a.d.addr.clone()]);
        cfg.request_timeout = Duration::from_secs(2);
        Client::connect(cfg).await.map(|_| ()).expect_err("the old primary is not primary")
    });
    assert!(matches!(e.code, codes::NOT_PRIMARY | codes::UNAVAILABLE), "{e}");
    wait_caught_up(&b.d, Duration::from_secs(60));
    let st = b.d.status();
    assert!(st["replication"]["truncations"].as_u64() >= Some(1), "the replica was cut back: {st}");
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    assert_sites_equal(&b.devices(), &a.devices());
    // What the old primary wrote alone is gone on both; everything else is there once.
    check_present_once(&a.devices(), &durable_acks, "default", |_| true);
    check_present_once(&a.devices(), &new_acks, "default", |_| true);
    let recs = records(&a.devices());
    let tail_ids: std::collections::HashSet<(u64, u64)> = tail_acks.iter().map(|x| (x.client, x.seq)).collect();
    let kept = recs["default"]
        .iter()
        .filter(|r| {
            let id = (
                u64::from_le_bytes(r.2[..8].try_into().expect("8")),
                u64::from_le_bytes(r.2[8..16].try_into().expect("8")),
            );
            tail_ids.contains(&id)
        })
        .count();
    assert!(kept < tail_acks.len(), "the unreplicated tail was cut back ({kept} of {} kept)", tail_acks.len());
}

#[test]
fn a_planned_switchover_under_load_loses_and_duplicates_nothing() {
    let (mut a, mut b) = pair("", "", None);
    let eps = vec![a.d.addr.clone(), b.d.addr.clone()];
    let load = Load::start(&eps, 6, &[Durability::Local, Durability::RemoteDurable], true, "default");
    load.wait_acks(1500, Duration::from_secs(60));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &a.d.addr, "switchover", "--to", &b.d.addr, "--wait", "30"])
        .output()
        .expect("switchover");
    assert!(
        out.status.success(),
        "switchover: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.d.status()["role"], "replica");
    assert_eq!(b.d.status()["role"], "primary");
    // The clients follow to the new primary, which ships back to A.
    load.wait_acks(load.acked() + 1500, Duration::from_secs(60));
    let (acks, errors) = load.stop();
    assert!(errors.is_empty(), "{errors:?}");
    wait_caught_up(&b.d, Duration::from_secs(30));
    assert!(a.d.status()["epoch"].as_u64() >= Some(1 << 32), "a new term");
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    assert_sites_equal(&b.devices(), &a.devices());
    // Nothing was cut back: a switchover waits until the replica has everything.
    assert_eq!(check_present_once(&b.devices(), &acks, "default", |_| true), acks.len());
}

#[test]
fn slots_freed_by_marks_while_the_link_is_down_are_reused_without_conflict() {
    let (proxy, via) = proxied();
    let (mut a, mut b) = pair("", "", Some(&via));
    let load = Load::start(&[a.d.addr.clone()], 4, &[Durability::Local], false, "default");
    load.wait_acks(3000, Duration::from_secs(60));
    wait_caught_up(&a.d, Duration::from_secs(30));
    let (first_acks, _) = load.stop();
    // The link goes quiet; meanwhile the consumer's marks free the oldest
    // segments and new segments take their slots (the lowest free ones).
    let guard = proxy.lock().expect("p");
    let p = guard.as_ref().expect("p");
    p.pause();
    p.cut();
    // A mark just below what the replica holds: the replica's tail segment
    // stays in the primary's history (so the session continues, no reset),
    // while its older segments' slots are freed and reused here.
    let top = first_acks.iter().map(|x| x.lsn).max().unwrap_or(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let c = Client::connect(ClientConfig::new([a.d.addr.clone()])).await.expect("connect");
        c.set_mark("default", top - 100).await.expect("mark");
    });
    let load = Load::start_from(100, &[a.d.addr.clone()], 4, &[Durability::Local], false, "default");
    load.wait_acks(6000, Duration::from_secs(90));
    let (acks, errors) = load.stop();
    assert!(errors.is_empty(), "{errors:?}");
    p.resume();
    p.cut();
    wait_caught_up(&a.d, Duration::from_secs(60));
    let st = a.d.status();
    assert!(!st["replication"]["last_error"].as_str().unwrap_or("").contains("slot"), "{st}");
    drop(guard);
    assert_eq!(b.d.term().code(), Some(0));
    assert_eq!(a.d.term().code(), Some(0));
    assert_sites_equal(&a.devices(), &b.devices());
    let first = records(&b.devices())["default"].first().map(|r| r.0).unwrap_or(0);
    check_present_once(&b.devices(), &acks, "default", |x| x.lsn >= first);
}

/// A demote that cannot finish (its replica is down) times out, and the node
/// stays primary. An append answered `not-primary` meanwhile must not be
/// overtaken by a later append of the same connection that the node takes
/// once the demote is undone: the client resends the refused one, with its
/// original sequence, after it reconnects, and the daemon would refuse that
/// resend as older than the producer's newest (`sequence-unknown`). So once
/// a connection was told `not-primary`, its later appends are refused too.
#[test]
fn appends_after_a_not_primary_refusal_on_a_connection_are_refused_too() {
    use common::wire::{error_code, raw, read_frame};
    use mirrorlog::protocol::{Op, Request, Response};
    use std::io::Write;

    let (a, mut b) = pair("", "", None);
    b.d.kill9();
    a.d.wait_role("primary", Duration::from_secs(20));
    let addr = a.d.addr.clone();
    let demote = std::thread::spawn(move || {
        mirrorlog::client::admin(&addr, &Request::Demote { sync: true, timeout_ms: 3000 }, Duration::from_secs(20))
    });
    a.d.wait_role("demoting", Duration::from_secs(20));
    let append = |s: &mut std::net::TcpStream, rid: u64, seq: u64, data: &[u8]| {
        let mut out = Vec::new();
        Request::Append {
            journal: "default",
            durability: Durability::Local,
            producer: 77,
            first_seq: seq,
            resend: false,
            writer: None,
            records: vec![data],
        }
        .encode(rid, &mut out);
        s.write_all(&out).expect("write");
        read_frame(s).expect("answer")
    };
    let mut c = raw(&a.d.addr);
    let f = append(&mut c, 1, 10, b"first");
    assert_eq!(error_code(&f), Some(codes::NOT_PRIMARY), "refused while demoting");
    let undone = demote.join().expect("demote thread");
    assert!(undone.is_err(), "the demote cannot finish with its replica down: {undone:?}");
    a.d.wait_role("primary", Duration::from_secs(20));
    // The same connection, after the undo: refused as well.
    let f = append(&mut c, 2, 11, b"second");
    assert_eq!(error_code(&f), Some(codes::NOT_PRIMARY), "a later append of a refused connection");
    // The client reconnects and resends both in order: both are taken.
    let mut c2 = raw(&a.d.addr);
    let mut lsns = Vec::new();
    for (rid, seq, data) in [(1, 10, &b"first"[..]), (2, 11, &b"second"[..])] {
        let f = append(&mut c2, rid, seq, data);
        assert_eq!(error_code(&f), None, "resend of sequence {seq}");
        let frame = mirrorlog::protocol::Frame { opcode: f.0, request_id: f.1, body: &f.2 };
        match Response::decode(&frame, Op::Append) {
            Ok(Response::Appended { first_lsn, .. }) => lsns.push(first_lsn),
            other => panic!("resend of {seq}: {other:?}"),
        }
    }
    assert_eq!(lsns[1], lsns[0] + 1, "written once each, in order");
}

/// Deleting a journal answers every append still waiting on it, the
/// `remote-*` ones waiting for the replica included (`unknown-journal`),
/// instead of dropping them unanswered.
#[test]
fn deleting_a_journal_answers_appends_waiting_for_the_replica() {
    use common::wire::{error_code, raw, read_frame};
    use mirrorlog::protocol::Request;
    use std::io::Write;

    let (a, mut b) = pair("[[journal]]\nname = \"orders\"\n", "", None);
    b.d.kill9();
    let mut c = raw(&a.d.addr);
    let mut out = Vec::new();
    Request::Append {
        journal: "orders",
        durability: Durability::RemoteDurable,
        producer: 0,
        first_seq: 0,
        resend: false,
        writer: None,
        records: vec![&b"waits for a replica that is gone"[..]],
    }
    .encode(1, &mut out);
    c.write_all(&out).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let mut admin = raw(&a.d.addr);
    let mut del = Vec::new();
    Request::DeleteJournal { journal: "orders" }.encode(2, &mut del);
    admin.write_all(&del).expect("write");
    let answer = read_frame(&mut admin).expect("delete answered");
    assert_eq!(error_code(&answer), None, "deleted");
    // Well before the 2 s ack timeout would have answered it.
    c.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let f = read_frame(&mut c).expect("the waiting append is answered at the delete");
    assert_eq!(error_code(&f), Some(7), "unknown-journal");
}

/// What a subscriber received: (lsn, payload) of each record, and the
/// error code that ended it.
type Followed = (Vec<(u64, Vec<u8>)>, Option<u16>);

/// Runs the `mirrorlog` CLI; returns (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorlog")).args(args).output().expect("run mirrorlog");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Appends `n` local records to `endpoint` with a short timeout per try,
/// for `within`; returns what was acknowledged and the error codes seen.
fn try_appends(endpoint: &str, first_client: u64, within: Duration) -> (Vec<Ack>, Vec<u16>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let (mut acks, mut codes_seen) = (Vec::new(), Vec::new());
        let t0 = Instant::now();
        let mut seq = 0;
        while t0.elapsed() < within {
            let mut cfg = ClientConfig::new([endpoint.to_string()]);
            cfg.request_timeout = Duration::from_millis(500);
            match Client::connect(cfg).await {
                Ok(c) => {
                    seq += 1;
                    match c.append_batch_with("default", &[&payload(first_client, seq)], Durability::Local).await {
                        Ok(lsn) => acks.push(Ack { lsn, client: first_client, seq, mode: Durability::Local }),
                        Err(e) => codes_seen.push(e.code),
                    }
                }
                Err(e) => codes_seen.push(e.code),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (acks, codes_seen)
    })
}

/// A pair whose link can be cut both ways (`link.set(true)`: refused and
/// cut; `false`: healed).
struct Link(ProxySlot, ProxySlot);

impl Link {
    fn set(&self, refuse: bool) {
        for p in [&self.0, &self.1] {
            let g = p.lock().expect("proxy");
            let p = g.as_ref().expect("proxy started");
            p.set_refuse(refuse);
            if refuse {
                p.cut();
            }
        }
    }
}

/// The old primary A after a site loss: A wrote `remote-durable` appends
/// (all on B), was SIGKILLed, the link was cut both ways, B was promoted
/// and took `local` appends. A is down.
struct PromotedWhileCutOff {
    a: common::daemon::Site,
    b: common::daemon::Site,
    link: Link,
    durable_acks: Vec<Ack>,
    new_acks: Vec<Ack>,
}

fn promoted_while_cut_off() -> PromotedWhileCutOff {
    let (pa, via_a) = proxied();
    let (pb, via_b) = proxied();
    let (mut a, b) = pair_via("", "", Some(&via_a), Some(&via_b));
    let durable_acks = acked_and_shipped(&a.d, 4, Durability::RemoteDurable, "default", 300);
    a.d.kill9();
    let link = Link(pa, pb);
    link.set(true);
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "promote"]);
    assert!(ok, "promote: {err}");
    let load = Load::start_from(200, std::slice::from_ref(&b.d.addr), 4, &[Durability::Local], false, "default");
    load.wait_acks(200, Duration::from_secs(60));
    let (new_acks, _) = load.stop();
    PromotedWhileCutOff { a, b, link, durable_acks, new_acks }
}

/// Issue 16, item 2: the old primary restarts (as configured, primary)
/// while its promoted peer is unreachable. It used to serve after
/// `startup_wait` and acknowledge appends that the peer's history later
/// cut. It now waits for the peer, takes no append, and follows it once
/// the link heals.
#[test]
fn a_primary_restarting_while_its_promoted_peer_is_unreachable_acknowledges_nothing() {
    let PromotedWhileCutOff { mut a, mut b, link, durable_acks, new_acks } = promoted_while_cut_off();
    // A restarts as configured while it cannot reach B.
    a.d.spawn();
    a.d.wait_ready();
    let (a_acks, seen) = try_appends(&a.d.addr, 300, Duration::from_secs(5));
    assert!(a_acks.is_empty(), "the old primary acknowledged {} appends alone: {:?}", a_acks.len(), &a_acks[..1]);
    assert!(seen.iter().all(|&c| c == codes::NOT_PRIMARY || c == codes::UNAVAILABLE), "{seen:?}");
    assert_eq!(a.d.status()["role"], "waiting-for-peer");
    // The link heals: A learns of B's newer epoch and follows it.
    link.set(false);
    a.d.wait_role("replica", Duration::from_secs(30));
    wait_caught_up(&b.d, Duration::from_secs(60));
    let st = b.d.status();
    assert_eq!(st["replication"]["truncations"], 0, "A had nothing of its own to cut: {st}");
    assert_eq!(st["replication"]["split_brain"], "", "{st}");
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    assert_sites_equal(&b.devices(), &a.devices());
    check_present_once(&b.devices(), &durable_acks, "default", |_| true);
    check_present_once(&b.devices(), &new_acks, "default", |_| true);
    check_present_once(&b.devices(), &a_acks, "default", |_| true);
}

/// Issue 16, item 2, the rule that protects what a forced primary
/// acknowledged: an operator starts the old primary alone
/// (`unreachable_at_start = "serve"`) without knowing its peer was
/// promoted. When the two meet, its tail (a run the new primary never
/// followed) is not cut: both sides report a split brain and keep both
/// histories; the records stay readable on the old primary, now a replica;
/// `mirrorlog discard-diverged` there lets the new primary's history win.
#[test]
fn a_split_brain_is_reported_and_kept_until_an_operator_discards_one_side() {
    let PromotedWhileCutOff { mut a, mut b, link, durable_acks, new_acks } = promoted_while_cut_off();
    // The operator forces A to serve alone.
    let text = std::fs::read_to_string(&a.d.config).expect("config");
    let text = text.replace("role = \"primary\"", "role = \"primary\"\nunreachable_at_start = \"serve\"");
    std::fs::write(&a.d.config, text).expect("config");
    a.d.spawn();
    a.d.wait_ready();
    a.d.wait_role("primary", Duration::from_secs(20));
    let load = Load::start_from(300, &[a.d.addr.clone()], 2, &[Durability::Local], false, "default");
    load.wait_acks(100, Duration::from_secs(60));
    let (forced_acks, _) = load.stop();
    // The link heals: A steps down (B's epoch is newer) but refuses the cut.
    link.set(false);
    a.d.wait_role("replica", Duration::from_secs(30));
    let t0 = Instant::now();
    while a.d.status()["replication"]["split_brain"] == "" || b.d.status()["replication"]["split_brain"] == "" {
        assert!(t0.elapsed() < Duration::from_secs(30), "no split brain reported:\n{}", a.d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(a.d.http_get("/metrics").contains("mirrorlog_replication_split_brain 1"));
    assert!(b.d.http_get("/metrics").contains("mirrorlog_replication_split_brain 1"));
    assert_eq!(b.d.status()["replication"]["truncations"], 0);
    // B restarts and is promoted once more (a new term): its history still
    // does not hold A's forced run, so the refusal stands (a history of
    // "everything up to the last epoch followed" would now cut it).
    b.d.set_role("replica");
    b.d.restart();
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "promote"]);
    assert!(ok, "promote again: {err}");
    let t0 = Instant::now();
    while b.d.status()["replication"]["split_brain"] == "" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no split brain after the second promotion:\n{}",
            b.d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.d.status()["replication"]["truncations"], 0);
    // Every record A acknowledged alone is still there, readable on A.
    let from = forced_acks.iter().map(|x| x.lsn).min().expect("acks");
    let (ok, out, err) = cli(&["--endpoint", &a.d.addr, "read", "--from", &from.to_string()]);
    assert!(ok, "read on the replica: {err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    for x in &forced_acks {
        let line = lines.iter().find(|l| l["lsn"] == x.lsn).unwrap_or_else(|| panic!("lsn {} not readable", x.lsn));
        let hex: String = payload(x.client, x.seq).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(line["hex"], hex.as_str(), "lsn {}", x.lsn);
    }
    // A reader follows A's journal from there (a replica serves it).
    let sub_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let seen: Arc<Mutex<Followed>> = Arc::new(Mutex::new((Vec::new(), None)));
    let (seen2, a_addr) = (seen.clone(), a.d.addr.clone());
    sub_rt.spawn(async move {
        let mut cfg = ClientConfig::new([a_addr]);
        cfg.any_role = true;
        let c = Client::connect(cfg).await.expect("connect to the replica");
        let mut sub = c.subscribe("default", from, 1 << 20).await.expect("subscribe");
        while let Some(r) = sub.next().await {
            match r {
                Ok(r) => seen2.lock().expect("seen").0.push((r.lsn, r.payload)),
                Err(e) => {
                    seen2.lock().expect("seen").1 = Some(e.code);
                    return;
                }
            }
        }
    });
    let t0 = Instant::now();
    while seen.lock().expect("seen").0.len() < forced_acks.len() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the subscription on the replica did not deliver");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The operator decides: B's history wins.
    let (ok, _, err) = cli(&["--endpoint", &a.d.addr, "discard-diverged"]);
    assert!(ok, "discard-diverged: {err}");
    wait_caught_up(&b.d, Duration::from_secs(60));
    // The reader is told its records were cut, never handed B's records at
    // the LSNs it already read.
    let t0 = Instant::now();
    while seen.lock().expect("seen").1.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the subscription went on across the cut-back");
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let (recs, code) = &*seen.lock().expect("seen");
        assert_eq!(*code, Some(12), "not-yet-written: subscribe again");
        let mut by_lsn: HashMap<u64, &Vec<u8>> = HashMap::new();
        for (lsn, p) in recs {
            assert!(by_lsn.insert(*lsn, p).is_none_or(|q| q == p), "lsn {lsn} delivered with two contents");
        }
    }
    drop(sub_rt);
    let st = b.d.status();
    assert!(st["replication"]["truncations"].as_u64() >= Some(1), "{st}");
    assert_eq!(st["replication"]["split_brain"], "", "{st}");
    assert_eq!(a.d.status()["replication"]["split_brain"], "");
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    assert_sites_equal(&b.devices(), &a.devices());
    check_present_once(&b.devices(), &durable_acks, "default", |_| true);
    check_present_once(&b.devices(), &new_acks, "default", |_| true);
}

/// Issue 16, item 9: promotion's epoch arithmetic wrapped: a node at the
/// last term was "promoted" to epoch 0, which `set_epoch` ignored, so it
/// served at its old epoch. It now refuses with a clear error.
#[test]
fn a_promotion_past_the_last_term_is_refused_not_wrapped() {
    let (mut a, mut b) = pair("", "", None);
    b.d.kill9();
    {
        let log = mirrorlog::MirrorLog::open(&engine_cfg(&b.devices())).expect("open b");
        log.set_epoch((0xFFFF_FFFFu64 << 32) | 7).expect("epoch");
    }
    b.d.spawn();
    b.d.wait_ready();
    a.d.kill9();
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "promote"]);
    assert!(!ok, "a promotion past the last term succeeded");
    assert!(err.contains("no term is left"), "{err}");
    let st = b.d.status();
    assert_eq!(st["epoch"], (0xFFFF_FFFFu64 << 32) | 7);
    assert_eq!(st["role"], "replica");
}

/// A replica serves reads of what it holds durably (the DR copy), and
/// refuses appends.
#[test]
fn a_replica_serves_reads_up_to_what_it_holds() {
    let (mut a, mut b) = pair("", "", None);
    let load = Load::start(&[a.d.addr.clone()], 2, &[Durability::RemoteDurable], false, "default");
    load.wait_acks(100, Duration::from_secs(60));
    let (acks, _) = load.stop();
    let (ok, out, err) = cli(&["--endpoint", &b.d.addr, "read", "--from", "1"]);
    assert!(ok, "read on the replica: {err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    for x in &acks {
        let line = lines.iter().find(|l| l["lsn"] == x.lsn).unwrap_or_else(|| panic!("lsn {} not read", x.lsn));
        let hex: String = payload(x.client, x.seq).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(line["hex"], hex.as_str());
    }
    let (ok, out, _) = cli(&["--endpoint", &b.d.addr, "journals"]);
    assert!(ok && out.contains("default"), "{out}");
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "--timeout", "2", "append"]);
    assert!(!ok && err.contains("not-primary"), "an append on the replica: {err}");
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
}

/// The replication metrics of a node: (degraded acks, acknowledged records).
fn degraded_and_acked(d: &Daemon, journal: &str) -> (u64, u64) {
    let m = d.http_get("/metrics");
    let get = |prefix: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get("mirrorlog_replication_degraded_acks_total "),
        get(&format!("mirrorlog_append_records_total{{journal=\"{journal}\"}} ")),
    )
}

/// Issue 16, item 4: `on_replica_loss = "degrade"` left degraded mode only
/// when the replica reached the local durable end at some loop turn, which
/// never happens under steady load: after one outage longer than
/// `ack_timeout`, every later `remote-durable` ack on a busy journal was a
/// local one, with the replica connected and current. It now leaves once
/// the replica holds what was durable here when the journal degraded.
/// (Half the writers append `local` on the same journal, as a busy broker
/// does, and the link has a delay: the durable end here always moves on.)
#[test]
fn a_degraded_journal_waits_for_its_replica_again_once_it_caught_up_under_load() {
    let (proxy, via) = proxied();
    let (mut a, mut b) = pair(
        "[[journal]]\nname = \"deg\"\ndurability = \"remote-durable\"\non_replica_loss = \"degrade\"\n",
        "ack_timeout = \"500ms\"\n",
        Some(&via),
    );
    // A link with a WAN's delay: under load the replica is always some
    // batches behind the local durable end, never level with it.
    proxy
        .lock()
        .expect("p")
        .as_ref()
        .expect("p")
        .set_delay(mirrorlog_faultproxy::Direction::Both, Duration::from_millis(10));
    let mut load = Load::start(&[a.d.addr.clone()], 8, &[Durability::Default, Durability::Local], false, "deg");
    load.keep_marking(&[a.d.addr.clone()], "deg", 5000);
    load.wait_acks(500, Duration::from_secs(60));
    // The link stalls for longer than the ack timeout: the journal degrades.
    proxy.lock().expect("p").as_ref().expect("p").pause();
    let t0 = Instant::now();
    while degraded_and_acked(&a.d, "deg").0 == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "never degraded");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.lock().expect("p").as_ref().expect("p").resume();
    // Under steady load, the replica catches up and stays current.
    let t0 = Instant::now();
    loop {
        let st = a.d.status();
        let j = st["replication"]["journals"].as_array().and_then(|js| js.iter().find(|j| j["name"] == "deg")).cloned();
        if j.as_ref().is_some_and(|j| j["degraded"] == false) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "still degraded with the replica connected: {j:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (d1, n1) = degraded_and_acked(&a.d, "deg");
    std::thread::sleep(Duration::from_secs(2));
    let (d2, n2) = degraded_and_acked(&a.d, "deg");
    let (acks, errors) = load.stop();
    assert!(errors.is_empty(), "{} errors, the first: {:?}", errors.len(), errors.first());
    assert!(n2 > n1 + 100, "the load went on ({n1} -> {n2})");
    assert!(
        (d2 - d1) * 10 < n2 - n1,
        "{} of {} remote-durable acks in 2 s were local-only with the replica current",
        d2 - d1,
        n2 - n1
    );
    wait_caught_up(&a.d, Duration::from_secs(30));
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    let first = records(&b.devices())["deg"].first().map(|r| r.0).unwrap_or(0);
    check_present_once(&b.devices(), &acks, "deg", |x| x.lsn >= first);
}

/// A planned demotion (`demote`, waiting for the replica) that a newer
/// primary fences midway ends with this node a replica. It used to undo
/// the demotion when its wait ran out, and the fenced node went back to
/// primary and acknowledged appends that the newer primary's history cuts.
#[test]
fn a_demotion_overtaken_by_a_newer_primary_never_returns_to_primary() {
    let (pa, via_a) = proxied();
    let (pb, via_b) = proxied();
    let (mut a, mut b) = pair_via("", "", Some(&via_a), Some(&via_b));
    wait_caught_up(&a.d, Duration::from_secs(30));
    // B follows A's run once the stream begins (its first message): until
    // then its history does not hold A's run, and A's later records would
    // be a split brain for a promoted B, not a cut-back.
    let t0 = Instant::now();
    while b.d.status()["epoch"] != a.d.status()["epoch"] {
        assert!(t0.elapsed() < Duration::from_secs(30), "B never took A's epoch");
        std::thread::sleep(Duration::from_millis(20));
    }
    let link = Link(pa, pb);
    link.set(true);
    // A takes local appends that B never gets, so a demotion waits.
    let (before, _) = try_appends(&a.d.addr, 100, Duration::from_secs(1));
    assert!(!before.is_empty(), "A took no local append while cut off");
    // B is promoted meanwhile (a new term, above A's epoch).
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "promote"]);
    assert!(ok, "promote: {err}");
    // The operator demotes A, which waits for its replica...
    let addr = a.d.addr.clone();
    let demote = std::thread::spawn(move || cli(&["--endpoint", &addr, "demote", "--wait", "6"]));
    a.d.wait_role("demoting", Duration::from_secs(5));
    // ...and the link heals: A's sender meets B, which fences it.
    link.set(false);
    let (ok, out, err) = demote.join().expect("demote thread");
    assert!(!ok, "the demotion cannot have succeeded with the sync it promised: {out}");
    assert!(err.contains("fenced"), "the answer says why: {err}");
    // A never serves again at its old epoch.
    let (after, seen) = try_appends(&a.d.addr, 500, Duration::from_secs(3));
    assert!(after.is_empty(), "the fenced node acknowledged {} appends: {:?}", after.len(), &after[..1]);
    assert!(seen.iter().all(|&c| c == codes::NOT_PRIMARY || c == codes::UNAVAILABLE), "{seen:?}");
    a.d.wait_role("replica", Duration::from_secs(30));
    wait_caught_up(&b.d, Duration::from_secs(60));
    assert_eq!(a.d.term().code(), Some(0));
    assert_eq!(b.d.term().code(), Some(0));
    assert_sites_equal(&b.devices(), &a.devices());
}

/// Why `d` says it lacks records its primary acknowledged (empty: it does not).
fn incomplete(d: &Daemon) -> String {
    d.status()["replication"]["incomplete"].as_str().unwrap_or("").to_string()
}

/// A replica site lost and rebuilt on blank devices holds none of what its
/// primary acknowledged `remote-durable` until the catch-up ends. Promoted
/// meanwhile it would lose those records; it refuses (`incomplete`), says
/// so in its status and metrics, and is promotable again, holding every
/// record, once it caught up.
#[test]
fn a_replica_rebuilt_blank_refuses_promotion_until_it_caught_up() {
    let (proxy, via) = proxied();
    let (mut a, mut b) = pair("[[journal]]\nname = \"orders\"\ndurability = \"remote-durable\"\n", "", Some(&via));
    let acks = acked_and_shipped(&a.d, 8, Durability::Default, "orders", 3000);
    // Site B is lost and rebuilt: blank devices, and a slow link so that
    // its catch-up (some 3 MiB) takes a while.
    b.d.kill9();
    for d in b.devices() {
        std::fs::remove_file(d).expect("delete device");
    }
    let bw = |rate| {
        proxy.lock().expect("proxy").as_ref().expect("proxy").set_bandwidth(mirrorlog_faultproxy::Direction::Both, rate)
    };
    bw(Some(100 << 10));
    b.d.spawn();
    b.d.wait_ready();
    let t0 = Instant::now();
    while incomplete(&b.d).is_empty() || b.d.status()["journals"].as_array().is_none_or(|j| j.is_empty()) {
        assert!(t0.elapsed() < Duration::from_secs(30), "B never began its catch-up: {}", b.d.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The primary site fails mid-catch-up: promoting B is refused.
    a.d.kill9();
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "promote"]);
    assert!(!ok, "an incomplete replica was promoted");
    assert!(err.contains("incomplete"), "{err}");
    assert_eq!(b.d.role(), "replica");
    assert!(b.d.http_get("/metrics").contains("mirrorlog_replication_incomplete 1"));
    // Restarted as a configured primary, it waits instead of serving.
    b.d.set_role("primary");
    b.d.restart();
    assert_eq!(b.d.role(), "waiting-for-peer");
    let (taken, codes_seen) = try_appends(&b.d.addr, 900, Duration::from_millis(500));
    assert!(taken.is_empty() && codes_seen.contains(&codes::NOT_PRIMARY), "{taken:?} {codes_seen:?}");
    assert!(b.d.log_text().contains("lacks records its primary acknowledged"));
    b.d.set_role("replica");
    b.d.restart();
    // The primary comes back; B catches up and becomes complete.
    bw(None);
    a.d.spawn();
    a.d.wait_ready();
    wait_caught_up(&a.d, Duration::from_secs(60));
    let t0 = Instant::now();
    while !incomplete(&b.d).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "B still incomplete: {}", b.d.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.d.http_get("/metrics").contains("mirrorlog_replication_incomplete 0"));
    // Now the site loss loses nothing.
    a.d.kill9();
    let (ok, _, err) = cli(&["--endpoint", &b.d.addr, "promote"]);
    assert!(ok, "promote: {err}");
    assert_eq!(b.d.term().code(), Some(0));
    let n = check_present_once(&b.devices(), &acks, "orders", |_| true);
    assert_eq!(n, acks.len());
}

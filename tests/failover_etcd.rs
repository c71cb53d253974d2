//! Automatic failover through a real etcd (Debian's etcd-server): the
//! primary holds a lease-bound key; SIGKILLed, its lease expires and the
//! replica takes the key and promotes itself with no operator; clients
//! follow; the old primary returns, finds the key held and comes up as the
//! new primary's replica. Skipped, with the reason printed, without etcd.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{free_port, Daemon};
use mirrorlog::client::{Client, ClientConfig};
use mirrorlog::protocol::{codes, Durability};

struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    url: String,
    ports: (u16, u16),
}

impl Etcd {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_etcd() -> Option<Etcd> {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = Etcd { child: None, dir, url: String::new(), ports: (free_port(), free_port()) };
    spawn_etcd(&mut e)?;
    Some(e)
}

/// Starts (or restarts) etcd on its data folder and ports.
fn spawn_etcd(e: &mut Etcd) -> Option<()> {
    let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let (c, p) = e.ports;
    let client = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = Command::new(bin)
        .args(["--name", "t", "--data-dir"])
        .arg(e.dir.path().join("etcd"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("t={peer}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    e.child = Some(child);
    e.url = client;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(format!("127.0.0.1:{c}")).is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(())
}

/// A pair whose primary holds the key in `etcd` (lease 2 s).
fn pair(etcd: &Etcd) -> (Daemon, Daemon, tempfile::TempDir, tempfile::TempDir) {
    let (a, b) = common::daemon::pair(
        "[[journal]]\nname = \"orders\"\ndurability = \"remote-durable\"\non_replica_loss = \"degrade\"\n",
        &format!("\n[replication.etcd]\nendpoints = [\"{}\"]\ncluster = \"t1\"\nlease_ttl = \"2s\"\n", etcd.url),
        None,
    );
    (a.d, b.d, a._tmp, b._tmp)
}

/// (lsn, client, seq) of every acknowledged append.
type Acks = Arc<Mutex<Vec<(u64, u64, u64)>>>;

fn payload(client: u64, seq: u64) -> Vec<u8> {
    common::tagged_payload(client, seq, 512)
}

#[test]
fn the_replica_takes_over_when_the_primary_lease_expires() {
    let Some(etcd) = start_etcd() else {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server) or it did not start");
        return;
    };
    let (mut a, mut b, _ta, _tb) = pair(&etcd);
    assert_eq!(a.role(), "primary");
    assert_eq!(b.role(), "replica");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let eps = vec![a.addr.clone(), b.addr.clone()];
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (stop, acks, eps) = (stop.clone(), acks.clone(), eps.clone());
        tasks.push(rt.spawn(async move {
            let mut cfg = ClientConfig::new(eps);
            cfg.request_timeout = Duration::from_secs(60);
            cfg.backoff_max = Duration::from_millis(100);
            let client = Client::connect(cfg).await.expect("connect");
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let lsn = client
                    .append_batch_with("orders", &[&payload(c, seq)], Durability::Default)
                    .await
                    .expect("append (resent until acknowledged)");
                acks.lock().expect("acks").push((lsn, c, seq));
            }
        }));
    }
    let count = |acks: &Acks| acks.lock().expect("acks").len();
    let wait_more = |n: usize| {
        let t0 = Instant::now();
        while count(&acks) < n {
            assert!(t0.elapsed() < Duration::from_secs(60), "only {} of {n} acks", count(&acks));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_more(500);
    // The primary dies; nobody runs `promote`.
    a.kill9();
    let t0 = Instant::now();
    b.wait_role("primary", Duration::from_secs(20));
    let took = t0.elapsed();
    assert!(b.log_text().contains("taking over"), "{}", b.log_text());
    wait_more(count(&acks) + 500);
    // The old primary returns: the key is held, so it is the replica.
    a.spawn();
    a.wait_ready();
    a.wait_role("replica", Duration::from_secs(20));
    wait_more(count(&acks) + 300);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    eprintln!("took over {took:?} after the primary died");
    assert_eq!(a.term().code(), Some(0));
    assert_eq!(b.term().code(), Some(0));
    // Every acknowledged append is on the new primary, once.
    let log = mirrorlog::MirrorLog::open(&mirrorlog::Config::new(b.devices())).expect("open");
    let j = log.journal("orders").expect("journal");
    let mut seen = std::collections::HashMap::new();
    let mut by_lsn = std::collections::HashMap::new();
    j.visit(1, 1 << 20, |r| {
        let id = (
            u64::from_le_bytes(r.payload[..8].try_into().expect("8")),
            u64::from_le_bytes(r.payload[8..16].try_into().expect("8")),
        );
        *seen.entry(id).or_insert(0u32) += 1;
        by_lsn.insert(r.lsn, r.payload.to_vec());
        true
    })
    .expect("visit");
    for &(lsn, c, seq) in acks.lock().expect("acks").iter() {
        assert_eq!(by_lsn.get(&lsn), Some(&payload(c, seq)), "lsn {lsn}");
        assert_eq!(seen.get(&(c, seq)), Some(&1), "({c}, {seq}) once");
    }
}

#[test]
fn a_primary_cut_off_from_etcd_steps_down_before_its_lease_can_pass() {
    let Some(mut etcd) = start_etcd() else {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server) or it did not start");
        return;
    };
    let (a, b, _ta, _tb) = pair(&etcd);
    assert_eq!(a.role(), "primary");
    // etcd goes away: the primary cannot renew its lease, so it must stop
    // taking appends (it cannot know whether the replica took over).
    etcd.kill();
    a.wait_role("replica", Duration::from_secs(10));
    assert!(a.log_text().contains("stepping down"), "{}", a.log_text());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let e = rt.block_on(async {
        let mut cfg = ClientConfig::new([a.addr.clone()]);
        cfg.request_timeout = Duration::from_secs(2);
        Client::connect(cfg).await.map(|_| ()).expect_err("nobody is primary")
    });
    assert!(matches!(e.code, codes::UNAVAILABLE | codes::NOT_PRIMARY), "{e}");
    // etcd returns: the lease is gone, the replica takes the key.
    spawn_etcd(&mut etcd).expect("etcd restarts");
    let t0 = Instant::now();
    while a.role() != "primary" && b.role() != "primary" {
        assert!(t0.elapsed() < Duration::from_secs(20), "nobody took over:\n{}\n{}", a.log_text(), b.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = rt.block_on(async {
        Client::connect(ClientConfig::new([a.addr.clone(), b.addr.clone()])).await.expect("a primary")
    });
    rt.block_on(c.append_batch_with("orders", &[b"after"], Durability::Local)).expect("append");
}

/// Issue 16, item 2, the etcd path: the old primary returns after its
/// replica took over (a new term) and that new primary is gone too, its
/// lease expired. The key is free, but a node whose history is older than
/// the newest holder's must not take it: it used to take it at its old,
/// lower term and acknowledge appends that the newer history would cut.
/// It now waits, and follows the newer primary when that one returns.
#[test]
fn a_node_with_an_older_history_does_not_take_a_free_key() {
    let Some(etcd) = start_etcd() else {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server) or it did not start");
        return;
    };
    let (mut a, mut b, _ta, _tb) = pair(&etcd);
    assert_eq!(a.role(), "primary");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let append = |eps: Vec<String>, c: u64, n: u64, timeout: Duration, mode: Durability| -> Vec<(u64, u64, u64)> {
        rt.block_on(async {
            let mut cfg = ClientConfig::new(eps);
            cfg.request_timeout = timeout;
            let Ok(client) = Client::connect(cfg).await else { return Vec::new() };
            let mut acks = Vec::new();
            for seq in 1..=n {
                match client.append_batch_with("orders", &[&payload(c, seq)], mode).await {
                    Ok(lsn) => acks.push((lsn, c, seq)),
                    Err(_) => break,
                }
            }
            acks
        })
    };
    // On both sites before the primary dies (`local` appends not yet
    // shipped would be lost with it: that mode's contract).
    let first = append(vec![a.addr.clone()], 1, 200, Duration::from_secs(30), Durability::RemoteDurable);
    assert_eq!(first.len(), 200);
    a.kill9();
    b.wait_role("primary", Duration::from_secs(20));
    let on_b = append(vec![b.addr.clone()], 2, 100, Duration::from_secs(30), Durability::Local);
    assert_eq!(on_b.len(), 100);
    // The new primary goes too, and its lease expires.
    b.kill9();
    std::thread::sleep(Duration::from_secs(3));
    a.spawn();
    a.wait_ready();
    let t0 = Instant::now();
    let mut alone = Vec::new();
    while t0.elapsed() < Duration::from_secs(4) {
        alone.extend(append(vec![a.addr.clone()], 3, 1, Duration::from_millis(500), Durability::Local));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(alone.is_empty(), "the node with the older history acknowledged {} appends", alone.len());
    assert_eq!(a.role(), "waiting-for-peer");
    // The newer primary's node returns: it takes the key, the other follows.
    b.spawn();
    b.wait_ready();
    b.wait_role("primary", Duration::from_secs(20));
    a.wait_role("replica", Duration::from_secs(20));
    let last = append(vec![a.addr.clone(), b.addr.clone()], 4, 50, Duration::from_secs(30), Durability::Local);
    assert_eq!(last.len(), 50);
    assert_eq!(a.term().code(), Some(0));
    assert_eq!(b.term().code(), Some(0));
    let log = mirrorlog::MirrorLog::open(&mirrorlog::Config::new(b.devices())).expect("open");
    let j = log.journal("orders").expect("journal");
    for (lsn, c, seq) in first.iter().chain(&on_b).chain(&last) {
        assert_eq!(j.read(*lsn).expect("read"), payload(*c, *seq), "lsn {lsn}");
    }
}

/// One thread of a running process, stopped as a debugger stops it
/// (ptrace), while the process's other threads run on.
struct FrozenThread(i32);

impl FrozenThread {
    /// The thread of process `pid` named `name`; `None` if ptrace is not
    /// allowed here.
    fn freeze(pid: i32, name: &str) -> Option<FrozenThread> {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .filter_map(|e| e.ok())
            .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
            .and_then(|e| e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()))
            .unwrap_or_else(|| panic!("no thread {name} in {pid}"));
        // SAFETY: ptrace(2) and waitpid(2) on a thread of our child, with
        // no pointers passed but the status word.
        unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
                return None;
            }
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0, "interrupt {tid}");
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "wait for {tid} to stop");
        }
        Some(FrozenThread(tid))
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        // SAFETY: detaching the thread we seized lets it run on.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

/// The defect `mirrorlog-sim --failover` found, on a real process: a
/// primary whose failover thread is late (starved, stopped; here frozen by
/// ptrace, the rest of the process running) while its lease passes at etcd
/// and its replica takes the key and is promoted (and the link from the
/// replica is down: its receiver thread is frozen too). Its server loop used to
/// take appends by its role alone, which only that thread changes: two
/// nodes took appends at once until the thread's next turn. The server
/// loop now checks on every append that the lease cannot have passed
/// (`failover::may_take_append`, by the monotonic clock): the append is
/// refused `not-primary`, not taken. With `mutate-lease-unchecked` this
/// test fails (the append is taken and answered).
#[test]
fn a_primary_whose_failover_thread_is_late_takes_no_append_once_its_lease_may_have_passed() {
    use common::wire::{error_code, raw, read_frame};
    use mirrorlog::protocol::Request;
    use std::io::Write;

    let Some(etcd) = start_etcd() else {
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server) or it did not start");
        return;
    };
    let (a, b, _ta, _tb) = pair(&etcd);
    a.wait_role("primary", Duration::from_secs(20));
    let append = |c: &mut std::net::TcpStream, rid: u64, durability: Durability, data: &[u8]| {
        let mut out = Vec::new();
        Request::Append {
            journal: "orders",
            durability,
            producer: 0,
            first_seq: 0,
            resend: false,
            writer: None,
            records: vec![data],
        }
        .encode(rid, &mut out);
        c.write_all(&out).expect("write");
        read_frame(c).expect("answer")
    };
    let mut c = raw(&a.addr);
    // Held by the replica too: it follows this run, so it may take over.
    let f = append(&mut c, 1, Durability::RemoteDurable, b"before");
    assert_eq!(error_code(&f), None, "taken while the lease is held");
    let Some(frozen) = FrozenThread::freeze(a.pid(), "repl-etcd") else {
        eprintln!("SKIPPED: ptrace is not allowed here");
        return;
    };
    // Its receiver too, as if the link from B were down: B's session would
    // otherwise fence A as soon as B is promoted.
    let recv = FrozenThread::freeze(a.pid(), "repl-recv").expect("ptrace");
    b.wait_role("primary", Duration::from_secs(20));
    assert_eq!(a.role(), "primary", "the frozen thread is the one that steps it down");
    let f = append(&mut c, 2, Durability::Local, b"after the lease");
    assert_eq!(error_code(&f), Some(codes::NOT_PRIMARY), "an append taken after the lease passed: {f:?}");
    drop(frozen);
    drop(recv);
    a.wait_role("replica", Duration::from_secs(20));
    assert_eq!(b.role(), "primary");
}

//! The fault proxy on real loopback sockets, with an echo server as upstream.
//!
//! Timing is only ever asserted as a lower bound the proxy guarantees (a
//! 50 ms delay each way makes a round trip take at least 100 ms), or as
//! "nothing arrived within N ms", which a correct proxy can never fail.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use mirrorlog_faultproxy::{Config, Direction, Proxy};

/// Generous bound for things that must happen "promptly".
const PROMPTLY: Duration = Duration::from_secs(5);

/// Upstream that echoes every byte back and forwards EOF; counts accepted and
/// finished connections.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (acc, fin) = (accepted.clone(), finished.clone());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            acc.fetch_add(1, Ordering::SeqCst);
            let fin = fin.clone();
            thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut stream, &mut out);
                let _ = out.shutdown(Shutdown::Write);
                fin.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Echo { addr, accepted, finished }
}

fn start(echo: &Echo) -> Proxy {
    Proxy::start("127.0.0.1:0".parse().unwrap(), echo.addr).unwrap()
}

fn connect(proxy: &Proxy) -> TcpStream {
    let s = TcpStream::connect(proxy.local_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(PROMPTLY)).unwrap();
    s
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `data` from another thread (then half-closes) and returns what comes
/// back until EOF.
fn echo_all(stream: &TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = stream.try_clone().unwrap();
    let data = data.to_vec();
    let sender = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&*stream).read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

/// One small request/response through the echo server.
fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// True when nothing at all can be read for `wait` and the connection is still open.
fn silent_for(stream: &TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    let r = (&*stream).read(&mut b);
    stream.set_read_timeout(Some(PROMPTLY)).unwrap();
    matches!(r, Err(ref e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

/// True when the peer closed the connection (EOF or reset) within `PROMPTLY`.
fn closed_promptly(stream: &TcpStream) -> bool {
    stream.set_read_timeout(Some(PROMPTLY)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match (&*stream).read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // leftovers in flight before the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true, // reset
        }
    }
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bytes_pass_through_unchanged() {
    let echo = echo_server();
    let proxy = start(&echo);
    let data = random_bytes(1 << 20, 0x1234_5678);
    let s = connect(&proxy);
    let back = echo_all(&s, &data);
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
    // The half-close travelled through the proxy and back.
    eventually("connection finished", || proxy.stats().connections_open == 0);
    assert_eq!(echo.finished.load(Ordering::SeqCst), 1);
}

#[test]
fn many_connections_at_once() {
    let echo = echo_server();
    let proxy = start(&echo);
    let workers: Vec<_> = (0..8u64)
        .map(|i| {
            let addr = proxy.local_addr();
            thread::spawn(move || {
                let data = random_bytes(256 << 10, i + 1);
                let s = TcpStream::connect(addr).unwrap();
                assert!(echo_all(&s, &data) == data);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let st = proxy.stats();
    assert_eq!(st.connections_accepted, 8);
    assert_eq!(st.bytes_client_to_server, 8 * (256 << 10));
}

#[test]
fn delay_adds_latency_each_way() {
    let echo = echo_server();
    let proxy = start(&echo);
    let mut s = connect(&proxy);
    round_trip(&mut s, b"warm");
    proxy.set_delay(Direction::Both, Duration::from_millis(50));
    for _ in 0..3 {
        let t = Instant::now();
        round_trip(&mut s, b"ping");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(100), "round trip took only {rtt:?}");
    }
    // One direction only.
    proxy.set_delay(Direction::Both, Duration::ZERO);
    proxy.set_delay(Direction::ServerToClient, Duration::from_millis(60));
    let t = Instant::now();
    round_trip(&mut s, b"pong");
    assert!(t.elapsed() >= Duration::from_millis(60));
}

#[test]
fn delay_preserves_order_of_small_writes() {
    let echo = echo_server();
    let proxy = start(&echo);
    proxy.set_delay(Direction::Both, Duration::from_millis(30));
    let s = connect(&proxy);
    let mut w = s.try_clone().unwrap();
    let n: u32 = 5000;
    let sender = thread::spawn(move || {
        for i in 0..n {
            w.write_all(&i.to_be_bytes()).unwrap();
            if i % 500 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    // Change the delay while bytes are in flight: order must still hold.
    thread::sleep(Duration::from_millis(10));
    proxy.set_delay(Direction::ClientToServer, Duration::ZERO);
    proxy.set_delay(Direction::ServerToClient, Duration::from_millis(5));
    let mut r = s.try_clone().unwrap();
    let mut buf = vec![0u8; 4 * n as usize];
    r.read_exact(&mut buf).unwrap();
    sender.join().unwrap();
    for (i, word) in buf.chunks_exact(4).enumerate() {
        assert_eq!(u32::from_be_bytes(word.try_into().unwrap()), i as u32, "out of order at {i}");
    }
}

#[test]
fn bandwidth_cap_slows_a_transfer() {
    let echo = echo_server();
    let proxy = start(&echo);
    proxy.set_bandwidth(Direction::Both, Some(2 << 20));
    let data = random_bytes(1 << 20, 99);
    let s = connect(&proxy);
    let t = Instant::now();
    let back = echo_all(&s, &data);
    let took = t.elapsed();
    assert!(back == data);
    assert!(took >= Duration::from_millis(400), "1 MiB at 2 MiB/s took only {took:?}");
    // Lifting the cap applies to the next transfer.
    proxy.set_bandwidth(Direction::Both, None);
    let s = connect(&proxy);
    assert!(echo_all(&s, &data) == data);
}

#[test]
fn bandwidth_cap_one_direction() {
    let echo = echo_server();
    let proxy = start(&echo);
    proxy.set_bandwidth(Direction::ServerToClient, Some(1 << 20));
    let data = random_bytes(512 << 10, 7);
    let s = connect(&proxy);
    let t = Instant::now();
    assert!(echo_all(&s, &data) == data);
    assert!(t.elapsed() >= Duration::from_millis(400));
}

#[test]
fn cut_closes_open_connections_and_new_ones_work() {
    let echo = echo_server();
    let proxy = start(&echo);
    let mut a = connect(&proxy);
    let mut b = connect(&proxy);
    round_trip(&mut a, b"hello");
    round_trip(&mut b, b"hello");
    assert_eq!(proxy.stats().connections_open, 2);
    proxy.cut();
    assert!(closed_promptly(&a), "client did not see EOF or reset");
    assert!(closed_promptly(&b), "client did not see EOF or reset");
    // The upstream side was closed too.
    eventually("upstream saw the cut", || echo.finished.load(Ordering::SeqCst) == 2);
    eventually("no open connections", || proxy.stats().connections_open == 0);
    let mut c = connect(&proxy);
    round_trip(&mut c, b"after the cut");
}

#[test]
fn cut_while_paused_and_full() {
    let echo = echo_server();
    let proxy = Proxy::start_with(
        "127.0.0.1:0".parse().unwrap(),
        echo.addr,
        Config { max_buffer: 16 << 10, ..Config::default() },
    )
    .unwrap();
    let s = connect(&proxy);
    proxy.pause();
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = vec![7u8; 64 << 10];
        while w.write_all(&chunk).is_ok() {}
    });
    eventually("queue filled", || proxy.stats().bytes_buffered > 0);
    proxy.cut();
    assert!(closed_promptly(&s));
    sender.join().unwrap(); // the blocked writer got an error
    eventually("no open connections", || proxy.stats().connections_open == 0);
}

#[test]
fn blackhole_swallows_silently() {
    let echo = echo_server();
    let proxy = start(&echo);
    let mut old = connect(&proxy);
    round_trip(&mut old, b"before");

    proxy.set_blackhole(true);
    // An existing connection: writes succeed, nothing comes back, not closed.
    old.write_all(b"into the void").unwrap();
    assert!(silent_for(&old, Duration::from_millis(300)), "reply or close during blackhole");
    // A new connection is accepted but never reaches the upstream.
    let mut fresh = connect(&proxy);
    fresh.write_all(b"hello?").unwrap();
    assert!(silent_for(&fresh, Duration::from_millis(300)), "reply or close during blackhole");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1, "blackholed connection reached upstream");
    let st = proxy.stats();
    assert_eq!(st.connections_open, 2);
    assert!(st.bytes_swallowed >= 6, "{st:?}");
    assert_eq!(st.bytes_client_to_server, 6, "only the bytes sent before the blackhole were forwarded");

    proxy.set_blackhole(false);
    let mut after = connect(&proxy);
    round_trip(&mut after, b"healed");
    // The old connection is still open and forwards again (its blackholed bytes are gone).
    round_trip(&mut old, b"again");
}

#[test]
fn pause_holds_bytes_and_resume_delivers_them_in_order() {
    let echo = echo_server();
    let proxy = start(&echo);
    let mut s = connect(&proxy);
    round_trip(&mut s, b"x");
    let before = proxy.stats();
    proxy.pause();
    let data = random_bytes(200 << 10, 5);
    s.write_all(&data).unwrap();
    assert!(silent_for(&s, Duration::from_millis(300)), "bytes arrived while paused");
    let during = proxy.stats();
    assert_eq!(during.bytes_client_to_server, before.bytes_client_to_server);
    assert_eq!(during.bytes_server_to_client, before.bytes_server_to_client);
    assert_eq!(during.connections_open, 1);
    proxy.resume();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert!(back == data, "bytes after resume differ");
}

/// Bytes that fit in the kernel's socket buffers between a client and the
/// proxy at most (send buffer of the client plus receive buffer of the proxy).
fn kernel_buffer_bound() -> usize {
    let max_of = |path: &str| -> usize {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().last().and_then(|v| v.parse().ok()))
            .unwrap_or(32 << 20)
    };
    let sum = max_of("/proc/sys/net/ipv4/tcp_wmem") + max_of("/proc/sys/net/ipv4/tcp_rmem");
    sum.max(max_of("/proc/sys/net/core/wmem_max") + max_of("/proc/sys/net/core/rmem_max"))
}

#[test]
fn pause_applies_back_pressure_with_bounded_memory() {
    let echo = echo_server();
    let max_buffer = 64 << 10;
    let proxy =
        Proxy::start_with("127.0.0.1:0".parse().unwrap(), echo.addr, Config { max_buffer, ..Config::default() })
            .unwrap();
    let s = connect(&proxy);
    proxy.pause();
    // More than the kernel can buffer: without back-pressure from the proxy
    // the sender would finish quickly.
    let total = kernel_buffer_bound() + (8 << 20);
    let (done_tx, done_rx) = mpsc::channel();
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut sent = 0usize;
        let mut i = 0u64;
        while sent < total {
            let block = random_bytes((total - sent).min(1 << 20), 1000 + i);
            w.write_all(&block).unwrap();
            sent += block.len();
            i += 1;
        }
        w.shutdown(Shutdown::Write).unwrap();
        done_tx.send(()).unwrap();
    });
    eventually("proxy buffer filled", || proxy.stats().bytes_buffered == max_buffer as u64);
    thread::sleep(Duration::from_millis(500));
    assert!(done_rx.try_recv().is_err(), "sender finished while the proxy was paused: no back-pressure");
    let st = proxy.stats();
    assert!(st.bytes_buffered <= 2 * max_buffer as u64, "{st:?}");
    assert_eq!(st.bytes_client_to_server, 0);

    proxy.resume();
    let mut back = Vec::with_capacity(total);
    (&s).read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    assert_eq!(back.len(), total);
    let mut expected_off = 0;
    let mut i = 0u64;
    while expected_off < total {
        let block = random_bytes((total - expected_off).min(1 << 20), 1000 + i);
        assert!(back[expected_off..expected_off + block.len()] == block[..], "block {i} differs");
        expected_off += block.len();
        i += 1;
    }
}

#[test]
fn refuse_closes_new_connections_at_once() {
    let echo = echo_server();
    let proxy = start(&echo);
    let mut old = connect(&proxy);
    round_trip(&mut old, b"before");
    proxy.set_refuse(true);
    let refused = connect(&proxy);
    assert!(closed_promptly(&refused), "refused connection stayed open");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1, "refused connection reached upstream");
    // Open connections are not affected.
    round_trip(&mut old, b"still here");
    let st = proxy.stats();
    assert_eq!(st.connections_refused, 1);
    assert_eq!(st.connections_accepted, 2);
    proxy.set_refuse(false);
    let mut ok = connect(&proxy);
    round_trip(&mut ok, b"welcome back");
}

#[test]
fn stats_count_bytes_and_connections() {
    let echo = echo_server();
    let proxy = start(&echo);
    assert_eq!(proxy.stats(), Default::default());
    let up = random_bytes(10_000, 3);
    let s = connect(&proxy);
    assert!(echo_all(&s, &up) == up);
    drop(s);
    eventually("byte counters settle", || {
        let st = proxy.stats();
        st.bytes_client_to_server == 10_000 && st.bytes_server_to_client == 10_000
    });
    eventually("connection closed", || proxy.stats().connections_open == 0);
    let st = proxy.stats();
    assert_eq!(st.connections_accepted, 1);
    assert_eq!(st.bytes_swallowed, 0);
    assert_eq!(st.bytes_buffered, 0);
    assert_eq!(st.upstream_connect_failures, 0);
    assert!(st.to_string().contains("c2s_bytes=10000"), "{st}");
}

#[test]
fn unreachable_upstream_closes_the_client() {
    // A port that is bound but not listening refuses connections, and stays
    // reserved for the test.
    let reserved = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let dead = reserved.local_addr().unwrap().as_socket().unwrap();
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), dead).unwrap();
    let s = connect(&proxy);
    assert!(closed_promptly(&s));
    eventually("failure counted", || proxy.stats().upstream_connect_failures == 1);
    eventually("connection gone", || proxy.stats().connections_open == 0);
}

#[test]
fn drop_closes_listener_and_connections() {
    let echo = echo_server();
    let proxy = start(&echo);
    let addr = proxy.local_addr();
    let mut s = connect(&proxy);
    round_trip(&mut s, b"hi");
    proxy.pause();
    s.write_all(b"held").unwrap();
    drop(proxy);
    assert!(closed_promptly(&s));
    assert!(TcpStream::connect(addr).is_err(), "listener still accepting after drop");
    eventually("upstream side closed", || echo.finished.load(Ordering::SeqCst) == 1);
}

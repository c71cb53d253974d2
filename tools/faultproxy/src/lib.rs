//! # mirrorlog-faultproxy
//!
//! A user-space TCP fault proxy for integration tests (there is no `tc netem`
//! on the test machines). A [`Proxy`] listens on a local address and forwards
//! every accepted connection to one upstream address, while the test injects
//! faults at run time: one-way delay, a bandwidth cap, cutting all
//! connections, a silent partition (blackhole), refusing new connections and
//! pausing forwarding.
//!
//! ```no_run
//! use mirrorlog_faultproxy::{Direction, Proxy};
//! use std::time::Duration;
//! # fn main() -> std::io::Result<()> {
//! let upstream = "127.0.0.1:7400".parse().unwrap();
//! let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream)?;
//! // point the replica at proxy.local_addr() instead of the upstream
//! proxy.set_delay(Direction::Both, Duration::from_millis(20));
//! proxy.set_bandwidth(Direction::ClientToServer, Some(1 << 20));
//! proxy.set_blackhole(true); // partition
//! proxy.set_blackhole(false); // heal
//! proxy.cut(); // drop every open connection
//! # Ok(()) }
//! ```
//!
//! Threads: one acceptor thread per proxy and four threads per forwarded
//! connection (a reader and a writer per direction). Between the reader and
//! the writer of a direction sits a byte-bounded queue ([`Config::max_buffer`],
//! 4 MiB by default): when it is full the reader stops reading, so the sender
//! sees TCP back-pressure. Memory is bounded; nothing is queued without limit.

#![warn(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

pub mod control;

/// Default bound on the bytes buffered per connection and direction: 4 MiB.
pub const DEFAULT_MAX_BUFFER: usize = 4 << 20;
/// Default timeout for connecting to the upstream: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest single read from a socket (and so the largest chunk in a queue).
const READ_CHUNK: usize = 64 << 10;
/// Index of the client-to-server direction in per-direction arrays.
const C2S: usize = 0;
/// Index of the server-to-client direction in per-direction arrays.
const S2C: usize = 1;

/// Which way the bytes flow. "Up" is client to server, "down" server to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting client to the upstream server ("up").
    ClientToServer,
    /// From the upstream server back to the client ("down").
    ServerToClient,
    /// Both directions.
    Both,
}

impl Direction {
    fn indices(self) -> &'static [usize] {
        match self {
            Direction::ClientToServer => &[C2S],
            Direction::ServerToClient => &[S2C],
            Direction::Both => &[C2S, S2C],
        }
    }
}

impl FromStr for Direction {
    type Err = String;

    /// Parses `up` / `c2s` / `client-to-server`, `down` / `s2c` /
    /// `server-to-client` and `both`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "up" | "c2s" | "client-to-server" => Ok(Direction::ClientToServer),
            "down" | "s2c" | "server-to-client" => Ok(Direction::ServerToClient),
            "both" => Ok(Direction::Both),
            _ => Err(format!("unknown direction {s:?} (expected up, down or both)")),
        }
    }
}

/// Tunables fixed at [`Proxy::start_with`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Most bytes held per connection and direction (queued plus being
    /// written). When reached, the proxy stops reading from the sender.
    /// Values below 1 are treated as 1.
    pub max_buffer: usize,
    /// How long to wait for the upstream to accept a connection before the
    /// client connection is reset.
    pub connect_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_buffer: DEFAULT_MAX_BUFFER, connect_timeout: DEFAULT_CONNECT_TIMEOUT }
    }
}

/// Counters of a [`Proxy`], from [`Proxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes written to upstream servers (a write that fails is not counted).
    pub bytes_client_to_server: u64,
    /// Bytes written back to clients (a write that fails is not counted).
    pub bytes_server_to_client: u64,
    /// Bytes read but discarded by the blackhole.
    pub bytes_swallowed: u64,
    /// Bytes currently held in the proxy's queues (all connections, both directions).
    pub bytes_buffered: u64,
    /// Connections accepted on the listening socket (including refused ones).
    pub connections_accepted: u64,
    /// Connections currently open (accepted and not yet finished).
    pub connections_open: u64,
    /// Connections closed at once because refuse mode was on.
    pub connections_refused: u64,
    /// Accepted connections reset because the upstream could not be reached.
    pub upstream_connect_failures: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "c2s_bytes={} s2c_bytes={} swallowed_bytes={} buffered_bytes={} accepted={} open={} refused={} \
             connect_failures={}",
            self.bytes_client_to_server,
            self.bytes_server_to_client,
            self.bytes_swallowed,
            self.bytes_buffered,
            self.connections_accepted,
            self.connections_open,
            self.connections_refused,
            self.upstream_connect_failures
        )
    }
}

/// A running TCP fault proxy. Dropping it closes the listener, resets every
/// open connection and joins all of its threads.
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// A handle on the listening socket (the acceptor thread owns another)
    /// used to wake the acceptor on drop.
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy").field("local_addr", &self.local_addr).field("upstream", &self.shared.upstream).finish()
    }
}

impl Proxy {
    /// Listens on `listen` (port 0 picks a free port, see [`Proxy::local_addr`])
    /// and forwards every accepted connection to `upstream`, with the default
    /// [`Config`]. No fault is active at start.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Proxy> {
        Self::start_with(listen, upstream, Config::default())
    }

    /// [`Proxy::start`] with explicit tunables.
    pub fn start_with(listen: SocketAddr, upstream: SocketAddr, config: Config) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        let wake_handle = listener.try_clone()?;
        let shared = Arc::new(Shared::new(upstream, config));
        let acceptor = thread::Builder::new().name("faultproxy-accept".into()).spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&shared, &listener)
        })?;
        Ok(Proxy { shared, local_addr, listener: wake_handle, acceptor: Some(acceptor) })
    }

    /// The address the proxy listens on (clients connect here).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Sets the one-way latency added in `dir`. Every chunk read from the
    /// sender is held until `delay` after it was read, then written in order;
    /// nothing is dropped. The new value applies at once, also to bytes
    /// already queued. `Duration::ZERO` removes the delay.
    pub fn set_delay(&self, dir: Direction, delay: Duration) {
        {
            let mut s = lock(&self.shared.settings);
            for &i in dir.indices() {
                s.delay[i] = delay;
            }
        }
        self.shared.wake_all();
    }

    /// Caps the throughput in `dir` to `bytes_per_sec` with a token bucket
    /// (burst: 50 ms worth of bytes, at most 256 KiB), shared by all
    /// connections of the proxy like a link would be. `None` removes the cap;
    /// `Some(0)` stalls the direction.
    pub fn set_bandwidth(&self, dir: Direction, bytes_per_sec: Option<u64>) {
        for &i in dir.indices() {
            lock(&self.shared.buckets[i]).set_rate(bytes_per_sec);
        }
        self.shared.wake_all();
    }

    /// Closes every open connection now: both the client and the upstream
    /// see EOF and then a reset. New connections are still accepted.
    pub fn cut(&self) {
        for conn in self.shared.conns_snapshot() {
            conn.abort();
        }
    }

    /// Turns the silent partition on or off. While on, bytes are read and
    /// discarded in both directions of every connection (queued bytes too),
    /// nothing is forwarded and nothing is closed. Connections accepted while
    /// it is on are never connected upstream: they swallow what the client
    /// sends until the client closes them or [`Proxy::cut`], also after the
    /// blackhole is turned off. A connection that lived through a blackhole
    /// has lost bytes and should be treated as broken by the test.
    pub fn set_blackhole(&self, on: bool) {
        lock(&self.shared.settings).blackhole = on;
        self.shared.wake_all();
    }

    /// While on, new connections are accepted and then closed at once with a
    /// reset (as close as a listening port gets to "connection refused").
    /// Open connections are not affected.
    pub fn set_refuse(&self, on: bool) {
        lock(&self.shared.settings).refuse = on;
    }

    /// Stops forwarding in both directions. Connections stay open; bytes are
    /// buffered up to [`Config::max_buffer`] per connection and direction,
    /// then the proxy stops reading and the senders see back-pressure.
    pub fn pause(&self) {
        lock(&self.shared.settings).paused = true;
        self.shared.wake_all();
    }

    /// Restarts forwarding after [`Proxy::pause`]; buffered bytes are
    /// delivered in order.
    pub fn resume(&self) {
        lock(&self.shared.settings).paused = false;
        self.shared.wake_all();
    }

    /// A snapshot of the proxy's counters.
    pub fn stats(&self) -> Stats {
        let sh = &self.shared;
        let conns = sh.conns_snapshot();
        let buffered = conns.iter().flat_map(|c| c.pipes.iter()).map(|p| p.lock().bytes as u64).sum();
        Stats {
            bytes_client_to_server: sh.forwarded[C2S].load(Ordering::Relaxed),
            bytes_server_to_client: sh.forwarded[S2C].load(Ordering::Relaxed),
            bytes_swallowed: sh.swallowed.load(Ordering::Relaxed),
            bytes_buffered: buffered,
            connections_accepted: sh.accepted.load(Ordering::Relaxed),
            connections_open: conns.len() as u64,
            connections_refused: sh.refused.load(Ordering::Relaxed),
            upstream_connect_failures: sh.connect_failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket wakes a blocked accept()
        // with EINVAL. Elsewhere, fall back to a connection to ourselves.
        if SockRef::from(&self.listener).shutdown(Shutdown::Both).is_err() {
            let mut wake = self.local_addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(if wake.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let entries: Vec<Entry> = lock(&self.shared.conns).drain().map(|(_, e)| e).collect();
        for e in &entries {
            e.conn.abort();
        }
        for e in entries {
            if let Some(t) = e.thread {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Internals

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run-time fault settings, shared by all connections.
#[derive(Default)]
struct Settings {
    delay: [Duration; 2],
    paused: bool,
    blackhole: bool,
    refuse: bool,
}

/// What a writer must honour right now.
struct Flow {
    delay: Duration,
    paused: bool,
    blackhole: bool,
}

/// Token bucket for one direction.
struct Bucket {
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket { rate: None, tokens: 0.0, last: Instant::now() }
    }

    /// 50 ms worth of bytes, between 1 byte and 256 KiB.
    fn burst(rate: u64) -> f64 {
        (rate / 20).clamp(1, 256 << 10) as f64
    }

    fn set_rate(&mut self, rate: Option<u64>) {
        self.rate = rate;
        self.last = Instant::now();
        self.tokens = rate.map_or(0.0, Self::burst);
    }

    /// Grants up to `want` (≥ 1) bytes: `Ok(n)` with `1 <= n <= want`, or
    /// `Err(wait)` when the caller must come back after `wait`.
    fn take(&mut self, want: usize) -> Result<usize, Duration> {
        let Some(rate) = self.rate else { return Ok(want) };
        if rate == 0 {
            return Err(Duration::from_secs(1));
        }
        let now = Instant::now();
        let burst = Self::burst(rate);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate as f64).min(burst);
        self.last = now;
        let need = (want as f64).min(burst);
        if self.tokens >= need {
            self.tokens -= need;
            Ok(need as usize)
        } else {
            Err(Duration::from_secs_f64((need - self.tokens) / rate as f64))
        }
    }
}

struct Chunk {
    read_at: Instant,
    data: Vec<u8>,
}

#[derive(Default)]
struct PipeState {
    queue: VecDeque<Chunk>,
    /// Bytes queued plus bytes of the chunk being written: at most `max_buffer`.
    bytes: usize,
    /// The sender closed its side; forward the FIN once the queue is drained.
    eof: bool,
    /// The connection is being torn down: reader and writer stop now.
    closed: bool,
}

/// One direction of a connection: the queue between its reader and writer.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    cv: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        lock(&self.state)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, PipeState>) -> MutexGuard<'a, PipeState> {
        self.cv.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_for<'a>(&self, g: MutexGuard<'a, PipeState>, d: Duration) -> MutexGuard<'a, PipeState> {
        match self.cv.wait_timeout(g, d) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    /// Wakes the reader and writer (taking the lock so no wake-up is lost
    /// between their check of the settings and their wait).
    fn wake(&self) {
        let _g = self.lock();
        self.cv.notify_all();
    }
}

struct Conn {
    client: TcpStream,
    /// Set once the upstream connection is made (kept here so `abort` can reach it).
    server: Mutex<Option<Arc<TcpStream>>>,
    pipes: [Pipe; 2],
    aborted: AtomicBool,
}

impl Conn {
    fn new(client: TcpStream) -> Conn {
        Conn { client, server: Mutex::new(None), pipes: Default::default(), aborted: AtomicBool::new(false) }
    }

    /// Tears the connection down: stops its threads and resets both sockets.
    fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        for p in &self.pipes {
            p.lock().closed = true;
            p.cv.notify_all();
        }
        reset(&self.client);
        if let Some(server) = lock(&self.server).as_ref() {
            reset(server);
        }
    }
}

/// Makes the eventual close send a reset and wakes every thread blocked on the socket.
fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

struct Entry {
    conn: Arc<Conn>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    config: Config,
    settings: Mutex<Settings>,
    buckets: [Mutex<Bucket>; 2],
    conns: Mutex<HashMap<u64, Entry>>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    forwarded: [AtomicU64; 2],
    swallowed: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    connect_failures: AtomicU64,
}

impl Shared {
    fn new(upstream: SocketAddr, mut config: Config) -> Shared {
        config.max_buffer = config.max_buffer.max(1);
        Shared {
            upstream,
            config,
            settings: Mutex::new(Settings::default()),
            buckets: [Mutex::new(Bucket::new()), Mutex::new(Bucket::new())],
            conns: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            swallowed: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }
    }

    fn conns_snapshot(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).values().map(|e| Arc::clone(&e.conn)).collect()
    }

    /// Wakes every reader and writer so they re-read the settings.
    fn wake_all(&self) {
        for conn in self.conns_snapshot() {
            for p in &conn.pipes {
                p.wake();
            }
        }
    }

    fn flow(&self, dir: usize) -> Flow {
        let s = lock(&self.settings);
        Flow { delay: s.delay[dir], paused: s.paused, blackhole: s.blackhole }
    }

    fn blackhole(&self) -> bool {
        lock(&self.settings).blackhole
    }

    fn swallow(&self, n: usize) {
        self.swallowed.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => admit(shared, stream),
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            // Out of file descriptors and the like: do not spin.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream) {
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let (refuse, blackhole) = {
        let s = lock(&shared.settings);
        (s.refuse, s.blackhole)
    };
    if refuse {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        // Closing with a zero linger sends a reset right away.
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    }
    let _ = stream.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn::new(stream));
    // Hold the registry lock across the spawn so the entry is in place before
    // the thread can finish and remove it.
    let mut conns = lock(&shared.conns);
    let spawned = thread::Builder::new().name(format!("faultproxy-conn-{id}")).spawn({
        let shared = Arc::clone(shared);
        let conn = Arc::clone(&conn);
        move || run_conn(&shared, &conn, id, blackhole)
    });
    match spawned {
        Ok(handle) => {
            conns.insert(id, Entry { conn, thread: Some(handle) });
        }
        Err(_) => reset(&conn.client),
    }
}

/// Removes a connection from the registry when its thread ends.
struct Deregister<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Deregister<'_> {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
    }
}

fn run_conn(shared: &Shared, conn: &Conn, id: u64, blackholed: bool) {
    let _deregister = Deregister { shared, id };
    if blackholed {
        swallow_client(shared, conn);
        return;
    }
    let server = match connect_upstream(shared.upstream, shared.config.connect_timeout, &conn.aborted) {
        Ok(s) => Arc::new(s),
        Err(_) => {
            if !conn.aborted.load(Ordering::SeqCst) {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            reset(&conn.client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    {
        let mut slot = lock(&conn.server);
        *slot = Some(Arc::clone(&server));
        if conn.aborted.load(Ordering::SeqCst) {
            reset(&server);
            return;
        }
    }
    let srv: &TcpStream = &server;
    thread::scope(|s| {
        let builder = || thread::Builder::new().name(format!("faultproxy-conn-{id}"));
        let started = builder().spawn_scoped(s, || reader(shared, conn, C2S, &conn.client)).is_ok()
            && builder().spawn_scoped(s, || writer(shared, conn, C2S, srv)).is_ok()
            && builder().spawn_scoped(s, || reader(shared, conn, S2C, srv)).is_ok();
        if started {
            writer(shared, conn, S2C, &conn.client);
        } else {
            conn.abort();
        }
    });
}

/// A connection accepted during a blackhole: read and discard until the
/// client closes or the connection is cut.
fn swallow_client(shared: &Shared, conn: &Conn) {
    let mut buf = vec![0u8; READ_CHUNK];
    while !conn.aborted.load(Ordering::SeqCst) {
        match (&conn.client).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => shared.swallow(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Connects to `addr` without blocking for longer than a few milliseconds at
/// a time, so that a cut or a drop of the proxy is not held up by a slow
/// upstream.
fn connect_upstream(addr: SocketAddr, timeout: Duration, aborted: &AtomicBool) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(50);
    loop {
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        if sock.peer_addr().is_ok() {
            break;
        }
        if aborted.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection cut while connecting upstream"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out connecting upstream"));
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
    sock.set_nonblocking(false)?;
    Ok(sock.into())
}

/// Reads from `src` into the queue of direction `dir`, never holding more
/// than `max_buffer` bytes.
fn reader(shared: &Shared, conn: &Conn, dir: usize, src: &TcpStream) {
    let pipe = &conn.pipes[dir];
    let max = shared.config.max_buffer;
    let mut buf = vec![0u8; READ_CHUNK.min(max)];
    loop {
        let want = {
            let mut st = pipe.lock();
            loop {
                if st.closed {
                    return;
                }
                let space = max.saturating_sub(st.bytes);
                if space > 0 {
                    break space.min(buf.len());
                }
                // Full: stop reading, the sender sees back-pressure.
                st = pipe.wait(st);
            }
        };
        let mut rd = src;
        let n = match rd.read(&mut buf[..want]) {
            Ok(0) => {
                pipe.lock().eof = true;
                pipe.cv.notify_all();
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.abort();
                return;
            }
        };
        if shared.blackhole() {
            shared.swallow(n);
            continue;
        }
        let mut st = pipe.lock();
        if st.closed {
            return;
        }
        st.bytes += n;
        st.queue.push_back(Chunk { read_at: Instant::now(), data: buf[..n].to_vec() });
        pipe.cv.notify_all();
    }
}

/// What the writer may do with the next piece of a chunk.
enum Pace {
    Send(usize),
    Discard,
    Closed,
}

/// Waits until up to `want` bytes may be written in direction `dir`.
fn pace(shared: &Shared, pipe: &Pipe, dir: usize, want: usize) -> Pace {
    let mut st = pipe.lock();
    loop {
        if st.closed {
            return Pace::Closed;
        }
        let flow = shared.flow(dir);
        if flow.blackhole {
            return Pace::Discard;
        }
        if flow.paused {
            st = pipe.wait(st);
            continue;
        }
        let granted = lock(&shared.buckets[dir]).take(want);
        match granted {
            Ok(n) => return Pace::Send(n),
            Err(wait) => st = pipe.wait_for(st, wait),
        }
    }
}

/// Writes the queue of direction `dir` to `dst`, honouring delay, pause,
/// blackhole and bandwidth; forwards the sender's FIN once drained.
fn writer(shared: &Shared, conn: &Conn, dir: usize, dst: &TcpStream) {
    let pipe = &conn.pipes[dir];
    loop {
        let chunk = {
            let mut st = pipe.lock();
            loop {
                if st.closed {
                    return;
                }
                let flow = shared.flow(dir);
                if flow.blackhole {
                    if !st.queue.is_empty() {
                        let dropped: usize = st.queue.drain(..).map(|c| c.data.len()).sum();
                        st.bytes -= dropped;
                        shared.swallow(dropped);
                        pipe.cv.notify_all();
                    }
                    st = pipe.wait(st);
                    continue;
                }
                if flow.paused {
                    st = pipe.wait(st);
                    continue;
                }
                let Some(front) = st.queue.front() else {
                    if st.eof {
                        drop(st);
                        let _ = dst.shutdown(Shutdown::Write);
                        return;
                    }
                    st = pipe.wait(st);
                    continue;
                };
                let due = front.read_at + flow.delay;
                let now = Instant::now();
                if now < due {
                    st = pipe.wait_for(st, due - now);
                    continue;
                }
                if let Some(chunk) = st.queue.pop_front() {
                    break chunk;
                }
            }
        };
        let len = chunk.data.len();
        let mut off = 0;
        while off < len {
            match pace(shared, pipe, dir, len - off) {
                Pace::Send(n) => {
                    // Counted before the write, so that whoever receives the
                    // bytes already sees them in the stats.
                    shared.forwarded[dir].fetch_add(n as u64, Ordering::Relaxed);
                    let mut w = dst;
                    if w.write_all(&chunk.data[off..off + n]).is_err() {
                        shared.forwarded[dir].fetch_sub(n as u64, Ordering::Relaxed);
                        conn.abort();
                        return;
                    }
                    off += n;
                }
                Pace::Discard => {
                    shared.swallow(len - off);
                    break;
                }
                Pace::Closed => return,
            }
        }
        pipe.lock().bytes -= len;
        pipe.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_parses() {
        assert_eq!("up".parse::<Direction>(), Ok(Direction::ClientToServer));
        assert_eq!("DOWN".parse::<Direction>(), Ok(Direction::ServerToClient));
        assert_eq!("both".parse::<Direction>(), Ok(Direction::Both));
        assert!("sideways".parse::<Direction>().is_err());
    }

    #[test]
    fn bucket_paces() {
        let mut b = Bucket::new();
        assert_eq!(b.take(1 << 20), Ok(1 << 20), "no cap: everything at once");
        b.set_rate(Some(1000));
        // burst is 50 bytes: a big request is granted one burst at a time
        assert_eq!(b.take(1 << 20), Ok(50));
        assert!(b.take(50).is_err(), "bucket empty right after a full burst");
        b.set_rate(Some(0));
        assert!(b.take(1).is_err(), "rate 0 stalls");
        b.set_rate(None);
        assert_eq!(b.take(7), Ok(7));
    }
}

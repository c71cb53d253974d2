//! Remote-site replication: a primary ships the blocks it writes to a
//! replica on another site, which writes the same blocks to its own mirror
//! set. docs/replication.md is the operator's guide; the exchange is in
//! `wire.rs`.
//!
//! ```text
//!  primary                                              replica
//!  engine ── claim ──► outbox ──► sender thread ══TCP══► receiver thread
//!   (ShipSink: batches, marks,     (catch-up from        (verifies, applies to
//!    journal changes, bounded)      segments, then        its pipeline, writes
//!                                   the outbox)           with its own Driver)
//!  server loop ◄── wake ◄── ack reader thread ◄══TCP══ Acks (received, durable)
//! ```
//!
//! Roles and epochs: one node is primary (takes appends), the other replica
//! (takes its primary's stream; clients may read). Each node listens on its
//! replication address always; a primary connects to its peer's. When two
//! primaries meet, the higher epoch wins and the other steps down (fenced).
//! Promotion raises the epoch; a primary that starts first asks its peer
//! who is primary, and raises its own epoch only if it may go on as primary
//! (so records written after any restart carry an epoch no earlier run
//! used, and equal CRCs at an LSN mean equal histories).

pub mod etcd;
pub mod failover;
pub mod liveness;
pub mod negotiate;
pub mod outbox;
pub mod primary_session;
pub mod receiver;
pub mod replica_session;
pub mod role;
pub mod sender;
pub mod wire;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clock::{Clock, Mono};
use crate::frames::FrameBuf;
pub use role::{Change, Role};
use wire::Msg;

/// The replica's progress on one journal, as its acks report it.
#[derive(Debug)]
pub struct JRepl {
    /// Every record below this LSN reached the replica's memory.
    pub received: AtomicU64,
    /// Every record below this LSN is durable on the replica's mirrors.
    pub durable: AtomicU64,
    /// When the replica last held everything this node had durable, by
    /// `clock::Mono` (milliseconds).
    pub caught_up_at: AtomicU64,
}

/// Settings (from `[replication]` or the command line).
#[derive(Debug, Clone)]
pub struct ReplConfig {
    pub role: Role,
    /// The peer's replication address (where a primary ships to).
    pub peer: Option<SocketAddr>,
    /// This node's replication address.
    pub listen: Option<SocketAddr>,
    pub name: String,
    /// How long a `remote-*` append waits for the replica before its
    /// journal's `on_replica_loss` applies.
    pub ack_timeout: Duration,
    /// Bound of the outbox (bytes shipped but not yet sent).
    pub backlog_bytes: usize,
    pub connect_timeout: Duration,
    /// A session with no frame from the peer for this long is dead.
    pub peer_timeout: Duration,
    /// A primary at start tries this long to learn from its peer whether a
    /// newer primary exists before it serves.
    pub startup_wait: Duration,
    /// A primary that cannot reach its peer at start serves anyway (an
    /// operator's decision: `--force-primary` or
    /// `unreachable_at_start = "serve"`); otherwise it waits.
    pub serve_unreachable: bool,
    /// Socket buffer sizes (0: the kernel's default).
    pub socket_buffer: usize,
}

/// State shared by the server loop and the replication threads.
pub struct ReplShared {
    /// Changed only through [`ReplShared::change`] (see `role.rs`).
    role: role::RoleCell,
    pub cfg: ReplConfig,
    /// Highest epoch seen from a peer.
    pub seen_epoch: AtomicU64,
    journals: Mutex<HashMap<u64, Arc<JRepl>>>,
    /// A session with the peer is streaming.
    pub connected: AtomicBool,
    /// The receiver has a session open (it may be writing).
    pub applying: AtomicBool,
    pub peer_name: Mutex<String>,
    pub last_error: Mutex<String>,
    /// Journals sent again whole, and cut back, since start.
    pub resyncs: AtomicU64,
    pub truncations: AtomicU64,
    pub sessions: AtomicU64,
    /// When the current (or last) session was accepted by the peer, in
    /// milliseconds since the Unix epoch (primary side).
    pub session_started_ms: AtomicU64,
    /// Bytes read from the segments and sent in this session's catch-up.
    pub catchup_bytes: AtomicU64,
    /// Wakes the server loop (acks arrived, the role changed).
    pub wake: Arc<tokio::sync::Notify>,
    /// The etcd thread took the primary key: the server loop promotes.
    pub promote_requested: AtomicBool,
    /// A node waiting for its peer learned it may serve: the server loop
    /// makes it primary.
    pub serve_requested: AtomicBool,
    /// Set while shutting down: threads end.
    pub stop: AtomicBool,
    /// A split brain this node found (a replica refusing to cut records of
    /// a run its primary never followed, or a primary told so); empty when
    /// none. Cleared when a session streams again.
    pub split_brain: Mutex<String>,
    /// An operator allowed the next session to cut such records
    /// (`mirrorlog discard-diverged`).
    pub discard_diverged: AtomicBool,
    /// The primary's outbox (while primary).
    pub outbox: Mutex<Option<Arc<outbox::Outbox>>>,
    /// Until when (by `clock::Mono`) this node may take appends: the
    /// failover thread's `Keeper::serve_until`; `u64::MAX` without etcd.
    pub serve_until: AtomicU64,
}

impl ReplConfig {
    /// A node in `role` with no peer address (the caller is the link: the
    /// simulators, unit tests): 1 s timeouts, a 1 MiB outbox, no start-up
    /// wait.
    pub fn without_peer(role: Role, name: &str) -> ReplConfig {
        ReplConfig {
            role,
            peer: None,
            listen: None,
            name: name.into(),
            ack_timeout: Duration::from_secs(1),
            backlog_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(1),
            startup_wait: Duration::ZERO,
            serve_unreachable: false,
            socket_buffer: 0,
        }
    }
}

impl ReplShared {
    pub fn new(cfg: ReplConfig) -> Arc<ReplShared> {
        Arc::new(ReplShared {
            role: role::RoleCell::new(role::at_start(cfg.role)),
            cfg,
            seen_epoch: AtomicU64::new(0),
            journals: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            applying: AtomicBool::new(false),
            peer_name: Mutex::new(String::new()),
            last_error: Mutex::new(String::new()),
            resyncs: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            session_started_ms: AtomicU64::new(0),
            catchup_bytes: AtomicU64::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
            promote_requested: AtomicBool::new(false),
            serve_requested: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            split_brain: Mutex::new(String::new()),
            discard_diverged: AtomicBool::new(false),
            outbox: Mutex::new(None),
            serve_until: AtomicU64::new(u64::MAX),
        })
    }

    pub fn role(&self) -> Role {
        self.role.get()
    }

    /// Makes `change` if the role as it is now allows it (`role::next`):
    /// `Ok(from)`, or `Err(now)` with the role that refused it. Wakes the
    /// server loop, which follows every change.
    pub fn change(&self, change: Change) -> Result<Role, Role> {
        let r = self.role.change(change);
        match r {
            Ok(from) => {
                let to = role::next(from, change).map_or("?", Role::name);
                tracing::warn!(from = from.name(), to, why = ?change, "role changed");
                self.wake.notify_one();
            }
            Err(now) => tracing::debug!(role = now.name(), ?change, "role change not applicable"),
        }
        r
    }

    pub fn journal(&self, id: u64) -> Arc<JRepl> {
        self.journals
            .lock()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(JRepl {
                    received: AtomicU64::new(0),
                    durable: AtomicU64::new(0),
                    caught_up_at: AtomicU64::new(Mono.now_ms()),
                })
            })
            .clone()
    }

    /// Forgets what any replica acknowledged (a new primary role starts
    /// from nothing confirmed: counters from an earlier role or history
    /// must not confirm appends).
    pub fn reset_progress(&self) {
        for r in self.journals.lock().values() {
            r.received.store(0, Ordering::Release);
            r.durable.store(0, Ordering::Release);
        }
    }

    pub fn saw_epoch(&self, e: u64) {
        self.seen_epoch.fetch_max(e, Ordering::AcqRel);
    }

    fn error(&self, e: &str) {
        *self.last_error.lock() = e.to_string();
    }
}

/// A framed TCP connection (blocking).
pub struct FrameConn {
    pub stream: TcpStream,
    /// Bytes received and not yet decoded (room for the next read is
    /// zeroed once when the buffer grows, not before every read).
    rbuf: FrameBuf,
    wbuf: Vec<u8>,
    /// The read timeout last set on the socket (set again only on a change).
    timeout: Option<Duration>,
}

pub fn configure(s: &TcpStream, buffer: usize) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(s);
    sock.set_nodelay(true)?;
    sock.set_keepalive(true)?;
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    sock.set_tcp_keepalive(&ka)?;
    if buffer > 0 {
        sock.set_send_buffer_size(buffer)?;
        sock.set_recv_buffer_size(buffer)?;
    }
    Ok(())
}

impl FrameConn {
    pub fn new(stream: TcpStream, max_body: u32) -> FrameConn {
        FrameConn { stream, rbuf: FrameBuf::new(max_body), wbuf: Vec::with_capacity(1 << 20), timeout: None }
    }

    pub fn connect(addr: SocketAddr, timeout: Duration, buffer: usize, max_body: u32) -> std::io::Result<FrameConn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        configure(&s, buffer)?;
        Ok(FrameConn::new(s, max_body))
    }

    pub fn send(&mut self, m: &Msg) -> std::io::Result<()> {
        self.wbuf.clear();
        m.encode(&mut self.wbuf);
        self.stream.write_all(&self.wbuf)
    }

    /// Sends bytes already framed.
    pub fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    /// A frame already received, if a whole one is buffered.
    pub fn try_decoded(&mut self) -> std::io::Result<Option<Msg>> {
        Msg::next(&mut self.rbuf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Reads whatever the socket has (blocking up to its read timeout).
    /// `Ok(false)` on a timeout with nothing read.
    pub fn fill(&mut self) -> std::io::Result<bool> {
        let stream = &mut self.stream;
        match self.rbuf.fill_with(256 << 10, |room| stream.read(room)) {
            Ok(0) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the connection")),
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the socket's read timeout, with a system call only when it
    /// changes. Above 200 ms it is rounded down to 100 ms steps, so a loop
    /// asking for "the same" timeout again does not set it again (it may wake
    /// up to 100 ms early and wait again).
    pub fn set_timeout(&mut self, t: Duration) -> std::io::Result<()> {
        let step = Duration::from_millis(100);
        let t = if t > 2 * step {
            step * (t.as_millis() / step.as_millis()) as u32
        } else {
            t.max(Duration::from_millis(1))
        };
        if self.timeout != Some(t) {
            self.stream.set_read_timeout(Some(t))?;
            self.timeout = Some(t);
        }
        Ok(())
    }

    /// The next message, waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> std::io::Result<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.try_decoded()? {
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the peer in time"));
            }
            self.set_timeout(left)?;
            self.fill()?;
        }
    }
}

/// Largest replication frame body: a batch buffer and its fields.
pub fn max_body(batch_buf: u64) -> u32 {
    (batch_buf + (1 << 16)).min(u32::MAX as u64) as u32
}

/// Makes this node ship as primary: installs the outbox as the engine's
/// sink (before any append is taken) and starts the sender thread. The
/// role must already be `Primary`.
pub fn start_primary(log: &Arc<crate::MirrorLog>, shared: &Arc<ReplShared>) -> std::io::Result<()> {
    if shared.cfg.peer.is_none() {
        return Ok(());
    }
    let ob = install_outbox(log, shared);
    let s = sender::Sender { log: log.clone(), shared: shared.clone(), outbox: ob };
    std::thread::Builder::new().name("repl-send".into()).spawn(move || s.run())?;
    Ok(())
}

/// Installs a new outbox as the engine's shipping sink (before any append
/// of this role is taken): what a primary's sessions stream from.
pub fn install_outbox(log: &crate::MirrorLog, shared: &ReplShared) -> Arc<outbox::Outbox> {
    shared.reset_progress();
    let js: Vec<(u64, u64, u64)> = log.journals().iter().map(|j| (j.id(), j.next_lsn(), j.mark())).collect();
    let ob = Arc::new(outbox::Outbox::new(shared.cfg.backlog_bytes, &js));
    log.set_ship_sink(Some(ob.clone()));
    *shared.outbox.lock() = Some(ob.clone());
    ob
}

/// Whether this node may become primary (promoted, or serving after a
/// wait) without losing records its primary acknowledged `remote-*`:
/// refused, saying why, while it lacks some (`MirrorLog::incomplete`: it
/// is being sent a journal whole, or was never given its primary's
/// journals), unless an operator forces it (`promote --force`).
pub fn may_lead(log: &crate::MirrorLog, force: bool) -> Result<(), String> {
    match log.incomplete() {
        Some(why) if !force && !cfg!(feature = "mutate-promote-incomplete") => Err(format!(
            "this node is incomplete: {why}. Promoted now, it would lose them; let it catch up (bring its primary \
             back), or promote with --force to accept the loss"
        )),
        Some(why) if force => {
            tracing::error!(why, "promoted by force although incomplete: what it lacks is lost");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Makes a node that may serve (its peer accepts it, or an operator or
/// etcd said so) the primary at `epoch`: persists the epoch, then ships.
pub fn serve_as_primary(log: &Arc<crate::MirrorLog>, shared: &Arc<ReplShared>, epoch: u64) -> crate::Result<()> {
    log.begin_run(epoch)?;
    shared.change(Change::Serve).map_err(|now| {
        crate::Error::Io(std::io::Error::other(format!("this node is {} and cannot serve", now.name())))
    })?;
    start_primary(log, shared).map_err(crate::Error::Io)
}

/// A primary waiting for its peer at start (`Role::Waiting`): asks it
/// until it answers. If it takes us as primary (no newer primary exists),
/// serve; if a newer primary exists, become its replica (its sender
/// connects here). An operator's promotion or shutdown ends the wait.
pub fn wait_for_peer(log: &Arc<crate::MirrorLog>, shared: &Arc<ReplShared>) {
    let mut logged = Instant::now();
    while shared.role() == Role::Waiting && !shared.stop.load(Ordering::Acquire) {
        let probe = sender::probe(log, shared, Duration::ZERO);
        // Waiting already: an unreachable peer keeps it waiting whatever
        // the start-up configuration said.
        match role::after_probe(&probe, false) {
            role::AfterProbe::Serve => {
                // The server loop makes the change (no append can come
                // between the role and the shipping sink).
                tracing::warn!("the peer answered and takes this node as primary");
                shared.serve_requested.store(true, Ordering::Release);
                shared.wake.notify_one();
                return;
            }
            role::AfterProbe::Follow(e) => {
                shared.saw_epoch(e);
                if shared.change(Change::Follow).is_ok() {
                    tracing::warn!(epoch = e, "the peer is a newer primary: following it");
                }
                return;
            }
            role::AfterProbe::Wait => {
                if logged.elapsed() > Duration::from_secs(30) {
                    match &probe {
                        sender::Probe::Refused(why) => tracing::error!(
                            why,
                            "the peer refuses this node (another version, set or geometry?): still waiting before \
                             serving (mirrorlog promote to serve now)"
                        ),
                        other => tracing::warn!(why = ?other,
                            "still waiting for the peer before serving (mirrorlog promote to serve now)"),
                    }
                    logged = Instant::now();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops shipping (this node is no longer primary); the sender thread ends
/// on its own when it sees the role.
pub fn stop_primary(log: &crate::MirrorLog, shared: &ReplShared) {
    log.set_ship_sink(None);
    shared.reset_progress();
    if let Some(ob) = shared.outbox.lock().take() {
        ob.deactivate();
        ob.nudge();
    }
}

/// Starts the receiver thread on an already bound listener.
pub fn start_receiver(
    log: &Arc<crate::MirrorLog>,
    shared: &Arc<ReplShared>,
    listener: std::net::TcpListener,
) -> std::io::Result<()> {
    let r = receiver::Receiver { log: log.clone(), shared: shared.clone(), listener };
    std::thread::Builder::new().name("repl-recv".into()).spawn(move || r.run())?;
    Ok(())
}

/// A replica with unformatted devices waits here for its primary's first
/// hello and formats them as a member set of the primary's (same set UUID
/// and geometry), then tells the primary to connect again.
pub fn bootstrap(listener: &std::net::TcpListener, cfg: &mut crate::Config) -> Result<(), String> {
    tracing::info!(listen = ?listener.local_addr().ok(), "replica devices are empty: waiting for the primary to bootstrap them");
    loop {
        let (s, peer) = listener.accept().map_err(|e| format!("replication listener: {e}"))?;
        let mut c = FrameConn::new(s, 1 << 20);
        let h = match c.recv(Duration::from_secs(10)) {
            Ok(Msg::Hello(h)) => h,
            Ok(other) => {
                tracing::warn!(peer = %peer, "expected hello, got {other:?}");
                continue;
            }
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "bootstrap hello");
                continue;
            }
        };
        if h.probe {
            // A primary starting: it may serve (we have nothing).
            let _ = c.send(&Msg::HelloOk { epoch: 0, name: String::new() });
            continue;
        }
        cfg.set_uuid = Some(h.set_uuid);
        cfg.segment_size = h.segment_size;
        cfg.block_size = h.block_size;
        // It holds none of the primary's journals yet: not promotable
        // until the first session lists them (`MirrorLog::incomplete`).
        cfg.unsynced_replica = true;
        let log = crate::MirrorLog::create(cfg).map_err(|e| format!("formatting the replica devices: {e}"))?;
        let (_, _, slots, _) = log.geometry();
        drop(log);
        if slots < h.slot_count {
            let _ = c.send(&Msg::Refused {
                message: format!("replica devices hold {slots} segments, fewer than the primary's {}", h.slot_count),
            });
            return Err(format!("replica devices hold {slots} segments, fewer than the primary's {}", h.slot_count));
        }
        let _ = c.send(&Msg::Refused { message: "replica formatted as a member of this set; connect again".into() });
        tracing::info!(primary = %h.name, segment_size = h.segment_size, "formatted as the primary's replica");
        return Ok(());
    }
}

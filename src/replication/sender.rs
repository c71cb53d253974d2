//! The primary's side: one thread that keeps a session with the replica
//! (connect, the handshake, catch-up from the segments, then the outbox's
//! stream), a reader thread per catch-up that reads the segments ahead,
//! and an ack reader per session. What a session decides and sends is in
//! `primary_session` (sans-IO, with its invariants); this file holds the
//! sockets, the threads and the timers.
//!
//! Invariants:
//! * Catch-up reads only what is durable here, and never holds up appends
//!   (it runs on this thread; the outbox is bounded and drops, never
//!   blocks).
//! * A session that loses a frame, a batch the replica refuses, an outbox
//!   overflow: the session ends and the next one starts from what the
//!   replica says it holds. Nothing is assumed delivered that was not acked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::liveness::Liveness;
use super::negotiate::Pos;
use super::outbox::Outbox;
use super::primary_session::{encode_events, hello, AckBook, CatchUp, Chunk, Next, PrimarySession};
use super::wire::Msg;
use super::{max_body, FrameConn, ReplShared};
use crate::clock::{Clock, Mono};
use crate::MirrorLog;

/// Bytes read from the segments at once during catch-up.
const CATCHUP_READ: usize = 8 << 20;

pub use super::role::Probe;

/// Asks the peer, until `wait` passes, whether we may serve as primary.
pub fn probe(log: &MirrorLog, shared: &ReplShared, wait: Duration) -> Probe {
    let Some(peer) = shared.cfg.peer else { return Probe::Primary };
    let deadline = Instant::now() + wait;
    let mut last;
    let mut refused;
    loop {
        let r = (|| -> std::io::Result<Msg> {
            let mut c = FrameConn::connect(peer, shared.cfg.connect_timeout, 0, 1 << 20)?;
            c.send(&Msg::Hello(hello(log, shared, true)))?;
            c.recv(shared.cfg.connect_timeout.max(Duration::from_secs(2)))
        })();
        match r {
            Ok(Msg::HelloOk { .. }) => return Probe::Primary,
            Ok(Msg::Fenced { epoch, message }) => {
                tracing::warn!(peer = %peer, epoch, message, "the peer has a newer epoch");
                return Probe::Fenced(epoch);
            }
            Ok(Msg::Refused { message }) => (last, refused) = (message, true),
            Ok(other) => (last, refused) = (format!("unexpected answer {other:?}"), false),
            Err(e) => (last, refused) = (e.to_string(), false),
        }
        if Instant::now() >= deadline {
            return if refused { Probe::Refused(last) } else { Probe::Unreachable(last) };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Sender {
    pub log: Arc<MirrorLog>,
    pub shared: Arc<ReplShared>,
    pub outbox: Arc<Outbox>,
}

impl Sender {
    /// Runs sessions until this node is no longer primary or stops.
    pub fn run(self) {
        let Some(peer) = self.shared.cfg.peer else { return };
        let mut backoff = Duration::from_millis(50);
        while self.live() {
            let t0 = Instant::now();
            match self.session(peer) {
                Ok(()) => {}
                Err(e) => {
                    if self.live() {
                        tracing::warn!(peer = %peer, error = %e, "replication session ended");
                    }
                    self.shared.error(&e);
                }
            }
            self.shared.connected.store(false, Ordering::Release);
            self.outbox.deactivate();
            self.shared.wake.notify_one();
            if t0.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(50);
            }
            let until = Instant::now() + backoff;
            while self.live() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        tracing::info!("replication sender stopped");
    }

    fn live(&self) -> bool {
        // Only the sender of the current outbox: a sender left from an
        // earlier primary role (stop_primary took its outbox) ends.
        let current = self.shared.outbox.lock().as_ref().is_some_and(|o| Arc::ptr_eq(o, &self.outbox));
        current && !self.shared.stop.load(Ordering::Acquire) && self.shared.role().ships()
    }

    fn session(&self, peer: std::net::SocketAddr) -> Result<(), String> {
        let cfg = &self.shared.cfg;
        let (_, _, _, batch_buf) = self.log.geometry();
        let mut c = FrameConn::connect(peer, cfg.connect_timeout, cfg.socket_buffer, max_body(batch_buf))
            .map_err(|e| format!("connect to {peer}: {e}"))?;
        let io = |e: std::io::Error| e.to_string();
        let (mut s, hello) = PrimarySession::new(self.log.clone(), self.shared.clone(), self.outbox.clone());
        c.send(&hello).map_err(io)?;
        loop {
            let m = c.recv(s.answer_timeout()).map_err(io)?;
            match s.handle(m, unix_ms())? {
                Next::Send(m) => c.send(&m).map_err(io)?,
                Next::Wait => {}
                Next::Ready => break,
            }
        }

        // Acks from here on are read by their own thread: only it reads (and
        // sets the read timeout) on this socket from now on.
        let alive = Arc::new(AtomicBool::new(true));
        let reader = {
            let stream = c.stream.try_clone().map_err(io)?;
            let (shared, alive) = (self.shared.clone(), alive.clone());
            let book = AckBook::new(self.log.clone(), self.shared.clone());
            let max = max_body(batch_buf);
            std::thread::Builder::new()
                .name("repl-acks".into())
                .spawn(move || ack_reader(FrameConn::new(stream, max), book, &shared, &alive))
                .map_err(io)?
        };
        let res = self.stream(&mut c, &mut s, &alive, batch_buf as usize);
        alive.store(false, Ordering::Release);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
        res
    }

    /// Sends one journal's catch-up. A reader thread reads the next chunk
    /// while this one is sent, so the disk read and the link (and the
    /// replica's writes) overlap.
    fn catch_up(
        &self,
        c: &mut FrameConn,
        cu: &mut CatchUp,
        chunk: usize,
        alive: &AtomicBool,
        buf: &mut Vec<u8>,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let target = cu.target;
        while let Some(start) = cu.next() {
            // One reader per run; a reset (below the mark) starts another.
            let quit = AtomicBool::new(false);
            let j = cu.journal.clone();
            let outcome: Result<Chunk, String> = std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<crate::Result<Vec<crate::ship::Shipment>>>(2);
                let quit = &quit;
                let j = &j;
                scope.spawn(move || {
                    let mut q = start;
                    while q.lsn < target && !quit.load(Ordering::Acquire) {
                        match j.read_shipment(q.lsn, q.crc, q.hint, target, CATCHUP_READ.max(chunk)) {
                            Ok(v) if !v.is_empty() => {
                                if let Some(s) = v.last() {
                                    q = Pos::after(s);
                                }
                                if tx.send(Ok(v)).is_err() {
                                    return;
                                }
                            }
                            // Not durable here yet.
                            Ok(_) => std::thread::sleep(Duration::from_micros(200)),
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                });
                let res = (|| loop {
                    if !alive.load(Ordering::Acquire) || !self.live() {
                        return Err("session ended during catch-up".to_string());
                    }
                    let got = match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(g) => g,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            return Err("the catch-up reader ended early".to_string())
                        }
                    };
                    buf.clear();
                    let step = cu.on_read(got, &self.shared, buf, Mono.now_ms())?;
                    if !buf.is_empty() {
                        c.send_raw(buf).map_err(io)?;
                    }
                    if step != Chunk::More {
                        return Ok(step);
                    }
                })();
                quit.store(true, Ordering::Release);
                // (Dropping the receiver ends a reader blocked on a full channel.)
                drop(rx);
                res
            });
            if outcome? == Chunk::Done {
                break;
            }
        }
        Ok(())
    }

    fn stream(
        &self,
        c: &mut FrameConn,
        s: &mut PrimarySession,
        alive: &AtomicBool,
        chunk: usize,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let mut buf = Vec::with_capacity(2 << 20);
        let (marks, mut cus) = s.catch_ups();
        for m in &marks {
            c.send(m).map_err(io)?;
        }
        for cu in &mut cus {
            self.catch_up(c, cu, chunk, alive, &mut buf)?;
            if let Some(m) = cu.mark() {
                c.send(&m).map_err(io)?;
            }
        }
        let floors = s.floors(&cus);
        s.streaming();
        // The outbox, as it fills.
        let mut events = Vec::new();
        // The heartbeat only: the ack reader's receive timeout is the peer
        // timeout on this side.
        let mut live = Liveness::new(Mono.now_ms(), u64::MAX);
        loop {
            if !alive.load(Ordering::Acquire) {
                return Err("the replica stopped answering".into());
            }
            if !self.live() {
                return Ok(());
            }
            events.clear();
            if self.outbox.take(&mut events, Duration::from_millis(250)).is_err() {
                return Err("replication backlog overflowed; catching up from the segments".into());
            }
            buf.clear();
            encode_events(&mut events, &floors, &mut buf, |b| {
                live.sent(Mono.now_ms());
                c.send_raw(b)
            })
            .map_err(io)?;
            let now = Mono.now_ms();
            if buf.is_empty() && live.heartbeat_due(now) {
                Msg::Ping.encode(&mut buf);
            }
            if !buf.is_empty() {
                c.send_raw(&buf).map_err(io)?;
                live.sent(now);
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (for the status, not for
/// timing: that reads `clock::Mono`).
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Reads the replica's acks until the session ends.
fn ack_reader(mut c: FrameConn, mut book: AckBook, shared: &ReplShared, alive: &AtomicBool) {
    let timeout = shared.cfg.peer_timeout;
    while alive.load(Ordering::Acquire) {
        match c.recv(timeout) {
            Ok(m) => {
                if book.handle(m, Mono.now_ms()).is_err() {
                    break;
                }
            }
            Err(e) => {
                if alive.load(Ordering::Acquire) {
                    tracing::warn!(error = %e, "replication ack stream ended");
                }
                break;
            }
        }
    }
    alive.store(false, Ordering::Release);
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
}

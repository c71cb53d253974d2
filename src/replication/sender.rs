//! The primary's side: one thread that keeps a session with the replica
//! (connect, agree where each journal continues, catch up from the
//! segments, then stream the outbox), and an ack reader per session.
//!
//! Invariants:
//! * Per journal, what is sent is one contiguous chain: from where the
//!   replica's chain ends (after any cut-back or reset), read from the
//!   segments up to the outbox's start for that journal, then the outbox.
//! * Catch-up reads only what is durable here, and never holds up appends
//!   (it runs on this thread; the outbox is bounded and drops, never
//!   blocks).
//! * A session that loses a frame, a batch the replica refuses, an outbox
//!   overflow: the session ends and the next one starts from what the
//!   replica says it holds. Nothing is assumed delivered that was not acked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::negotiate::{Negotiation, Pos, Step};
use super::outbox::{Event, Outbox};
use super::wire::{encode_batch, Hello, Msg, REPL_VERSION};
use super::{max_body, Change, FrameConn, ReplShared};
use crate::protocol::seal_frame;
use crate::ship::ChainEnd;
use crate::{Error, Journal, MirrorLog};

/// Bytes read from the segments at once during catch-up.
const CATCHUP_READ: usize = 8 << 20;

pub use super::role::Probe;

pub fn hello(log: &MirrorLog, shared: &ReplShared, probe: bool) -> Hello {
    let (block_size, segment_size, slot_count, batch_buf) = log.geometry();
    Hello {
        version: REPL_VERSION,
        epoch: log.epoch(),
        history: log.history(),
        probe,
        set_uuid: log.set_uuid(),
        block_size,
        segment_size,
        slot_count,
        batch_buf,
        name: shared.cfg.name.clone(),
    }
}

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
        c.send(&Msg::Hello(hello(&self.log, &self.shared, false))).map_err(io)?;
        match c.recv(cfg.peer_timeout).map_err(io)? {
            Msg::HelloOk { epoch, name } => {
                self.shared.session_started_ms.store(now_ms(), Ordering::Release);
                self.shared.catchup_bytes.store(0, Ordering::Release);
                self.shared.saw_epoch(epoch);
                self.shared.error("");
                *self.shared.peer_name.lock() = name;
            }
            Msg::Fenced { epoch, message } => {
                self.shared.saw_epoch(epoch);
                tracing::error!(epoch, message, "fenced: the peer serves a newer epoch; stepping down");
                let _ = self.shared.change(Change::Fence);
                return Err(format!("fenced by epoch {epoch}"));
            }
            Msg::Refused { message } => return Err(format!("refused: {message}")),
            other => return Err(format!("unexpected answer {other:?}")),
        }
        let snap = self.outbox.activate();
        let journals = self.log.journals();
        c.send(&Msg::Journals(journals.iter().map(|j| (j.id(), j.name().to_string())).collect())).map_err(io)?;
        let ends = match c.recv(cfg.peer_timeout).map_err(io)? {
            Msg::Ends(e) => e,
            Msg::Failed { message } => return Err(format!("replica failed: {message}")),
            Msg::Diverged { message, .. } => return Err(self.diverged(message)),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let mut pos: Vec<(Journal, Pos)> = Vec::new();
        for (id, end) in ends {
            let Some(j) = self.log.journal_by_id(id) else { continue };
            let p = self.negotiate(&mut c, &j, end)?;
            let r = self.shared.journal(id);
            r.received.store(p.lsn, Ordering::Release);
            r.durable.store(p.lsn, Ordering::Release);
            pos.push((j, p));
        }
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(peer = %peer, name = %self.shared.peer_name.lock(), journals = pos.len(), "replication session started");

        // Acks from here on are read by their own thread: only it reads (and
        // sets the read timeout) on this socket from now on.
        let alive = Arc::new(AtomicBool::new(true));
        let reader = {
            let stream = c.stream.try_clone().map_err(io)?;
            let (shared, alive, log) = (self.shared.clone(), alive.clone(), self.log.clone());
            let max = max_body(batch_buf);
            std::thread::Builder::new()
                .name("repl-acks".into())
                .spawn(move || ack_reader(FrameConn::new(stream, max), &shared, &alive, &log))
                .map_err(io)?
        };
        let res = self.stream(&mut c, pos, &snap.claimed, &snap.marks, &alive, batch_buf as usize);
        alive.store(false, Ordering::Release);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
        res
    }

    /// Finds where journal `j` continues on the replica: carries out the
    /// steps of its [`Negotiation`] (sans-IO, `negotiate.rs`) over the link.
    fn negotiate(&self, c: &mut FrameConn, j: &Journal, end: ChainEnd) -> Result<Pos, String> {
        let io = |e: std::io::Error| e.to_string();
        let timeout = self.shared.cfg.peer_timeout * 4;
        let mut n = Negotiation::new(j);
        let mut step = n.begin(j, &end)?;
        loop {
            step = match step {
                Step::Continue(p) => return Ok(p),
                Step::Probe(lsns) => {
                    c.send(&Msg::Probe { journal: j.id(), lsns }).map_err(io)?;
                    match answer(c, timeout).map_err(io)? {
                        Msg::Samples { samples, .. } => n.on_samples(j, &samples)?,
                        other => return Err(format!("unexpected answer to probe {other:?}")),
                    }
                }
                Step::Truncate { keep } => {
                    tracing::warn!(
                        journal = j.name(),
                        replica_next = end.next_lsn,
                        keep,
                        "replica holds records this primary never had: cutting it back"
                    );
                    c.send(&Msg::Truncate { journal: j.id(), keep }).map_err(io)?;
                    let e = match answer(c, timeout).map_err(io)? {
                        Msg::Ends(e) if e.len() == 1 => e[0].1,
                        Msg::Failed { message } => return Err(format!("replica failed to cut back: {message}")),
                        Msg::Diverged { message, .. } => return Err(self.diverged(message)),
                        other => return Err(format!("unexpected answer to truncate {other:?}")),
                    };
                    self.shared.truncations.fetch_add(1, Ordering::Relaxed);
                    n.on_ends(j, &e)?
                }
                Step::Reset { next_lsn, why } => {
                    tracing::warn!(
                        journal = j.name(),
                        replica_next = end.next_lsn,
                        next = next_lsn,
                        why,
                        "replica journal sent again whole"
                    );
                    self.shared.resyncs.fetch_add(1, Ordering::Relaxed);
                    c.send(&Msg::Reset { journal: j.id(), next_lsn }).map_err(io)?;
                    match answer(c, timeout).map_err(io)? {
                        Msg::Ends(e) if e.len() == 1 => n.on_ends(j, &e[0].1)?,
                        Msg::Diverged { message, .. } => return Err(self.diverged(message)),
                        other => return Err(format!("unexpected answer to reset {other:?}")),
                    }
                }
            };
        }
    }

    /// The replica refused a cut-back as a split brain: reported here too
    /// (status, metrics); sessions go on being tried, and are refused the
    /// same way until an operator decides.
    fn diverged(&self, message: String) -> String {
        tracing::error!(message, "the replica holds records of a run this primary never followed: not cut back");
        *self.shared.split_brain.lock() = format!("the replica refused: {message}");
        format!("split brain: {message}")
    }

    /// Sends journal `j` from `p` up to `target`, read from the segments.
    /// A reader thread reads the next chunk while this one is sent, so the
    /// disk read and the link (and the replica's writes) overlap.
    #[allow(clippy::too_many_arguments)]
    fn catch_up(
        &self,
        c: &mut FrameConn,
        j: &Journal,
        mut p: Pos,
        target: u64,
        chunk: usize,
        alive: &AtomicBool,
        buf: &mut Vec<u8>,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let t0 = Instant::now();
        let from = p.lsn;
        let mut bytes = 0u64;
        while p.lsn < target {
            // One reader per run; a reset (below the mark) starts another.
            let quit = AtomicBool::new(false);
            let outcome: Result<Option<u64>, String> = std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<crate::Result<Vec<crate::ship::Shipment>>>(2);
                let quit = &quit;
                let start = p;
                scope.spawn(move || {
                    let mut q = start;
                    while q.lsn < target && !quit.load(Ordering::Acquire) {
                        match j.read_shipment(q.lsn, q.crc, q.hint, target, CATCHUP_READ.max(chunk)) {
                            Ok(v) if !v.is_empty() => {
                                if let Some(s) = v.last() {
                                    q = Pos {
                                        lsn: s.next_lsn,
                                        crc: s.end_crc,
                                        hint: Some((s.seg_seq, s.seg_off + s.bytes.len() as u64)),
                                    };
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
                let res = (|| {
                    loop {
                        if !alive.load(Ordering::Acquire) || !self.live() {
                            return Err("session ended during catch-up".to_string());
                        }
                        let got = match rx.recv_timeout(Duration::from_millis(200)) {
                            Ok(g) => g,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        };
                        match got {
                            Ok(v) => {
                                buf.clear();
                                for s in &v {
                                    encode_batch(buf, &s.view());
                                    bytes += s.bytes.len() as u64;
                                    self.shared.catchup_bytes.fetch_add(s.bytes.len() as u64, Ordering::Relaxed);
                                }
                                c.send_raw(buf).map_err(io)?;
                                if let Some(s) = v.last() {
                                    p = Pos {
                                        lsn: s.next_lsn,
                                        crc: s.end_crc,
                                        hint: Some((s.seg_seq, s.seg_off + s.bytes.len() as u64)),
                                    };
                                }
                            }
                            // Reclaimed while we were behind: send what is retained.
                            Err(Error::BelowMark { .. }) => {
                                return Ok(Some(j.segment_starts().first().copied().unwrap_or(u64::MAX)))
                            }
                            Err(Error::UnknownJournal(_)) => return Ok(Some(u64::MAX)),
                            // A journal whose write failed takes no more
                            // writes: nothing more of it will come; go on
                            // with the others.
                            Err(e) if j.failed() => {
                                tracing::error!(journal = j.name(), error = %e, "journal failed here: its catch-up stops");
                                return Ok(Some(u64::MAX));
                            }
                            Err(e) => return Err(format!("catch-up read of {}: {e}", j.name())),
                        }
                    }
                    Ok(None)
                })();
                quit.store(true, Ordering::Release);
                // (Dropping the receiver ends a reader blocked on a full channel.)
                drop(rx);
                res
            });
            match outcome? {
                None => {}
                Some(u64::MAX) => return Ok(()),
                Some(o) => {
                    tracing::warn!(
                        journal = j.name(),
                        next = o,
                        "catch-up fell below the mark: journal sent again whole"
                    );
                    self.shared.resyncs.fetch_add(1, Ordering::Relaxed);
                    c.send(&Msg::Reset { journal: j.id(), next_lsn: o }).map_err(io)?;
                    p = Pos { lsn: o, crc: 0, hint: None };
                }
            }
        }
        if p.lsn > from {
            let s = t0.elapsed().as_secs_f64();
            tracing::info!(
                journal = j.name(),
                from,
                to = p.lsn,
                bytes,
                seconds = s,
                mib_per_s = bytes as f64 / (1 << 20) as f64 / s.max(1e-9),
                "catch-up done"
            );
        }
        Ok(())
    }

    fn stream(
        &self,
        c: &mut FrameConn,
        pos: Vec<(Journal, Pos)>,
        claimed: &HashMap<u64, u64>,
        marks: &HashMap<u64, u64>,
        alive: &AtomicBool,
        chunk: usize,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let mut buf = Vec::with_capacity(2 << 20);
        // Catch-up: each journal from where the replica is to where the
        // outbox begins, read from the segments.
        // Marks first (the replica takes each up to what it holds): a slot a
        // mark freed here may be reused by a segment the catch-up sends.
        for (j, _) in &pos {
            if let Some(&m) = marks.get(&j.id()) {
                c.send(&Msg::Mark { journal: j.id(), lsn: m }).map_err(io)?;
            }
        }
        for (j, p) in pos {
            // A journal the snapshot does not know was created after it: all
            // of its batches are in the outbox.
            let target = claimed.get(&j.id()).copied().unwrap_or(p.lsn);
            self.catch_up(c, &j, p, target, chunk, alive, &mut buf)?;
            if let Some(&m) = marks.get(&j.id()) {
                c.send(&Msg::Mark { journal: j.id(), lsn: m }).map_err(io)?;
            }
        }
        self.shared.connected.store(true, Ordering::Release);
        self.shared.split_brain.lock().clear();
        self.shared.wake.notify_one();
        // The outbox, as it fills.
        let mut events = Vec::new();
        let mut last_send = Instant::now();
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
            for e in events.drain(..) {
                match e {
                    Event::Batch(mut frame) => {
                        seal_frame(&mut frame);
                        if frame.len() >= 64 << 10 {
                            // Large: sent as it is, not copied into `buf`.
                            if !buf.is_empty() {
                                c.send_raw(&buf).map_err(io)?;
                                buf.clear();
                            }
                            c.send_raw(&frame).map_err(io)?;
                            last_send = Instant::now();
                        } else {
                            buf.extend_from_slice(&frame);
                        }
                    }
                    Event::Mark { journal, lsn } => Msg::Mark { journal, lsn }.encode(&mut buf),
                    Event::Create { journal, name } => Msg::Create { journal, name }.encode(&mut buf),
                    Event::Delete { journal } => Msg::Delete { journal }.encode(&mut buf),
                }
                if buf.len() >= 4 << 20 {
                    c.send_raw(&buf).map_err(io)?;
                    buf.clear();
                }
            }
            if buf.is_empty() && last_send.elapsed() >= Duration::from_secs(1) {
                Msg::Ping.encode(&mut buf);
            }
            if !buf.is_empty() {
                c.send_raw(&buf).map_err(io)?;
                last_send = Instant::now();
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The next message that is not an ack or a ping (the replica's
/// heartbeat acks may arrive while the handshake waits for an answer).
fn answer(c: &mut FrameConn, timeout: Duration) -> std::io::Result<Msg> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.recv(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))? {
            Msg::Acks(_) | Msg::Ping => continue,
            m => return Ok(m),
        }
    }
}

/// Reads the replica's acks until the session ends.
fn ack_reader(mut c: FrameConn, shared: &ReplShared, alive: &AtomicBool, log: &MirrorLog) {
    let timeout = shared.cfg.peer_timeout;
    // The session's journals, looked up once each (not per ack).
    let mut journals: HashMap<u64, Option<crate::Journal>> = HashMap::new();
    while alive.load(Ordering::Acquire) {
        match c.recv(timeout) {
            Ok(Msg::Acks(acks)) => {
                for (id, received, durable) in acks {
                    let r = shared.journal(id);
                    r.received.fetch_max(received, Ordering::AcqRel);
                    r.durable.fetch_max(durable, Ordering::AcqRel);
                    if let Some(j) = journals.entry(id).or_insert_with(|| log.journal_by_id(id)) {
                        if durable >= j.next_lsn() {
                            *r.caught_up_at.lock() = Instant::now();
                        }
                    }
                }
                shared.wake.notify_one();
            }
            Ok(Msg::Failed { message }) => {
                tracing::error!(message, "the replica could not apply the stream");
                shared.error(&message);
                break;
            }
            Ok(_) => {}
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

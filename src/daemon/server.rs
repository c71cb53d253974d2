//! The server: one event loop thread on tokio-uring that runs the network
//! (io_uring sockets) and the disk (the engine's `Driver`, its own io_uring,
//! whose completions wake the loop through an eventfd).
//!
//! Every connection's appends are placed into the journals' open batches
//! right where their frames are decoded, on the loop's thread; the pump task
//! runs after the ready connections and writes whatever batches formed, so
//! appends from many connections share one group commit with no hop
//! between threads.
//!
//! Invariants:
//! * An append is acknowledged only once `Journal::poll` says its records
//!   are durable on every healthy mirror (`settle`). Acks of one journal are
//!   settled in placement order.
//! * Records of one append are placed contiguously: only this thread places
//!   records, and `submit_many` places all of a request before returning.
//! * Bounded: connections (`max_connections`), per-connection bytes
//!   waiting for durability and responses waiting to be sent
//!   (`max_inflight_bytes`; past it the connection is not read), frame size
//!   (`max_frame_bytes`), one read or subscription read at a time per
//!   request, batch buffers per journal (the engine).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config::{DaemonConfig, Listen, OnReplicaLoss};
use super::metrics::{self, Metrics};
use super::notify::Notifier;
use super::producers::{Check, Producers};
use crate::epoch::Epoch;
use crate::protocol::{
    codes, decode_frame, Durability, Frame, Op, ProtoError, Request, Response, WireRecord, HEADER_LEN, VERSION,
};
use crate::replication::{self, Change, JRepl, ReplShared, Role};
use crate::{Driver, Error, Journal, MirrorLog, Tag, Ticket};

/// Subscriptions one connection may hold at once.
const MAX_SUBSCRIPTIONS: usize = 16;

/// One journal as the server sees it.
struct Jd {
    j: Journal,
    durability: Cell<Durability>,
    /// `local` appends waiting for local durability, in placement order.
    pending: RefCell<VecDeque<Ack>>,
    /// `remote-*` appends waiting for local durability and the replica.
    remote: RefCell<VecDeque<Ack>>,
    /// The replica's progress on this journal.
    jr: Arc<JRepl>,
    on_loss: OnReplicaLoss,
    /// `remote-*` appends are acknowledged as `local` until the replica
    /// catches up (`on_replica_loss = "degrade"` after a timeout).
    degraded: Cell<bool>,
    /// The durable end here when the journal degraded: once the replica
    /// holds everything below it durably, it has caught up (a fixed point;
    /// the durable end itself moves on under load and is never reached).
    degraded_at: Cell<u64>,
    producers: RefCell<Producers>,
    /// Woken when the durable end moves (subscriptions wait on it).
    advanced: Notify,
    last_durable: Cell<u64>,
}

impl Jd {
    /// Fails every append waiting on this journal, local and remote, in
    /// placement order; returns how many.
    fn fail_waiting(&self, code: u16, msg: &str) -> usize {
        let mut n = 0;
        for q in [&self.pending, &self.remote] {
            let drained = std::mem::take(&mut *q.borrow_mut());
            n += drained.len();
            for a in drained {
                a.fail_with(code, msg);
            }
        }
        n
    }
}

/// An append waiting to be durable.
struct Ack {
    conn: Rc<Conn>,
    request_id: u64,
    /// `None`: durable here already (an idempotent resend of a record read
    /// back from disk).
    ticket: Option<Ticket>,
    mode: Durability,
    first_lsn: u64,
    count: u32,
    /// Counted against the connection's in-flight limit (payload and headers).
    bytes: usize,
    payload: usize,
    start: Instant,
}

impl Ack {
    /// Queues the ack: its bytes count against the connection's in-flight
    /// limit until it is answered (`release`).
    fn queue(self, jd: &Jd) {
        self.hold();
        self.queue_held(jd);
    }

    /// Counts the ack's bytes against the connection's in-flight limit.
    fn hold(&self) {
        self.conn.inflight.set(self.conn.inflight.get() + self.bytes);
    }

    /// `queue` for an ack already held.
    fn queue_held(self, jd: &Jd) {
        if self.mode == Durability::Local {
            jd.pending.borrow_mut().push_back(self);
        } else {
            jd.remote.borrow_mut().push_back(self);
        }
    }

    fn release(&self) {
        self.conn.inflight.set(self.conn.inflight.get() - self.bytes);
        self.conn.progress.notify_one();
    }

    /// Answers with an error instead.
    fn fail(&self, e: &Error) {
        self.fail_with(e.code(), &e.to_string());
    }

    fn fail_with(&self, code: u16, msg: &str) {
        self.conn.send(|o| err_frame(o, self.request_id, code, msg));
        self.release();
    }

    fn answer(&self) {
        self.conn.send(|o| {
            Response::Appended { first_lsn: self.first_lsn, count: self.count }.encode(Op::Append, self.request_id, o)
        });
        self.release();
    }
}

/// A client connection's shared state (its reader and writer tasks, and
/// the acks and subscriptions that answer it).
struct Conn {
    out: RefCell<Vec<u8>>,
    out_ready: Notify,
    /// Acks or output drained: the reader may go on.
    progress: Notify,
    /// Bytes of appends waiting for durability.
    inflight: Cell<usize>,
    /// The socket failed or the connection ended: stop sending.
    gone: Cell<bool>,
    /// The reader finished; the writer exits once `out` is empty.
    done: Cell<bool>,
    subs: RefCell<HashMap<u64, Rc<Sub>>>,
    /// The socket, for direct non-blocking sends (`flush`).
    fd: std::os::fd::RawFd,
    /// The writer task has a write in progress: direct sends must wait, so
    /// bytes stay in order.
    writing: Cell<bool>,
    /// An append of this connection was refused for the node's role
    /// (`not-primary`, `fenced`). Every later append of it is refused too:
    /// the client fails over and resends the refused one with its original
    /// sequence, which a later append taken here (after an undone demote)
    /// would have overtaken, making the resend `sequence-unknown`.
    role_refused: Cell<bool>,
}

impl Conn {
    fn new(fd: std::os::fd::RawFd) -> Rc<Conn> {
        Rc::new(Conn {
            fd,
            writing: Cell::new(false),
            role_refused: Cell::new(false),
            out: RefCell::new(Vec::with_capacity(16 << 10)),
            out_ready: Notify::new(),
            progress: Notify::new(),
            inflight: Cell::new(0),
            gone: Cell::new(false),
            done: Cell::new(false),
            subs: RefCell::new(HashMap::new()),
        })
    }

    fn send(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.gone.get() {
            return;
        }
        f(&mut self.out.borrow_mut());
        self.flush();
    }

    /// Sends what is queued straight from this task with a non-blocking
    /// send(2), and leaves only what the socket would not take to the
    /// writer task. (Waking the writer task for every response cost ~70 µs
    /// per round trip on an idle loop here; docs/benchmarks.md.)
    fn flush(&self) {
        if self.writing.get() || self.gone.get() {
            if !self.gone.get() {
                self.out_ready.notify_one();
            }
            return;
        }
        let mut out = self.out.borrow_mut();
        let sent = match crate::io::send_nonblocking(self.fd, &out) {
            Ok(n) => n,
            Err(_) => {
                self.gone.set(true);
                out.clear();
                self.progress.notify_one();
                return;
            }
        };
        out.drain(..sent);
        if !out.is_empty() {
            self.out_ready.notify_one();
        } else if sent > 0 {
            self.progress.notify_one();
        }
    }

    fn out_len(&self) -> usize {
        self.out.borrow().len()
    }
}

struct Sub {
    credit: Cell<u64>,
    wake: Notify,
}

/// The server's state, owned by the loop thread.
pub(crate) struct Srv {
    log: Arc<MirrorLog>,
    repl: Arc<ReplShared>,
    cfg: DaemonConfig,
    journals: RefCell<HashMap<String, Rc<Jd>>>,
    jlist: RefCell<Vec<Journal>>,
    driver: RefCell<Driver>,
    kick: Notify,
    /// Bumped by every socket read that brought bytes (idle polling).
    activity: Cell<u64>,
    draining: Cell<bool>,
    drain: Notify,
    m: Metrics,
    started: Instant,
}

fn proto_err(out: &mut Vec<u8>, rid: u64, e: &ProtoError) {
    Response::Error { code: e.code(), message: &e.to_string() }.encode(Op::Error, rid, out);
}

fn err_frame(out: &mut Vec<u8>, rid: u64, code: u16, msg: &str) {
    Response::Error { code, message: msg }.encode(Op::Error, rid, out);
}

/// Socket reads and writes for both TCP and Unix streams.
trait Stream: std::os::fd::AsRawFd + 'static {
    async fn read_into(&self, buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>);
    async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>);
    /// Ends both directions: a read left pending completes, the peer sees EOF.
    fn close(&self) {
        graceful_close(self.as_raw_fd());
    }
}

macro_rules! impl_stream {
    ($t:ty) => {
        impl Stream for $t {
            async fn read_into(&self, buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
                use tokio_uring::buf::BoundedBuf;
                let (r, s) = self.read(buf.slice(at..)).await;
                (r, s.into_inner())
            }
            async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
                self.write_all(buf).await
            }
        }
    };
}
impl_stream!(tokio_uring::net::TcpStream);

/// Ends a connection so that what was sent still arrives: FIN after the
/// queued bytes, then input still unread is discarded (closing with unread
/// input would make the kernel send a reset, which can destroy answers the
/// peer has not read yet), then both directions are shut, which also ends
/// a read pending in io_uring. The descriptor itself is closed on drop.
fn graceful_close(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown(2) and recv(2) on our own socket, into a local buffer.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
        let mut junk = [0u8; 4096];
        for _ in 0..256 {
            if libc::recv(fd, junk.as_mut_ptr() as *mut libc::c_void, junk.len(), libc::MSG_DONTWAIT) <= 0 {
                break;
            }
        }
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// The same for readiness-based (epoll) sockets, which tokio-uring's
/// runtime also drives (`server.network = "epoll"`).
macro_rules! impl_stream_epoll {
    ($t:ty) => {
        impl Stream for $t {
            async fn read_into(&self, mut buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
                debug_assert_eq!(buf.len(), at);
                loop {
                    if let Err(e) = self.readable().await {
                        return (Err(e), buf);
                    }
                    match crate::sockread::read_draining(self, &mut buf) {
                        Ok(n) => return (Ok(n), buf),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return (Err(e), buf),
                    }
                }
            }
            async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
                let mut off = 0;
                while off < buf.len() {
                    if let Err(e) = self.writable().await {
                        return (Err(e), buf);
                    }
                    match self.try_write(&buf[off..]) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return (Err(e), buf),
                    }
                }
                (Ok(()), buf)
            }
        }
    };
}
impl_stream_epoll!(tokio::net::TcpStream);
impl_stream_epoll!(tokio::net::UnixStream);

impl Srv {
    pub(crate) fn new(log: Arc<MirrorLog>, cfg: DaemonConfig, repl: Arc<ReplShared>) -> crate::Result<Rc<Srv>> {
        let driver = Driver::for_log(&log)?;
        let srv = Rc::new(Srv {
            log,
            repl,
            cfg,
            journals: RefCell::new(HashMap::new()),
            jlist: RefCell::new(Vec::new()),
            driver: RefCell::new(driver),
            kick: Notify::new(),
            activity: Cell::new(0),
            draining: Cell::new(false),
            drain: Notify::new(),
            m: Metrics::default(),
            started: Instant::now(),
        });
        for name in srv.log.journal_names() {
            let j = srv.log.journal(&name)?;
            srv.add_journal(j);
        }
        Ok(srv)
    }

    /// Builds a journal's idempotence table from the producer tags in its
    /// newest segments.
    fn producers_from_disk(&self, j: &Journal) -> Producers {
        let idem = &self.cfg.idempotence;
        let mut producers = Producers::new(idem.window, idem.max_producers);
        let t0 = Instant::now();
        let starts = j.segment_starts();
        // From the start of the newest `scan_segments` segments, below the
        // mark too: a record a consumer already marked may still be the
        // answer to a producer's resend.
        let from = starts.get(starts.len().saturating_sub(idem.scan_segments)).copied().unwrap_or(1);
        let mut tagged = 0u64;
        let res = j.visit_retained(from, 1 << 20, |r| {
            if let Some(t) = r.tag {
                producers.record(t.producer, t.seq, 1, r.lsn, None, u64::MAX);
                tagged += 1;
            }
            true
        });
        if let Err(e) = res {
            tracing::warn!(journal = j.name(), error = %e, "could not rebuild the idempotence table from the journal");
        }
        tracing::info!(
            journal = j.name(),
            next_lsn = j.next_lsn(),
            producers = producers.len(),
            tagged_records = tagged,
            seconds = t0.elapsed().as_secs_f64(),
            "journal ready"
        );
        producers
    }

    fn add_journal(&self, j: Journal) {
        let spec = self.cfg.journals.iter().find(|s| s.name == j.name());
        let producers = self.producers_from_disk(&j);
        let jd = Rc::new(Jd {
            last_durable: Cell::new(j.next_lsn()),
            j: j.clone(),
            durability: Cell::new(spec.map(|s| s.durability).unwrap_or(Durability::Local)),
            pending: RefCell::new(VecDeque::new()),
            remote: RefCell::new(VecDeque::new()),
            jr: self.repl.journal(j.id()),
            on_loss: spec.map(|s| s.on_replica_loss).unwrap_or(OnReplicaLoss::Block),
            degraded: Cell::new(false),
            degraded_at: Cell::new(0),
            producers: RefCell::new(producers),
            advanced: Notify::new(),
        });
        self.journals.borrow_mut().insert(j.name().to_string(), jd);
        self.jlist.borrow_mut().push(j);
    }

    /// The journal of this name. On a replica the receiver creates and
    /// deletes journals; the map follows the engine's on each lookup.
    fn journal(&self, name: &str) -> Option<Rc<Jd>> {
        let have = self.journals.borrow().get(name).cloned();
        if self.repl.role().is_primary() {
            return have;
        }
        match (have, self.log.journal(name).ok()) {
            (Some(jd), Some(j)) if jd.j.id() == j.id() => Some(jd),
            (old, now) => {
                if old.is_some() {
                    self.journals.borrow_mut().remove(name);
                    self.jlist.borrow_mut().retain(|j| j.name() != name);
                }
                let j = now?;
                self.add_journal(j);
                self.journals.borrow().get(name).cloned()
            }
        }
    }

    /// Rebuilds every journal's entry from the engine (after a role change:
    /// a replica's journals came from its primary, and its idempotence
    /// tables must know what the primary's producers wrote).
    fn reload_journals(&self) {
        self.journals.borrow_mut().clear();
        self.jlist.borrow_mut().clear();
        for j in self.log.journals() {
            self.add_journal(j);
        }
    }

    /// Writes batches and reaps completions; waits for one if `wait`.
    /// (No allocation: it runs on every turn of the loop.)
    fn pump(&self, wait: bool) -> crate::Result<usize> {
        // A replica's batches are written by its receiver's own Driver.
        let n = if self.repl.role().writes_appends() {
            self.driver.borrow_mut().pump_all(&self.jlist.borrow(), wait)?
        } else {
            self.driver.borrow_mut().pump_all(&[], wait)?
        };
        self.settle();
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.driver.borrow().in_flight()
    }

    fn pending_acks(&self) -> usize {
        self.journals.borrow().values().map(|jd| jd.pending.borrow().len() + jd.remote.borrow().len()).sum()
    }

    fn remote_acks(&self) -> usize {
        self.journals.borrow().values().map(|jd| jd.remote.borrow().len()).sum()
    }

    /// Some `local` append waits for its batch.
    fn local_acks_waiting(&self) -> bool {
        self.journals.borrow().values().any(|jd| !jd.pending.borrow().is_empty())
    }

    /// Answers every append that became durable (or failed).
    fn settle(&self) {
        // Nothing below creates or deletes journals, so the map stays borrowed.
        for jd in self.journals.borrow().values() {
            loop {
                let front = {
                    let p = jd.pending.borrow();
                    match p.front() {
                        None => break,
                        Some(a) => a.ticket.map_or(Ok(true), |t| jd.j.poll(&t)),
                    }
                };
                if let Ok(false) = front {
                    break;
                }
                let Some(a) = jd.pending.borrow_mut().pop_front() else { break };
                match front {
                    Ok(_) => {
                        self.m.append_latency.observe(a.start.elapsed());
                        self.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                        a.answer();
                    }
                    Err(e) => {
                        self.m.error(e.code());
                        a.fail(&e);
                    }
                }
            }
            self.settle_remote(jd);
            let d = jd.j.next_lsn();
            if d != jd.last_durable.get() {
                jd.last_durable.set(d);
                jd.advanced.notify_waiters();
            }
        }
    }

    /// Answers `remote-*` appends that are durable here and confirmed by
    /// the replica (received or durable, as asked), or whose wait for the
    /// replica timed out (then the journal's `on_replica_loss` decides).
    fn settle_remote(&self, jd: &Jd) {
        // Runs on every turn of the loop: nothing to do (no lock taken)
        // unless a remote append waits or the journal is degraded.
        if jd.remote.borrow().is_empty() && !jd.degraded.get() {
            return;
        }
        let timeout = self.repl.cfg.ack_timeout;
        let received = jd.jr.received.load(Ordering::Acquire);
        let durable = jd.jr.durable.load(Ordering::Acquire);
        loop {
            let (local, need, mode, age) = {
                let q = jd.remote.borrow();
                let Some(a) = q.front() else { break };
                (a.ticket.map_or(Ok(true), |t| jd.j.poll(&t)), a.first_lsn + a.count as u64, a.mode, a.start.elapsed())
            };
            match local {
                Ok(false) => break,
                Err(e) => {
                    if let Some(a) = jd.remote.borrow_mut().pop_front() {
                        self.m.error(e.code());
                        a.fail(&e);
                    }
                    continue;
                }
                Ok(true) => {
                    // Durable here: later turns need not poll it again while
                    // it waits for the replica.
                    if let Some(a) = jd.remote.borrow_mut().front_mut() {
                        a.ticket = None;
                    }
                }
            }
            let confirmed = match mode {
                Durability::RemoteReceived => received.max(durable) >= need,
                _ => durable >= need,
            };
            if !confirmed && !jd.degraded.get() && age < timeout {
                break;
            }
            let Some(a) = jd.remote.borrow_mut().pop_front() else { break };
            if confirmed || jd.degraded.get() {
                if !confirmed {
                    self.m.degraded_acks.set(self.m.degraded_acks.get() + 1);
                }
                self.m.append_latency.observe(a.start.elapsed());
                self.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                a.answer();
                continue;
            }
            match jd.on_loss {
                OnReplicaLoss::Degrade => {
                    tracing::warn!(journal = jd.j.name(), replica_durable = durable, timeout = ?timeout,
                        "replica did not confirm in time: acknowledging remote appends as local until it catches up");
                    jd.degraded.set(true);
                    jd.degraded_at.set(jd.j.next_lsn());
                    self.m.degraded_acks.set(self.m.degraded_acks.get() + 1);
                    self.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                    a.answer();
                }
                OnReplicaLoss::Block => {
                    self.m.error(crate::protocol::codes::REPLICA_TIMEOUT);
                    a.fail_with(
                        crate::protocol::codes::REPLICA_TIMEOUT,
                        &format!(
                            "the replica did not confirm lsn {}..{} within {:?} ({}); the records are durable on this node and will still be shipped",
                            a.first_lsn,
                            need - 1,
                            timeout,
                            if self.repl.connected.load(Ordering::Acquire) { "it lags" } else { "it is not connected" }
                        ),
                    );
                }
            }
        }
        // (When the replica last held everything is kept by the ack reader.)
        if jd.degraded.get() && self.repl.connected.load(Ordering::Acquire) && durable >= jd.degraded_at.get() {
            tracing::info!(
                journal = jd.j.name(),
                replica_durable = durable,
                degraded_at = jd.degraded_at.get(),
                "replica caught up past where the journal degraded: remote appends wait for it again"
            );
            jd.degraded.set(false);
        }
    }

    /// Follows a role change made by the replication threads: a fenced
    /// primary fails what waits and steps down once its writes are done.
    fn check_role(self: &Rc<Self>) {
        // A load first: the loop checks every turn, a promotion is rare.
        if self.repl.promote_requested.load(Ordering::Acquire)
            && self.repl.promote_requested.swap(false, Ordering::AcqRel)
        {
            let srv = self.clone();
            tokio_uring::spawn(async move {
                if let Err((code, msg)) = promote(&srv).await {
                    tracing::error!(code, msg, "automatic promotion failed");
                }
            });
        }
        if self.repl.serve_requested.load(Ordering::Acquire) && self.repl.serve_requested.swap(false, Ordering::AcqRel)
        {
            let srv = self.clone();
            tokio_uring::spawn(async move {
                if let Err((code, msg)) = serve_after_wait(&srv).await {
                    tracing::error!(code, msg, "could not start serving after the peer answered");
                }
            });
        }
        if self.repl.role() != Role::SteppingDown {
            return;
        }
        let epoch = self.repl.seen_epoch.load(Ordering::Acquire);
        let msg = format!("fenced: a newer primary exists (epoch {epoch}); this node is a replica now");
        for jd in self.journals.borrow().values() {
            for _ in 0..jd.fail_waiting(codes::FENCED, &msg) {
                self.m.error(codes::FENCED);
            }
        }
        if self.in_flight() == 0
            && self.log.journals().iter().all(|j| !matches!(j.chain_end(), Err(Error::Backpressure)))
        {
            replication::stop_primary(&self.log, &self.repl);
            let _ = self.repl.change(Change::FinishStepDown);
        }
    }

    fn status_json(&self) -> String {
        let st = self.log.status();
        let journals: Vec<serde_json::Value> = st
            .journals
            .iter()
            .map(|i| {
                let jd = self.journal(&i.name);
                serde_json::json!({
                    "name": i.name,
                    "first_lsn": i.first_lsn,
                    "next_lsn": i.next_lsn,
                    "mark": i.mark,
                    "segments": i.segments,
                    "bytes": i.bytes,
                    "missing_segments": i.missing_segments,
                    "durability": jd.as_ref().map(|jd| durability_name(jd.durability.get())).unwrap_or("local"),
                    "producers": jd.as_ref().map(|jd| jd.producers.borrow().len()).unwrap_or(0),
                })
            })
            .collect();
        let mirrors: Vec<serde_json::Value> = st
            .mirrors
            .iter()
            .map(|m| {
                serde_json::json!({
                    "path": m.path, "uuid": m.uuid, "slot": m.slot, "healthy": m.healthy,
                    "writes": m.writes, "mean_write_us": m.mean_write_us,
                })
            })
            .collect();
        serde_json::json!({
            "server": self.cfg.server.name,
            "version": env!("CARGO_PKG_VERSION"),
            "role": self.repl.role().name(),
            "replication": self.repl_status(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "set_uuid": st.set_uuid,
            "epoch": st.epoch,
            "block_size": st.block_size,
            "segment_size": st.segment_size,
            "segments_total": st.segments_total,
            "segments_free": st.segments_free,
            "repairs": st.repairs,
            "connections": self.m.connections.get(),
            "mirrors": mirrors,
            "journals": journals,
        })
        .to_string()
    }

    fn metrics_text(&self) -> String {
        let st = self.log.status();
        let counters: Vec<(String, crate::JournalCounters)> =
            self.jlist.borrow().iter().map(|j| (j.name().to_string(), j.counters())).collect();
        let mut o = metrics::render(&self.m, &st, &counters);
        metrics::render_repl(&mut o, &self.m, &self.repl_status());
        o
    }

    fn repl_status(&self) -> metrics::ReplStatus {
        let r = &self.repl;
        let ob = r.outbox.lock().clone();
        let role = r.role();
        let journals = self
            .log
            .journals()
            .iter()
            .map(|j| {
                let jr = r.journal(j.id());
                let next = j.next_lsn();
                let durable = jr.durable.load(Ordering::Acquire);
                let lag = next.saturating_sub(durable);
                metrics::ReplJournal {
                    name: j.name().to_string(),
                    next_lsn: next,
                    replica_received: jr.received.load(Ordering::Acquire),
                    replica_durable: durable,
                    lag_records: if role.ships() { lag } else { 0 },
                    lag_bytes: match &ob {
                        Some(ob) if role.ships() && lag > 0 => ob.bytes_after(j.id(), durable),
                        _ => 0,
                    },
                    lag_seconds: if role.ships() && lag > 0 {
                        jr.caught_up_at.lock().elapsed().as_secs_f64()
                    } else {
                        0.0
                    },
                    degraded: self.journals.borrow().get(j.name()).is_some_and(|jd| jd.degraded.get()),
                }
            })
            .collect();
        metrics::ReplStatus {
            role: role.name().to_string(),
            peer: r.cfg.peer.map(|p| p.to_string()),
            peer_name: r.peer_name.lock().clone(),
            connected: r.connected.load(Ordering::Acquire),
            epoch: self.log.epoch(),
            seen_epoch: r.seen_epoch.load(Ordering::Acquire),
            sessions: r.sessions.load(Ordering::Relaxed),
            session_started_ms: r.session_started_ms.load(Ordering::Relaxed),
            catchup_bytes: r.catchup_bytes.load(Ordering::Relaxed),
            resyncs: r.resyncs.load(Ordering::Relaxed),
            truncations: r.truncations.load(Ordering::Relaxed),
            backlog_bytes: ob.map(|o| o.queued_bytes() as u64).unwrap_or(0),
            last_error: r.last_error.lock().clone(),
            split_brain: r.split_brain.lock().clone(),
            journals,
        }
    }
}

pub(crate) fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Default | Durability::Local => "local",
        Durability::RemoteReceived => "remote-received",
        Durability::RemoteDurable => "remote-durable",
    }
}

// ---------------------------------------------------------------------------
// the loop

/// Listeners bound before the loop starts (so binding errors are reported
/// before READY=1).
pub(crate) struct Bound {
    pub tcp: Vec<std::net::TcpListener>,
    pub unix: Vec<std::path::PathBuf>,
    pub epoll: bool,
    pub metrics: Option<std::net::TcpListener>,
}

pub(crate) fn bind(cfg: &DaemonConfig) -> Result<Bound, String> {
    let mut b = Bound { tcp: Vec::new(), unix: Vec::new(), metrics: None, epoll: cfg.server.network == "epoll" };
    for l in &cfg.server.listen {
        match l {
            Listen::Tcp(a) => b.tcp.push(bind_tcp(*a).map_err(|e| format!("listen on {a}: {e}"))?),
            Listen::Unix(p) => {
                // A socket file left by an earlier run is replaced; anything else is not.
                if let Ok(md) = std::fs::symlink_metadata(p) {
                    use std::os::unix::fs::FileTypeExt;
                    if md.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                b.unix.push(p.clone());
            }
        }
    }
    if let Some(a) = cfg.metrics.listen {
        b.metrics = Some(bind_tcp(a).map_err(|e| format!("metrics on {a}: {e}"))?);
    }
    Ok(b)
}

fn bind_tcp(a: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&a.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Runs the loop until SIGTERM/SIGINT and a drain. `on_ready` runs once
/// the listeners accept (then READY=1 is sent).
pub(crate) async fn serve(srv: Rc<Srv>, bound: Bound, notifier: Rc<Notifier>) -> Result<(), String> {
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: efd is a fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    srv.driver.borrow().register_eventfd(efd.as_raw_fd()).map_err(|e| e.to_string())?;
    // SAFETY: an OwnedFd keeps returning the same open descriptor until the
    // AsyncFd is dropped.
    let efd = unsafe { AsyncFd::register(efd) }.map_err(|e| format!("eventfd: {e}"))?;

    let bound_epoll = bound.epoll;
    for l in bound.tcp {
        if bound.epoll {
            let l = Rc::new(tokio::net::TcpListener::from_std(l).map_err(|e| format!("listener: {e}"))?);
            tokio_uring::spawn(accept_loop(srv.clone(), move || {
                let l = l.clone();
                async move {
                    let (s, peer) = l.accept().await?;
                    let _ = s.set_nodelay(true);
                    Ok((s, peer.to_string()))
                }
            }));
        } else {
            let l = Rc::new(tokio_uring::net::TcpListener::from_std(l));
            tokio_uring::spawn(accept_loop(srv.clone(), move || {
                let l = l.clone();
                async move {
                    let (s, peer) = l.accept().await?;
                    let _ = s.set_nodelay(true);
                    Ok((s, peer.to_string()))
                }
            }));
        }
    }
    // Unix sockets are always readiness-based: tokio-uring's Unix listener
    // fails with EOPNOTSUPP on this kernel.
    for path in bound.unix {
        let l = tokio::net::UnixListener::bind(&path).map_err(|e| format!("listen on unix:{}: {e}", path.display()))?;
        let l = Rc::new(l);
        let name = format!("unix:{}", path.display());
        let srv = srv.clone();
        tokio_uring::spawn(async move {
            accept_loop(srv, move || {
                let (l, name) = (l.clone(), name.clone());
                async move { Ok((l.accept().await?.0, name)) }
            })
            .await;
            let _ = std::fs::remove_file(&path);
        });
    }
    if let Some(l) = bound.metrics {
        let srv = srv.clone();
        // On epoll, like client sockets: tokio-uring's operations are only
        // submitted when the loop sleeps, which idle polling postpones.
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| format!("metrics listener: {e}"))?;
        tokio_uring::spawn(async move {
            loop {
                let acc = tokio::select! {
                    a = l.accept() => a,
                    _ = srv.drain.notified() => break,
                };
                if let Ok((s, _)) = acc {
                    tokio_uring::spawn(http_metrics(srv.clone(), s));
                }
            }
        });
    }
    if let Some(every) = Notifier::watchdog_interval() {
        let n = notifier.clone();
        tokio_uring::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                n.notify("WATCHDOG=1");
            }
        });
    }
    {
        let srv = srv.clone();
        let notifier = notifier.clone();
        tokio_uring::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(pending = srv.pending_acks(), "stopping: draining in-flight appends");
            notifier.notify("STOPPING=1");
            srv.draining.set(true);
            srv.drain.notify_waiters();
            srv.kick.notify_one();
        });
    }
    notifier.notify("READY=1");
    tracing::info!("ready");

    // The pump: writes batches as they form, wakes on completions.
    let mut drain_deadline: Option<Instant> = None;
    let repl_wake = srv.repl.wake.clone();
    // Invariant: while the loop polls, the runtime never sleeps, and
    // tokio-uring submits its queued operations only when it is about to
    // sleep. So idle polling requires that nothing here uses tokio-uring's
    // ring: client, Unix and metrics sockets are on epoll (the Driver has
    // its own ring), and `network = "io_uring"` turns idle polling off.
    let idle_poll = if bound_epoll { srv.cfg.server.idle_poll } else { Duration::ZERO };
    if !bound_epoll && !srv.cfg.server.idle_poll.is_zero() {
        tracing::info!(
            "idle polling is off: network = \"io_uring\" submits socket operations only when the loop sleeps"
        );
    }
    // When the loop last saw work: a disk completion or a socket read.
    let mut busy_at = Instant::now();
    let mut seen = srv.activity.get();
    loop {
        srv.check_role();
        match srv.pump(false) {
            Ok(n) if n > 0 || srv.activity.get() != seen => {
                seen = srv.activity.get();
                busy_at = Instant::now();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "the write driver failed");
                return Err(e.to_string());
            }
        }
        if srv.draining.get() {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + srv.cfg.limits.drain_timeout);
            // Every append taken is answered, and every connection has
            // flushed its answers and closed.
            if srv.pending_acks() == 0 && srv.in_flight() == 0 && srv.m.connections.get() == 0 {
                tracing::info!("drained");
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(pending = srv.pending_acks(), "drain timeout: closing with appends unanswered");
                break;
            }
        }
        // Idle polling: shortly after work, poll again instead of sleeping.
        // The yield lets the runtime poll the sockets without blocking and
        // run the connections that became ready; pump() reads the disk
        // ring's completions directly.
        if !idle_poll.is_zero() && !srv.draining.get() && busy_at.elapsed() < idle_poll {
            tokio::task::yield_now().await;
            continue;
        }
        let gcw = srv.cfg.limits.group_commit_wait;
        // remote-* appends wait on the replica's acks (which wake the loop)
        // and on their timeout (this tick).
        let tick = if srv.remote_acks() > 0 || matches!(srv.repl.role(), Role::SteppingDown | Role::Demoting) {
            Duration::from_millis(5)
        } else {
            Duration::from_secs(3600)
        };
        if srv.in_flight() > 0 {
            tokio::select! {
                g = efd.readable() => {
                    if let Ok(mut g) = g {
                        let mut v = [0u8; 8];
                        // SAFETY: reading 8 bytes into v from our eventfd.
                        let r = unsafe { libc::read(g.get_inner().as_raw_fd(), v.as_mut_ptr() as *mut _, 8) };
                        if r < 0 {
                            g.clear_ready();
                        }
                    }
                }
                _ = srv.kick.notified() => {}
                _ = repl_wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        } else if srv.local_acks_waiting() {
            // Open batches waiting out the group-commit wait (or a retry).
            let wait = if gcw.is_zero() { Duration::from_micros(100) } else { gcw };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = srv.kick.notified() => {}
                _ = repl_wake.notified() => {}
            }
        } else {
            tokio::select! {
                _ = srv.kick.notified() => {}
                _ = repl_wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = tokio::time::sleep(Duration::from_millis(200)), if srv.draining.get() => {}
            }
        }
        // Let every other ready task (connections whose reads completed)
        // place its appends first: they join the next batch.
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Accepts connections until the drain starts; each gets its own task.
async fn accept_loop<S: Stream, F, Fut>(srv: Rc<Srv>, mut accept: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, String)>>,
{
    loop {
        let acc = tokio::select! {
            a = accept() => a,
            _ = srv.drain.notified() => break,
        };
        match acc {
            Ok((s, peer)) => {
                tokio_uring::spawn(connection(srv.clone(), Rc::new(s), peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn http_metrics<S: Stream>(srv: Rc<Srv>, s: S) {
    let mut req = Vec::with_capacity(1024);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if req.len() >= 8192 || Instant::now() > deadline {
            return;
        }
        req.reserve(1024);
        let at = req.len();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_into(req, at)).await;
        let Ok((Ok(n), b)) = r else { return };
        req = b;
        if n == 0 || req.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let (status, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?") {
        ("200 OK", srv.metrics_text())
    } else if req.starts_with(b"GET /status ") {
        ("200 OK", srv.status_json())
    } else {
        ("404 Not Found", "GET /metrics or /status\n".to_string())
    };
    let ctype = if body.starts_with('{') { "application/json" } else { "text/plain; version=0.0.4" };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all_buf(resp.into_bytes()).await;
    s.close();
}

// ---------------------------------------------------------------------------
// connections

async fn connection<S: Stream>(srv: Rc<Srv>, s: Rc<S>, peer: String) {
    use tracing::Instrument;
    let span = tracing::info_span!("conn", peer = %peer);
    connection_in_span(srv, s).instrument(span).await
}

/// (A span entered with `enter()` across awaits leaks into other tasks:
/// `instrument` enters it only while this task runs.)
async fn connection_in_span<S: Stream>(srv: Rc<Srv>, s: Rc<S>) {
    if srv.m.connections.get() as usize >= srv.cfg.limits.max_connections || srv.draining.get() {
        srv.m.connections_rejected.set(srv.m.connections_rejected.get() + 1);
        let (code, msg) = if srv.draining.get() {
            (codes::SHUTTING_DOWN, "the daemon is shutting down".to_string())
        } else {
            (codes::TOO_MANY_CONNECTIONS, format!("at the connection limit ({})", srv.cfg.limits.max_connections))
        };
        srv.m.error(code);
        let mut out = Vec::new();
        err_frame(&mut out, 0, code, &msg);
        let _ = s.write_all_buf(out).await;
        s.close();
        tracing::debug!(code, "connection refused");
        return;
    }
    srv.m.connections.set(srv.m.connections.get() + 1);
    srv.m.connections_total.set(srv.m.connections_total.get() + 1);
    tracing::debug!("connected");
    let conn = Conn::new(s.as_raw_fd());
    let writer = {
        let (conn, s) = (conn.clone(), s.clone());
        tokio_uring::spawn(async move {
            let mut spare = Vec::with_capacity(16 << 10);
            loop {
                let data = {
                    let mut o = conn.out.borrow_mut();
                    if o.is_empty() {
                        None
                    } else {
                        Some(std::mem::replace(&mut *o, std::mem::take(&mut spare)))
                    }
                };
                match data {
                    None if conn.done.get() || conn.gone.get() => break,
                    None => conn.out_ready.notified().await,
                    Some(d) => {
                        conn.writing.set(true);
                        let (r, mut d) = s.write_all_buf(d).await;
                        conn.writing.set(false);
                        if r.is_err() {
                            conn.gone.set(true);
                            conn.out.borrow_mut().clear();
                            conn.progress.notify_one();
                            break;
                        }
                        d.clear();
                        if d.capacity() <= 1 << 20 {
                            spare = d;
                        }
                        conn.progress.notify_one();
                    }
                }
            }
        })
    };
    let why = read_loop(&srv, &conn, &*s).await;
    tracing::debug!(why, "reader done");
    // Answer what was taken before closing (acks come as writes finish).
    while conn.inflight.get() > 0 && !conn.gone.get() {
        conn.progress.notified().await;
    }
    conn.subs.borrow_mut().clear();
    conn.done.set(true);
    conn.out_ready.notify_one();
    let _ = writer.await;
    // Invariant: nothing sends on this connection's descriptor once it is
    // closed (the number may be reused by the next accepted socket): every
    // send checks `gone` first, and tasks that outlive this one (a
    // subscription's read in flight) see it.
    conn.gone.set(true);
    s.close();
    srv.m.connections.set(srv.m.connections.get().saturating_sub(1));
}

/// Reads and handles frames until the connection ends; returns why.
async fn read_loop<S: Stream>(srv: &Rc<Srv>, conn: &Rc<Conn>, s: &S) -> &'static str {
    let lim = &srv.cfg.limits;
    let max_frame = lim.max_frame_bytes as u32;
    let max_inflight = lim.max_inflight_bytes as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut partial_since: Option<Instant> = None;
    loop {
        // Back-pressure: do not read more while too much is waiting.
        let waited_from = Instant::now();
        while (conn.inflight.get() > max_inflight || conn.out_len() > max_inflight) && !conn.gone.get() {
            srv.kick.notify_one();
            conn.progress.notified().await;
        }
        if let Some(t) = partial_since {
            // Time the daemon itself held the connection back does not count.
            partial_since = Some(t + waited_from.elapsed());
        }
        if conn.gone.get() {
            return "socket error";
        }
        if srv.draining.get() {
            return "draining";
        }
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        let at = buf.len();
        let timeout = match partial_since {
            Some(t) => lim.frame_timeout.saturating_sub(t.elapsed()),
            None => Duration::from_secs(365 * 24 * 3600),
        };
        let read = if partial_since.is_some() {
            tokio::select! {
                r = tokio::time::timeout(timeout, s.read_into(buf, at)) => r,
                _ = srv.drain.notified() => return "draining",
            }
        } else {
            tokio::select! {
                r = s.read_into(buf, at) => Ok(r),
                _ = srv.drain.notified() => return "draining",
            }
        };
        let (res, b) = match read {
            Ok(r) => r,
            Err(_) => {
                srv.m.error(codes::FRAME_TIMEOUT);
                conn.send(|o| {
                    err_frame(
                        o,
                        0,
                        codes::FRAME_TIMEOUT,
                        &format!("frame not completed within {:?}", lim.frame_timeout),
                    )
                });
                return "frame timeout";
            }
        };
        buf = b;
        match res {
            Ok(0) => return "closed by peer",
            Ok(_) => {}
            Err(_) => return "read error",
        }
        // Handle every complete frame in the buffer.
        let mut pos = 0;
        loop {
            let f = match decode_frame(&buf[pos..], max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    srv.m.error(e.code());
                    tracing::info!(error = %e, "bad frame: closing the connection");
                    conn.send(|o| proto_err(o, 0, &e));
                    return "bad frame";
                }
            };
            let (frame, used) = f;
            pos += used;
            handle(srv, conn, &frame).await;
            // Back-pressure between frames too: many small requests in one
            // read must not pile up unbounded answers.
            while (conn.inflight.get() > max_inflight || conn.out_len() > max_inflight) && !conn.gone.get() {
                srv.kick.notify_one();
                conn.progress.notified().await;
            }
        }
        if pos > 0 {
            buf.drain(..pos);
        }
        // The frame clock runs from when the current partial frame began:
        // progress (a frame handled) or an empty buffer restarts it.
        partial_since = if buf.is_empty() {
            None
        } else if pos > 0 {
            Some(Instant::now())
        } else {
            partial_since.or(Some(Instant::now()))
        };
        if buf.capacity() > 4 << 20 && buf.len() < 64 << 10 {
            buf.shrink_to(256 << 10);
        }
        // Let the pump write what formed (it runs after the other ready connections).
        srv.activity.set(srv.activity.get().wrapping_add(1));
        srv.kick.notify_one();
    }
}

/// Handles one request. The frame borrows the read buffer, which is not
/// touched until every frame in it was handled.
async fn handle(srv: &Rc<Srv>, conn: &Rc<Conn>, frame: &Frame<'_>) {
    let rid = frame.request_id;
    let req = match Request::decode(frame, (srv.cfg.limits.max_frame_bytes / 4) as u32) {
        Ok(r) => r,
        Err(e) => {
            srv.m.error(e.code());
            conn.send(|o| proto_err(o, rid, &e));
            return;
        }
    };
    let fail = |e: &Error| {
        srv.m.error(e.code());
        conn.send(|o| err_frame(o, rid, e.code(), &e.to_string()));
    };
    match req {
        Request::Hello { min_version, max_version, .. } => {
            if !(min_version..=max_version).contains(&VERSION) {
                let e = ProtoError::UnsupportedVersion(min_version);
                srv.m.error(e.code());
                conn.send(|o| proto_err(o, rid, &e));
                return;
            }
            let name = srv.cfg.server.name.clone();
            let epoch = srv.log.epoch();
            let primary = srv.repl.role().is_primary();
            conn.send(|o| {
                Response::Hello { version: VERSION, server: &name, epoch, primary }.encode(Op::Hello, rid, o)
            });
        }
        Request::Append { journal, durability, producer, first_seq, resend, records } => {
            append(srv, conn, rid, journal, durability, (producer, first_seq, resend), &records);
        }
        Request::Read { journal, from, max_count, max_bytes } => {
            let Some(jd) = srv.journal(journal) else {
                return fail(&Error::UnknownJournal(journal.to_string()));
            };
            let max_bytes = (max_bytes as u64).min(srv.cfg.limits.max_frame_bytes) as usize;
            let max_count = max_count.max(1) as usize;
            match read_records(&jd.j, from, max_count, max_bytes).await {
                Ok((recs, next)) => conn.send(|o| encode_records(o, Op::Read, rid, &recs, next)),
                Err(e) => fail(&e),
            }
        }
        Request::Subscribe { journal, from, credit_bytes } => {
            let Some(jd) = srv.journal(journal) else {
                return fail(&Error::UnknownJournal(journal.to_string()));
            };
            if conn.subs.borrow().contains_key(&rid) || conn.subs.borrow().len() >= MAX_SUBSCRIPTIONS {
                let e = ProtoError::Malformed("subscription id in use, or too many subscriptions on this connection");
                srv.m.error(e.code());
                return conn.send(|o| proto_err(o, rid, &e));
            }
            let sub = Rc::new(Sub { credit: Cell::new(credit_bytes as u64), wake: Notify::new() });
            conn.subs.borrow_mut().insert(rid, sub.clone());
            tokio_uring::spawn(subscription(srv.clone(), conn.clone(), jd, rid, from, sub));
        }
        Request::Credit { subscription, bytes } => {
            let sub = conn.subs.borrow().get(&subscription).cloned();
            match sub {
                Some(s) => {
                    s.credit.set(s.credit.get().saturating_add(bytes as u64));
                    s.wake.notify_one();
                }
                None => {
                    srv.m.error(codes::UNKNOWN_SUBSCRIPTION);
                    conn.send(|o| {
                        err_frame(o, rid, codes::UNKNOWN_SUBSCRIPTION, &format!("no subscription {subscription}"))
                    });
                }
            }
        }
        Request::SetMark { .. } | Request::CreateJournal { .. } | Request::DeleteJournal { .. }
            if !srv.repl.role().is_primary() =>
        {
            srv.m.error(codes::NOT_PRIMARY);
            let msg = format!(
                "this node is {} (not primary): marks and journals are set on the primary",
                srv.repl.role().name()
            );
            conn.send(|o| err_frame(o, rid, codes::NOT_PRIMARY, &msg));
        }
        Request::Promote => {
            let res = promote(srv).await;
            role_change_answer(srv, conn, rid, Op::Promote, res);
        }
        Request::Demote { sync, timeout_ms } => {
            let res = demote(srv, sync, Duration::from_millis(timeout_ms as u64)).await;
            role_change_answer(srv, conn, rid, Op::Demote, res);
        }
        Request::DiscardDiverged => {
            let res = if srv.repl.split_brain.lock().is_empty() {
                Err((codes::NOT_PRIMARY, "no split brain is reported on this node: nothing to discard".to_string()))
            } else if srv.repl.role().is_primary() {
                Err((
                    codes::NOT_PRIMARY,
                    "this node is primary: run discard-diverged on the replica that holds the diverged records"
                        .to_string(),
                ))
            } else {
                tracing::warn!("an operator allowed the next replication session to cut back diverged records");
                srv.repl.discard_diverged.store(true, Ordering::Release);
                Ok(())
            };
            role_change_answer(srv, conn, rid, Op::DiscardDiverged, res);
        }
        Request::SetMark { journal, lsn } => {
            let Some(jd) = srv.journal(journal) else {
                return fail(&Error::UnknownJournal(journal.to_string()));
            };
            let j = jd.j.clone();
            match blocking(move || j.set_mark(lsn)).await {
                Ok(()) => conn.send(|o| Response::Ok.encode(Op::SetMark, rid, o)),
                Err(e) => fail(&e),
            }
        }
        Request::GetMark { journal } => match srv.journal(journal) {
            Some(jd) => {
                let lsn = jd.j.mark();
                conn.send(|o| Response::Mark { lsn }.encode(Op::GetMark, rid, o));
            }
            None => fail(&Error::UnknownJournal(journal.to_string())),
        },
        Request::CreateJournal { journal } => match srv.log.create_journal(journal) {
            Ok(j) => {
                srv.add_journal(j);
                tracing::info!(journal, "journal created");
                conn.send(|o| Response::Ok.encode(Op::CreateJournal, rid, o));
            }
            Err(e) => fail(&e),
        },
        Request::DeleteJournal { journal } => match srv.log.delete_journal(journal) {
            Ok(()) => {
                let removed = srv.journals.borrow_mut().remove(journal);
                if let Some(jd) = removed {
                    srv.jlist.borrow_mut().retain(|j| j.name() != journal);
                    let e = Error::UnknownJournal(journal.to_string());
                    jd.fail_waiting(e.code(), &e.to_string());
                    jd.advanced.notify_waiters();
                }
                tracing::info!(journal, "journal deleted");
                conn.send(|o| Response::Ok.encode(Op::DeleteJournal, rid, o));
            }
            Err(e) => fail(&e),
        },
        Request::ListJournals => {
            let names = srv.log.journal_names();
            let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            conn.send(|o| Response::Journals { names: refs }.encode(Op::ListJournals, rid, o));
        }
        Request::Status => {
            let json = srv.status_json();
            conn.send(|o| Response::Status { json: &json }.encode(Op::Status, rid, o));
        }
    }
}

/// Answers Promote/Demote: the status after the change, or the error.
fn role_change_answer(srv: &Srv, conn: &Conn, rid: u64, op: Op, res: Result<(), (u16, String)>) {
    match res {
        Ok(()) => {
            let json = srv.status_json();
            conn.send(|o| Response::Status { json: &json }.encode(op, rid, o));
        }
        Err((code, msg)) => {
            srv.m.error(code);
            conn.send(|o| err_frame(o, rid, code, &msg));
        }
    }
}

/// Makes this replica the primary: its receiver stops (after writing
/// everything received), the epoch rises past any seen, the idempotence
/// tables are rebuilt from the journals, and it starts shipping to its peer.
async fn promote(srv: &Rc<Srv>) -> Result<(), (u16, String)> {
    let r = &srv.repl;
    let from = match r.role() {
        Role::Primary | Role::Standalone => return Ok(()),
        // A primary waiting for its peer at start: the operator decides it
        // serves (a new term, above any epoch seen).
        from @ (Role::Replica | Role::Waiting) => from,
        other => return Err((codes::NOT_PRIMARY, format!("this node is {}; try again", other.name()))),
    };
    // Epochs are `term << 32 | start`: a promotion starts a new term, above
    // every epoch either site can reach by restarting, so a promoted
    // replica always wins against its old primary (crate::epoch).
    let epoch = Epoch::from_raw(srv.log.epoch())
        .promotion(Epoch::from_raw(r.seen_epoch.load(Ordering::Acquire)))
        .ok_or_else(|| {
            (
                crate::Error::Corrupt(String::new()).code(),
                format!(
                    "no term is left above epoch {} (seen {}): this node cannot be promoted",
                    srv.log.epoch(),
                    r.seen_epoch.load(Ordering::Acquire)
                ),
            )
        })?;
    if let Err(now) = r.change(Change::BeginPromotion) {
        return Err((
            codes::NOT_PRIMARY,
            format!("the role changed meanwhile (this node is {}); try again", now.name()),
        ));
    }
    // The receiver sees the role, writes what it holds and ends its session.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.applying.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            let _ = r.change(Change::AbandonPromotion { back_to: from });
            return Err((codes::NOT_PRIMARY, "the replication receiver did not stop in time".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The new term joins the runs its history holds (with a nonce of its
    // own): a replica's records of any other run are a split brain.
    let log = srv.log.clone();
    if let Err(e) = blocking(move || log.begin_run(epoch.raw())).await {
        let _ = r.change(Change::AbandonPromotion { back_to: from });
        return Err((e.code(), format!("persisting epoch {epoch}: {e}")));
    }
    srv.reload_journals();
    // The etcd thread may have made us step down meanwhile.
    if let Err(now) = r.change(Change::FinishPromotion) {
        return Err((codes::NOT_PRIMARY, format!("promotion overtaken: this node is {}", now.name())));
    }
    if let Err(e) = replication::start_primary(&srv.log, r) {
        tracing::error!(error = %e, "replication sender did not start");
    }
    tracing::warn!(%epoch, "promoted: this node is the primary");
    Ok(())
}

/// A primary that waited for its peer at start may serve (the peer
/// answered and takes it as primary): the next start's epoch, then the
/// role and the shipping sink together on this thread, before any append.
async fn serve_after_wait(srv: &Rc<Srv>) -> Result<(), (u16, String)> {
    let r = &srv.repl;
    if r.role() != Role::Waiting {
        return Ok(());
    }
    let Some(epoch) = Epoch::from_raw(srv.log.epoch()).restart() else {
        return Err((codes::NOT_PRIMARY, "no start is left in this term: promote this node instead".into()));
    };
    let log = srv.log.clone();
    blocking(move || log.begin_run(epoch.raw())).await.map_err(|e| (e.code(), format!("raising the epoch: {e}")))?;
    if let Err(now) = r.change(Change::Serve) {
        return Err((codes::NOT_PRIMARY, format!("the role changed meanwhile: this node is {}", now.name())));
    }
    srv.reload_journals();
    if let Err(e) = replication::start_primary(&srv.log, r) {
        tracing::error!(error = %e, "replication sender did not start");
    }
    tracing::warn!(%epoch, "serving as primary: the peer answered");
    Ok(())
}

/// Makes this primary a replica (planned): no new appends; the waiting
/// ones finish; with `sync`, waits until the replica is durable at every
/// journal's end, so promoting it loses nothing. A fence meanwhile (a newer
/// primary answered, the etcd lease was lost) ends the demotion: the node
/// steps down as fenced and never goes back to primary (`role.rs`).
async fn demote(srv: &Rc<Srv>, sync: bool, timeout: Duration) -> Result<(), (u16, String)> {
    let r = &srv.repl;
    match r.role() {
        Role::Replica => return Ok(()),
        Role::Primary => {}
        Role::Standalone => {
            return Err((codes::NO_REPLICA, "this node runs standalone: there is no replica to hand over to".into()))
        }
        other => return Err((codes::NOT_PRIMARY, format!("this node is {}; try again", other.name()))),
    }
    if let Err(now) = r.change(Change::BeginDemotion) {
        return Err((codes::NOT_PRIMARY, format!("this node is {}; try again", now.name())));
    }
    let deadline = Instant::now() + timeout;
    let fenced = || {
        let e = r.seen_epoch.load(Ordering::Acquire);
        Err((
            codes::FENCED,
            format!(
                "fenced during the demotion: a newer primary exists (epoch {e}); this node steps down to replica \
                 without the handover it was asked for"
            ),
        ))
    };
    let undo = |why: String| {
        srv.kick.notify_one();
        match r.change(Change::AbandonDemotion) {
            Ok(_) => Err((codes::TIMEOUT, format!("{why}; still primary"))),
            Err(_) => fenced(),
        }
    };
    // Appends already taken are answered (pumped by the loop).
    while srv.pending_acks() > 0 || srv.in_flight() > 0 {
        if r.role() != Role::Demoting {
            return fenced();
        }
        if Instant::now() > deadline {
            return undo("appends in flight did not finish in time".into());
        }
        srv.kick.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if sync {
        loop {
            if r.role() != Role::Demoting {
                return fenced();
            }
            let behind: Vec<String> = srv
                .log
                .journals()
                .iter()
                .filter(|j| r.journal(j.id()).durable.load(Ordering::Acquire) < j.next_lsn())
                .map(|j| j.name().to_string())
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return undo(format!("the replica is not durable at the end of {behind:?} in time"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    if r.change(Change::FinishStepDown).is_err() {
        return fenced();
    }
    replication::stop_primary(&srv.log, r);
    tracing::warn!(sync, "demoted: this node is a replica");
    Ok(())
}

/// `(producer, first_seq, resend)`: who sends the append, and whether it
/// was sent before (see `producers.rs`).
fn append(
    srv: &Rc<Srv>,
    conn: &Rc<Conn>,
    rid: u64,
    journal: &str,
    durability: Durability,
    (producer, first_seq, resend): (u64, u64, bool),
    records: &[&[u8]],
) {
    let start = Instant::now();
    let fail = |code: u16, msg: &str| {
        srv.m.error(code);
        conn.send(|o| err_frame(o, rid, code, msg));
    };
    if srv.draining.get() {
        return fail(codes::SHUTTING_DOWN, "the daemon is shutting down; append not taken");
    }
    if conn.role_refused.get() {
        return fail(
            codes::NOT_PRIMARY,
            "an earlier append of this connection was refused (not primary); reconnect and resend in order",
        );
    }
    // The role first: a node that takes no appends does not even look the
    // journal up (on a replica that would build its idempotence table).
    let role = srv.repl.role();
    match role {
        Role::Primary | Role::Standalone => {}
        Role::SteppingDown => {
            // `not-primary`, not `fenced`: this append was not taken, and a
            // client sends it again as a first send (`fenced` answers
            // appends that were taken and may have been written).
            conn.role_refused.set(true);
            let e = srv.repl.seen_epoch.load(Ordering::Acquire);
            return fail(codes::NOT_PRIMARY, &format!("fenced: a newer primary exists (epoch {e}); append not taken"));
        }
        r => {
            conn.role_refused.set(true);
            return fail(codes::NOT_PRIMARY, &format!("this node is {} (not primary); append not taken", r.name()));
        }
    }
    let Some(jd) = srv.journal(journal) else {
        let e = Error::UnknownJournal(journal.to_string());
        return fail(e.code(), &e.to_string());
    };
    let mode = if durability == Durability::Default { jd.durability.get() } else { durability };
    if role == Role::Standalone && mode != Durability::Local {
        return fail(
            codes::NO_REPLICA,
            &format!("durability {} needs a replica; this node runs standalone", durability_name(mode)),
        );
    }
    let count = records.len() as u64;
    if producer != 0 && first_seq.checked_add(count).is_none() {
        let e = ProtoError::Malformed("sequence numbers overflow");
        return fail(e.code(), &e.to_string());
    }
    let payload: usize = records.iter().map(|r| r.len()).sum();
    let bytes = payload + 32 * records.len();
    let ack = |ticket: Option<Ticket>, first_lsn: u64| Ack {
        conn: conn.clone(),
        request_id: rid,
        ticket,
        mode,
        first_lsn,
        count: count as u32,
        bytes,
        payload,
        start,
    };
    if producer != 0 {
        let check = jd.producers.borrow_mut().check(producer, first_seq, count, resend);
        let last = first_seq + count - 1;
        match check {
            Check::New => {}
            Check::Written { lsn, ticket } => {
                // Answered with the original LSN only once the stored
                // records are known to be these (read back and compared).
                let crcs: Vec<u32> = records.iter().map(|r| crc32c::crc32c(r)).collect();
                let a = ack(ticket, lsn);
                a.hold();
                tokio_uring::spawn(answer_resend(srv.clone(), jd, a, crcs));
                return;
            }
            Check::Unknown { newest } => {
                return fail(
                    codes::SEQUENCE_UNKNOWN,
                    &format!(
                        "producer {producer}: the resend of sequence {first_seq}..{last} is not remembered here \
                         (newest remembered: {newest}); it may have been written before, so it is not written again"
                    ),
                );
            }
            Check::Conflict { newest } => {
                return fail(
                    codes::SEQUENCE_CONFLICT,
                    &format!(
                        "producer {producer}: sequence {first_seq}..{last} was already used (newest {newest}) and \
                         this is not a resend: another writer uses this producer id, or the producer restarted \
                         its sequences; not written"
                    ),
                );
            }
        }
    }
    let tag = (producer != 0).then_some(Tag { producer, seq: first_seq });
    let res = jd.j.submit_many(records, tag, || srv.pump(true).map(|_| ()));
    match res {
        Ok((first, last)) => {
            if producer != 0 {
                // The durable end as of the loop's last turn (no journal lock
                // per append): it only decides which settled producer may be
                // forgotten, and a value behind the true one is the safe side.
                let durable = jd.last_durable.get();
                jd.producers.borrow_mut().record(producer, first_seq, count, first, Some(last), durable);
            }
            ack(Some(last), first).queue(&jd);
        }
        Err(e) => fail(e.code(), &e.to_string()),
    }
}

/// Answers a resend that the idempotence table matched to records written
/// before, once they are durable (and, for `remote-*`, confirmed): with
/// their LSN if each stored payload has the CRC32C of the one resent, else
/// `sequence-conflict` (item 5 of issue 16: a producer id reused with
/// other records is never acknowledged with their LSNs). `a` was held.
async fn answer_resend(srv: Rc<Srv>, jd: Rc<Jd>, mut a: Ack, crcs: Vec<u32>) {
    // Not in a queue that a step-down fails (`Jd::fail_waiting`): after each
    // wait, a node that is no longer primary answers as a fenced one does.
    let still_primary = |a: &Ack| -> bool {
        if srv.repl.role().is_primary() {
            return true;
        }
        srv.m.error(codes::FENCED);
        a.fail_with(codes::FENCED, "fenced: this node is no longer primary; the resend was not answered here");
        false
    };
    // The original may still be in flight.
    while let Some(t) = a.ticket {
        match jd.j.poll(&t) {
            Ok(true) => a.ticket = None,
            Ok(false) => {
                let moved = jd.advanced.notified();
                tokio::select! {
                    _ = moved => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            Err(e) => {
                srv.m.error(e.code());
                return a.fail(&e);
            }
        }
        if !still_primary(&a) {
            return;
        }
    }
    let (j, first, n) = (jd.j.clone(), a.first_lsn, crcs.len());
    let stored = blocking(move || {
        let mut out = Vec::with_capacity(n);
        j.visit_retained(first, 1 << 20, |r| {
            out.push(crc32c::crc32c(r.payload));
            out.len() < n
        })?;
        Ok(out)
    })
    .await;
    let last = first + n as u64 - 1;
    if !still_primary(&a) {
        return;
    }
    match stored {
        Ok(s) if s == crcs => {
            srv.m.deduplicated.set(srv.m.deduplicated.get() + 1);
            if a.mode == Durability::Local {
                srv.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                a.answer();
            } else {
                // Durable here; the replica confirms it like any other.
                a.queue_held(&jd);
            }
        }
        Ok(s) if s.len() == n => {
            srv.m.error(codes::SEQUENCE_CONFLICT);
            a.fail_with(
                codes::SEQUENCE_CONFLICT,
                &format!(
                    "the records written at lsn {first}..{last} with this producer's sequences differ from the \
                     ones resent: another writer uses this producer id, or it restarted its sequences; not written"
                ),
            );
        }
        Ok(_) | Err(Error::BelowMark { .. }) => {
            srv.m.error(codes::SEQUENCE_UNKNOWN);
            a.fail_with(
                codes::SEQUENCE_UNKNOWN,
                &format!("lsn {first}..{last}, where this resend was written, is no longer held: it cannot be checked"),
            );
        }
        Err(e) => {
            srv.m.error(e.code());
            a.fail(&e);
        }
    }
}

type OwnedRec = (u64, u64, u32, Vec<u8>);

/// Reads up to `max_count` records / about `max_bytes` from `from` on the
/// blocking pool (reads are synchronous O_DIRECT preads).
async fn read_records(
    j: &Journal,
    from: u64,
    max_count: usize,
    max_bytes: usize,
) -> crate::Result<(Vec<OwnedRec>, u64)> {
    let j = j.clone();
    blocking(move || {
        let first = j.info().first_lsn;
        let from = if from == 0 { first } else { from };
        let next = j.next_lsn();
        if from >= next {
            if from > next {
                return Err(Error::NotYetWritten { lsn: from, next });
            }
            return Ok((Vec::new(), from));
        }
        let mut out: Vec<OwnedRec> = Vec::new();
        let mut bytes = 0usize;
        let chunk = max_bytes.clamp(64 << 10, 1 << 20);
        j.visit(from, chunk, |r| {
            // An answer stays within max_bytes, unless it is a single record.
            if !out.is_empty() && bytes + r.payload.len() + 24 > max_bytes {
                return false;
            }
            out.push((r.lsn, r.epoch, crc32c::crc32c(r.payload), r.payload.to_vec()));
            bytes += r.payload.len() + 24;
            out.len() < max_count && bytes < max_bytes
        })?;
        let next = out.last().map(|r| r.0 + 1).unwrap_or(from);
        Ok((out, next))
    })
    .await
}

fn encode_records(o: &mut Vec<u8>, op: Op, rid: u64, recs: &[OwnedRec], next: u64) {
    let records: Vec<WireRecord<'_>> = recs
        .iter()
        .map(|(lsn, epoch, crc, p)| WireRecord { lsn: *lsn, epoch: *epoch, crc32c: *crc, payload: p })
        .collect();
    Response::Records { records, next_lsn: next }.encode(op, rid, o);
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> crate::Result<T> + Send + 'static) -> crate::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Io(std::io::Error::other(format!("blocking task failed: {e}")))),
    }
}

async fn subscription(srv: Rc<Srv>, conn: Rc<Conn>, jd: Rc<Jd>, rid: u64, from: u64, sub: Rc<Sub>) {
    let max_inflight = srv.cfg.limits.max_inflight_bytes as usize;
    let frame_cap = (srv.cfg.limits.max_frame_bytes as usize).saturating_sub(HEADER_LEN + 64).max(4096);
    let mut next = from;
    // On a replica, a cut-back to its primary's history may replace records
    // this subscription already sent: it ends then, never mixing histories.
    let cuts = jd.j.cut_generation();
    loop {
        if conn.gone.get() || conn.done.get() || !conn.subs.borrow().contains_key(&rid) {
            break;
        }
        if jd.j.cut_generation() != cuts {
            let code = Error::NotYetWritten { lsn: next, next: jd.j.next_lsn() }.code();
            srv.m.error(code);
            conn.send(|o| {
                err_frame(
                    o,
                    rid,
                    code,
                    &format!(
                        "journal {}: this replica was cut back to its primary's history; records sent before lsn \
                         {next} may no longer be there: subscribe again",
                        jd.j.name()
                    ),
                )
            });
            break;
        }
        if sub.credit.get() == 0 || conn.out_len() > max_inflight {
            tokio::select! {
                _ = sub.wake.notified() => {}
                _ = conn.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        let advanced = jd.advanced.notified();
        let durable = jd.j.next_lsn();
        if next != 0 && next >= durable {
            tokio::select! {
                _ = advanced => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if !srv.journals.borrow().contains_key(jd.j.name()) {
                let e = Error::UnknownJournal(jd.j.name().to_string());
                conn.send(|o| err_frame(o, rid, e.code(), &e.to_string()));
                break;
            }
            continue;
        }
        let want = (sub.credit.get() as usize).min(frame_cap);
        match read_records(&jd.j, next, usize::MAX, want).await {
            Ok((recs, n)) => {
                if recs.is_empty() {
                    next = n;
                    continue;
                }
                // Charged as the client refunds: payload bytes, at least 1 per record.
                let used: u64 = recs.iter().map(|r| (r.3.len() as u64).max(1)).sum();
                sub.credit.set(sub.credit.get().saturating_sub(used));
                next = n;
                conn.send(|o| encode_records(o, Op::Subscribe, rid, &recs, n));
            }
            Err(e) => {
                srv.m.error(e.code());
                conn.send(|o| err_frame(o, rid, e.code(), &e.to_string()));
                break;
            }
        }
    }
    let mut subs = conn.subs.borrow_mut();
    if subs.get(&rid).is_some_and(|x| Rc::ptr_eq(x, &sub)) {
        subs.remove(&rid);
    }
}

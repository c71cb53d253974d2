//! The wire simulation: the daemon's own server (`mirrorlog::daemon::Driven`:
//! connection tasks, framing, back-pressure, dispatch, appends, the
//! idempotence table, the ack queues, the drain) serving clients over
//! simulated wires, on simulated devices, by a paused clock that only the
//! simulation moves, on one thread, driven by one seed.
//!
//! Clients are producers (ids and growing sequences, one append at a
//! time, resent after a reconnect) and plain clients (no id, several
//! appends in flight, never resent). Appends ask for `local`,
//! `remote-received` or `remote-durable`; the simulation plays the
//! replica's acknowledgements (it publishes how far the replica received
//! and made durable, or stalls, so `remote-*` appends time out with
//! `replica-timeout` and are resent). The wire delivers a client's bytes
//! in pieces of any size, holds a small window of answers (a client that
//! stops reading back-pressures the server), and is cut (reset) at any
//! point; clients send frames with a bad CRC, and frames they never
//! finish (the frame timeout closes them); a second writer resends under
//! an honest producer's id with other bytes; clients read records back
//! and mark. The node is stopped with a drain (SIGTERM), or the power
//! fails now or at one of the next writes; a bit rots on one mirror.
//!
//! Checked: every answer with an LSN names records holding exactly the
//! bytes sent; no LSN is acknowledged for two different records, and no
//! producer's record under two LSNs; a `remote-*` append is acknowledged
//! only once the replica confirmed its records as asked; every
//! acknowledged record reads back (over the wire, and from the devices
//! after every crash and restart); no honest record is on disk twice (the
//! documented exception: a forgotten producer's first append); an honest
//! producer is never refused as a conflict, a second writer never
//! acknowledged; every error code is one the situation allows; the drain
//! ends within its timeout while clients read; no panic.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mirrorlog::codes;
use mirrorlog::daemon::config::DaemonConfig;
use mirrorlog::daemon::{Driven, Stream};
use mirrorlog::epoch::Epoch;
use mirrorlog::protocol::{decode_frame, encode_frame, Durability, Op, Request, Response};
use mirrorlog::replication::{Change, ReplConfig, ReplShared, Role};
use mirrorlog::storage::{SimConfig, SimStorage};
use mirrorlog::{Config, Journal, MirrorLog};
use tokio::sync::Notify;

use super::{counters, draw_payload, rot_one, tagged_twice, Failure, Rng, DEV_SIZE, JOURNAL};

/// Frames a client may send: the daemon's limit (small, so that a few
/// appends fill it).
const MAX_FRAME: u64 = 32 << 10;
/// An append's payload at most: one engine batch (16 KiB) with room for headers.
const MAX_APPEND: usize = 12 << 10;
/// Replica acknowledgement timeout (simulated time).
const ACK_TIMEOUT: Duration = Duration::from_millis(40);
const FRAME_TIMEOUT: Duration = Duration::from_millis(200);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

counters! {
    /// Counts of what a wire run did (coverage).
    pub struct WireCounts {
        appends_sent,
        resends,
        /// Answers with an LSN.
        acked,
        acked_remote,
        /// Resends answered with an LSN (the original's, or a first write).
        resends_acked,
        replica_timeouts,
        sequence_unknown,
        impostors_refused,
        reads_checked,
        marks,
        cuts,
        bad_frames,
        frame_timeouts,
        /// Steps in which some client did not read its answers.
        slow_readers,
        /// Connections the server closed (drain, bad frame, timeout).
        closed_by_server,
        drains,
        crashes,
        crashes_mid_write,
        crashes_between_turns,
        rots,
        verified,
        first_dups,
    }
}

thread_local! {
    /// Panics on this thread, where the server's tasks run (tokio catches a
    /// task's panic; the simulation must not miss one).
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            prev(info)
        }));
    });
}

/// One connection's wire, both directions.
#[derive(Default)]
struct Pipe {
    /// Client to server: sent; the first `arrived` bytes reached the server.
    up: Vec<u8>,
    arrived: usize,
    /// Server to client: arrived, not read by the client yet.
    down: Vec<u8>,
    /// What the wire holds towards the client at most (its buffers).
    window: usize,
    /// The client reset the connection.
    reset: bool,
    /// The server closed it (the client reads what arrived, then EOF).
    closed: bool,
}

#[derive(Default)]
struct Wire {
    p: RefCell<Pipe>,
    readable: Notify,
    writable: Notify,
}

/// The server's end of a wire.
struct ServerEnd(Rc<Wire>);

fn reset_err() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::ConnectionReset)
}

impl Stream for ServerEnd {
    async fn read_into(&self, mut buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
        debug_assert_eq!(buf.len(), at);
        loop {
            {
                let mut p = self.0.p.borrow_mut();
                if p.reset {
                    return (Err(reset_err()), buf);
                }
                if p.arrived > 0 {
                    let room = (buf.capacity() - buf.len()).max(1);
                    let n = p.arrived.min(room);
                    buf.extend(p.up.drain(..n));
                    p.arrived -= n;
                    return (Ok(n), buf);
                }
                if p.closed {
                    return (Ok(0), buf);
                }
            }
            self.0.readable.notified().await;
        }
    }

    async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        let mut off = 0;
        loop {
            match self.try_send(&buf[off..]) {
                Err(e) => return (Err(e), buf),
                Ok(n) => off += n,
            }
            if off == buf.len() {
                return (Ok(()), buf);
            }
            self.0.writable.notified().await;
        }
    }

    fn try_send(&self, b: &[u8]) -> std::io::Result<usize> {
        let mut p = self.0.p.borrow_mut();
        if p.reset || p.closed {
            return Err(reset_err());
        }
        let n = b.len().min(p.window.saturating_sub(p.down.len()));
        p.down.extend_from_slice(&b[..n]);
        Ok(n)
    }

    fn close(&self) {
        self.0.p.borrow_mut().closed = true;
        self.0.readable.notify_one();
        self.0.writable.notify_one();
    }
}

/// An append as a client sends it (again).
#[derive(Clone)]
struct Req {
    client: usize,
    producer: u64,
    seq: u64,
    records: Rc<Vec<Vec<u8>>>,
    mode: Durability,
    resend: bool,
    /// Sent under another producer's id, with other bytes.
    impostor: bool,
}

enum Sent {
    Append(Req),
    Read { lsn: u64 },
    Mark,
}

struct ClientConn {
    wire: Rc<Wire>,
    /// The node's run it was made to (answers are checked against what
    /// the replica had confirmed in that run).
    run: usize,
    next_rid: u64,
    sent: BTreeMap<u64, Sent>,
    /// The client does not read its answers until this step.
    slow_until: u32,
    /// Bytes read, not yet a whole frame.
    inbuf: Vec<u8>,
}

struct Client {
    /// 0: a plain client (no idempotence).
    producer: u64,
    next_seq: u64,
    conn: Option<ClientConn>,
    /// A producer's append not answered with an LSN or a final refusal:
    /// resent on the next connection.
    waiting: Option<Req>,
}

struct Node {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    driven: Driven,
    log: Arc<MirrorLog>,
    repl: Arc<ReplShared>,
}

impl Node {
    /// Runs `f` on the node's executor (its tasks run while `f` yields).
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.local.block_on(&self.rt, f)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Tasks (and their timers) are dropped inside the runtime.
        let _g = self.rt.enter();
        let local = std::mem::take(&mut self.local);
        drop(local);
    }
}

type Res = Result<(), String>;

struct WireSim {
    seed: u64,
    rng: Rng,
    storage: SimStorage,
    cfg: Config,
    dcfg: DaemonConfig,
    mirrors: usize,
    node: Option<Node>,
    /// Per run of the node: how far the replica confirmed (received,
    /// durable), as published to the server.
    published: Vec<(u64, u64)>,
    /// The power fails before this many more turns of the server (between
    /// a write's completion and its ack, or an ack and its sending).
    crash_in_turns: Option<u32>,
    /// The replica confirms nothing before this step.
    replica_down_until: u32,
    clients: Vec<Client>,
    /// Every producer record sent: (producer, seq) -> bytes.
    sent: HashMap<(u64, u64), Vec<u8>>,
    first_appends: HashSet<(u64, u64)>,
    /// Every acknowledged record: lsn -> bytes.
    acked: BTreeMap<u64, Rc<Vec<Vec<u8>>>>,
    /// Producer records acknowledged: (producer, seq) -> lsn.
    acked_seq: HashMap<(u64, u64), u64>,
    rotted: HashMap<u64, usize>,
    written: u64,
    counts: WireCounts,
    trace: Vec<String>,
    step: u32,
}

impl WireSim {
    fn new(seed: u64) -> Result<WireSim, String> {
        count_panics();
        let storage = SimStorage::new(SimConfig::new(seed ^ 0x3172_e000));
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        // Writes complete some turns later, and out of order.
        storage.set_latency([0, 30, 60, 85][rng.below(4) as usize]);
        let (cfg, log, mirrors) = super::one_site(&storage, &mut rng)?;
        drop(log);
        let dcfg = daemon_config(&cfg, &mut rng)?;
        let plain = rng.below(2);
        let clients = (0..2 + rng.below(3))
            .map(|i| Client { producer: if i < plain { 0 } else { 100 + i }, next_seq: 1, conn: None, waiting: None })
            .collect();
        let mut sim = WireSim {
            seed,
            rng,
            storage,
            cfg,
            dcfg,
            mirrors,
            node: None,
            published: Vec::new(),
            replica_down_until: 0,
            crash_in_turns: None,
            clients,
            sent: HashMap::new(),
            first_appends: HashSet::new(),
            acked: BTreeMap::new(),
            acked_seq: HashMap::new(),
            rotted: HashMap::new(),
            written: 0,
            counts: WireCounts::default(),
            trace: Vec::new(),
            step: 0,
        };
        sim.start()?;
        Ok(sim)
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{}: {s}", self.step));
    }

    fn node(&self) -> Result<&Node, String> {
        self.node.as_ref().ok_or_else(|| "no node running".to_string())
    }

    fn journal(&self) -> Result<Journal, String> {
        self.node()?.log.journal(JOURNAL).map_err(|e| format!("journal: {e}"))
    }

    /// Opens the set and starts a primary's server on it (a daemon start:
    /// the next epoch of its term, no peer: the simulation is the replica).
    fn start(&mut self) -> Res {
        self.storage.crash_after_writes(u64::MAX);
        let log = Arc::new(MirrorLog::open(&self.cfg).map_err(|e| format!("open: {e}"))?);
        let epoch = Epoch::from_raw(log.epoch()).restart().ok_or("no start left in the term")?;
        log.begin_run(epoch.raw()).map_err(|e| format!("begin run: {e}"))?;
        let repl =
            ReplShared::new(ReplConfig { ack_timeout: ACK_TIMEOUT, ..ReplConfig::without_peer(Role::Primary, "sim") });
        repl.change(Change::Serve).map_err(|now| format!("serve: the role is {}", now.name()))?;
        repl.connected.store(true, Ordering::Release);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let local = tokio::task::LocalSet::new();
        let driven = {
            let _g = rt.enter();
            Driven::new(log.clone(), self.dcfg.clone(), repl.clone()).map_err(|e| format!("server: {e}"))?
        };
        self.published.push((0, 0));
        self.node = Some(Node { rt, local, driven, log, repl });
        let j = self.journal()?;
        self.note(format!("run {}: serving at epoch {epoch}, next {}", self.published.len() - 1, j.next_lsn()));
        Ok(())
    }

    /// Turns the server until nothing moves (its tasks ran, the batches
    /// formed were written and answered). Returns false if the power failed.
    fn settle(&mut self) -> Result<bool, String> {
        let node = self.node.as_ref().ok_or("no node running")?;
        let storage = self.storage.clone();
        let crash_in = &mut self.crash_in_turns;
        let r = node.block_on(async {
            let mut quiet = 0;
            for _ in 0..2000 {
                match crash_in {
                    Some(0) => {
                        *crash_in = None;
                        storage.crash();
                    }
                    Some(n) => *n -= 1,
                    None => {}
                }
                if storage.crashed() {
                    return Ok(false);
                }
                match node.driven.turn() {
                    Ok(0) => quiet += 1,
                    Ok(_) => quiet = 0,
                    Err(_) if storage.crashed() => return Ok(false),
                    Err(e) => return Err(format!("the write driver failed: {e}")),
                }
                tokio::task::yield_now().await;
                if quiet >= 4 {
                    return Ok(!storage.crashed());
                }
            }
            Err("the server did not settle in 2000 turns".to_string())
        });
        self.check_panics()?;
        r
    }

    /// Moves the node's clock by `d` (its timers fire), then settles.
    fn advance(&mut self, d: Duration) -> Result<bool, String> {
        let node = self.node()?;
        node.block_on(async {
            tokio::time::advance(d).await;
            tokio::task::yield_now().await;
        });
        self.settle()
    }

    fn check_panics(&self) -> Res {
        match PANICS.with(Cell::get) {
            0 => Ok(()),
            n => Err(format!("{n} panic(s) in the server's tasks")),
        }
    }

    /// A new connection for client `c` (its waiting append resent first).
    fn connect(&mut self, c: usize) -> Res {
        let window = [512, 4096, 64 << 10][self.rng.below(3) as usize];
        let wire = Rc::new(Wire { p: RefCell::new(Pipe { window, ..Default::default() }), ..Default::default() });
        let run = self.published.len() - 1;
        let node = self.node()?;
        node.block_on(async { node.driven.connect(ServerEnd(wire.clone()), &format!("client{c}")) });
        self.clients[c].conn =
            Some(ClientConn { wire, run, next_rid: 1, sent: BTreeMap::new(), slow_until: 0, inbuf: Vec::new() });
        if let Some(mut r) = self.clients[c].waiting.clone() {
            r.resend = true;
            self.counts.resends += 1;
            self.note(format!("client {c} connects; resends producer {} seq {}", r.producer, r.seq));
            self.send_append(c, r, false);
        }
        Ok(())
    }

    /// Queues a request on client `c`'s wire; returns its id.
    fn send(&mut self, c: usize, req: &Request<'_>, what: Sent, torn: bool) -> u64 {
        let Some(conn) = self.clients[c].conn.as_mut() else { return 0 };
        let rid = conn.next_rid;
        conn.next_rid += 1;
        let mut out = Vec::new();
        req.encode(rid, &mut out);
        if torn {
            out.truncate(out.len() / 2);
        }
        conn.wire.p.borrow_mut().up.extend_from_slice(&out);
        conn.sent.insert(rid, what);
        rid
    }

    fn send_append(&mut self, c: usize, r: Req, torn: bool) {
        let records = r.records.clone();
        let req = Request::Append {
            journal: JOURNAL,
            durability: r.mode,
            producer: r.producer,
            first_seq: r.seq,
            resend: r.resend,
            writer: None,
            records: records.iter().map(|v| v.as_slice()).collect(),
        };
        self.counts.appends_sent += 1;
        self.send(c, &req, Sent::Append(r), torn);
    }

    fn draw_mode(&mut self) -> Durability {
        [Durability::Default, Durability::Local, Durability::RemoteReceived, Durability::RemoteDurable]
            [self.rng.below(4) as usize]
    }

    /// Client `c`'s next append (a producer waits for the one before).
    fn new_append(&mut self, c: usize, torn: bool) -> Res {
        if self.clients[c].conn.is_none() {
            return self.connect(c);
        }
        if self.clients[c].waiting.is_some() {
            return Ok(());
        }
        let n = 1 + self.rng.below(3);
        let mut records: Vec<Vec<u8>> = Vec::new();
        for _ in 0..n {
            self.written += 1;
            let p = draw_payload(&mut self.rng, self.seed, self.written);
            if !records.is_empty() && records.iter().map(Vec::len).sum::<usize>() + p.len() > MAX_APPEND {
                break;
            }
            records.push(p);
        }
        let n = records.len() as u64;
        let mode = self.draw_mode();
        let cl = &mut self.clients[c];
        let r = Req {
            client: c,
            producer: cl.producer,
            seq: if cl.producer == 0 { 0 } else { cl.next_seq },
            records: Rc::new(records),
            mode,
            resend: false,
            impostor: false,
        };
        if cl.producer != 0 {
            cl.next_seq += n;
            cl.waiting = Some(r.clone());
            for (i, p) in r.records.iter().enumerate() {
                self.sent.insert((r.producer, r.seq + i as u64), p.clone());
                if r.seq == 1 {
                    self.first_appends.insert((r.producer, r.seq + i as u64));
                }
            }
        }
        self.note(format!(
            "client {c}: append{} producer {} seq {} x{n} {:?}",
            if torn { " (torn: half sent)" } else { "" },
            r.producer,
            r.seq,
            r.mode
        ));
        self.send_append(c, r, torn);
        Ok(())
    }

    /// A second writer: a new connection that resends one of producer
    /// `p`'s acknowledged records (not of its first append) with other bytes.
    fn impostor(&mut self, c: usize) -> Res {
        let p = self.clients[c].producer;
        let mut seqs: Vec<u64> = self.acked_seq.keys().filter(|k| k.0 == p && k.1 > 3).map(|k| k.1).collect();
        if p == 0 || seqs.is_empty() || self.clients[c].conn.is_none() {
            return Ok(());
        }
        seqs.sort_unstable();
        let seq = seqs[self.rng.below(seqs.len() as u64) as usize];
        self.written += 1;
        let mut other = draw_payload(&mut self.rng, self.seed, self.written);
        if Some(&other) == self.sent.get(&(p, seq)) {
            other.push(0xa5);
        }
        self.note(format!("client {c}: a second writer resends producer {p} seq {seq} with other bytes"));
        let r = Req {
            client: c,
            producer: p,
            seq,
            records: Rc::new(vec![other]),
            mode: Durability::Local,
            resend: true,
            impostor: true,
        };
        self.send_append(c, r, false);
        Ok(())
    }

    /// Moves what each wire carries: some of the bytes sent reach the
    /// server; clients that read take their answers.
    fn network(&mut self) -> Res {
        for c in 0..self.clients.len() {
            let Some(conn) = self.clients[c].conn.as_ref() else { continue };
            {
                let mut p = conn.wire.p.borrow_mut();
                let pending = p.up.len() - p.arrived;
                if pending > 0 {
                    let n = if self.rng.chance(70) { pending } else { 1 + self.rng.below(pending as u64) as usize };
                    p.arrived += n;
                    drop(p);
                    conn.wire.readable.notify_one();
                }
            }
            if conn.slow_until > self.step {
                self.counts.slow_readers += 1;
                continue;
            }
            self.read_answers(c)?;
        }
        Ok(())
    }

    /// Client `c` reads and checks every answer that arrived.
    fn read_answers(&mut self, c: usize) -> Res {
        let Some(conn) = self.clients[c].conn.as_mut() else { return Ok(()) };
        let (got, ended) = {
            let mut p = conn.wire.p.borrow_mut();
            (std::mem::take(&mut p.down), p.closed || p.reset)
        };
        conn.wire.writable.notify_one();
        conn.inbuf.extend_from_slice(&got);
        let run = conn.run;
        loop {
            let Some(conn) = self.clients[c].conn.as_mut() else { return Ok(()) };
            let (rid, opcode, body, used) = match decode_frame(&conn.inbuf, MAX_FRAME as u32 + 4096) {
                Ok(Some((f, used))) => (f.request_id, f.opcode, f.body.to_vec(), used),
                Ok(None) => break,
                Err(e) => return Err(format!("client {c}: the server sent a bad frame: {e}")),
            };
            conn.inbuf.drain(..used);
            let sent = conn.sent.remove(&rid);
            let op = match &sent {
                Some(Sent::Append(_)) => Op::Append,
                Some(Sent::Read { .. }) => Op::Read,
                Some(Sent::Mark) => Op::SetMark,
                None => Op::Error,
            };
            let frame = mirrorlog::protocol::Frame { opcode, request_id: rid, body: &body };
            let resp = Response::decode(&frame, op).map_err(|e| format!("client {c}: undecodable answer: {e}"))?;
            self.answer(c, run, rid, sent, resp)?;
        }
        if ended {
            let Some(conn) = self.clients[c].conn.take() else { return Ok(()) };
            self.counts.closed_by_server += conn.wire.p.borrow().closed as u64;
            let unanswered = conn.sent.len();
            self.note(format!("client {c}: connection ended, {unanswered} request(s) unanswered"));
        }
        Ok(())
    }

    fn answer(&mut self, c: usize, run: usize, rid: u64, sent: Option<Sent>, resp: Response<'_>) -> Res {
        let crashed = self.storage.crashed();
        match (sent, resp) {
            (None, Response::Error { code, message }) => {
                // A connection-level error (rid 0): the server closes it.
                self.note(format!("client {c}: connection error {} ({message})", codes::name(code)));
                match code {
                    codes::BAD_CHECKSUM => self.counts.bad_frames += 1,
                    codes::FRAME_TIMEOUT => self.counts.frame_timeouts += 1,
                    codes::SHUTTING_DOWN => {}
                    _ => return Err(format!("client {c}: unexpected connection error {}", codes::name(code))),
                }
                Ok(())
            }
            (None, r) => Err(format!("client {c}: an answer to request {rid}, never sent: {r:?}")),
            (Some(Sent::Append(r)), Response::Appended { first_lsn, count }) => {
                self.appended(run, &r, first_lsn, count)
            }
            (Some(Sent::Append(r)), Response::Error { code, message }) => self.refused(&r, code, message, crashed),
            (Some(Sent::Read { lsn }), Response::Records { records, .. }) => {
                let Some(rec) = records.first() else { return Ok(()) };
                if rec.lsn != lsn {
                    return Err(format!("read of {lsn} answered from {}", rec.lsn));
                }
                if let Some(want) = self.record_at(lsn) {
                    if rec.payload != want.as_slice() {
                        return Err(format!("acknowledged lsn {lsn} read back over the wire with other bytes"));
                    }
                    self.counts.reads_checked += 1;
                }
                Ok(())
            }
            (Some(Sent::Read { .. }), Response::Error { code, .. })
                if code == codes::BELOW_MARK || crashed || code == codes::SHUTTING_DOWN =>
            {
                Ok(())
            }
            (Some(Sent::Mark), Response::Ok) => Ok(()),
            (Some(Sent::Mark), Response::Error { code, .. })
                if code == codes::INVALID_MARK || crashed || code == codes::SHUTTING_DOWN =>
            {
                Ok(())
            }
            (Some(_), r) => Err(format!("client {c}: unexpected answer {r:?}")),
        }
    }

    /// The record at `lsn` as acknowledged.
    fn record_at(&self, lsn: u64) -> Option<Vec<u8>> {
        let (&first, recs) = self.acked.range(..=lsn).next_back()?;
        recs.get((lsn - first) as usize).cloned()
    }

    fn appended(&mut self, run: usize, r: &Req, first: u64, count: u32) -> Res {
        let what = format!("producer {} seq {} ({:?})", r.producer, r.seq, r.mode);
        if r.impostor {
            return Err(format!("a second writer's resend under {what} was acknowledged with lsn {first}"));
        }
        if count as usize != r.records.len() {
            return Err(format!("{what}: {count} records acknowledged, {} sent", r.records.len()));
        }
        let end = first + count as u64;
        let (received, durable) = self.published[run];
        let mode = if r.mode == Durability::Default { self.dcfg.journals[0].durability } else { r.mode };
        let confirmed = match mode {
            Durability::RemoteReceived => received,
            Durability::RemoteDurable => durable,
            _ => u64::MAX,
        };
        if end > confirmed {
            return Err(format!(
                "{what}: acknowledged at {first}..{end} while the replica had confirmed only up to {confirmed}"
            ));
        }
        self.counts.acked_remote += (confirmed != u64::MAX) as u64;
        // The records there are the ones sent (unless a mark reclaimed
        // them since the server answered: a client reads its answers late).
        let j = self.journal()?;
        for (i, want) in r.records.iter().enumerate() {
            let at = first + i as u64;
            if at < j.mark() {
                continue;
            }
            match super::producers::read_retained(&j, at) {
                Ok(got) if got == *want => {}
                Ok(_) => return Err(format!("{what}: acknowledged with lsn {at}, which holds other bytes")),
                Err(e) if self.storage.crashed() => {
                    self.note(format!("{what}: read back {at} after the power failed: {e}"));
                }
                Err(e) => return Err(format!("{what}: acknowledged lsn {at} unreadable: {e}")),
            }
        }
        self.counts.resends_acked += r.resend as u64;
        for i in 0..count as u64 {
            if let Some(other) = self.record_at(first + i) {
                if other != r.records[i as usize] {
                    return Err(format!("lsn {} acknowledged for two different records", first + i));
                }
            }
        }
        if r.producer != 0 {
            for i in 0..count as u64 {
                let k = (r.producer, r.seq + i);
                if let Some(&before) = self.acked_seq.get(&k) {
                    if before != first + i {
                        return Err(format!(
                            "producer {} seq {} acknowledged under lsn {before} and {}",
                            k.0,
                            k.1,
                            first + i
                        ));
                    }
                }
                self.acked_seq.insert(k, first + i);
            }
            let cl = &mut self.clients[r.client];
            if cl.waiting.as_ref().is_some_and(|w| w.seq == r.seq) {
                cl.waiting = None;
            }
        }
        self.note(format!("{what}: acknowledged {first}..{end}"));
        self.counts.acked += 1;
        self.acked.insert(first, r.records.clone());
        Ok(())
    }

    fn refused(&mut self, r: &Req, code: u16, message: &str, crashed: bool) -> Res {
        let what = format!("producer {} seq {}", r.producer, r.seq);
        self.note(format!("{what}: refused, {} ({message})", codes::name(code)));
        if r.impostor {
            return match code {
                codes::SEQUENCE_CONFLICT | codes::SEQUENCE_UNKNOWN => {
                    self.counts.impostors_refused += 1;
                    Ok(())
                }
                _ if crashed || code == codes::SHUTTING_DOWN || code == codes::FULL => Ok(()),
                _ => Err(format!("a second writer's resend under {what}: refused with {}", codes::name(code))),
            };
        }
        match code {
            // Kept: resent on the next connection (a producer), or lost (a
            // plain client: the outcome is unknown).
            codes::SHUTTING_DOWN | codes::FULL => Ok(()),
            codes::REPLICA_TIMEOUT => {
                self.counts.replica_timeouts += 1;
                Ok(())
            }
            codes::SEQUENCE_UNKNOWN if r.resend => {
                // The application decides; the client gives up on it.
                self.counts.sequence_unknown += 1;
                let cl = &mut self.clients[r.client];
                if cl.waiting.as_ref().is_some_and(|w| w.seq == r.seq) {
                    cl.waiting = None;
                }
                Ok(())
            }
            _ if crashed => Ok(()),
            _ => Err(format!("{what}: an honest append refused with {} ({message})", codes::name(code))),
        }
    }

    /// The replica's side: it confirms more (received before durable), or
    /// stalls.
    fn replica(&mut self) -> Res {
        if self.step < self.replica_down_until {
            return Ok(());
        }
        if self.rng.chance(4) {
            let n = 5 + self.rng.below(40) as u32;
            self.note(format!("the replica confirms nothing for {n} steps"));
            self.replica_down_until = self.step + n;
            return Ok(());
        }
        let j = self.journal()?;
        let end = j.next_lsn();
        let run = self.published.len() - 1;
        let (mut received, mut durable) = self.published[run];
        received = received.max(durable + self.rng.below(end.saturating_sub(durable) + 1)).min(end);
        durable += self.rng.below(received.saturating_sub(durable) + 1);
        self.published[run] = (received, durable);
        let node = self.node()?;
        let jr = node.repl.journal(j.id());
        jr.received.store(received, Ordering::Release);
        jr.durable.store(durable, Ordering::Release);
        node.repl.wake.notify_one();
        Ok(())
    }

    /// Stops the node with a drain (SIGTERM); every client reads until its
    /// connection ends. Then starts it again and checks every record.
    fn drain_restart(&mut self) -> Res {
        self.note("SIGTERM: drain".into());
        self.counts.drains += 1;
        self.node()?.driven.begin_drain();
        let mut waited = Duration::ZERO;
        loop {
            for c in 0..self.clients.len() {
                if let Some(conn) = self.clients[c].conn.as_mut() {
                    conn.slow_until = 0;
                }
            }
            self.network()?;
            if !self.advance(Duration::from_millis(5))? {
                return self.crash_restart();
            }
            waited += Duration::from_millis(5);
            if self.node()?.driven.drained() {
                break;
            }
            if waited > DRAIN_TIMEOUT {
                let n = self.node()?;
                return Err(format!(
                    "the drain did not end within {DRAIN_TIMEOUT:?} while clients read: {} acks waiting, {} connections",
                    n.driven.waiting_acks(),
                    n.driven.connections()
                ));
            }
        }
        self.network()?;
        self.node = None;
        self.drop_connections();
        self.start()?;
        self.verify()
    }

    /// The power failed: every connection breaks; the node starts again on
    /// the devices as the failure left them.
    fn crash_restart(&mut self) -> Res {
        self.counts.crashes += 1;
        self.note("the power fails: the node restarts".into());
        // What reached the clients before the failure still arrives.
        for c in 0..self.clients.len() {
            if let Some(conn) = self.clients[c].conn.as_mut() {
                conn.slow_until = 0;
            }
            self.read_answers(c)?;
        }
        self.node = None;
        self.drop_connections();
        self.crash_in_turns = None;
        self.storage.crash();
        self.storage.reopen();
        self.start()?;
        self.verify()
    }

    fn drop_connections(&mut self) {
        for c in &mut self.clients {
            c.conn = None;
        }
    }

    /// Every acknowledged record at or above the mark reads back from the
    /// devices; no honest producer record is on disk twice.
    fn verify(&mut self) -> Res {
        let j = self.journal()?;
        let mark = j.mark().max(1);
        for (&first, recs) in &self.acked {
            for (i, want) in recs.iter().enumerate() {
                let lsn = first + i as u64;
                if lsn < mark {
                    continue;
                }
                match j.read(lsn) {
                    Ok(got) if got == *want => {}
                    Ok(_) => return Err(format!("acknowledged lsn {lsn} holds other bytes")),
                    Err(e) => return Err(format!("acknowledged lsn {lsn} is lost: {e}")),
                }
            }
        }
        for (p, s, a, b) in tagged_twice(&j, &self.sent)? {
            if !self.first_appends.contains(&(p, s)) {
                return Err(format!("producer {p} seq {s} is written twice (lsn {a} and {b})"));
            }
            self.counts.first_dups += 1;
        }
        self.counts.verified += 1;
        Ok(())
    }

    fn pick_connected(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..self.clients.len()).filter(|&c| self.clients[c].conn.is_some()).collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len() as u64) as usize])
    }

    fn step(&mut self) -> Res {
        let c = self.rng.below(self.clients.len() as u64) as usize;
        match self.rng.below(100) {
            0..=49 => {
                // Appends from one to all clients, pipelined by plain ones.
                for c in 0..self.clients.len() {
                    if self.rng.chance(60) {
                        let k = if self.clients[c].producer == 0 { 1 + self.rng.below(3) } else { 1 };
                        for _ in 0..k {
                            self.new_append(c, false)?;
                        }
                    }
                }
            }
            50..=55 => {
                let lsns: Vec<u64> = self.acked.keys().copied().collect();
                if let (Some(c), false) = (self.pick_connected(), lsns.is_empty()) {
                    let lsn = lsns[self.rng.below(lsns.len() as u64) as usize];
                    self.note(format!("client {c}: read {lsn}"));
                    let req = Request::Read { journal: JOURNAL, from: lsn, max_count: 1, max_bytes: 64 << 10 };
                    self.send(c, &req, Sent::Read { lsn }, false);
                }
            }
            56..=60 => {
                if let Some(c) = self.pick_connected() {
                    let j = self.journal()?;
                    let (m, next) = (j.mark(), j.next_lsn());
                    let lsn = m + self.rng.below(next.saturating_sub(m) + 1);
                    self.note(format!("client {c}: mark {lsn}"));
                    self.counts.marks += 1;
                    self.send(c, &Request::SetMark { journal: JOURNAL, lsn, writer: None }, Sent::Mark, false);
                }
            }
            61..=66 => {
                if let Some(conn) = self.clients[c].conn.take() {
                    self.counts.cuts += 1;
                    self.note(format!("client {c}: connection reset ({} unanswered)", conn.sent.len()));
                    conn.wire.p.borrow_mut().reset = true;
                    conn.wire.readable.notify_one();
                    conn.wire.writable.notify_one();
                }
            }
            67..=68 => {
                if self.clients[c].conn.is_some() {
                    self.note(format!("client {c}: a frame with a bad CRC"));
                    let Some(conn) = self.clients[c].conn.as_mut() else { return Ok(()) };
                    let mut out = Vec::new();
                    encode_frame(&mut out, Op::Append as u8, 999_999, |b| b.extend_from_slice(b"not an append"));
                    let last = out.len() - 1;
                    out[last] ^= 0x40;
                    conn.wire.p.borrow_mut().up.extend_from_slice(&out);
                }
            }
            69..=70 => {
                // A frame never finished: the rest never comes.
                if self.clients[c].conn.is_some() && self.clients[c].waiting.is_none() {
                    self.new_append(c, true)?;
                    self.network()?;
                    self.settle()?;
                    self.note("the clock moves past the frame timeout".into());
                    if !self.advance(FRAME_TIMEOUT + Duration::from_millis(10))? {
                        return self.crash_restart();
                    }
                }
            }
            71..=72 => self.impostor(c)?,
            73..=76 => {
                if let Some(conn) = self.clients[c].conn.as_mut() {
                    let n = 2 + self.rng.below(20) as u32;
                    conn.slow_until = self.step + n;
                    self.note(format!("client {c}: reads nothing for {n} steps"));
                }
            }
            77..=80 => {
                if let Some(what) = rot_one(&mut self.rng, &self.storage, &mut self.rotted, self.mirrors) {
                    self.note(what);
                    self.counts.rots += 1;
                }
            }
            81..=84 => return self.drain_restart(),
            85..=88 => return self.crash_restart(),
            89..=90 => {
                if self.crash_in_turns.is_none() {
                    let n = self.rng.below(5) as u32;
                    self.note(format!("the power will fail before turn {} of the server from now", n + 1));
                    self.crash_in_turns = Some(n);
                    self.counts.crashes_between_turns += 1;
                }
            }
            91..=92 => {
                if !self.storage.crash_armed() {
                    let n = self.rng.below(6);
                    self.note(format!("the power will fail at write {} from now", n + 1));
                    self.storage.crash_after_writes(n);
                    self.counts.crashes_mid_write += 1;
                }
            }
            _ => {
                let ms = 1 + self.rng.below(60);
                self.note(format!("the clock moves {ms} ms"));
                if !self.advance(Duration::from_millis(ms))? {
                    return self.crash_restart();
                }
            }
        }
        self.turn_network()
    }

    /// After a step's actions: the wires carry, the server runs, the clock
    /// moves a little, the replica confirms, clients read.
    fn turn_network(&mut self) -> Res {
        self.network()?;
        if !self.settle()? {
            return self.crash_restart();
        }
        self.replica()?;
        let ms = 1 + self.rng.below(3);
        if !self.advance(Duration::from_millis(ms))? {
            return self.crash_restart();
        }
        self.network()?;
        if self.storage.crashed() {
            return self.crash_restart();
        }
        Ok(())
    }
}

/// The daemon's configuration in the simulation: the engine's small
/// segments and batches, small frames and in-flight bounds, and the
/// journal with a default durability drawn from `rng`.
fn daemon_config(cfg: &Config, rng: &mut Rng) -> Result<DaemonConfig, String> {
    let devices: Vec<String> = cfg.devices.iter().map(|d: &PathBuf| format!("{:?}", d.display().to_string())).collect();
    let durability = ["local", "remote-received", "remote-durable"][rng.below(3) as usize];
    let text = format!(
        "[storage]\ndevices = [{}]\nsegment_size = \"{}\"\ndevice_size = \"{}\"\n\
         [[journal]]\nname = \"{JOURNAL}\"\ndurability = \"{durability}\"\non_replica_loss = \"block\"\n\
         [limits]\nmax_frame_bytes = \"{}\"\nmax_inflight_bytes = \"{}\"\nmax_record_size = \"{}\"\n\
         max_batch_bytes = \"{}\"\nframe_timeout = \"{}ms\"\ndrain_timeout = \"{}ms\"\nmax_connections = 16\n\
         [idempotence]\nmax_producers = {}\nwindow = 3\nscan_segments = {}\n",
        devices.join(", "),
        cfg.segment_size,
        DEV_SIZE,
        MAX_FRAME,
        [32 << 10, 64 << 10, 256 << 10][rng.below(3) as usize],
        cfg.max_record_size,
        cfg.max_batch_bytes,
        FRAME_TIMEOUT.as_millis(),
        DRAIN_TIMEOUT.as_millis(),
        2 + rng.below(2),
        1 + rng.below(4),
    );
    DaemonConfig::parse(&text).map_err(|e| format!("daemon config: {e}\n{text}"))
}

/// Runs one seed.
pub fn run(seed: u64, steps: u32) -> Result<WireCounts, Failure> {
    run_traced(seed, steps).map(|(c, _)| c)
}

/// Runs one seed; returns its counts and its trace.
pub fn run_traced(seed: u64, steps: u32) -> Result<(WireCounts, Vec<String>), Failure> {
    let fail = |sim: Option<&WireSim>, step: u32, message: String| {
        Failure::new("--wire", seed, step, message, sim.map_or(&[][..], |s| &s.trace))
    };
    PANICS.with(|p| p.set(0));
    let mut sim = WireSim::new(seed).map_err(|m| fail(None, 0, m))?;
    for step in 0..steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            return Err(fail(Some(&sim), step, m));
        }
    }
    sim.step = steps;
    if let Err(m) = sim.drain_restart().and_then(|_| sim.crash_restart()) {
        return Err(fail(Some(&sim), steps, m));
    }
    Ok((sim.counts.clone(), std::mem::take(&mut sim.trace)))
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<WireCounts, Failure> {
    super::seeds(first, n, steps, run)
}

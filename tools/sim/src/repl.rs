//! The two-site simulation: the real engine on both sites (each on its own
//! simulated devices) and the real replication sessions of both sides —
//! `PrimarySession` (handshake, negotiation, catch-up from the segments,
//! the outbox's stream, acks) and `ReplicaSession` (hello check, cut-backs,
//! resets, the split-brain check, applying, acks) — talking in the real
//! wire format over a simulated link, driven step by step by one seed.
//! Only the sockets, threads and timers of `sender.rs`/`receiver.rs` are
//! not here: the link moves bytes, a random number at a time (frames
//! arrive split), and a silence while bytes are pending stands for the
//! peer timeout.
//!
//! Steps: appends on the primary (`local`, or `remote-durable`: answered
//! only once the replica's acks say it holds the records durably),
//! deliveries over the link (some bytes each way, handled by each side),
//! marks, a link cut and a new session, a bit flipped on the link (the
//! frame's CRC must refuse it), an outbox too small for a burst (the
//! session ends and the replica catches up from the segments), the power
//! failing on either site now or at one of its next writes, a flipped bit
//! on one mirror of one site, a restart (a primary starts a new run), and a
//! failover: the primary's power fails, the replica is promoted (a new
//! term), and the old primary returns as its replica (its unshipped tail is
//! cut back by the next session; a run the new primary never followed is a
//! split brain, which an operator settles with `discard-diverged`); a
//! replica that says it is incomplete is not promoted (`may_lead`), and the
//! old primary comes back instead. In one seed of eight, also: the replica
//! site rebuilt on blank devices, and the journal deleted and created again
//! on the primary.
//!
//! Checked: every acknowledged record is on the primary with its bytes;
//! every record acknowledged `remote-durable` is on the replica too (after
//! any crash of it, and when it is promoted), unless the replica says it is
//! incomplete (and so refuses promotion); when a handshake ends, the
//! replica holds exactly a prefix of the primary's history and continues
//! right after it; whenever the link is quiet, the sites hold the same
//! records and the primary's acks say so; at the end, after healing, both
//! sites hold the same records; no frame delivered intact is refused; a
//! corrupted frame is never applied; no panic.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mirrorlog::epoch::Epoch;
use mirrorlog::frames::FrameBuf;
use mirrorlog::replication::outbox::{Outbox, Overflowed};
use mirrorlog::replication::primary_session::{encode_events, AckBook, CatchUp, Chunk, Next, PrimarySession};
use mirrorlog::replication::replica_session::{answer_hello, ReplicaSession};
use mirrorlog::replication::role::HelloAnswer;
use mirrorlog::replication::wire::Msg;
use mirrorlog::replication::{install_outbox, max_body, may_lead, Change, ReplConfig, ReplShared, Role};
use mirrorlog::storage::{SimConfig, SimStorage};
use mirrorlog::{Config, Driver, Error, Journal, MirrorLog};

use super::{counters, draw_payload, sim_config, Failure, Rng, DEV_SIZE, JOURNAL};

counters! {
    /// Counts of what a two-site run did (fault coverage).
    pub struct ReplCounts {
        appends,
        /// Appends answered `remote-durable`.
        remote_acked,
        deliveries,
        /// Sessions whose handshake ended (negotiated).
        sessions,
        /// Sessions that reached the stream.
        streams,
        cutbacks,
        resets,
        catchup_batches,
        cuts,
        /// Bits flipped on the link (each must end its session).
        link_flips,
        /// Sessions ended by a frame's check.
        frames_refused,
        /// Sessions ended by a silence (the peer timeout).
        timeouts,
        overflows,
        split_brains,
        /// Primaries fenced by a newer epoch (two promotions to one term).
        fenced,
        marks,
        crashes_primary,
        crashes_replica,
        crashes_mid_write,
        failovers,
        rots,
        restarts,
        /// Replica sites lost and rebuilt on blank devices.
        replacements,
        /// The journal deleted and created again on the primary.
        recreates,
        /// Checks of a replica that said it was incomplete.
        incomplete_seen,
        /// Failovers refused because the replica was incomplete.
        promotions_refused,
        verified,
    }
}

/// Both directions of one session's connection: bytes sent and not yet
/// delivered, and each side's receive buffer.
struct Wire {
    to_r: Vec<u8>,
    to_p: Vec<u8>,
    r_in: FrameBuf,
    p_in: FrameBuf,
}

enum Phase {
    Handshake,
    /// The journals' catch-ups, and the one in progress.
    CatchUp(Vec<CatchUp>, usize),
    /// With each journal's floor (`PrimarySession::floors`).
    Streaming(HashMap<u64, u64>),
}

/// One session: the primary's side, the replica's (once it took the
/// hello), and the link between them.
struct Link {
    ps: PrimarySession,
    book: AckBook,
    phase: Phase,
    rs: Option<ReplicaSession>,
    wire: Wire,
    /// A bit was flipped on this link: it may stall rather than deliver.
    flipped: bool,
    /// The replica's side ended (it answered an error): it handles nothing more.
    r_done: bool,
}

/// How a turn of the link went.
enum Turn {
    /// Bytes moved or were handled.
    Busy,
    Quiet,
    /// The session ended (why).
    Ended(String),
}

/// One site: its devices and its engine.
struct Site {
    name: &'static str,
    storage: SimStorage,
    cfg: Config,
    log: Option<Arc<MirrorLog>>,
    mirrors: usize,
    /// The replication state a daemon keeps (its role above all).
    shared: Arc<ReplShared>,
    /// While this site is primary: what its sessions stream from.
    outbox: Option<Arc<Outbox>>,
}

/// The replication state of a daemon with `role` (no peer address: the
/// simulation is the link).
fn repl_shared(name: &str, role: Role, backlog: usize) -> Arc<ReplShared> {
    let sh = ReplShared::new(ReplConfig { backlog_bytes: backlog, ..ReplConfig::without_peer(role, name) });
    if role == Role::Primary {
        // (It waits for its peer at start; the simulation's peer answers.)
        let _ = sh.change(Change::Serve);
    }
    sh
}

type Res = Result<(), String>;

/// How an operator's promote that was refused (`may_lead`) begins.
const REFUSED: &str = "promotion refused";

impl Site {
    fn new(
        name: &'static str,
        seed: u64,
        mirrors: usize,
        set_uuid: [u8; 16],
        role: Role,
        backlog: usize,
        unsynced: bool,
    ) -> Result<Site, String> {
        let storage = SimStorage::new(SimConfig::new(seed));
        let devices: Vec<PathBuf> = (0..mirrors).map(|i| PathBuf::from(format!("/sim/{name}{i}.dev"))).collect();
        for d in &devices {
            storage.create(d, DEV_SIZE);
        }
        let mut cfg = sim_config(devices, &storage);
        cfg.set_uuid = Some(set_uuid);
        cfg.unsynced_replica = unsynced;
        let log = MirrorLog::create(&cfg).map_err(|e| format!("{name}: create: {e}"))?;
        let shared = repl_shared(name, role, backlog);
        let mut s = Site { name, storage, cfg, log: Some(Arc::new(log)), mirrors, shared, outbox: None };
        if role == Role::Primary {
            s.serve()?;
        }
        Ok(s)
    }

    fn log(&self) -> Result<&Arc<MirrorLog>, String> {
        self.log.as_ref().ok_or_else(|| format!("{}: not open", self.name))
    }

    /// The daemon's replication state as a node configured replica starts
    /// it, knowing the newest epoch it saw (its operator told it, or it
    /// heard it from its peer).
    fn restart_as_replica(&mut self) {
        let seen = self.shared.seen_epoch.load(Ordering::Acquire);
        self.shared = repl_shared(self.name, Role::Replica, self.shared.cfg.backlog_bytes);
        self.shared.saw_epoch(seen);
    }

    /// Ships from now on (`replication::start_primary` without its thread).
    fn serve(&mut self) -> Res {
        let log = self.log()?.clone();
        self.outbox = Some(install_outbox(&log, &self.shared));
        Ok(())
    }

    fn journal(&self) -> Result<Journal, String> {
        self.log()?.journal(JOURNAL).map_err(|e| format!("{}: journal: {e}", self.name))
    }

    /// Writes until nothing is queued or in flight (the receiver's `drain`).
    fn drain(&self) -> Result<(), Error> {
        let log = self.log.as_ref().ok_or(Error::Closed)?;
        let mut driver = Driver::for_log(log)?;
        for _ in 0..100_000 {
            let js = log.journals();
            let busy = js.iter().any(|j| matches!(j.chain_end(), Err(Error::Backpressure)));
            if !busy && driver.in_flight() == 0 {
                return Ok(());
            }
            driver.pump_all(&js, true)?;
        }
        Err(Error::Corrupt("drain did not finish".into()))
    }

    /// Opens the engine again (after the power failed, on the devices as
    /// it left them).
    fn reopen(&mut self, crashed: bool) -> Res {
        self.outbox = None;
        if let Some(log) = self.log.take() {
            if Arc::strong_count(&log) != 1 {
                return Err(format!("{}: the engine is still held by a session as it restarts", self.name));
            }
        }
        if crashed {
            self.storage.reopen();
        }
        self.storage.crash_after_writes(u64::MAX);
        let log = MirrorLog::open(&self.cfg).map_err(|e| format!("{}: open after a crash: {e}", self.name))?;
        self.log = Some(Arc::new(log));
        if self.shared.role() == Role::Primary {
            // A primary starts a new run (`Epoch::restart`, as the daemon
            // does once its peer takes it as primary), then ships.
            let log = self.log()?;
            let e = Epoch::from_raw(log.epoch()).restart().ok_or("no start left in the term")?;
            log.begin_run(e.raw()).map_err(|e| format!("{}: new run: {e}", self.name))?;
            self.serve()?;
        }
        Ok(())
    }

    /// Every record of `want` at or above this site's mark reads back with
    /// its bytes.
    fn holds(&self, want: &BTreeMap<u64, Vec<u8>>, what: &str) -> Res {
        let j = match self.journal() {
            Err(e) if !want.is_empty() => return Err(format!("{e}: every record {what} is lost")),
            Err(_) => return Ok(()),
            Ok(j) => j,
        };
        let from = j.mark().max(1);
        for (lsn, p) in want.range(from..) {
            match j.read(*lsn) {
                Ok(got) if got == *p => {}
                Ok(got) => {
                    return Err(format!(
                        "{}: {what} lsn {lsn} holds other bytes ({} for {})",
                        self.name,
                        got.len(),
                        p.len()
                    ))
                }
                Err(e) => return Err(format!("{}: {what} lsn {lsn} is lost: {e}", self.name)),
            }
        }
        Ok(())
    }

    /// The records from `from` to the end.
    fn records(&self, from: u64) -> Result<BTreeMap<u64, Vec<u8>>, String> {
        let j = self.journal()?;
        let mut out = BTreeMap::new();
        // (From the lowest record held: a replica may hold less than its
        // mark says, when its own mark was above its primary's.)
        for lsn in from.max(j.info().first_lsn).max(1)..j.next_lsn() {
            let p = j.read(lsn).map_err(|e| format!("{}: lsn {lsn} unreadable: {e}", self.name))?;
            out.insert(lsn, p);
        }
        Ok(out)
    }
}

/// What the simulation knows must be kept.
#[derive(Default, Clone)]
struct Model {
    /// Acknowledged records at or above the primary's mark.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Those acknowledged `remote-durable`: on the replica too.
    remote: BTreeMap<u64, Vec<u8>>,
    /// Appends in flight when the primary's power failed.
    maybe: BTreeMap<u64, Vec<u8>>,
    mark: u64,
}

struct ReplSim {
    seed: u64,
    rng: Rng,
    /// Draws for the steps added after the seeds that found the earlier
    /// defects were recorded (replica sites rebuilt blank, the journal
    /// deleted and created again), in one seed of eight (`seed % 8 == 7`)
    /// and apart from `rng`: the other seeds run exactly as before, so
    /// they still find what they found.
    extra: Option<Rng>,
    sites: [Site; 2],
    /// Index of the primary in `sites`.
    primary: usize,
    link: Option<Link>,
    model: Model,
    /// Blocks rotted so far per site, and on which mirror: one mirror at a time.
    rotted: [HashMap<u64, usize>; 2],
    written: u64,
    counts: ReplCounts,
    trace: Vec<String>,
    step: u32,
}

/// Up to `n` bytes in flight arrive in the receiver's buffer; whether any did.
fn arrive(in_flight: &mut Vec<u8>, into: &mut FrameBuf, n: usize) -> bool {
    let n = n.min(in_flight.len());
    into.extend(&in_flight[..n]);
    in_flight.drain(..n);
    n > 0
}

/// Every whole frame in `buf`, decoded; stops at a frame refused.
fn frames(buf: &mut FrameBuf, max: usize) -> (Vec<Msg>, Option<String>) {
    let mut out = Vec::new();
    while out.len() < max {
        match Msg::next(buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => break,
            Err(e) => return (out, Some(format!("a frame refused: {e}"))),
        }
    }
    buf.compact();
    (out, None)
}

/// What the outbox holds, framed onto the link (the sender's stream loop
/// without its socket and timers): whether it held anything.
fn stream_outbox(ob: &Outbox, floors: &HashMap<u64, u64>, to_r: &mut Vec<u8>) -> Result<bool, Overflowed> {
    let mut events = Vec::new();
    ob.take(&mut events, Duration::ZERO)?;
    let any = !events.is_empty();
    let mut rest = Vec::new();
    let r = encode_events(&mut events, floors, &mut rest, |b| {
        to_r.extend_from_slice(b);
        Ok(())
    });
    debug_assert!(r.is_ok(), "a Vec takes every byte");
    to_r.extend_from_slice(&rest);
    Ok(any)
}

/// What the receiver does with the first message of a session: a hello
/// this node accepts (`answer_hello`) begins a `ReplicaSession` and is
/// answered `HelloOk`; otherwise the refusal, if any, goes into `out` and
/// the session ends (why). `now`: the simulated monotonic time.
fn take_hello(
    log: &Arc<MirrorLog>,
    shared: &Arc<ReplShared>,
    m: Msg,
    out: &mut Vec<u8>,
    now: u64,
) -> Result<ReplicaSession, String> {
    let Msg::Hello(h) = m else { return Err(format!("replica: expected a hello, got {m:?}")) };
    let mine = log.epoch();
    match answer_hello(log, shared.role(), &h) {
        Ok(HelloAnswer::Accept { change: None }) => {}
        Ok(HelloAnswer::Fenced(epoch)) => {
            Msg::Fenced { epoch, message: "newer".into() }.encode(out);
            return Err(format!("replica fenced a primary at {} (it is at {epoch})", h.epoch));
        }
        Ok(other) => return Err(format!("replica: answer {other:?} to a primary's hello")),
        Err(e) => {
            Msg::Refused { message: e.clone() }.encode(out);
            return Err(format!("replica refused the hello: {e}"));
        }
    }
    shared.saw_epoch(h.epoch);
    let rs = ReplicaSession::new(log.clone(), shared.clone(), &h, now).map_err(|e| format!("replica session: {e}"))?;
    Msg::HelloOk { epoch: mine.max(h.epoch), name: "replica".into() }.encode(out);
    Ok(rs)
}

impl ReplSim {
    fn new(seed: u64) -> Result<ReplSim, String> {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&seed.to_le_bytes());
        uuid[8] = 0x5e;
        // Backlogs from a few batches (overflows are common) to plenty.
        let backlog = [16 << 10, 256 << 10, 4 << 20][rng.below(3) as usize];
        let a = Site::new("a", seed ^ 0xA, 2 + rng.below(2) as usize, uuid, Role::Primary, backlog, false)?;
        let b = Site::new("b", seed ^ 0xB, 2 + rng.below(2) as usize, uuid, Role::Replica, backlog, false)?;
        let j = a.log()?.create_journal(JOURNAL).map_err(|e| format!("create journal: {e}"))?;
        b.log()?.create_journal_with_id(JOURNAL, j.id()).map_err(|e| format!("create journal on b: {e}"))?;
        Ok(ReplSim {
            seed,
            rng,
            extra: (seed % 8 == 7).then(|| Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)),
            sites: [a, b],
            primary: 0,
            link: None,
            model: Model::default(),
            rotted: [HashMap::new(), HashMap::new()],
            written: 0,
            counts: ReplCounts::default(),
            trace: Vec::new(),
            step: 0,
        })
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{}: {s}", self.step));
    }

    fn p(&self) -> &Site {
        &self.sites[self.primary]
    }

    fn r(&self) -> &Site {
        &self.sites[1 - self.primary]
    }

    /// Simulated monotonic time: a millisecond a step.
    fn now(&self) -> u64 {
        self.step as u64
    }

    fn next_payload(&mut self) -> Vec<u8> {
        self.written += 1;
        draw_payload(&mut self.rng, self.seed ^ 0x5151, self.written)
    }

    fn crashed(&self) -> bool {
        self.sites[0].storage.crashed() || self.sites[1].storage.crashed()
    }

    /// Ends the session (a cut, a timeout, an error of either side): the
    /// replica writes what it was given (unless its power failed), the
    /// primary's outbox stops queueing.
    fn end_session(&mut self, why: &str) {
        let Some(link) = self.link.take() else { return };
        if let Some(rs) = link.rs {
            if !self.r().storage.crashed() {
                let _ = rs.finish(&Err(why.to_string()));
            }
        }
        if let Some(ob) = &self.p().outbox {
            ob.deactivate();
        }
        self.p().shared.connected.store(false, Ordering::Release);
        self.counts.cuts += 1;
        self.note(format!("session ended ({why})"));
    }

    /// The primary's power failed: what its sender had already taken from
    /// the outbox and sent may still reach the replica (the engine ships a
    /// batch when it is claimed, before its own write completes), so the
    /// replica may hold records the primary lost; the next session cuts
    /// them back.
    fn last_words(&mut self) -> Res {
        if !self.rng.chance(50) || self.r().storage.crashed() {
            return Ok(());
        }
        let ob = self.p().outbox.clone();
        let Some(link) = self.link.as_mut() else { return Ok(()) };
        let Phase::Streaming(floors) = &link.phase else { return Ok(()) };
        if link.flipped {
            return Ok(());
        }
        if let Some(ob) = ob {
            // (An overflowed outbox had sent nothing more.)
            let _ = stream_outbox(&ob, floors, &mut link.wire.to_r);
        }
        let bytes = link.wire.to_r.len();
        self.note(format!("what the primary had sent arrives ({bytes} bytes)"));
        match self.replica_turn(bytes, usize::MAX)? {
            Turn::Ended(why) if !self.r().storage.crashed() => {
                Err(format!("the replica refused what the primary sent before its power failed: {why}"))
            }
            _ => Ok(()),
        }
    }

    /// After a step: a site whose power failed comes back, and is checked.
    fn settle_crashes(&mut self) -> Res {
        if self.p().storage.crashed() {
            self.last_words()?;
        }
        for i in 0..2 {
            if self.sites[i].storage.crashed() {
                let name = self.sites[i].name;
                self.end_session(&format!("the power failed on {name}"));
                self.crash(i)?;
            }
        }
        Ok(())
    }

    fn crash(&mut self, i: usize) -> Res {
        if i == self.primary {
            self.counts.crashes_primary += 1;
        } else {
            self.counts.crashes_replica += 1;
        }
        self.end_session("a site restarts");
        self.sites[i].reopen(true)?;
        self.note(format!("{} recovered", self.sites[i].name));
        self.verify_site(i)
    }

    /// The primary holds every acknowledged record; the replica every one
    /// acknowledged `remote-durable`.
    fn verify_site(&mut self, i: usize) -> Res {
        self.counts.verified += 1;
        if i == self.primary {
            let s = &self.sites[i];
            let j = s.journal()?;
            let mark = j.mark().max(1);
            if mark < self.model.mark.max(1) {
                return Err(format!("{}: the mark went back from {} to {mark}", s.name, self.model.mark));
            }
            s.holds(&self.model.acked, "acknowledged")?;
            // Past the acknowledged records: only appends in flight.
            let end = self.model.acked.keys().next_back().map_or(mark, |l| l + 1).max(mark);
            for lsn in end..j.next_lsn() {
                let got = j.read(lsn).map_err(|e| format!("{}: lsn {lsn} unreadable: {e}", s.name))?;
                match self.model.maybe.get(&lsn) {
                    Some(p) if *p == got => {
                        self.model.acked.insert(lsn, got);
                    }
                    _ => return Err(format!("{}: lsn {lsn} holds a record that was never appended", s.name)),
                }
            }
            self.model.maybe.clear();
            let m = self.model.mark.max(mark);
            self.model.mark = m;
            self.model.acked = self.model.acked.split_off(&m);
            self.model.remote = self.model.remote.split_off(&m);
            Ok(())
        } else {
            // A replica that lacks some of them must know it (and so
            // refuse promotion).
            let s = &self.sites[i];
            if s.log()?.incomplete().is_some() {
                self.counts.incomplete_seen += 1;
                return Ok(());
            }
            s.holds(&self.model.remote, "acknowledged remote-durable")
        }
    }

    /// A new session, if none: the primary's hello goes on the link.
    fn connect(&mut self) -> Res {
        if self.link.is_some() || self.crashed() {
            return Ok(());
        }
        let p = self.p();
        let (Some(ob), Ok(log)) = (p.outbox.clone(), p.log()) else { return Ok(()) };
        let (ps, hello) = PrimarySession::new(log.clone(), p.shared.clone(), ob);
        let book = AckBook::new(log.clone(), p.shared.clone());
        let (_, _, _, batch_buf) = log.geometry();
        let max = max_body(batch_buf);
        let mut to_r = Vec::new();
        hello.encode(&mut to_r);
        self.link = Some(Link {
            ps,
            book,
            phase: Phase::Handshake,
            rs: None,
            wire: Wire { to_r, to_p: Vec::new(), r_in: FrameBuf::new(max), p_in: FrameBuf::new(max) },
            flipped: false,
            r_done: false,
        });
        self.note("connect: hello sent".into());
        Ok(())
    }

    /// The primary's turn: handles what arrived, then sends one catch-up
    /// chunk or what the outbox holds.
    fn primary_turn(&mut self, deliver: usize) -> Result<Turn, String> {
        let now = self.now();
        let step = self.step as u64;
        let Some(link) = self.link.as_mut() else { return Ok(Turn::Quiet) };
        // Bytes the replica sent, some of them.
        let mut busy = arrive(&mut link.wire.to_p, &mut link.wire.p_in, deliver);
        let (msgs, refused) = frames(&mut link.wire.p_in, usize::MAX);
        let mut out = Vec::new();
        let mut ready = false;
        for m in msgs {
            busy = true;
            match link.phase {
                Phase::Handshake => match link.ps.handle(m, step) {
                    Ok(Next::Send(m)) => {
                        match &m {
                            Msg::Truncate { keep, .. } => {
                                self.counts.cutbacks += 1;
                                self.trace.push(format!("{step}: the primary asks for a cut-back to {keep}"));
                            }
                            Msg::Reset { next_lsn, .. } => {
                                self.counts.resets += 1;
                                self.trace.push(format!("{step}: the primary asks for a reset at {next_lsn}"));
                            }
                            Msg::Probe { lsns, .. } => {
                                self.trace.push(format!("{step}: the primary probes {lsns:?}"));
                            }
                            _ => {}
                        }
                        m.encode(&mut out)
                    }
                    Ok(Next::Wait) => {}
                    Ok(Next::Ready) => ready = true,
                    Err(e) => return Ok(Turn::Ended(format!("primary: {e}"))),
                },
                _ => {
                    if let Err(e) = link.book.handle(m, now) {
                        return Ok(Turn::Ended(format!("primary: the replica failed: {e}")));
                    }
                }
            }
        }
        if let Some(e) = refused {
            return Ok(Turn::Ended(format!("primary: {e}")));
        }
        link.wire.to_r.extend_from_slice(&out);
        if ready {
            let (marks, cus) = link.ps.catch_ups();
            for m in &marks {
                m.encode(&mut link.wire.to_r);
            }
            let froms: Vec<(Journal, u64)> = cus.iter().map(|c| (c.journal.clone(), c.from())).collect();
            link.phase = Phase::CatchUp(cus, 0);
            self.counts.sessions += 1;
            self.negotiated(&froms)?;
            return Ok(Turn::Busy);
        }
        let shared = self.p().shared.clone();
        let Some(link) = self.link.as_mut() else { return Ok(Turn::Quiet) };
        match &mut link.phase {
            Phase::Handshake => {}
            Phase::CatchUp(cus, i) => {
                busy = true;
                match cus.get_mut(*i) {
                    Some(cu) => match cu.next() {
                        Some(at) => {
                            let read = cu.journal.read_shipment(at.lsn, at.crc, at.hint, cu.target, 16 << 10);
                            if matches!(&read, Ok(v) if v.is_empty()) {
                                return Err(format!("catch-up read nothing at {} of {}", at.lsn, cu.target));
                            }
                            if let Ok(v) = &read {
                                self.counts.catchup_batches += v.len() as u64;
                            }
                            if read.is_err() && self.sites[self.primary].storage.crashed() {
                                // (A read heals a bad copy it meets: a write,
                                // which may be where the power fails.)
                                return Ok(Turn::Quiet);
                            }
                            match cu.on_read(read, &shared, &mut link.wire.to_r, now) {
                                Ok(Chunk::More) => {}
                                Ok(Chunk::Restart) => self.counts.resets += 1,
                                Ok(Chunk::Done) => {}
                                Err(e) => return Err(format!("catch-up: {e}")),
                            }
                        }
                        None => {
                            if let Some(m) = cu.mark() {
                                m.encode(&mut link.wire.to_r);
                            }
                            *i += 1;
                        }
                    },
                    None => {
                        link.ps.streaming();
                        link.phase = Phase::Streaming(link.ps.floors(cus));
                        self.counts.streams += 1;
                        self.note("the stream begins".into());
                    }
                }
            }
            Phase::Streaming(floors) => {
                let Some(ob) = self.sites[self.primary].outbox.clone() else { return Ok(Turn::Quiet) };
                match stream_outbox(&ob, floors, &mut link.wire.to_r) {
                    Ok(sent) => busy |= sent,
                    Err(Overflowed) => {
                        self.counts.overflows += 1;
                        return Ok(Turn::Ended("replication backlog overflowed".into()));
                    }
                }
            }
        }
        Ok(if busy { Turn::Busy } else { Turn::Quiet })
    }

    /// A handshake ended: the replica holds a prefix of the primary's
    /// history, and goes on right after it.
    fn negotiated(&mut self, froms: &[(Journal, u64)]) -> Res {
        let step = self.step;
        self.trace.push(format!("{step}: negotiated: {:?}", froms.iter().map(|f| f.1).collect::<Vec<_>>()));
        if self.crashed() {
            return Ok(());
        }
        let rj = self.r().journal()?;
        if rj.id() != self.p().journal()?.id() {
            // The primary deleted the journal and created it again after
            // the list went out: the replica's is the old one, which the
            // deletion in the stream (or the next session's list) removes.
            return Ok(());
        }
        for (j, from) in froms {
            if j.id() == rj.id() && rj.next_lsn() != *from {
                return Err(format!("after the negotiation the replica ends at {}, not at {from}", rj.next_lsn()));
            }
        }
        let (mine, theirs) = match (self.p().records(1), self.r().records(1)) {
            (Ok(m), Ok(t)) => (m, t),
            // (Reads heal bad copies: writes, where the power may fail.)
            _ if self.crashed() => return Ok(()),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        for (lsn, b) in &theirs {
            if mine.get(lsn).is_some_and(|m| m != b) {
                return Err(format!("after the negotiation the replica's lsn {lsn} is not the primary's"));
            }
        }
        Ok(())
    }

    /// The replica's turn: handles up to `k` frames of what arrived, writes,
    /// and acks.
    fn replica_turn(&mut self, deliver: usize, k: usize) -> Result<Turn, String> {
        if self.r().storage.crashed() {
            return Ok(Turn::Quiet);
        }
        let rlog = self.r().log()?.clone();
        let rshared = self.r().shared.clone();
        let now = self.now();
        let Some(link) = self.link.as_mut() else { return Ok(Turn::Quiet) };
        if link.r_done {
            return Ok(Turn::Quiet);
        }
        let mut busy = arrive(&mut link.wire.to_r, &mut link.wire.r_in, deliver);
        let (msgs, refused) = frames(&mut link.wire.r_in, k);
        let mut out = Vec::new();
        let mut failed = refused.map(|e| format!("replica: {e}"));
        for m in msgs {
            busy = true;
            self.counts.deliveries += 1;
            let Some(rs) = link.rs.as_mut() else {
                // The receiver: a hello first.
                match take_hello(&rlog, &rshared, m, &mut out, now) {
                    Ok(rs) => link.rs = Some(rs),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                continue;
            };
            rs.heard(now);
            match rs.handle(m) {
                Ok(Some(a)) => a.encode(&mut out),
                Ok(None) => {}
                Err(e) => {
                    failed = Some(format!("replica: {e}"));
                    break;
                }
            }
        }
        if let Some(rs) = link.rs.as_mut() {
            let js = rlog.journals();
            let mut pumped = 0;
            while failed.is_none() && (pumped == 0 || rs.in_flight() > 0) && pumped < 1000 {
                if let Err(e) = rs.pump(&js, rs.in_flight() > 0) {
                    failed = Some(format!("replica writes: {e}"));
                }
                pumped += 1;
            }
            if failed.is_none() {
                let acks = rs.acks(now);
                if !acks.is_empty() {
                    busy = true;
                    Msg::Acks(acks).encode(&mut out);
                }
            }
        }
        if let Some(e) = failed {
            // The replica's side ends: what it tells the primary goes out.
            link.r_done = true;
            if let Some(rs) = link.rs.take() {
                if let Some(m) = rs.finish(&Err(e.clone())) {
                    m.encode(&mut out);
                }
            }
            link.wire.to_p.extend_from_slice(&out);
            return Ok(Turn::Ended(e));
        }
        link.wire.to_p.extend_from_slice(&out);
        Ok(if busy { Turn::Busy } else { Turn::Quiet })
    }

    /// One round of the link: the primary, then up to `k` frames on the
    /// replica (a random number of bytes moving each way), then the
    /// primary again.
    fn round(&mut self, k: usize) -> Result<Turn, String> {
        let mut busy = false;
        for side in 0..3 {
            let bytes = 1 + self.rng.below(96 << 10) as usize;
            let t = if side == 1 { self.replica_turn(bytes, k)? } else { self.primary_turn(bytes)? };
            if self.crashed() {
                return Ok(Turn::Quiet);
            }
            match t {
                Turn::Busy => busy = true,
                Turn::Quiet => {}
                Turn::Ended(why) => {
                    self.session_error(&why)?;
                    return Ok(Turn::Ended(why));
                }
            }
        }
        Ok(if busy { Turn::Busy } else { Turn::Quiet })
    }

    /// A side ended the session with an error: fine if a fault explains
    /// it, a failure otherwise.
    fn session_error(&mut self, why: &str) -> Res {
        let flipped = self.link.as_ref().is_some_and(|l| l.flipped);
        // What the replica told the primary as it ended reaches it first.
        if let Some(link) = self.link.as_mut() {
            if link.r_done && !link.wire.to_p.is_empty() {
                let bytes = std::mem::take(&mut link.wire.to_p);
                link.wire.p_in.extend(&bytes);
                let (msgs, _) = frames(&mut link.wire.p_in, usize::MAX);
                for m in msgs {
                    let _ = link.ps.handle(m, 0);
                }
            }
        }
        self.end_session(why);
        if why.contains("split brain") {
            // An operator reads what the replica holds, then lets the
            // primary's history win (`mirrorlog discard-diverged`).
            self.counts.split_brains += 1;
            self.r().shared.discard_diverged.store(true, Ordering::Release);
            self.note("split brain: the operator runs discard-diverged on the replica".into());
            return Ok(());
        }
        if why.contains("replica fenced a primary") {
            // Two promotions chose one term (the promoted node had not heard
            // of the other's restart): the newer epoch fenced this primary,
            // which stepped down. The operator promotes it again; it knows
            // the newer epoch now, so its term is above it.
            self.counts.fenced += 1;
            let i = self.primary;
            if self.sites[i].shared.role() != Role::SteppingDown {
                return Err(format!("fenced, yet {} is {}", self.sites[i].name, self.sites[i].shared.role().name()));
            }
            self.sites[i].restart_as_replica();
            let e = self.promote(i)?;
            self.note(format!("fenced: the operator promotes {} again, at {e}", self.sites[i].name));
            return Ok(());
        }
        if why.contains("overflowed") || flipped {
            if why.contains("a frame refused") {
                self.counts.frames_refused += 1;
            }
            return Ok(());
        }
        let maps: Vec<String> = self
            .sites
            .iter()
            .map(|s| match s.journal() {
                Ok(j) => format!("{} (slot, seq, first) {:?} mark {}", s.name, j.segment_slots(), j.mark()),
                Err(e) => e,
            })
            .collect();
        Err(format!("a session ended with no fault to explain it: {why}; segments: {}", maps.join("; ")))
    }

    /// Runs the link until it is quiet (the peer timeout ends a session
    /// stuck on bytes that never make a frame). With a session streaming,
    /// no fault on its link and both sites up, the sites then hold the same
    /// records and the primary's acks say so.
    fn settle(&mut self) -> Res {
        for _ in 0..10_000 {
            if self.link.is_none() || self.crashed() {
                return Ok(());
            }
            match self.round(usize::MAX)? {
                Turn::Busy => continue,
                Turn::Ended(_) => return Ok(()),
                Turn::Quiet => {}
            }
            if self.crashed() {
                return Ok(());
            }
            let Some(link) = self.link.as_ref() else { return Ok(()) };
            let stuck = link.wire.r_in.pending() > 0 || link.wire.p_in.pending() > 0;
            if stuck || !matches!(link.phase, Phase::Streaming(_)) {
                if !link.flipped {
                    return Err(format!("the link is quiet but stuck (pending bytes: {stuck})"));
                }
                // The peer timeout passes with nothing more heard: the
                // replica's own rule ends the session (`peer_silent`).
                let past = self.now() + self.r().shared.cfg.peer_timeout.as_millis() as u64 + 1;
                if link.rs.as_ref().is_some_and(|rs| !rs.peer_silent(past)) {
                    return Err("the replica heard nothing for longer than its peer timeout and goes on".into());
                }
                self.counts.timeouts += 1;
                self.end_session("no frame in time (peer timeout)");
                return Ok(());
            }
            if link.flipped {
                return Ok(());
            }
            let pj = self.p().journal()?;
            let durable = self.p().shared.journal(pj.id()).durable.load(Ordering::Acquire);
            if durable != pj.next_lsn() {
                return Err(format!(
                    "the link is quiet, the primary ends at {}, acked durable {durable}",
                    pj.next_lsn()
                ));
            }
            return self.converged("the link is quiet");
        }
        Err("the link never went quiet".into())
    }

    fn append(&mut self) -> Res {
        let n = 1 + self.rng.below(3);
        let remote = self.rng.chance(50);
        let recs: Vec<Vec<u8>> = (0..n).map(|_| self.next_payload()).collect();
        let j = self.p().journal()?;
        let first = j.next_lsn();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        self.counts.appends += 1;
        let res = if n == 1 { j.append(refs[0]) } else { j.append_batch(&refs) };
        match res {
            Ok(lsn) => {
                if lsn != first {
                    return Err(format!("append got lsn {lsn}, expected {first}"));
                }
                for (k, p) in recs.iter().enumerate() {
                    self.model.acked.insert(first + k as u64, p.clone());
                }
            }
            Err(e) if self.p().storage.crashed() => {
                for (k, p) in recs.into_iter().enumerate() {
                    self.model.maybe.insert(first + k as u64, p);
                }
                self.note(format!("append {n} at {first}: the power failed ({e})"));
                return Ok(());
            }
            Err(Error::Full) => {
                let to = j.next_lsn().saturating_sub(10).max(self.model.mark);
                self.note(format!("append {n} at {first}: full; mark to {to}"));
                return self.set_mark(to);
            }
            Err(e) => return Err(format!("append {n} at {first}: {e}")),
        }
        if !remote {
            self.note(format!("append {n} at {first}: local, ok"));
            return Ok(());
        }
        // remote-durable: answered once the replica's acks say it holds
        // the records durably (the link runs meanwhile).
        let need = first + n;
        self.settle()?;
        let id = j.id();
        let durable = self.p().shared.journal(id).durable.load(Ordering::Acquire);
        if durable >= need && !self.p().storage.crashed() {
            for (k, p) in recs.iter().enumerate() {
                self.model.remote.insert(first + k as u64, p.clone());
            }
            self.counts.remote_acked += 1;
            self.note(format!("append {n} at {first}: remote-durable, ok"));
        } else {
            self.note(format!("append {n} at {first}: remote-durable, replica-timeout (durable here only)"));
        }
        Ok(())
    }

    fn set_mark(&mut self, to: u64) -> Res {
        let j = self.p().journal()?;
        self.counts.marks += 1;
        match j.set_mark(to) {
            Ok(()) => {
                self.model.mark = to;
                self.model.acked = self.model.acked.split_off(&to);
                self.model.remote = self.model.remote.split_off(&to);
                Ok(())
            }
            Err(_) if self.p().storage.crashed() => Ok(()),
            Err(e) => Err(format!("mark {to}: {e}")),
        }
    }

    /// The operator deletes the journal on the primary and creates it
    /// again (a new id, nothing in it): the replica is told in the stream,
    /// or by the next session's list, deletes its copy and takes the new
    /// one. Not while a power failure is set to come on the primary.
    fn recreate(&mut self) -> Res {
        let p = self.p();
        if p.storage.crashed() || p.storage.crash_armed() {
            return Ok(());
        }
        let log = p.log()?.clone();
        log.delete_journal(JOURNAL).map_err(|e| format!("delete the journal: {e}"))?;
        let j = log.create_journal(JOURNAL).map_err(|e| format!("create the journal again: {e}"))?;
        self.counts.recreates += 1;
        self.note(format!("the journal is deleted and created again (id {})", j.id()));
        // Nothing acknowledged is kept: the operator deleted it.
        self.model = Model::default();
        Ok(())
    }

    fn mark(&mut self) -> Res {
        let j = self.p().journal()?;
        let span = j.next_lsn().saturating_sub(self.model.mark.max(1));
        let to = self.model.mark.max(1) + self.rng.below(span + 1);
        self.note(format!("mark {to}"));
        self.set_mark(to)
    }

    /// A bit flipped on the link, in one direction: the frame's check must
    /// refuse it (or the session stalls and times out); never applied.
    fn flip_link(&mut self) -> Res {
        let to_r = self.rng.chance(70);
        let pick = self.rng.next();
        let Some(link) = self.link.as_mut() else { return Ok(()) };
        let buf = if to_r { &mut link.wire.to_r } else { &mut link.wire.to_p };
        if buf.is_empty() {
            return Ok(());
        }
        let at = (pick % buf.len() as u64) as usize;
        buf[at] ^= 1 << ((pick >> 32) % 8);
        link.flipped = true;
        self.counts.link_flips += 1;
        let dir = if to_r { "to the replica" } else { "to the primary" };
        self.note(format!("a bit flips on the link {dir}, byte {at} of what is in flight"));
        Ok(())
    }

    /// Both sites hold the same records (above both marks).
    fn converged(&mut self, when: &str) -> Res {
        if self.crashed() {
            return Ok(());
        }
        let (pj, rj) = (self.p().journal()?, self.r().journal()?);
        if pj.next_lsn() != rj.next_lsn() {
            return Err(format!("{when}: the primary ends at {}, the replica at {}", pj.next_lsn(), rj.next_lsn()));
        }
        let from = pj.info().first_lsn.max(rj.info().first_lsn).max(1);
        let (mine, theirs) = match (self.p().records(from), self.r().records(from)) {
            (Ok(m), Ok(t)) => (m, t),
            _ if self.crashed() => return Ok(()),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if mine != theirs {
            let d = mine.iter().find(|(l, b)| theirs.get(l) != Some(b)).map(|(l, _)| *l);
            return Err(format!("{when}: the sites differ (first at {d:?})"));
        }
        Ok(())
    }

    /// The replica's site is lost and rebuilt: blank devices formatted as a
    /// member of the primary's set (what `replication::bootstrap` does),
    /// holding no journal until the primary's next session lists, creates
    /// and sends them whole.
    fn replace_replica(&mut self) -> Res {
        self.counts.replacements += 1;
        let r = 1 - self.primary;
        let (name, mirrors) = (self.sites[r].name, self.sites[r].mirrors);
        self.note(format!("the replica {name} is lost and rebuilt on blank devices"));
        self.end_session("the replica's site is lost");
        let set = self.p().log()?.set_uuid();
        let seen = self.sites[r].shared.seen_epoch.load(Ordering::Acquire);
        let backlog = self.sites[r].shared.cfg.backlog_bytes;
        let seed = self.seed ^ (0xB0 + self.counts.replacements);
        self.sites[r] = Site::new(name, seed, mirrors, set, Role::Replica, backlog, true)?;
        self.sites[r].shared.saw_epoch(seen);
        self.rotted[r].clear();
        Ok(())
    }

    /// The primary's site fails; the replica is promoted to a new term;
    /// the old primary returns as its replica.
    fn failover(&mut self) -> Res {
        self.counts.failovers += 1;
        let old = self.primary;
        self.note(format!("failover: {} fails, {} is promoted", self.sites[old].name, self.sites[1 - old].name));
        self.end_session("failover");
        self.sites[old].storage.crash();
        let new = 1 - old;
        if self.sites[new].storage.crashed() {
            self.sites[new].reopen(true)?;
        }
        let _ = self.sites[new].drain();
        // What was acknowledged remote-durable is on the new primary, or
        // it knows it is incomplete.
        self.verify_site(new)?;
        let e = match self.promote(new) {
            Err(why) if why.starts_with(REFUSED) => {
                // The old primary's site is brought back instead, as primary.
                self.counts.promotions_refused += 1;
                self.note(format!("{why}: {} comes back", self.sites[old].name));
                self.sites[old].reopen(true)?;
                return self.verify_site(old);
            }
            r => r?,
        };
        self.sites[new].holds(&self.model.remote, "acknowledged remote-durable")?;
        // The old primary comes back as a replica (its operator configures
        // it so; a daemon would also follow the newer epoch it finds).
        let backlog = self.sites[old].shared.cfg.backlog_bytes;
        self.sites[old].shared = repl_shared(self.sites[old].name, Role::Replica, backlog);
        self.sites[old].reopen(true)?;
        self.primary = new;
        // The new truth: what the new primary holds.
        let j = match self.p().journal() {
            Ok(j) => j,
            Err(_) => {
                // It never took the journal's creation (its primary created
                // it again and the session that told it ended first);
                // nothing in it was acknowledged remote-durable (checked
                // above). The operator creates it (again, if the power
                // fails as it does).
                let i = self.primary;
                let j = match self.p().log()?.create_journal(JOURNAL) {
                    Err(_) if self.p().storage.crashed() => {
                        self.sites[i].reopen(true)?;
                        match self.p().journal() {
                            Ok(j) => Ok(j),
                            Err(_) => self.p().log()?.create_journal(JOURNAL),
                        }
                    }
                    r => r,
                }
                .map_err(|e| format!("create the journal: {e}"))?;
                self.note(format!("{} has no journal {JOURNAL}: created (id {})", self.p().name, j.id()));
                j
            }
        };
        let held = match self.p().records(1) {
            Ok(h) => h,
            Err(_) if self.p().storage.crashed() => {
                // (A read healed a bad copy and the power failed there.)
                // The model is still the old primary's: checked as the
                // replica it was until now.
                let i = self.primary;
                self.sites[i].reopen(true)?;
                self.sites[i].holds(&self.model.remote, "acknowledged remote-durable")?;
                self.p().records(1)?
            }
            Err(e) => return Err(e),
        };
        self.model = Model { acked: held.clone(), remote: BTreeMap::new(), maybe: BTreeMap::new(), mark: j.mark() };
        self.note(format!("{} serves from {} (mark {}, epoch {e})", self.p().name, j.next_lsn(), j.mark()));
        Ok(())
    }

    /// Promotes site `i` (see `promote_once`); if the power fails as the
    /// promotion writes its epoch, the node comes back a replica and the
    /// operator promotes it again.
    fn promote(&mut self, i: usize) -> Result<Epoch, String> {
        match self.promote_once(i) {
            Err(why) if self.sites[i].storage.crashed() => {
                self.note(format!("the power failed during the promotion ({why}): promoted again"));
                self.sites[i].restart_as_replica();
                self.sites[i].reopen(true)?;
                if i == self.primary {
                    self.verify_site(i)?;
                }
                self.promote_once(i)
            }
            r => r,
        }
    }

    /// Promotes site `i`: a new term above every epoch it saw (the
    /// daemon's `promote`), then it ships. Refused (an error beginning
    /// with `REFUSED`) while it is incomplete.
    fn promote_once(&mut self, i: usize) -> Result<Epoch, String> {
        let site = &mut self.sites[i];
        let sh = site.shared.clone();
        let from = sh.role();
        sh.change(Change::BeginPromotion).map_err(|r| format!("promote from {}", r.name()))?;
        let log = site.log()?.clone();
        if let Err(why) = may_lead(&log, false) {
            let _ = sh.change(Change::AbandonPromotion { back_to: from });
            return Err(format!("{REFUSED} of {}: {why}", site.name));
        }
        let seen = Epoch::from_raw(sh.seen_epoch.load(Ordering::Acquire));
        let e = Epoch::from_raw(log.epoch()).promotion(seen).ok_or("no term left")?;
        log.begin_run(e.raw()).map_err(|e| format!("promotion's run: {e}"))?;
        drop(log);
        sh.change(Change::FinishPromotion).map_err(|r| format!("finish promotion from {}", r.name()))?;
        site.serve()?;
        Ok(e)
    }

    fn rot(&mut self) -> Res {
        let i = self.rng.below(2) as usize;
        let m = self.rng.below(self.sites[i].mirrors as u64) as usize;
        let off = self.rng.below(DEV_SIZE);
        let block = off / 4096;
        if self.rotted[i].get(&block).is_some_and(|&r| r != m) {
            return Ok(());
        }
        self.rotted[i].insert(block, m);
        let name = self.sites[i].name;
        self.note(format!("flip a bit at {off} of {name} mirror {m}"));
        self.sites[i].storage.flip(&PathBuf::from(format!("/sim/{name}{m}.dev")), off);
        self.counts.rots += 1;
        Ok(())
    }

    fn step(&mut self) -> Res {
        let pick = self.rng.below(100);
        let res = match pick {
            0..=34 => self.append(),
            35..=49 => {
                let k = 1 + self.rng.below(6) as usize;
                self.round(k).map(|_| ())
            }
            50..=54 if self.extra.as_mut().is_some_and(|r| r.chance(10)) => self.recreate(),
            50..=54 => self.mark(),
            55..=58 => {
                self.end_session("cut");
                Ok(())
            }
            59..=60 => self.flip_link(),
            61..=70 => self.connect(),
            71..=74 => {
                let name = self.p().name;
                self.note(format!("the power fails on the primary {name}"));
                self.p().storage.crash();
                Ok(())
            }
            75..=79 => {
                let i = self.rng.below(2) as usize;
                let n = self.rng.below(6);
                self.note(format!("the power will fail on {} at its write {} from now", self.sites[i].name, n + 1));
                self.sites[i].storage.crash_after_writes(n);
                self.counts.crashes_mid_write += 1;
                Ok(())
            }
            80..=84 => {
                let name = self.r().name;
                self.note(format!("the power fails on the replica {name}"));
                self.r().storage.crash();
                Ok(())
            }
            85..=88 => self.rot(),
            89..=91 => self.failover(),
            _ => {
                let i = self.rng.below(2) as usize;
                if i != self.primary && self.extra.as_mut().is_some_and(|r| r.chance(25)) {
                    return self.replace_replica().and_then(|_| self.settle_crashes());
                }
                self.note(format!("{} restarts", self.sites[i].name));
                self.end_session("a site restarts");
                self.counts.restarts += 1;
                self.sites[i].reopen(false)?;
                self.verify_site(i)
            }
        };
        res?;
        self.settle_crashes()
    }
}

/// Runs one seed of the two-site simulation.
pub fn run(seed: u64, steps: u32) -> Result<ReplCounts, Failure> {
    let fail = |sim: Option<&ReplSim>, step: u32, message: String| {
        Failure::new("--two-sites", seed, step, message, sim.map_or(&[][..], |s| &s.trace))
    };
    let mut sim = ReplSim::new(seed).map_err(|m| fail(None, 0, m))?;
    for step in 0..steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            return Err(fail(Some(&sim), step, m));
        }
    }
    // The end: both sites lose power, come back, heal, and must agree.
    sim.step = steps;
    sim.note("the end: the power fails on both sites".into());
    let end = (|| -> Res {
        sim.end_session("the end");
        for i in 0..2 {
            sim.sites[i].storage.crash();
            sim.sites[i].reopen(true)?;
        }
        let (p, r) = (sim.primary, 1 - sim.primary);
        sim.verify_site(p)?;
        sim.verify_site(r)?;
        for _ in 0..4 {
            sim.connect()?;
            sim.settle()?;
            sim.settle_crashes()?;
            if sim.link.as_ref().is_some_and(|l| matches!(l.phase, Phase::Streaming(_)) && !l.flipped) {
                return sim.converged("at the end");
            }
        }
        Err("the sites did not heal at the end".into())
    })();
    end.map_err(|m| fail(Some(&sim), steps, m))?;
    Ok(sim.counts)
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<ReplCounts, Failure> {
    super::seeds(first, n, steps, run)
}

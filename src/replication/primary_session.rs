//! The primary's side of a session, sans-IO: the handshake (hello, the
//! journals, each journal's negotiation), the catch-up from the segments,
//! the stream of the outbox and the replica's acks, as calls that take
//! what arrived and return what to send. The sender's threads (`sender.rs`)
//! only move frames between this and the socket and read the segments
//! ahead; the two-site simulator drives the same calls over a simulated
//! link.
//!
//! Invariants:
//! * Per journal, what is sent is one contiguous chain: from where the
//!   negotiation left the replica (after any cut-back or reset), the
//!   segments up to the outbox's start for that journal (`CatchUp`), then
//!   the outbox (`encode_events`).
//! * The outbox is activated (and its snapshot taken) before the journals
//!   are listed: a journal created later reaches the replica as a `Create`
//!   in the outbox, never twice and never not at all.
//! * A mark goes out before any catch-up (a slot a mark freed here may be
//!   reused by a segment the catch-up sends) and again after each
//!   journal's catch-up.
//! * Nothing is taken as delivered unless acked: received/durable per
//!   journal start at the negotiated position and move only on acks
//!   (`AckBook`), never backwards.
//! * A fenced answer (the peer serves a newer epoch) makes this node step
//!   down; a refused cut-back (split brain) is reported and ends the
//!   session, and every later session is refused the same way until an
//!   operator decides.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::negotiate::{Negotiation, Pos, Step};
use super::outbox::{Event, Outbox, Snapshot};
use super::wire::{encode_batch, Hello, Msg, REPL_VERSION};
use super::{Change, ReplShared};
use crate::protocol::seal_frame;
use crate::ship::{ChainEnd, Shipment};
use crate::{Error, Journal, MirrorLog};

/// The hello this node sends (`probe`: only asks whether it may serve).
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

/// What the caller does after a message of the handshake.
#[derive(Debug)]
pub enum Next {
    /// Send this, then wait for the answer.
    Send(Msg),
    /// Nothing to send (an early ack or a ping): go on waiting.
    Wait,
    /// The handshake is over: catch up (`catch_ups`), then stream.
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The hello was sent.
    Hello,
    /// The journals were listed.
    Journals,
    /// A journal's negotiation asked something (`asked`).
    Negotiating,
    Ready,
}

/// What the negotiation of the current journal asked the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Probe,
    Truncate,
    Reset,
}

/// One session with the replica, on the primary.
pub struct PrimarySession {
    log: Arc<MirrorLog>,
    shared: Arc<ReplShared>,
    outbox: Arc<Outbox>,
    phase: Phase,
    snap: Snapshot,
    /// Journals the replica listed whose negotiation has not begun.
    queue: VecDeque<(Journal, ChainEnd)>,
    /// The journal being negotiated, the end the replica first gave, and
    /// what was asked.
    current: Option<(Journal, ChainEnd, Negotiation, Asked)>,
    /// Where each negotiated journal goes on.
    pos: Vec<(Journal, Pos)>,
    /// The journals of this session's list (`Journals`).
    listed: Vec<u64>,
}

impl PrimarySession {
    /// A session, and the hello to send first.
    pub fn new(log: Arc<MirrorLog>, shared: Arc<ReplShared>, outbox: Arc<Outbox>) -> (PrimarySession, Msg) {
        let h = Msg::Hello(hello(&log, &shared, false));
        let s = PrimarySession {
            log,
            shared,
            outbox,
            phase: Phase::Hello,
            snap: Snapshot::default(),
            queue: VecDeque::new(),
            current: None,
            pos: Vec::new(),
            listed: Vec::new(),
        };
        (s, h)
    }

    /// How long to wait for the answer to what was sent last (a cut-back
    /// or a reset may write a whole segment on the replica).
    pub fn answer_timeout(&self) -> Duration {
        match self.phase {
            Phase::Negotiating => self.shared.cfg.peer_timeout * 4,
            _ => self.shared.cfg.peer_timeout,
        }
    }

    /// Handles one message of the handshake; `now_ms`: wall-clock time,
    /// for the status. An error ends the session.
    pub fn handle(&mut self, m: Msg, now_ms: u64) -> Result<Next, String> {
        if matches!(m, Msg::Acks(_) | Msg::Ping) {
            return Ok(Next::Wait);
        }
        match (self.phase, m) {
            (_, Msg::Failed { message }) => Err(format!("replica failed: {message}")),
            (_, Msg::Diverged { message, .. }) => Err(self.diverged(message)),
            (Phase::Hello, Msg::HelloOk { epoch, name }) => {
                let sh = &self.shared;
                sh.session_started_ms.store(now_ms, Ordering::Release);
                sh.catchup_bytes.store(0, Ordering::Release);
                sh.saw_epoch(epoch);
                sh.error("");
                *sh.peer_name.lock() = name;
                self.snap = self.outbox.activate();
                let list: Vec<_> =
                    self.log.journals().iter().map(|j| (j.id(), j.name().to_string(), j.next_lsn())).collect();
                self.listed = list.iter().map(|j| j.0).collect();
                self.phase = Phase::Journals;
                Ok(Next::Send(Msg::Journals(list)))
            }
            (Phase::Hello, Msg::Fenced { epoch, message }) => {
                self.shared.saw_epoch(epoch);
                tracing::error!(epoch, message, "fenced: the peer serves a newer epoch; stepping down");
                let _ = self.shared.change(Change::Fence);
                Err(format!("fenced by epoch {epoch}"))
            }
            (Phase::Hello, Msg::Refused { message }) => Err(format!("refused: {message}")),
            (Phase::Journals, Msg::Ends(ends)) => {
                for (id, end) in ends {
                    if let Some(j) = self.log.journal_by_id(id) {
                        self.queue.push_back((j, end));
                    }
                }
                self.next_journal()
            }
            (Phase::Negotiating, m) => {
                let Some((j, first, mut n, asked)) = self.current.take() else {
                    return Err("no negotiation in progress".into());
                };
                if self.log.journal_by_id(j.id()).is_none() {
                    // Deleted here meanwhile: its deletion follows in the
                    // stream, and `floors` keeps its batches out.
                    return self.next_journal();
                }
                let step = match (asked, m) {
                    (Asked::Probe, Msg::Samples { journal, samples }) if journal == j.id() => {
                        n.on_samples(&j, &samples)?
                    }
                    (Asked::Truncate | Asked::Reset, Msg::Ends(e)) if e.len() == 1 && e[0].0 == j.id() => {
                        if asked == Asked::Truncate {
                            self.shared.truncations.fetch_add(1, Ordering::Relaxed);
                        }
                        n.on_ends(&j, &e[0].1)?
                    }
                    (_, other) => return Err(format!("unexpected answer to {asked:?}: {other:?}")),
                };
                self.step(j, first, n, step)
            }
            (_, other) => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Begins the next journal's negotiation, or ends the handshake.
    fn next_journal(&mut self) -> Result<Next, String> {
        while let Some((j, end)) = self.queue.pop_front() {
            if self.log.journal_by_id(j.id()).is_none() {
                continue; // (as above)
            }
            let mut n = Negotiation::new(&j);
            let step = n.begin(&j, &end)?;
            match self.step(j, end, n, step)? {
                Next::Ready => {}
                next => return Ok(next),
            }
        }
        self.phase = Phase::Ready;
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(name = %self.shared.peer_name.lock(), journals = self.pos.len(), "replication session started");
        Ok(Next::Ready)
    }

    /// Carries out one step of journal `j`'s negotiation.
    fn step(&mut self, j: Journal, first: ChainEnd, n: Negotiation, step: Step) -> Result<Next, String> {
        let (asked, msg) = match step {
            Step::Continue(p) => {
                let r = self.shared.journal(j.id());
                r.received.store(p.lsn, Ordering::Release);
                r.durable.store(p.lsn, Ordering::Release);
                self.pos.push((j, p));
                return self.next_journal();
            }
            Step::Probe(lsns) => (Asked::Probe, Msg::Probe { journal: j.id(), lsns }),
            Step::Truncate { keep } => {
                tracing::warn!(
                    journal = j.name(),
                    replica_next = first.next_lsn,
                    keep,
                    "replica holds records this primary never had: cutting it back"
                );
                (Asked::Truncate, Msg::Truncate { journal: j.id(), keep })
            }
            Step::Reset { next_lsn, why } => {
                tracing::warn!(
                    journal = j.name(),
                    replica_next = first.next_lsn,
                    next = next_lsn,
                    why,
                    "replica journal sent again whole"
                );
                self.shared.resyncs.fetch_add(1, Ordering::Relaxed);
                (Asked::Reset, Msg::Reset { journal: j.id(), next_lsn })
            }
        };
        self.current = Some((j, first, n, asked));
        self.phase = Phase::Negotiating;
        Ok(Next::Send(msg))
    }

    /// The replica refused a cut-back as a split brain: reported here too
    /// (status, metrics).
    fn diverged(&self, message: String) -> String {
        tracing::error!(message, "the replica holds records of a run this primary never followed: not cut back");
        *self.shared.split_brain.lock() = format!("the replica refused: {message}");
        format!("split brain: {message}")
    }

    /// Once the handshake is over: the marks to send first, and each
    /// journal's catch-up, from where the replica is to where the outbox
    /// begins (a journal the snapshot does not know was created after it:
    /// all of its batches are in the outbox).
    pub fn catch_ups(&mut self) -> (Vec<Msg>, Vec<CatchUp>) {
        debug_assert_eq!(self.phase, Phase::Ready, "catch-up before the handshake ended");
        let mut marks = Vec::new();
        let mut cus = Vec::new();
        for (j, p) in self.pos.drain(..) {
            let mark = self.snap.marks.get(&j.id()).copied();
            if let Some(lsn) = mark {
                marks.push(Msg::Mark { journal: j.id(), lsn });
            }
            // Before any record: a claim's record may be in the catch-up,
            // and the replica must hold the epoch before it confirms it.
            let writer = j.writer();
            if writer != 0 {
                marks.push(Msg::Writer { journal: j.id(), writer });
            }
            let target = self.snap.claimed.get(&j.id()).copied().unwrap_or(p.lsn);
            cus.push(CatchUp { journal: j, at: Some(p), target, mark, from: p.lsn, bytes: 0, t0: None });
        }
        (marks, cus)
    }

    /// Per journal, the LSN below which the stream sends none of the
    /// outbox's batches (`encode_events`), once the catch-ups `cus` ended:
    /// where a reset during a catch-up began the replica's journal again,
    /// past the outbox's start; and every batch of a journal of this
    /// session's list deleted here since (its negotiation or catch-up was
    /// cut short, so what the replica holds may not continue into them;
    /// the deletion follows them in the outbox).
    pub fn floors(&self, cus: &[CatchUp]) -> HashMap<u64, u64> {
        let mut floors: HashMap<u64, u64> = cus.iter().filter_map(CatchUp::floor).collect();
        if !cfg!(feature = "mutate-deleted-catch-up-streamed") {
            for &id in self.listed.iter().filter(|&&id| self.log.journal_by_id(id).is_none()) {
                floors.insert(id, u64::MAX);
            }
        }
        floors
    }

    /// The stream begins: the replica holds everything below the outbox.
    pub fn streaming(&self) {
        self.shared.connected.store(true, Ordering::Release);
        self.shared.split_brain.lock().clear();
        self.shared.wake.notify_one();
    }
}

/// What a catch-up read led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Sent; read on from `CatchUp::next`.
    More,
    /// Fell below the mark: a reset was sent; read again from
    /// `CatchUp::next` (a new run).
    Restart,
    /// This journal is caught up (or takes nothing more).
    Done,
}

/// One journal's catch-up from the segments.
#[derive(Debug)]
pub struct CatchUp {
    pub journal: Journal,
    /// Where the next read begins (`None`: done).
    at: Option<Pos>,
    pub target: u64,
    mark: Option<u64>,
    from: u64,
    bytes: u64,
    /// When the first read was framed (monotonic milliseconds).
    t0: Option<u64>,
}

impl CatchUp {
    /// Where the next read begins, `None` once caught up.
    pub fn next(&self) -> Option<Pos> {
        self.at.filter(|p| p.lsn < self.target)
    }

    /// Frames what was read at `next()` into `out` (to be sent as it is).
    /// `now_ms` (monotonic): for the log line at the end.
    pub fn on_read(
        &mut self,
        read: crate::Result<Vec<Shipment>>,
        shared: &ReplShared,
        out: &mut Vec<u8>,
        now_ms: u64,
    ) -> Result<Chunk, String> {
        let j = &self.journal;
        let t0 = *self.t0.get_or_insert(now_ms);
        match read {
            Ok(v) => {
                let Some(at) = self.at.as_mut() else { return Ok(Chunk::Done) };
                for s in &v {
                    if s.first_lsn != at.lsn {
                        return Err(format!(
                            "catch-up of {}: a read gave {}..{} where {} was next",
                            j.name(),
                            s.first_lsn,
                            s.next_lsn,
                            at.lsn
                        ));
                    }
                    encode_batch(out, &s.view());
                    self.bytes += s.bytes.len() as u64;
                    shared.catchup_bytes.fetch_add(s.bytes.len() as u64, Ordering::Relaxed);
                    *at = Pos::after(s);
                }
                if at.lsn < self.target {
                    return Ok(Chunk::More);
                }
                if at.lsn > self.from {
                    let s = now_ms.saturating_sub(t0) as f64 / 1000.0;
                    tracing::info!(
                        journal = j.name(),
                        from = self.from,
                        to = at.lsn,
                        bytes = self.bytes,
                        seconds = s,
                        mib_per_s = self.bytes as f64 / (1 << 20) as f64 / s.max(1e-9),
                        "catch-up done"
                    );
                }
                Ok(Chunk::Done)
            }
            // Reclaimed while we were behind: send what is retained.
            Err(Error::BelowMark { .. }) => {
                let Some(&o) = j.segment_starts().first() else {
                    self.at = None;
                    return Ok(Chunk::Done);
                };
                tracing::warn!(journal = j.name(), next = o, "catch-up fell below the mark: journal sent again whole");
                shared.resyncs.fetch_add(1, Ordering::Relaxed);
                Msg::Reset { journal: j.id(), next_lsn: o }.encode(out);
                self.at = Some(Pos { lsn: o, crc: 0, hint: None });
                Ok(Chunk::Restart)
            }
            Err(Error::UnknownJournal(_)) => {
                self.at = None;
                Ok(Chunk::Done)
            }
            // A journal whose write failed takes no more writes: nothing
            // more of it will come; go on with the others.
            Err(e) if j.failed() => {
                tracing::error!(journal = j.name(), error = %e, "journal failed here: its catch-up stops");
                self.at = None;
                Ok(Chunk::Done)
            }
            Err(e) => Err(format!("catch-up read of {}: {e}", j.name())),
        }
    }

    /// Where a reset during this catch-up started the replica's journal
    /// again, if that is past the outbox's start (`encode_events` skips
    /// the outbox's batches below it).
    fn floor(&self) -> Option<(u64, u64)> {
        self.at.filter(|p| p.lsn > self.target).map(|p| (self.journal.id(), p.lsn))
    }

    /// Where the replica's chain went on after the negotiation.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// The mark to send once this journal is caught up.
    pub fn mark(&self) -> Option<Msg> {
        self.mark.map(|lsn| Msg::Mark { journal: self.journal.id(), lsn })
    }
}

/// Frames the outbox's events into `buf`, calling `send` with what is
/// ready (a large batch on its own, not copied; `buf` whenever it passes
/// 4 MiB). What is left in `buf` is the caller's to send. `floors`: per
/// journal, where a reset during the catch-up started the replica's
/// journal again, above the outbox's start; the outbox's batches below it
/// are not sent (they were reclaimed here; the replica no longer holds
/// what they would continue). `u64::MAX` for a journal of the session's
/// list deleted since (`PrimarySession::floors`).
pub fn encode_events(
    events: &mut Vec<Event>,
    floors: &HashMap<u64, u64>,
    buf: &mut Vec<u8>,
    mut send: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for e in events.drain(..) {
        match e {
            Event::Batch { journal, first_lsn, next_lsn, mut frame } => {
                if let Some(&floor) = floors.get(&journal) {
                    if first_lsn < floor && !cfg!(feature = "mutate-stream-below-reset") {
                        // Batches never straddle a segment start, where a reset begins.
                        debug_assert!(next_lsn <= floor, "batch {first_lsn}..{next_lsn} straddles {floor}");
                        continue;
                    }
                }
                seal_frame(&mut frame);
                if frame.len() >= 64 << 10 {
                    if !buf.is_empty() {
                        send(buf)?;
                        buf.clear();
                    }
                    send(&frame)?;
                } else {
                    buf.extend_from_slice(&frame);
                }
            }
            Event::Mark { journal, lsn } => Msg::Mark { journal, lsn }.encode(buf),
            Event::Writer { journal, writer } => Msg::Writer { journal, writer }.encode(buf),
            Event::Create { journal, name } => Msg::Create { journal, name }.encode(buf),
            Event::Delete { journal } => Msg::Delete { journal }.encode(buf),
        }
        if buf.len() >= 4 << 20 {
            send(buf)?;
            buf.clear();
        }
    }
    Ok(())
}

/// What the replica acked, applied to the shared positions (read by the
/// appends waiting for a `remote-*` ack and by the status).
pub struct AckBook {
    log: Arc<MirrorLog>,
    shared: Arc<ReplShared>,
    /// The session's journals, looked up once each (not per ack).
    journals: HashMap<u64, Option<Journal>>,
}

impl AckBook {
    pub fn new(log: Arc<MirrorLog>, shared: Arc<ReplShared>) -> AckBook {
        AckBook { log, shared, journals: HashMap::new() }
    }

    /// Handles one message from the replica during the stream; `now_ms`:
    /// when it arrived, by the monotonic clock (`clock::Mono`). An error
    /// (the replica could not apply the stream) ends the session.
    pub fn handle(&mut self, m: Msg, now_ms: u64) -> Result<(), String> {
        match m {
            Msg::Acks(acks) => {
                for (id, received, durable) in acks {
                    let r = self.shared.journal(id);
                    r.received.fetch_max(received, Ordering::AcqRel);
                    r.durable.fetch_max(durable, Ordering::AcqRel);
                    let log = &self.log;
                    if let Some(j) = self.journals.entry(id).or_insert_with(|| log.journal_by_id(id)) {
                        if durable >= j.next_lsn() {
                            r.caught_up_at.store(now_ms, Ordering::Release);
                        }
                    }
                }
                self.shared.wake.notify_one();
                Ok(())
            }
            Msg::Failed { message } => {
                tracing::error!(message, "the replica could not apply the stream");
                self.shared.error(&message);
                Err(message)
            }
            Msg::Diverged { message, .. } => Err(format!("split brain: {message}")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::FrameBuf;
    use crate::replication::replica_session::tests::{set, shared};
    use crate::replication::replica_session::ReplicaSession;
    use crate::replication::Role;

    /// Every message framed in `bytes`, decoded as the other side would.
    fn decode_all(bytes: &[u8]) -> Vec<Msg> {
        let mut fb = FrameBuf::new(16 << 20);
        fb.extend(bytes);
        let mut out = Vec::new();
        while let Some(m) = Msg::next(&mut fb).expect("a whole, checked message") {
            out.push(m);
        }
        out
    }

    fn over_wire(m: &Msg) -> Msg {
        let mut b = Vec::new();
        m.encode(&mut b);
        decode_all(&b).pop().expect("one message")
    }

    fn primary_shared() -> Arc<ReplShared> {
        let mut cfg = shared().cfg.clone();
        cfg.role = Role::Primary;
        let sh = ReplShared::new(cfg);
        sh.change(Change::Serve).expect("serve");
        assert_eq!(sh.role(), Role::Primary);
        sh
    }

    /// The replica handles every message framed in `bytes`; its answers.
    fn to_replica(r: &mut ReplicaSession, bytes: &[u8]) -> Vec<Msg> {
        decode_all(bytes).into_iter().filter_map(|m| r.handle(m).expect("replica handles")).collect()
    }

    /// The stream: everything in the outbox, framed with `floors` into
    /// `wire` (what `encode_events` sends on at once goes to the replica
    /// now; the rest is left in `wire` for the caller).
    fn stream(ob: &Outbox, floors: &HashMap<u64, u64>, wire: &mut Vec<u8>, rs: &mut ReplicaSession) {
        let mut evs = Vec::new();
        ob.take(&mut evs, Duration::ZERO).expect("no overflow");
        encode_events(&mut evs, floors, wire, |b| {
            to_replica(rs, b);
            Ok(())
        })
        .expect("encode");
    }

    /// A session's handshake, each message through the wire codec: the
    /// primary's and replica's sessions, and the first word of each message
    /// the primary sent after its hello.
    fn handshake(
        p: &Arc<MirrorLog>,
        r: &Arc<MirrorLog>,
        psh: &Arc<ReplShared>,
        ob: &Arc<Outbox>,
        now_ms: u64,
    ) -> (PrimarySession, ReplicaSession, Vec<String>) {
        let (mut s, h) = PrimarySession::new(p.clone(), psh.clone(), ob.clone());
        let Msg::Hello(h) = over_wire(&h) else { panic!("a hello first") };
        let mut rs = ReplicaSession::new(r.clone(), shared(), &h, 0).expect("replica session");
        let mut answer = Msg::HelloOk { epoch: r.epoch(), name: "r".into() };
        let mut asked = Vec::new();
        loop {
            match s.handle(over_wire(&answer), now_ms).expect("handshake") {
                Next::Send(m) => {
                    asked.push(format!("{m:?}").chars().take(8).collect::<String>());
                    answer = rs.handle(over_wire(&m)).expect("replica").expect("an answer");
                }
                Next::Wait => panic!("nothing to wait for"),
                Next::Ready => return (s, rs, asked),
            }
        }
    }

    /// A primary's set with a journal "orders", and a replica's set of the
    /// same mirror set.
    fn two_sets(dir: &std::path::Path) -> (Arc<MirrorLog>, Arc<MirrorLog>, Journal) {
        let p = Arc::new(set(dir, "p", None));
        let r = Arc::new(set(dir, "r", Some(p.set_uuid())));
        let pj = p.create_journal("orders").expect("journal");
        (p, r, pj)
    }

    #[test]
    fn a_session_negotiates_catches_up_streams_and_moves_only_on_acks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, r, pj) = two_sets(dir.path());
        let recs: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_le_bytes().repeat(20 + (i as usize % 300))).collect();
        // The replica holds the first 40 (shipped earlier); the primary
        // then takes 100 more with no session, and a mark.
        let early = Arc::new(Outbox::new(16 << 20, &[]));
        p.set_ship_sink(Some(early.clone()));
        early.activate();
        for rec in &recs[..40] {
            pj.append(rec).expect("append");
        }
        let rj = r.create_journal_with_id("orders", pj.id()).expect("journal");
        let mut evs = Vec::new();
        early.take(&mut evs, Duration::ZERO).expect("events");
        let mut b = Vec::new();
        encode_events(&mut evs, &HashMap::new(), &mut b, |_| Ok(())).expect("encode");
        assert_eq!(rj.next_lsn(), 1);
        let mut rs0 = ReplicaSession::new(r.clone(), shared(), &hello(&p, &shared(), false), 0).expect("session");
        assert!(to_replica(&mut rs0, &b).is_empty());
        assert!(rs0.finish(&Ok(())).is_none());
        assert_eq!(rj.next_lsn(), 41);
        let ob = Arc::new(Outbox::new(16 << 20, &[(pj.id(), pj.next_lsn(), pj.mark())]));
        p.set_ship_sink(Some(ob.clone()));
        for rec in &recs[40..140] {
            pj.append(rec).expect("append");
        }
        pj.set_mark(20).expect("mark");

        let psh = primary_shared();
        let (mut s, mut rs, asked) = handshake(&p, &r, &psh, &ob, 7);
        assert_eq!(asked, ["Journals"], "the replica's end is in our history: no probe, no cut");
        assert_eq!(psh.journal(pj.id()).durable.load(Ordering::Acquire), 41, "from the negotiated end");
        assert_eq!(psh.session_started_ms.load(Ordering::Acquire), 7);

        // Appends after the handshake reach the replica through the outbox.
        for rec in &recs[140..] {
            pj.append(rec).expect("append");
        }
        let (marks, mut cus) = s.catch_ups();
        assert_eq!(marks.len(), 1);
        let mut wire = Vec::new();
        for m in &marks {
            m.encode(&mut wire);
        }
        for cu in &mut cus {
            assert_eq!(cu.target, 141, "caught up to where the outbox began");
            while let Some(at) = cu.next() {
                let read = cu.journal.read_shipment(at.lsn, at.crc, at.hint, cu.target, 4096);
                let step = cu.on_read(read, &psh, &mut wire, 0).expect("catch-up");
                assert_ne!(step, Chunk::Restart);
            }
            if let Some(m) = cu.mark() {
                m.encode(&mut wire);
            }
        }
        s.streaming();
        assert!(psh.connected.load(Ordering::Acquire));
        let floors = s.floors(&cus);
        assert!(floors.is_empty(), "no reset");
        stream(&ob, &floors, &mut wire, &mut rs);
        assert!(to_replica(&mut rs, &wire).is_empty(), "the stream is not answered");
        assert_eq!(
            psh.journal(pj.id()).durable.load(Ordering::Acquire),
            41,
            "nothing taken as delivered before an ack"
        );
        let mut book = AckBook::new(p.clone(), psh.clone());
        let t = 123_456;
        for _ in 0..1000 {
            rs.pump(&r.journals(), rs.in_flight() > 0).expect("pump");
            for m in rs.acks(0).into_iter().map(|a| over_wire(&Msg::Acks(vec![a]))) {
                book.handle(m, t).expect("acks");
            }
            if psh.journal(pj.id()).durable.load(Ordering::Acquire) == 201 {
                break;
            }
        }
        assert_eq!(psh.journal(pj.id()).durable.load(Ordering::Acquire), 201, "acked durable to the end");
        assert_eq!(psh.journal(pj.id()).caught_up_at.load(Ordering::Acquire), t);
        let rj = r.journal("orders").expect("journal");
        assert_eq!(rj.mark(), 20);
        for (i, want) in recs.iter().enumerate().skip(19) {
            assert_eq!(&rj.read(i as u64 + 1).expect("read"), want, "lsn {}", i + 1);
        }
        assert!(rs.finish(&Ok(())).is_none());
        // The replica could not apply the stream: the session ends, reported.
        let e = book.handle(Msg::Failed { message: "disk full".into() }, t).expect_err("ends");
        assert_eq!((e.as_str(), psh.last_error.lock().as_str()), ("disk full", "disk full"));
    }

    /// The two-site simulator, seed 62: the primary's mark passed the
    /// outbox's start while the replica caught up; the catch-up fell below
    /// the mark and reset the replica's journal at the oldest segment left,
    /// past the outbox's start, and then the stream sent the outbox's
    /// first batches, which the replica refused (the session broke).
    #[test]
    fn a_reset_past_the_outboxs_start_skips_the_reclaimed_batches_it_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, r, pj) = two_sets(dir.path());
        r.create_journal_with_id("orders", pj.id()).expect("journal");
        let rec = |i: u32| i.to_le_bytes().repeat(2000);
        for i in 0..20 {
            pj.append(&rec(i)).expect("append");
        }
        let ob = Arc::new(Outbox::new(16 << 20, &[(pj.id(), pj.next_lsn(), pj.mark())]));
        p.set_ship_sink(Some(ob.clone()));
        let psh = primary_shared();
        let (mut s, mut rs, _) = handshake(&p, &r, &psh, &ob, 0);
        // Past the outbox's start (21): three segments more, then a mark
        // that frees every segment but the newest.
        for i in 20..120 {
            pj.append(&rec(i)).expect("append");
        }
        let end = pj.next_lsn();
        pj.set_mark(end - 3).expect("mark");
        let (marks, mut cus) = s.catch_ups();
        let mut wire = Vec::new();
        for m in &marks {
            m.encode(&mut wire);
        }
        let mut steps = Vec::new();
        for cu in &mut cus {
            while let Some(at) = cu.next() {
                let read = cu.journal.read_shipment(at.lsn, at.crc, at.hint, cu.target, 1 << 20);
                steps.push(cu.on_read(read, &psh, &mut wire, 0).expect("catch-up"));
            }
        }
        assert_eq!(steps, [Chunk::Restart], "a reset past the outbox's start ends the catch-up");
        let floors = s.floors(&cus);
        let floor = floors.get(&pj.id()).copied().expect("a floor");
        assert!(floor > 21 && floor < end, "floor {floor}");
        stream(&ob, &floors, &mut wire, &mut rs);
        // (The reset is answered with where the journal now ends.)
        let answers = to_replica(&mut rs, &wire);
        assert!(answers.iter().all(|m| matches!(m, Msg::Ends(_))), "{answers:?}");
        assert!(rs.finish(&Ok(())).is_none());
        let rj = r.journal("orders").expect("journal");
        assert_eq!(rj.next_lsn(), end);
        for lsn in end - 3..end {
            assert_eq!(rj.read(lsn).expect("read"), rec(lsn as u32 - 1));
        }
    }

    /// The two-site simulator, seed 4279: the journal was deleted on the
    /// primary while its replica caught up; the catch-up found it gone and
    /// ended, and the stream then sent the outbox's batches of it, which
    /// did not continue what the replica held (the session broke).
    #[test]
    fn a_journal_deleted_during_its_catch_up_is_skipped_in_the_stream_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, r, pj) = two_sets(dir.path());
        r.create_journal_with_id("orders", pj.id()).expect("journal");
        for i in 0..20u32 {
            pj.append(&i.to_le_bytes().repeat(500)).expect("append");
        }
        let ob = Arc::new(Outbox::new(16 << 20, &[(pj.id(), pj.next_lsn(), pj.mark())]));
        p.set_ship_sink(Some(ob.clone()));
        let psh = primary_shared();
        let (mut s, mut rs, _) = handshake(&p, &r, &psh, &ob, 0);
        // In the outbox: more records, then the journal's deletion.
        for i in 20..25u32 {
            pj.append(&i.to_le_bytes().repeat(500)).expect("append");
        }
        p.delete_journal("orders").expect("delete");
        let (marks, mut cus) = s.catch_ups();
        let mut wire = Vec::new();
        for m in &marks {
            m.encode(&mut wire);
        }
        for cu in &mut cus {
            while let Some(at) = cu.next() {
                let read = cu.journal.read_shipment(at.lsn, at.crc, at.hint, cu.target, 1 << 20);
                assert_eq!(cu.on_read(read, &psh, &mut wire, 0).expect("catch-up"), Chunk::Done);
            }
        }
        let floors = s.floors(&cus);
        stream(&ob, &floors, &mut wire, &mut rs);
        assert!(to_replica(&mut rs, &wire).is_empty());
        assert!(rs.finish(&Ok(())).is_none());
        assert!(r.journal("orders").is_err(), "deleted on the replica too");
    }

    #[test]
    fn a_fenced_answer_steps_this_node_down_and_a_split_brain_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(set(dir.path(), "p", None));
        let ob = Arc::new(Outbox::new(1 << 20, &[]));
        let sh = primary_shared();
        let (mut s, _) = PrimarySession::new(p.clone(), sh.clone(), ob.clone());
        let e = s.handle(Msg::Fenced { epoch: 9 << 32, message: "newer".into() }, 0).expect_err("fenced");
        assert!(e.contains("fenced"), "{e}");
        assert_eq!(sh.role(), Role::SteppingDown);
        assert_eq!(sh.seen_epoch.load(Ordering::Acquire), 9 << 32);

        let sh = primary_shared();
        let (mut s, _) = PrimarySession::new(p.clone(), sh.clone(), ob);
        assert!(matches!(s.handle(Msg::HelloOk { epoch: 1, name: "r".into() }, 0), Ok(Next::Send(Msg::Journals(_)))));
        assert!(matches!(s.handle(Msg::Ping, 0), Ok(Next::Wait)));
        let e = s.handle(Msg::Diverged { journal: 1, message: "held by b".into() }, 0).expect_err("ends");
        assert!(e.contains("split brain"), "{e}");
        assert!(sh.split_brain.lock().contains("held by b"));
        assert_eq!(sh.role(), Role::Primary, "a split brain does not change the role");
    }
}

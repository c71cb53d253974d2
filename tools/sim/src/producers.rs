//! The producers simulation: the daemon's idempotence rules as it serves
//! them (`mirrorlog::daemon::producers`: `admit`, `record`, `from_journal`,
//! `stored_crcs`, `verify_resend`, called in the order the daemon's append
//! path calls them) over the real engine on simulated devices, driven by
//! one seed.
//!
//! Clients are producers with ids and growing sequences. Each step sends a
//! burst of appends (placed first, then waited on, as the daemon's event
//! loop does), of which some answers are lost (the client resends, flagged
//! `resend`, possibly while the original is still being written); a second
//! writer resends records under an honest producer's id with other bytes;
//! the table is small (2–3 producers, 3 runs each) so producers are
//! forgotten; the power fails now or at one of the next writes (torn
//! sectors); a restart rebuilds the table from the tags on disk, from the
//! newest 1–4 segments; consumers mark; a bit rots on one mirror.
//!
//! Checked: every answer with an LSN (a first write or a matched resend) is
//! given only when the records there hold exactly the bytes sent;
//! every acknowledged record reads back after every crash; no honest
//! producer's record is on disk twice (the one documented exception: a
//! producer's first append, written, then the producer forgotten before
//! its resend: docs/faults.md); an honest producer is never refused as a
//! conflict; a record sent under another's id is never acknowledged; no
//! panic. The defects of issue 16 items 5 and 6 can be put back
//! (`mutate-resend-unverified`, `mutate-forgotten-resend-new`).

use std::collections::{BTreeMap, HashMap, HashSet};

use mirrorlog::codes;
use mirrorlog::daemon::producers::{stored_crcs, verify_resend, Admit, Producers};
use mirrorlog::format::Tag;
use mirrorlog::journal::Ticket;
use mirrorlog::storage::{SimConfig, SimStorage};
use mirrorlog::{Config, Error, Journal, MirrorLog};

use super::{counters, draw_payload, one_site, rot_one, Failure, Rng, JOURNAL};

/// Runs remembered per producer.
const WINDOW: usize = 3;

counters! {
    /// Counts of what a producers run did (coverage).
    pub struct ProducerCounts {
        sends,
        resends,
        /// Answers with an LSN a client saw.
        acked,
        /// Answers lost on the way (the client resends).
        answers_lost,
        /// Resends answered with the original's LSN.
        matched,
        /// ... of which the original was still being written.
        matched_in_flight,
        /// Resends refused as `sequence-unknown` (forgotten or reclaimed).
        unknown,
        /// Sends under another producer's id, refused.
        impostors_refused,
        /// Duplicates of a producer's first append (the documented case).
        first_dups,
        crashes,
        crashes_mid_write,
        restarts,
        marks,
        rots,
        verified,
    }
}

/// An append a client sends (again).
#[derive(Clone)]
struct Req {
    client: usize,
    producer: u64,
    seq: u64,
    records: Vec<Vec<u8>>,
    resend: bool,
    /// Sent under another producer's id, with other bytes.
    impostor: bool,
}

/// A request between placement and its answer.
enum Pending {
    Placed { req: Req, lsn: u64, ticket: Ticket },
    Verify { req: Req, lsn: u64, ticket: Option<Ticket> },
}

struct Client {
    producer: u64,
    next_seq: u64,
    /// The append the client waits for an answer to (resent until one
    /// comes).
    waiting: Option<Req>,
}

struct ProducerSim {
    seed: u64,
    rng: Rng,
    storage: SimStorage,
    cfg: Config,
    log: Option<MirrorLog>,
    table: Producers,
    max_producers: usize,
    scan_segments: usize,
    clients: Vec<Client>,
    /// Every honest record ever sent: (producer, seq) -> bytes.
    sent: HashMap<(u64, u64), Vec<u8>>,
    /// The records of producers' first appends (from sequence 1).
    first_appends: HashSet<(u64, u64)>,
    /// Honest records a client saw acknowledged: (producer, seq) -> lsn.
    acked: BTreeMap<(u64, u64), u64>,
    rotted: HashMap<u64, usize>,
    mirrors: usize,
    written: u64,
    counts: ProducerCounts,
    trace: Vec<String>,
    step: u32,
}

type Res = Result<(), String>;

impl ProducerSim {
    fn new(seed: u64) -> Result<ProducerSim, String> {
        let storage = SimStorage::new(SimConfig::new(seed ^ 0x5eed_0000));
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (cfg, log, mirrors) = one_site(&storage, &mut rng)?;
        let max_producers = 2 + rng.below(2) as usize;
        let scan_segments = 1 + rng.below(4) as usize;
        let clients = (0..3 + rng.below(3)).map(|i| Client { producer: 100 + i, next_seq: 1, waiting: None }).collect();
        Ok(ProducerSim {
            seed,
            rng,
            storage,
            cfg,
            log: Some(log),
            table: Producers::new(WINDOW, max_producers),
            max_producers,
            scan_segments,
            clients,
            sent: HashMap::new(),
            first_appends: HashSet::new(),
            acked: BTreeMap::new(),
            rotted: HashMap::new(),
            mirrors,
            written: 0,
            counts: ProducerCounts::default(),
            trace: Vec::new(),
            step: 0,
        })
    }

    fn journal(&self) -> Result<Journal, String> {
        let log = self.log.as_ref().ok_or("no log open")?;
        log.journal(JOURNAL).map_err(|e| format!("journal: {e}"))
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{}: {s}", self.step));
    }

    fn next_payload(&mut self) -> Vec<u8> {
        self.written += 1;
        draw_payload(&mut self.rng, self.seed, self.written)
    }

    /// The next request of client `c`: its unanswered append again, or a
    /// new one.
    fn request(&mut self, c: usize) -> Req {
        if let Some(mut r) = self.clients[c].waiting.clone() {
            r.resend = true;
            return r;
        }
        let n = 1 + self.rng.below(3);
        let records: Vec<Vec<u8>> = (0..n).map(|_| self.next_payload()).collect();
        let cl = &mut self.clients[c];
        let r = Req { client: c, producer: cl.producer, seq: cl.next_seq, records, resend: false, impostor: false };
        cl.next_seq += n;
        for (i, p) in r.records.iter().enumerate() {
            self.sent.insert((r.producer, r.seq + i as u64), p.clone());
            if r.seq == 1 {
                self.first_appends.insert((r.producer, 1 + i as u64));
            }
        }
        self.clients[c].waiting = Some(r.clone());
        r
    }

    /// A resend under client `c`'s producer id of one of its acknowledged
    /// records (not its first), with other bytes.
    fn impostor(&mut self, c: usize) -> Option<Req> {
        let p = self.clients[c].producer;
        let seqs: Vec<u64> = self.acked.range((p, 2)..(p + 1, 0)).map(|(k, _)| k.1).collect();
        if seqs.is_empty() {
            return None;
        }
        let seq = seqs[self.rng.below(seqs.len() as u64) as usize];
        let mut other = self.next_payload();
        if Some(&other) == self.sent.get(&(p, seq)) {
            other.push(0xa5); // (two empty payloads)
        }
        Some(Req { client: c, producer: p, seq, records: vec![other], resend: true, impostor: true })
    }

    /// A burst of requests: each admitted and placed (or matched) first,
    /// then each waited on and answered, in order (the daemon's event loop:
    /// place, pump, settle).
    fn burst(&mut self) -> Res {
        let k = 1 + self.rng.below(3);
        let mut reqs = Vec::new();
        for _ in 0..k {
            let c = self.rng.below(self.clients.len() as u64) as usize;
            if self.rng.chance(12) {
                if let Some(r) = self.impostor(c) {
                    reqs.push(r);
                }
                continue;
            }
            if reqs.iter().any(|r: &Req| r.client == c && !r.impostor) {
                // A resend while the original is in flight (a client timeout).
                if let Some(mut r) = reqs.iter().find(|r| r.client == c && !r.impostor).cloned() {
                    r.resend = true;
                    reqs.push(r);
                }
                continue;
            }
            reqs.push(self.request(c));
        }
        let j = self.journal()?;
        let mut pending = Vec::new();
        for req in reqs {
            self.counts.sends += 1;
            self.counts.resends += req.resend as u64;
            let n = req.records.len() as u64;
            let what = format!(
                "{}producer {} seq {}..{} ({})",
                if req.impostor { "impostor: " } else { "" },
                req.producer,
                req.seq,
                req.seq + n - 1,
                if req.resend { "resend" } else { "first send" }
            );
            match self.table.admit(req.producer, req.seq, n, req.resend) {
                Admit::Write => {
                    if req.impostor {
                        return Err(format!("{what}: written (a resend of acknowledged records is never new)"));
                    }
                    let refs: Vec<&[u8]> = req.records.iter().map(|r| r.as_slice()).collect();
                    let tag = Tag { producer: req.producer, seq: req.seq };
                    match j.submit_many(&refs, Some(tag), || Ok(())) {
                        Ok((lsn, ticket)) => {
                            self.note(format!("{what}: placed at {lsn}"));
                            self.table.record(req.producer, req.seq, n, lsn, Some(ticket), j.next_lsn());
                            pending.push(Pending::Placed { req, lsn, ticket });
                        }
                        Err(e @ (Error::AppendTooLarge { .. } | Error::RecordTooLarge { .. })) => {
                            // Refused whole, nothing placed: the client gives up on it.
                            self.note(format!("{what}: refused ({e})"));
                            self.clients[req.client].waiting = None;
                        }
                        Err(e) => return self.engine_error(&what, &e),
                    }
                }
                Admit::Verify { lsn, ticket } => {
                    self.note(format!(
                        "{what}: matched to lsn {lsn}{}",
                        if ticket.is_some() { " (in flight)" } else { "" }
                    ));
                    pending.push(Pending::Verify { req, lsn, ticket });
                }
                Admit::Refuse { code, message } => self.refused(&req, code, &message)?,
            }
        }
        for p in pending {
            match p {
                Pending::Placed { req, lsn, ticket } => {
                    if let Err(e) = j.wait(&ticket) {
                        return self.engine_error(&format!("wait for lsn {lsn}"), &e);
                    }
                    self.answered(&j, &req, lsn)?;
                }
                Pending::Verify { req, lsn, ticket } => {
                    if let Some(t) = ticket {
                        if let Err(e) = j.wait(&t) {
                            return self.engine_error(&format!("wait for lsn {lsn}"), &e);
                        }
                    }
                    let sent: Vec<u32> = req.records.iter().map(|r| crc32c::crc32c(r)).collect();
                    let stored = stored_crcs(&j, lsn, sent.len());
                    if self.storage.crashed() {
                        return self.engine_error(&format!("read back lsn {lsn}"), &Error::Closed);
                    }
                    match verify_resend(lsn, &sent, stored) {
                        Ok(()) => {
                            self.counts.matched += 1;
                            self.counts.matched_in_flight += ticket.is_some() as u64;
                            self.answered(&j, &req, lsn)?;
                        }
                        Err((code, message)) => self.refused(&req, code, &message)?,
                    }
                }
            }
        }
        Ok(())
    }

    /// An answer with `lsn`: the records there must be the ones sent.
    fn answered(&mut self, j: &Journal, req: &Req, lsn: u64) -> Res {
        for (i, want) in req.records.iter().enumerate() {
            let at = lsn + i as u64;
            match read_retained(j, at) {
                Ok(got) if got == *want => {}
                Ok(_) => {
                    return Err(format!(
                        "producer {} seq {} was acknowledged with lsn {at}, which holds other bytes{}",
                        req.producer,
                        req.seq + i as u64,
                        if req.impostor { " (a second writer's resend matched an honest record)" } else { "" }
                    ))
                }
                Err(e) if self.storage.crashed() => return self.engine_error(&format!("read back {at}"), &e),
                Err(e) => return Err(format!("acknowledged lsn {at} unreadable: {e}")),
            }
        }
        if req.impostor {
            return Err(format!("a second writer's resend under producer {} was acknowledged", req.producer));
        }
        if self.rng.chance(15) {
            self.counts.answers_lost += 1;
            self.note(format!("producer {} seq {}: answer {lsn} lost", req.producer, req.seq));
            return Ok(());
        }
        self.counts.acked += 1;
        for i in 0..req.records.len() as u64 {
            self.acked.insert((req.producer, req.seq + i), lsn + i);
        }
        let cl = &mut self.clients[req.client];
        if cl.waiting.as_ref().is_some_and(|w| w.seq == req.seq) {
            cl.waiting = None;
        }
        Ok(())
    }

    fn refused(&mut self, req: &Req, code: u16, message: &str) -> Res {
        self.note(format!("producer {} seq {}: refused, {} ({message})", req.producer, req.seq, codes::name(code)));
        if req.impostor {
            self.counts.impostors_refused += 1;
            return Ok(());
        }
        if code == codes::SEQUENCE_UNKNOWN {
            // The client gives up on it (the application decides).
            self.counts.unknown += 1;
            let cl = &mut self.clients[req.client];
            if cl.waiting.as_ref().is_some_and(|w| w.seq == req.seq) {
                cl.waiting = None;
            }
            return Ok(());
        }
        Err(format!("an honest producer's append was refused: {} ({message})", codes::name(code)))
    }

    fn engine_error(&mut self, what: &str, e: &Error) -> Res {
        if self.storage.crashed() {
            self.note(format!("{what}: power failed ({e})"));
            return self.recover(true);
        }
        match e {
            Error::Full => {
                let j = self.journal()?;
                let to = j.next_lsn().saturating_sub(20).max(j.mark());
                self.note(format!("{what}: full; mark to {to}"));
                self.set_mark(to)
            }
            _ => Err(format!("{what}: unexpected error {e} (code {})", e.code())),
        }
    }

    fn set_mark(&mut self, to: u64) -> Res {
        let j = self.journal()?;
        self.counts.marks += 1;
        match j.set_mark(to) {
            Ok(()) => Ok(()),
            Err(e) => self.engine_error(&format!("mark {to}"), &e),
        }
    }

    fn mark(&mut self) -> Res {
        let j = self.journal()?;
        let (m, next) = (j.mark(), j.next_lsn());
        let to = m + self.rng.below(next.saturating_sub(m) + 1);
        self.note(format!("mark {to}"));
        self.set_mark(to)
    }

    fn rot(&mut self) -> Res {
        if let Some(what) = rot_one(&mut self.rng, &self.storage, &mut self.rotted, self.mirrors) {
            self.note(what);
            self.counts.rots += 1;
        }
        Ok(())
    }

    /// Opens the set again (after a crash, the devices as the power failure
    /// left them) and rebuilds the table from disk, as a daemon starts;
    /// then checks everything.
    fn recover(&mut self, crashed: bool) -> Res {
        self.log = None;
        if crashed {
            self.counts.crashes += 1;
            self.storage.reopen();
        } else {
            self.counts.restarts += 1;
        }
        self.storage.crash_after_writes(u64::MAX);
        let log = MirrorLog::open(&self.cfg).map_err(|e| format!("open: {e}"))?;
        let j = log.journal(JOURNAL).map_err(|e| format!("journal: {e}"))?;
        let (table, tagged, res) = Producers::from_journal(&j, WINDOW, self.max_producers, self.scan_segments);
        res.map_err(|e| format!("rebuilding the table: {e}"))?;
        self.table = table;
        self.log = Some(log);
        self.note(format!("recovered: next {}, mark {}, {tagged} tagged records read", j.next_lsn(), j.mark()));
        self.verify()
    }

    /// Every acknowledged record at or above the mark reads back; no
    /// honest record is on disk twice.
    fn verify(&mut self) -> Res {
        let j = self.journal()?;
        let mark = j.mark().max(1);
        for (&(p, s), &lsn) in &self.acked {
            if lsn < mark {
                continue;
            }
            let want = self.sent.get(&(p, s)).ok_or("acked but never sent")?;
            match j.read(lsn) {
                Ok(got) if got == *want => {}
                Ok(_) => return Err(format!("acknowledged lsn {lsn} (producer {p} seq {s}) holds other bytes")),
                Err(e) => return Err(format!("acknowledged lsn {lsn} (producer {p} seq {s}) is lost: {e}")),
            }
        }
        for (p, s, a, b) in super::tagged_twice(&j, &self.sent)? {
            // The documented case: the records of a producer's first
            // append (from sequence 1) resent after it was forgotten.
            if !self.first_appends.contains(&(p, s)) {
                return Err(format!("producer {p} seq {s} is written twice (lsn {a} and {b})"));
            }
            self.counts.first_dups += 1;
        }
        self.counts.verified += 1;
        Ok(())
    }

    fn step(&mut self) -> Res {
        match self.rng.below(100) {
            0..=59 => self.burst(),
            60..=67 => self.mark(),
            68..=73 => self.rot(),
            74..=80 => {
                self.note("restart".into());
                self.recover(false)
            }
            81..=88 => {
                self.note("the power fails".into());
                self.storage.crash();
                self.recover(true)
            }
            _ => {
                let n = self.rng.below(8);
                self.note(format!("the power will fail at write {} from now", n + 1));
                self.storage.crash_after_writes(n);
                self.counts.crashes_mid_write += 1;
                Ok(())
            }
        }
    }
}

/// The record at `lsn`, below the mark too (a resend may be answered with
/// records a consumer has marked since).
pub(crate) fn read_retained(j: &Journal, lsn: u64) -> mirrorlog::Result<Vec<u8>> {
    let mut out = None;
    j.visit_retained(lsn, 64 << 10, |r| {
        if r.lsn == lsn {
            out = Some(r.payload.to_vec());
        }
        false
    })?;
    out.ok_or(Error::NotYetWritten { lsn, next: j.next_lsn() })
}

/// Runs one seed.
pub fn run(seed: u64, steps: u32) -> Result<ProducerCounts, Failure> {
    let fail = |sim: Option<&ProducerSim>, step: u32, message: String| {
        Failure::new("--producers", seed, step, message, sim.map_or(&[][..], |s| &s.trace))
    };
    let mut sim = ProducerSim::new(seed).map_err(|m| fail(None, 0, m))?;
    for step in 0..steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            return Err(fail(Some(&sim), step, m));
        }
    }
    sim.step = steps;
    sim.note("the power fails (end)".into());
    sim.storage.crash();
    if let Err(m) = sim.recover(true) {
        return Err(fail(Some(&sim), steps, m));
    }
    Ok(sim.counts)
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<ProducerCounts, Failure> {
    super::seeds(first, n, steps, run)
}

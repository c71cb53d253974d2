//! The two-site simulation: the real engine on both sites (each on its own
//! simulated devices), the real shipping code (`ShipSink`, `read_shipment`,
//! `apply_shipment`, `truncate_after`, `reset`, `apply_mark`) and the real
//! negotiation (`replication::negotiate`, sans-IO), driven step by step by
//! one seed; the link is a queue of shipped batches and marks that a cut
//! drops. What is not here yet: the daemon's sessions, acks over a wire,
//! epochs and the split-brain check (they need the sessions made sans-IO).
//!
//! Steps: appends on the primary (`local`, or `remote-durable`: answered
//! only once the replica holds the records durably, when the link is up),
//! deliveries over the link, marks, a link cut and its healing (a new
//! session: negotiation, catch-up from the segments, then the stream), the
//! power failing on either site now or at one of its next writes, a flipped
//! bit on one mirror of one site, a restart, and a failover: the primary's
//! power fails, the replica is promoted and the old primary returns as its
//! replica (its unshipped tail is cut back by the next session).
//!
//! Checked: every acknowledged record is on the primary with its bytes;
//! every record acknowledged `remote-durable` is on the replica too (after
//! any crash of it, and when it is promoted); after a session starts, the
//! replica holds exactly a prefix of the primary's history and continues
//! right after it; at the end, after healing, both sites hold the same
//! records; no shipment delivered in order is refused; no panic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mirrorlog::replication::negotiate::{Negotiation, Step};
use mirrorlog::ship::{ShipSink, ShipView, Shipment};
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
        sessions,
        cutbacks,
        resets,
        catchup_batches,
        cuts,
        marks,
        crashes_primary,
        crashes_replica,
        crashes_mid_write,
        failovers,
        rots,
        restarts,
        verified,
    }
}

/// What travels over the link.
enum Item {
    Batch(Shipment),
    Mark(u64),
}

/// The link of one session: the primary's sink pushes, deliveries pop.
#[derive(Default)]
struct Link {
    q: Mutex<VecDeque<Item>>,
}

impl Link {
    fn push(&self, i: Item) {
        if let Ok(mut q) = self.q.lock() {
            q.push_back(i);
        }
    }
    fn pop(&self) -> Option<Item> {
        self.q.lock().ok()?.pop_front()
    }
}

impl ShipSink for Link {
    fn batch(&self, b: &ShipView<'_>) {
        self.push(Item::Batch(b.to_shipment()));
    }
    fn mark(&self, _journal_id: u64, lsn: u64) {
        self.push(Item::Mark(lsn));
    }
    fn created(&self, _journal_id: u64, _name: &str) {}
    fn deleted(&self, _journal_id: u64) {}
}

/// One site: its devices and its engine.
struct Site {
    name: &'static str,
    storage: SimStorage,
    cfg: Config,
    log: Option<MirrorLog>,
    mirrors: usize,
}

type Res = Result<(), String>;

impl Site {
    fn new(name: &'static str, seed: u64, mirrors: usize, set_uuid: [u8; 16]) -> Result<Site, String> {
        let storage = SimStorage::new(SimConfig::new(seed));
        let devices: Vec<PathBuf> = (0..mirrors).map(|i| PathBuf::from(format!("/sim/{name}{i}.dev"))).collect();
        for d in &devices {
            storage.create(d, DEV_SIZE);
        }
        let mut cfg = sim_config(devices, &storage);
        cfg.set_uuid = Some(set_uuid);
        let log = MirrorLog::create(&cfg).map_err(|e| format!("{name}: create: {e}"))?;
        Ok(Site { name, storage, cfg, log: Some(log), mirrors })
    }

    fn log(&self) -> Result<&MirrorLog, String> {
        self.log.as_ref().ok_or_else(|| format!("{}: not open", self.name))
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
        self.log = None;
        if crashed {
            self.storage.reopen();
        }
        self.storage.crash_after_writes(u64::MAX);
        let log = MirrorLog::open(&self.cfg).map_err(|e| format!("{}: open after a crash: {e}", self.name))?;
        self.log = Some(log);
        Ok(())
    }

    /// Every record of `want` at or above this site's mark reads back with
    /// its bytes.
    fn holds(&self, want: &BTreeMap<u64, Vec<u8>>, what: &str) -> Res {
        let j = self.journal()?;
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
    sites: [Site; 2],
    /// Index of the primary in `sites`.
    primary: usize,
    link: Option<Arc<Link>>,
    model: Model,
    /// Blocks rotted so far per site, and on which mirror: one mirror at a time.
    rotted: [HashMap<u64, usize>; 2],
    written: u64,
    counts: ReplCounts,
    trace: Vec<String>,
    step: u32,
}

impl ReplSim {
    fn new(seed: u64) -> Result<ReplSim, String> {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&seed.to_le_bytes());
        uuid[8] = 0x5e;
        let a = Site::new("a", seed ^ 0xA, 2 + rng.below(2) as usize, uuid)?;
        let b = Site::new("b", seed ^ 0xB, 2 + rng.below(2) as usize, uuid)?;
        let j = a.log()?.create_journal(JOURNAL).map_err(|e| format!("create journal: {e}"))?;
        b.log()?.create_journal_with_id(JOURNAL, j.id()).map_err(|e| format!("create journal on b: {e}"))?;
        Ok(ReplSim {
            seed,
            rng,
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

    fn next_payload(&mut self) -> Vec<u8> {
        self.written += 1;
        draw_payload(&mut self.rng, self.seed ^ 0x5151, self.written)
    }

    fn cut(&mut self, why: &str) {
        if self.link.take().is_some() {
            if let Ok(log) = self.p().log() {
                log.set_ship_sink(None);
            }
            self.counts.cuts += 1;
            self.note(format!("link cut ({why})"));
        }
    }

    /// After a step: a site whose power failed comes back, and is checked.
    fn settle_crashes(&mut self) -> Res {
        for i in 0..2 {
            if self.sites[i].storage.crashed() {
                let name = self.sites[i].name;
                self.cut(&format!("the power failed on {name}"));
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
        if i == self.primary {
            self.cut("the primary restarts");
        }
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
            self.sites[i].holds(&self.model.remote, "acknowledged remote-durable")
        }
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
        // remote-durable: answered once the replica holds it durably.
        let need = first + n;
        self.deliver(usize::MAX)?;
        if self.link.is_some() && !self.r().storage.crashed() {
            let r = self.r().journal()?;
            if r.next_lsn() < need {
                return Err(format!(
                    "every shipment delivered and written, but the replica ends at {} before {need}",
                    r.next_lsn()
                ));
            }
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

    /// Delivers up to `k` items of the link to the replica and writes them.
    fn deliver(&mut self, k: usize) -> Res {
        let Some(link) = self.link.clone() else { return Ok(()) };
        let r = self.r().journal()?;
        let mut n = 0;
        while n < k {
            let Some(item) = link.pop() else { break };
            n += 1;
            self.counts.deliveries += 1;
            let res = match item {
                Item::Batch(s) => loop {
                    match r.apply_shipment(&s.view()) {
                        Err(Error::Backpressure) => {
                            if let Err(e) = self.r().drain() {
                                break Err(e);
                            }
                        }
                        other => break other,
                    }
                },
                Item::Mark(lsn) => self.r().drain().and_then(|()| r.apply_mark(lsn.min(r.next_lsn()))),
            };
            if let Err(e) = res {
                if self.r().storage.crashed() {
                    self.note(format!("delivery: the power failed on the replica ({e})"));
                    return Ok(());
                }
                return Err(format!("the replica refused a shipment delivered in order: {e}"));
            }
        }
        if let Err(e) = self.r().drain() {
            if !self.r().storage.crashed() {
                return Err(format!("the replica's writes failed: {e}"));
            }
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

    fn mark(&mut self) -> Res {
        let j = self.p().journal()?;
        let span = j.next_lsn().saturating_sub(self.model.mark.max(1));
        let to = self.model.mark.max(1) + self.rng.below(span + 1);
        self.note(format!("mark {to}"));
        self.set_mark(to)
    }

    /// A new session: the real negotiation, the mark, catch-up from the
    /// segments, then the stream through a new link.
    fn heal(&mut self) -> Res {
        if self.link.is_some() {
            return Ok(());
        }
        let pi = self.primary;
        let (p, r) = (&self.sites[pi], &self.sites[1 - pi]);
        let step_no = self.step;
        for s in [p, r] {
            if let Err(e) = s.drain() {
                return if s.storage.crashed() { Ok(()) } else { Err(format!("{}: drain: {e}", s.name)) };
            }
        }
        let pj = p.journal()?;
        let rj = r.journal()?;
        let end = rj.chain_end().map_err(|e| format!("chain end: {e}"))?;
        let mut n = Negotiation::new(&pj);
        let mut step = n.begin(&pj, &end)?;
        let mut steps = Vec::new();
        let pos = loop {
            steps.push(format!("{step:?}"));
            step = match step {
                Step::Continue(pos) => break pos,
                Step::Probe(lsns) => {
                    let samples: Vec<(u64, u32)> =
                        lsns.iter().filter_map(|&l| rj.record_crc(l).ok().map(|c| (l, c))).collect();
                    n.on_samples(&pj, &samples)?
                }
                Step::Truncate { keep } => {
                    self.counts.cutbacks += 1;
                    match rj.truncate_after(keep) {
                        Ok(e) => {
                            steps.push(format!(
                                "replica ends at {} (crc {}, segment {}, offset {})",
                                e.next_lsn, e.last_crc, e.seg_seq, e.tail_off
                            ));
                            n.on_ends(&pj, &e)?
                        }
                        Err(e) if r.storage.crashed() => {
                            self.trace.push(format!(
                                "{step_no}: session: the power failed on the replica during a cut-back ({e}; {})",
                                steps.join(", ")
                            ));
                            return Ok(());
                        }
                        Err(e) => return Err(format!("cut back to {keep}: {e}")),
                    }
                }
                Step::Reset { next_lsn, .. } => {
                    self.counts.resets += 1;
                    match rj.reset(next_lsn) {
                        Ok(e) => n.on_ends(&pj, &e)?,
                        Err(e) if r.storage.crashed() => {
                            self.trace.push(format!(
                                "{step_no}: session: the power failed on the replica during a reset ({e}; {})",
                                steps.join(", ")
                            ));
                            return Ok(());
                        }
                        Err(e) => return Err(format!("reset to {next_lsn}: {e}")),
                    }
                }
            };
        };
        self.counts.sessions += 1;
        self.trace.push(format!("{step_no}: session: {} from {} ({})", r.name, pos.lsn, steps.join(", ")));
        // The replica now holds a prefix of our history, and goes on after it.
        if p.storage.crashed() || r.storage.crashed() {
            self.trace.push(format!("{step_no}: session: the power failed"));
            return Ok(());
        }
        let (mine, theirs) = match (p.records(1), r.records(1)) {
            (Ok(m), Ok(t)) => (m, t),
            // (Reads heal bad copies: writes, where the power may fail.)
            _ if p.storage.crashed() || r.storage.crashed() => return Ok(()),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if rj.next_lsn() != pos.lsn {
            return Err(format!("after the negotiation the replica ends at {}, not at {}", rj.next_lsn(), pos.lsn));
        }
        for (lsn, b) in &theirs {
            if mine.get(lsn).is_some_and(|m| m != b) {
                return Err(format!("after the negotiation the replica's lsn {lsn} is not the primary's"));
            }
        }
        // The mark, then what the segments hold past `pos`.
        let pmark = pj.mark();
        if let Err(e) = r.drain().and_then(|()| rj.apply_mark(pmark.min(rj.next_lsn()))) {
            return if r.storage.crashed() { Ok(()) } else { Err(format!("mark on the replica: {e}")) };
        }
        let mut q = pos;
        let target = pj.next_lsn();
        while q.lsn < target {
            let v = match pj.read_shipment(q.lsn, q.crc, q.hint, target, 1 << 20) {
                Ok(v) => v,
                // (A read heals a bad copy it meets: a write, which may be
                // where the power fails.)
                Err(_) if self.p().storage.crashed() => return Ok(()),
                Err(e) => return Err(format!("catch-up read: {e}")),
            };
            let Some(last) = v.last() else { return Err(format!("catch-up read nothing at {} of {target}", q.lsn)) };
            q.lsn = last.next_lsn;
            q.crc = last.end_crc;
            q.hint = Some((last.seg_seq, last.seg_off + last.bytes.len() as u64));
            for s in &v {
                self.counts.catchup_batches += 1;
                let res = loop {
                    match rj.apply_shipment(&s.view()) {
                        Err(Error::Backpressure) => {
                            if let Err(e) = self.r().drain() {
                                break Err(e);
                            }
                        }
                        other => break other,
                    }
                };
                if let Err(e) = res {
                    if self.r().storage.crashed() {
                        self.note(format!("catch-up: the power failed on the replica ({e})"));
                        return Ok(());
                    }
                    return Err(format!(
                        "the replica refused a catch-up shipment {}..{}: {e}",
                        s.first_lsn, s.next_lsn
                    ));
                }
            }
        }
        if let Err(e) = self.r().drain() {
            return if self.r().storage.crashed() { Ok(()) } else { Err(format!("replica writes: {e}")) };
        }
        if self.r().storage.crashed() || self.p().storage.crashed() {
            self.note("catch-up: the power failed".into());
            return Ok(());
        }
        let link = Arc::new(Link::default());
        self.p().log()?.set_ship_sink(Some(link.clone()));
        self.link = Some(link);
        self.converged("after catch-up")
    }

    /// Both sites hold the same records (above both marks).
    fn converged(&mut self, when: &str) -> Res {
        if self.p().storage.crashed() || self.r().storage.crashed() {
            return Ok(());
        }
        let (pj, rj) = (self.p().journal()?, self.r().journal()?);
        if pj.next_lsn() != rj.next_lsn() {
            return Err(format!("{when}: the primary ends at {}, the replica at {}", pj.next_lsn(), rj.next_lsn()));
        }
        let from = pj.info().first_lsn.max(rj.info().first_lsn).max(1);
        let (mine, theirs) = match (self.p().records(from), self.r().records(from)) {
            (Ok(m), Ok(t)) => (m, t),
            _ if self.p().storage.crashed() || self.r().storage.crashed() => return Ok(()),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if mine != theirs {
            let d = mine.iter().find(|(l, b)| theirs.get(l) != Some(b)).map(|(l, _)| *l);
            return Err(format!("{when}: the sites differ (first at {d:?})"));
        }
        Ok(())
    }

    /// The primary's site fails; the replica is promoted; the old primary
    /// returns as its replica.
    fn failover(&mut self) -> Res {
        self.counts.failovers += 1;
        let old = self.primary;
        self.note(format!("failover: {} fails, {} is promoted", self.sites[old].name, self.sites[1 - old].name));
        self.cut("failover");
        self.sites[old].storage.crash();
        self.sites[old].reopen(true)?;
        if self.r().storage.crashed() {
            self.sites[1 - old].reopen(true)?;
        }
        let _ = self.r().drain();
        // What was acknowledged remote-durable is on the new primary.
        self.verify_site(1 - old)?;
        self.primary = 1 - old;
        // The new truth: what the new primary holds.
        let j = self.p().journal()?;
        let held = match self.p().records(1) {
            Ok(h) => h,
            Err(_) if self.p().storage.crashed() => {
                // (A read healed a bad copy and the power failed there.)
                let i = self.primary;
                self.sites[i].reopen(true)?;
                self.verify_site(i)?;
                self.p().records(1)?
            }
            Err(e) => return Err(e),
        };
        self.model = Model { acked: held.clone(), remote: BTreeMap::new(), maybe: BTreeMap::new(), mark: j.mark() };
        self.note(format!("{} serves from {} (mark {})", self.p().name, j.next_lsn(), j.mark()));
        Ok(())
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
                self.deliver(k)
            }
            50..=54 => self.mark(),
            55..=60 => {
                self.cut("cut");
                Ok(())
            }
            61..=70 => self.heal(),
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
                self.note(format!("{} restarts", self.sites[i].name));
                if i == self.primary {
                    self.cut("the primary restarts");
                }
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
        sim.cut("the end");
        for i in 0..2 {
            sim.sites[i].storage.crash();
            sim.sites[i].reopen(true)?;
        }
        let (p, r) = (sim.primary, 1 - sim.primary);
        sim.verify_site(p)?;
        sim.verify_site(r)?;
        for _ in 0..3 {
            sim.heal()?;
            sim.settle_crashes()?;
            if sim.link.is_some() {
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

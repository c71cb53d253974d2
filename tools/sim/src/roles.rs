//! The roles simulation: two nodes' roles and epochs under crashes, link
//! cuts and operators, driven by one seed, through the real rules: the role
//! table (`replication::role::next`, `at_start`), the start-up rule
//! (`after_probe`), how a node answers a peer's `Hello` (`on_hello`),
//! epochs (`Epoch::restart`, `promotion`) and histories (`History`: whose
//! records a cut-back may drop, and a split brain otherwise).
//!
//! Node A is configured primary, B replica, and they stay so configured
//! whatever happens (as in a failover where nobody edited the files). Each
//! step is one of: an append on a node that takes appends (`local`, or
//! `remote-durable`: acknowledged only when the replica holds it), a
//! session attempt by a node that ships (its `Hello` answered by the other
//! node's rule; then the replica's log is cut back to what it shares with
//! the primary's, unless it holds records of a run the primary's history
//! does not hold: a split brain, kept), a link cut or heal, a node going
//! down and coming back as configured (a configured primary probes its
//! peer and follows the start-up rule), a waiting node asking its peer
//! again, an operator promoting a node (a new term) or demoting the
//! primary. A third of the seeds start in the last terms, so promotions
//! run out of terms.
//!
//! Checked: a promotion yields an epoch above every epoch the node has or
//! has seen (or is refused); a node that serves after a start (or a
//! wait) does so only when no node is at a newer epoch (issue 16, item 2:
//! an old primary restarted while its promoted peer was unreachable took
//! appends that were then cut); no record acknowledged `remote-durable` is
//! ever missing from a node that serves; no panic.
//! `mutate-serve-unreachable` and `mutate-epoch-wrap` put back items 2
//! and 9.

use mirrorlog::epoch::{Epoch, History};
use mirrorlog::replication::role::Probe;
use mirrorlog::replication::role::{self, after_probe, on_hello, AfterProbe, Change, HelloAnswer, Role};

use super::{counters, Failure, Rng};

counters! {
    /// Counts of what a roles run did (coverage).
    pub struct RoleCounts {
        appends,
        remote_acked,
        sessions,
        fenced,
        cutbacks,
        split_brains,
        restarts,
        waits,
        serves,
        follows,
        promotions,
        promotions_refused,
        demotions,
        cuts,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Rec {
    id: u64,
    epoch: Epoch,
}

struct Node {
    name: &'static str,
    configured: Role,
    role: Role,
    /// The epoch persisted on its devices.
    epoch: Epoch,
    /// The newest epoch it has heard of.
    seen: Epoch,
    history: History,
    log: Vec<Rec>,
    up: bool,
}

impl Node {
    fn change(&mut self, c: Change) -> bool {
        match role::next(self.role, c) {
            Some(to) => {
                self.role = to;
                true
            }
            None => false,
        }
    }

    /// A fence or a demotion runs to its end: a replica.
    fn step_down(&mut self, c: Change) {
        if self.change(c) {
            self.change(Change::FinishStepDown);
        }
    }
}

struct RoleSim {
    rng: Rng,
    nodes: [Node; 2],
    link: bool,
    /// A session runs from `.0` to `.1` (cut by a link cut, a crash, a
    /// role change).
    session: Option<(usize, usize)>,
    /// Records acknowledged `remote-durable`.
    remote: Vec<u64>,
    next_id: u64,
    counts: RoleCounts,
    trace: Vec<String>,
    step: u32,
}

type Res = Result<(), String>;

impl RoleSim {
    fn new(seed: u64) -> RoleSim {
        let mut rng = Rng(seed.wrapping_mul(0xA076_1D64_78BD_642F) | 1);
        let term = if rng.chance(33) { u32::MAX - rng.below(3) as u32 } else { 1 };
        let e = Epoch::from_raw((term as u64) << 32);
        let mut history = History::of(e);
        history.add(e, || 7);
        let node = |name, configured, role| Node {
            name,
            configured,
            role,
            epoch: e,
            seen: e,
            history: history.clone(),
            log: Vec::new(),
            up: true,
        };
        RoleSim {
            rng,
            nodes: [node("a", Role::Primary, Role::Primary), node("b", Role::Replica, Role::Replica)],
            link: true,
            session: None,
            remote: Vec::new(),
            next_id: 1,
            counts: RoleCounts::default(),
            trace: Vec::new(),
            step: 0,
        }
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{}: {s}", self.step));
    }

    fn describe(&self) -> String {
        let n = |x: &Node| {
            format!(
                "{} {}{} epoch {} seen {} ({} records)",
                x.name,
                x.role.name(),
                if x.up { "" } else { " (down)" },
                x.epoch,
                x.seen.raw(),
                x.log.len()
            )
        };
        format!("{}; {}; link {}", n(&self.nodes[0]), n(&self.nodes[1]), if self.link { "up" } else { "cut" })
    }

    fn reachable(&self) -> bool {
        self.link && self.nodes[0].up && self.nodes[1].up
    }

    fn end_session(&mut self) {
        self.session = None;
    }

    fn append(&mut self) -> Res {
        let serving: Vec<usize> = (0..2).filter(|&i| self.nodes[i].up && self.nodes[i].role.is_primary()).collect();
        let Some(&i) = serving.get(self.rng.below(serving.len() as u64) as usize) else { return Ok(()) };
        let rec = Rec { id: self.next_id, epoch: self.nodes[i].epoch };
        self.next_id += 1;
        self.nodes[i].log.push(rec);
        self.counts.appends += 1;
        let remote = self.rng.chance(50);
        if remote {
            if self.session == Some((i, 1 - i)) {
                // Shipped, durable on the replica: acknowledged.
                self.nodes[1 - i].log = self.nodes[i].log.clone();
                self.remote.push(rec.id);
                self.counts.remote_acked += 1;
                self.note(format!("{} appends {}: remote-durable, ok", self.nodes[i].name, rec.id));
            } else {
                self.note(format!("{} appends {}: remote-durable, replica-timeout", self.nodes[i].name, rec.id));
            }
        } else {
            self.note(format!("{} appends {}: local", self.nodes[i].name, rec.id));
        }
        Ok(())
    }

    /// A node that ships opens a session with the other (`Hello`, then the
    /// negotiation of where the replica continues, then catch-up).
    fn connect(&mut self) -> Res {
        if !self.reachable() || self.session.is_some() {
            return Ok(());
        }
        let shipping: Vec<usize> = (0..2).filter(|&i| self.nodes[i].role.ships()).collect();
        let Some(&p) = shipping.get(self.rng.below(shipping.len() as u64) as usize) else { return Ok(()) };
        let r = 1 - p;
        let (pe, re) = (self.nodes[p].epoch, self.nodes[r].epoch);
        self.nodes[r].seen = self.nodes[r].seen.max(pe);
        match on_hello(self.nodes[r].role, re.raw(), pe.raw(), false) {
            HelloAnswer::Fenced(e) => {
                self.counts.fenced += 1;
                let n = &mut self.nodes[p];
                n.seen = n.seen.max(Epoch::from_raw(e));
                n.step_down(Change::Fence);
                self.note(format!("{} connects: fenced by {} at epoch {e}", self.nodes[p].name, self.nodes[r].name));
                return Ok(());
            }
            HelloAnswer::SplitBrain | HelloAnswer::Busy => {
                self.counts.split_brains += 1;
                self.note(format!("{} connects: refused (both serve at epoch {})", self.nodes[p].name, pe.raw()));
                return Ok(());
            }
            HelloAnswer::Accept { change: Some(Change::Follow) } => {
                self.nodes[r].change(Change::Follow);
            }
            HelloAnswer::Accept { change: Some(c) } => self.nodes[r].step_down(c),
            HelloAnswer::Accept { change: None } => {}
        }
        // Where the replica continues: after what both hold; what it holds
        // past that may go only if it is of a run the primary's history
        // holds (records the primary had not shipped, or a tail its own
        // earlier run wrote); otherwise it is a split brain, kept.
        let common = self.nodes[p].log.iter().zip(&self.nodes[r].log).take_while(|(a, b)| a == b).count();
        let theirs = &self.nodes[r].log[common..];
        let (ph, rh) = (&self.nodes[p].history, &self.nodes[r].history);
        if let Some(x) = theirs.iter().find(|x| !ph.holds(x.epoch) || !ph.same_term(rh, x.epoch.term())) {
            self.counts.split_brains += 1;
            self.note(format!(
                "{} connects: {} holds record {} of epoch {} that {}'s history does not: split brain, kept",
                self.nodes[p].name,
                self.nodes[r].name,
                x.id,
                x.epoch.raw(),
                self.nodes[p].name
            ));
            return Ok(());
        }
        if !theirs.is_empty() {
            self.counts.cutbacks += 1;
        }
        let cut: Vec<u64> = theirs.iter().map(|x| x.id).collect();
        let (pl, ph) = (self.nodes[p].log.clone(), self.nodes[p].history.clone());
        let n = &mut self.nodes[r];
        n.log = pl;
        n.history = ph;
        n.epoch = n.epoch.max(pe);
        self.session = Some((p, r));
        self.counts.sessions += 1;
        self.note(format!(
            "{} ships to {}{}",
            self.nodes[p].name,
            self.nodes[r].name,
            if cut.is_empty() { String::new() } else { format!(" (cut back {cut:?})") }
        ));
        self.check_remote(p)
    }

    /// Every record acknowledged `remote-durable` is in node `i`'s log.
    fn check_remote(&self, i: usize) -> Res {
        let n = &self.nodes[i];
        for id in &self.remote {
            if !n.log.iter().any(|x| x.id == *id) {
                return Err(format!("{} serves without record {id}, acknowledged remote-durable", n.name));
            }
        }
        Ok(())
    }

    /// Node `i` probes its peer (at start, or while waiting) and follows
    /// the start-up rule.
    fn probe(&mut self, i: usize) -> Res {
        let o = 1 - i;
        let probe = if !self.reachable() {
            Probe::Unreachable("no route".into())
        } else {
            let (oe, ie) = (self.nodes[o].epoch, self.nodes[i].epoch);
            self.nodes[o].seen = self.nodes[o].seen.max(ie);
            match on_hello(self.nodes[o].role, oe.raw(), ie.raw(), true) {
                HelloAnswer::Fenced(e) => Probe::Fenced(e),
                HelloAnswer::SplitBrain | HelloAnswer::Busy => Probe::Refused("refused".into()),
                HelloAnswer::Accept { change } => {
                    if let Some(c @ Change::Fence) = change {
                        self.nodes[o].step_down(c);
                        self.end_session();
                    }
                    Probe::Primary
                }
            }
        };
        match after_probe(&probe, false) {
            AfterProbe::Wait => {
                self.counts.waits += 1;
                self.note(format!("{} probes: {probe:?}; waits", self.nodes[i].name));
            }
            AfterProbe::Follow(e) => {
                let n = &mut self.nodes[i];
                n.seen = n.seen.max(Epoch::from_raw(e));
                n.change(Change::Follow);
                self.counts.follows += 1;
                self.note(format!("{} probes: a newer primary at {e}; follows", self.nodes[i].name));
            }
            AfterProbe::Serve => {
                let Some(e) = self.nodes[i].epoch.restart() else {
                    self.note(format!(
                        "{} probes: may serve, but no start is left in its term; waits",
                        self.nodes[i].name
                    ));
                    return Ok(());
                };
                // Issue 16, item 2: never while a newer primary may exist.
                if let Some(x) = self.nodes.iter().find(|x| x.epoch > e || x.seen > e) {
                    return Err(format!(
                        "{} serves at epoch {} after {probe:?}, but {} is at epoch {} (seen {}): its appends can be cut",
                        self.nodes[i].name,
                        e.raw(),
                        x.name,
                        x.epoch.raw(),
                        x.seen.raw()
                    ));
                }
                let n = &mut self.nodes[i];
                n.change(Change::Serve);
                n.epoch = e;
                n.seen = n.seen.max(e);
                n.history.add(e, || 0);
                self.counts.serves += 1;
                self.note(format!("{} probes: {probe:?}; serves at epoch {}", self.nodes[i].name, e.raw()));
                self.check_remote(i)?;
            }
        }
        Ok(())
    }

    fn down(&mut self) -> Res {
        let i = self.rng.below(2) as usize;
        if !self.nodes[i].up {
            return Ok(());
        }
        self.nodes[i].up = false;
        self.end_session();
        self.note(format!("{} goes down", self.nodes[i].name));
        Ok(())
    }

    fn restart(&mut self) -> Res {
        let Some(i) = (0..2).find(|&i| !self.nodes[i].up) else { return Ok(()) };
        let n = &mut self.nodes[i];
        n.up = true;
        n.role = role::at_start(n.configured);
        self.counts.restarts += 1;
        self.note(format!("{} starts as configured ({})", self.nodes[i].name, self.nodes[i].role.name()));
        if self.nodes[i].role == Role::Waiting {
            return self.probe(i);
        }
        Ok(())
    }

    fn promote(&mut self) -> Res {
        let cands: Vec<usize> = (0..2)
            .filter(|&i| self.nodes[i].up && matches!(self.nodes[i].role, Role::Replica | Role::Waiting))
            .collect();
        let Some(&i) = cands.get(self.rng.below(cands.len() as u64) as usize) else { return Ok(()) };
        let n = &self.nodes[i];
        let Some(e) = n.epoch.promotion(n.seen) else {
            self.counts.promotions_refused += 1;
            self.note(format!("promote {}: no term is left above epoch {}", n.name, n.epoch.raw()));
            return Ok(());
        };
        // Issue 16, item 9: a new term above every epoch the node has or
        // has heard of. (The other node may have been promoted to the same
        // term number meanwhile, out of reach: its term has another nonce,
        // and the two histories never merge silently.)
        if e <= n.epoch || e <= n.seen {
            return Err(format!(
                "promote {}: new epoch {} is not above its epoch {} (seen {})",
                n.name,
                e.raw(),
                n.epoch.raw(),
                n.seen.raw()
            ));
        }
        if self.session.is_some_and(|s| s.1 == i) {
            self.end_session();
        }
        let n = &mut self.nodes[i];
        n.change(Change::BeginPromotion);
        n.change(Change::FinishPromotion);
        n.epoch = e;
        n.seen = e;
        let nonce = self.rng.next() as u32;
        n.history.add(e, || nonce);
        self.counts.promotions += 1;
        self.note(format!("operator promotes {} to epoch {}", self.nodes[i].name, e.raw()));
        self.check_remote(i)
    }

    fn demote(&mut self) -> Res {
        // A planned switchover: the primary demotes once its replica holds
        // everything (an established session).
        let Some((p, _)) = self.session else { return Ok(()) };
        self.nodes[p].step_down(Change::BeginDemotion);
        self.end_session();
        self.counts.demotions += 1;
        self.note(format!("operator demotes {}", self.nodes[p].name));
        Ok(())
    }

    fn step(&mut self) -> Res {
        match self.rng.below(100) {
            0..=34 => self.append(),
            35..=49 => self.connect(),
            50..=56 => {
                self.link = !self.link;
                if !self.link {
                    self.end_session();
                    self.counts.cuts += 1;
                }
                self.note(format!("the link is {}", if self.link { "back" } else { "cut" }));
                Ok(())
            }
            57..=64 => self.down(),
            65..=76 => self.restart(),
            77..=84 => {
                let waiting = (0..2).find(|&i| self.nodes[i].up && self.nodes[i].role == Role::Waiting);
                waiting.map_or(Ok(()), |i| self.probe(i))
            }
            85..=94 => self.promote(),
            _ => self.demote(),
        }
    }
}

/// Runs one seed.
pub fn run(seed: u64, steps: u32) -> Result<RoleCounts, Failure> {
    let mut sim = RoleSim::new(seed);
    for step in 0..steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            let message = format!(
                "{m}
  state: {}",
                sim.describe()
            );
            return Err(Failure::new("--roles", seed, step, message, &sim.trace));
        }
    }
    Ok(sim.counts)
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<RoleCounts, Failure> {
    super::seeds(first, n, steps, run)
}

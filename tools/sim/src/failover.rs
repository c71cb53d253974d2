//! The failover simulation: two nodes and an etcd, through the real
//! failover rules (`replication::failover::Keeper`, one turn of the etcd
//! thread) and the real rule for taking an append (`may_take_append`),
//! on simulated time where clocks lie.
//!
//! Real time is the simulation's; etcd counts leases on it. Each node
//! reads its own monotonic clock, which runs up to 10% fast or slow
//! against real time (fixed per node and seed) and may jump forward (a
//! virtual machine resumed). Node A starts as primary holding the key, B
//! as its replica with automatic failover. Each step lets time pass (a
//! node's failover thread takes a turn every sixth of a lease, by its own
//! clock), offers an append to each node that runs, and sometimes injects
//! a fault: a node's whole process paused (up to three leases), its
//! failover thread alone stalled, etcd unreachable from a node (each
//! request then takes the whole request budget and fails) and back, a
//! crash (B returns as a replica; A, configured primary, asks etcd at start
//! through the real `claim_once`: it serves holding the key, follows its
//! holder, or waits), a clock jump.
//! Requests take a few milliseconds each way, one in ten up to half the
//! budget; a few answers are lost after etcd applied the request.
//!
//! Checked: a node takes an append only while etcd holds its lease alive
//! and the primary key under it (so no two nodes ever take appends at
//! once, whatever the pauses); an etcd-driven promotion yields an epoch
//! above the node's; no panic. `mutate-lease-unchecked` puts back the
//! defect this found: the server loop took appends by the role alone, so
//! a primary whose failover thread was late (paused, starved) took
//! appends after its lease had passed and the replica had taken over.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use mirrorlog::clock::Clock;
use mirrorlog::epoch::Epoch;
use mirrorlog::replication::failover::{
    claim_once, may_take_append, Action, AtStart, Claim, Coordinator, Holder, Keeper, KeeperConfig, Refusal, View,
};
use mirrorlog::replication::role::{self, Change, Role};

use super::{counters, Failure, Rng};

counters! {
    /// Counts of what a failover run did (coverage).
    pub struct FailoverCounts {
        turns,
        appends,
        refused_late,
        refused_role,
        takeovers,
        fences,
        pauses,
        stalls,
        etcd_cuts,
        etcd_errors,
        lost_answers,
        crashes,
        restarts,
        /// Restarts of the configured primary that found a newer history
        /// served and no holder: it waits.
        waits,
        clock_jumps,
    }
}

type Res = Result<(), String>;

/// etcd on the simulation's real time: leases, the primary key bound to
/// one, and the highest epoch served. Requests take time (the caller's
/// clock moves on); a request from a node cut off fails after the budget.
struct SimEtcd {
    now: Rc<Cell<u64>>,
    /// etcd's count of a lease (the configured time rounded up to seconds,
    /// as `grant` asks).
    ttl_ms: u64,
    budget_ms: u64,
    /// Lease -> when it expires.
    leases: RefCell<BTreeMap<i64, u64>>,
    next_lease: Cell<i64>,
    key: RefCell<Option<Holder>>,
    served: Cell<u64>,
    rng: RefCell<Rng>,
    /// The calling node is cut off (set before its turn).
    cut: Cell<bool>,
    errors: Cell<u64>,
    lost: Cell<u64>,
}

impl SimEtcd {
    fn expire(&self) {
        let now = self.now.get();
        let gone: Vec<i64> = self.leases.borrow().iter().filter(|(_, &t)| t <= now).map(|(&l, _)| l).collect();
        for l in gone {
            self.leases.borrow_mut().remove(&l);
            let mut k = self.key.borrow_mut();
            if k.as_ref().is_some_and(|h| h.lease == l) {
                *k = None;
            }
        }
    }

    fn alive(&self, lease: i64) -> bool {
        self.expire();
        self.leases.borrow().contains_key(&lease)
    }

    /// One way of a request: most take a few milliseconds, one in ten up
    /// to `most`.
    fn pass(&self, most: u64) {
        let mut rng = self.rng.borrow_mut();
        let d = if rng.chance(10) { rng.below(most + 1) } else { rng.below(most.min(10) + 1) };
        self.now.set(self.now.get() + d);
    }

    /// One request: there (part of the budget), applied, back (the rest);
    /// or the whole budget and an error when cut off. Some answers are
    /// lost after etcd applied the request.
    fn call<T>(&self, f: impl FnOnce(&SimEtcd) -> Result<T, String>) -> Result<T, String> {
        if self.cut.get() {
            self.now.set(self.now.get() + self.budget_ms);
            self.errors.set(self.errors.get() + 1);
            return Err("etcd unreachable (simulated)".into());
        }
        self.pass(self.budget_ms / 2);
        self.expire();
        let r = f(self);
        self.pass(self.budget_ms / 2);
        if self.rng.borrow_mut().chance(3) {
            self.lost.set(self.lost.get() + 1);
            return Err("etcd's answer lost (simulated)".into());
        }
        r
    }
}

impl Coordinator for SimEtcd {
    fn grant(&self) -> Result<i64, String> {
        self.call(|e| {
            let l = e.next_lease.get();
            e.next_lease.set(l + 1);
            e.leases.borrow_mut().insert(l, e.now.get() + e.ttl_ms);
            Ok(l)
        })
    }

    fn keepalive(&self, lease: i64) -> Result<bool, String> {
        self.call(|e| {
            let mut ls = e.leases.borrow_mut();
            Ok(match ls.get_mut(&lease) {
                Some(t) => {
                    *t = e.now.get() + e.ttl_ms;
                    true
                }
                None => false,
            })
        })
    }

    fn holder(&self) -> Result<Option<Holder>, String> {
        self.call(|e| Ok(e.key.borrow().clone()))
    }

    fn acquire(&self, lease: i64, name: &str, epoch: u64, history: u64) -> Result<Claim, String> {
        self.call(|e| {
            if e.served.get() > history {
                return Ok(Claim::Stale(e.served.get()));
            }
            if e.key.borrow().is_some() {
                return Ok(Claim::NotTaken);
            }
            if !e.leases.borrow().contains_key(&lease) {
                return Err(format!("lease {lease} not found"));
            }
            *e.key.borrow_mut() = Some(Holder { name: name.to_string(), epoch, lease });
            e.served.set(e.served.get().max(epoch));
            Ok(Claim::Taken)
        })
    }

    fn put(&self, lease: i64, name: &str, epoch: u64) -> Result<(), String> {
        self.call(|e| {
            if !e.leases.borrow().contains_key(&lease) {
                return Err(format!("lease {lease} not found"));
            }
            *e.key.borrow_mut() = Some(Holder { name: name.to_string(), epoch, lease });
            e.served.set(e.served.get().max(epoch));
            Ok(())
        })
    }
}

/// A node's monotonic clock: `offset + real * rate`.
struct NodeClock {
    real: Rc<Cell<u64>>,
    rate_ppm: u64,
    offset: Cell<u64>,
}

impl Clock for NodeClock {
    fn now_ms(&self) -> u64 {
        self.offset.get() + self.real.get() * self.rate_ppm / 1_000_000
    }
}

struct Node {
    name: &'static str,
    keeper: Keeper,
    clock: NodeClock,
    role: Role,
    epoch: Epoch,
    seen: u64,
    /// What the failover thread published for the server loop.
    serve_until: u64,
    up: bool,
    /// Real time until which the whole process is paused.
    paused_until: u64,
    /// Real time until which its failover thread is stalled.
    stalled_until: u64,
    /// Real time of its failover thread's next turn.
    next_turn: u64,
    cut: bool,
    promote: bool,
}

impl Node {
    fn runs(&self, now: u64) -> bool {
        self.up && now >= self.paused_until
    }

    fn change(&mut self, c: Change) {
        if let Some(to) = role::next(self.role, c) {
            self.role = to;
        }
    }
}

struct FailoverSim {
    rng: Rng,
    now: Rc<Cell<u64>>,
    etcd: SimEtcd,
    nodes: Vec<Node>,
    cfg: KeeperConfig,
    counts: FailoverCounts,
    trace: Vec<String>,
    step: u32,
}

impl FailoverSim {
    fn new(seed: u64) -> FailoverSim {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let now = Rc::new(Cell::new(0));
        let ttl_ms = [1000, 1500, 2000, 3000][rng.below(4) as usize];
        // As `Etcd::new`: one request (every endpoint in turn) fits in a
        // third of the lease.
        let budget_ms = (ttl_ms / 3).max(50);
        let cfg = KeeperConfig { name: String::new(), ttl_ms, budget_ms, auto_failover: true };
        let etcd = SimEtcd {
            now: now.clone(),
            ttl_ms: ttl_ms.div_ceil(1000) * 1000,
            budget_ms,
            leases: RefCell::new(BTreeMap::new()),
            next_lease: Cell::new(1),
            key: RefCell::new(None),
            served: Cell::new(0),
            rng: RefCell::new(Rng(rng.next() | 1)),
            cut: Cell::new(false),
            errors: Cell::new(0),
            lost: Cell::new(0),
        };
        let mut nodes = Vec::new();
        for name in ["A", "B"] {
            let rate_ppm = 900_000 + rng.below(200_001);
            let clock = NodeClock { real: now.clone(), rate_ppm, offset: Cell::new(rng.below(1 << 40)) };
            let keeper = Keeper::new(KeeperConfig { name: name.to_string(), ..cfg.clone() }, None);
            nodes.push(Node {
                name,
                keeper,
                clock,
                role: Role::Replica,
                epoch: Epoch::from_raw(1 << 32),
                seen: 1 << 32,
                serve_until: 0,
                up: true,
                paused_until: 0,
                stalled_until: 0,
                next_turn: rng.below(ttl_ms / 6),
                cut: false,
                promote: false,
            });
        }
        // A starts as the primary holding the key (claim_at_start).
        let mut sim =
            FailoverSim { rng, now, etcd, nodes, cfg, counts: FailoverCounts::default(), trace: Vec::new(), step: 0 };
        let sent = sim.nodes[0].clock.now_ms();
        let lease = 0;
        sim.etcd.leases.borrow_mut().insert(lease, sim.now.get() + sim.etcd.ttl_ms);
        *sim.etcd.key.borrow_mut() = Some(Holder { name: "A".into(), epoch: 1 << 32, lease });
        sim.etcd.served.set(1 << 32);
        let a = &mut sim.nodes[0];
        a.keeper = Keeper::new(KeeperConfig { name: "A".into(), ..sim.cfg.clone() }, Some((lease, sent)));
        a.serve_until = a.keeper.serve_until();
        a.role = Role::Primary;
        let rates = (sim.nodes[0].clock.rate_ppm, sim.nodes[1].clock.rate_ppm);
        sim.note(format!("ttl {ttl_ms} ms, budget {budget_ms} ms; clock rates (ppm) A {}, B {}", rates.0, rates.1));
        sim
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("[{}] t={} {s}", self.step, self.now.get()));
    }

    /// The server loop's work on a running node: a promotion the failover
    /// thread asked for, the end of a step-down.
    fn server_turn(&mut self, i: usize) -> Res {
        let n = &mut self.nodes[i];
        if n.promote && n.role == Role::Replica {
            n.promote = false;
            let Some(e) = n.epoch.promotion(Epoch::from_raw(n.seen)) else {
                n.change(Change::BeginPromotion);
                n.change(Change::AbandonPromotion { back_to: Role::Replica });
                return Ok(());
            };
            if e <= n.epoch {
                return Err(format!("{} promoted to epoch {} not above its {}", n.name, e.raw(), n.epoch.raw()));
            }
            n.change(Change::BeginPromotion);
            n.change(Change::FinishPromotion);
            n.epoch = e;
            n.seen = n.seen.max(e.raw());
            let name = n.name;
            self.counts.takeovers += 1;
            self.note(format!("{name} promoted to epoch {:#x}", e.raw()));
        } else if n.role == Role::SteppingDown {
            n.change(Change::FinishStepDown);
            let name = n.name;
            self.note(format!("{name} is a replica now"));
        }
        Ok(())
    }

    /// A turn of node `i`'s failover thread.
    fn keeper_turn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        self.etcd.cut.set(n.cut);
        let view = View { role: n.role, epoch: n.epoch.raw(), seen: n.seen, complete: true };
        let actions = n.keeper.tick(&self.etcd, &n.clock, view);
        n.serve_until = n.keeper.serve_until();
        // The next turn a tick later by its own clock.
        let tick_real = n.keeper.config().tick_ms() * 1_000_000 / n.clock.rate_ppm;
        n.next_turn = self.now.get() + tick_real.max(1);
        for a in &actions {
            match a {
                Action::Saw(e) => n.seen = n.seen.max(*e),
                Action::Fence => n.change(Change::Fence),
                Action::Promote => n.promote = true,
            }
        }
        self.counts.turns += 1;
        if actions.contains(&Action::Fence) {
            self.counts.fences += 1;
        }
        if !actions.iter().all(|a| matches!(a, Action::Saw(_))) {
            let name = self.nodes[i].name;
            self.note(format!("{name}'s failover turn: {actions:?}"));
        }
    }

    /// An append offered to node `i` (running): taken by the real rule,
    /// then checked against etcd.
    fn offer_append(&mut self, i: usize) -> Res {
        let n = &self.nodes[i];
        let now = n.clock.now_ms();
        let serve_until = n.serve_until;
        match may_take_append(n.role, now, serve_until) {
            Ok(()) => {
                self.counts.appends += 1;
                let lease = n.keeper.lease();
                let alive = lease.is_some_and(|l| self.etcd.alive(l));
                let holder = self.etcd.key.borrow().clone();
                let holds = lease.is_some_and(|l| holder.as_ref().is_some_and(|h| h.lease == l));
                if !alive || !holds {
                    return Err(format!(
                        "{} took an append at t={} (its clock {now}, serving until {serve_until}) while etcd holds \
                         its lease {lease:?}: {} and the key: {holder:?}",
                        n.name,
                        self.now.get(),
                        if alive { "alive" } else { "expired" }
                    ));
                }
                Ok(())
            }
            Err(Refusal::LeaseLate) => {
                self.counts.refused_late += 1;
                Ok(())
            }
            Err(_) => {
                self.counts.refused_role += 1;
                Ok(())
            }
        }
    }

    fn fault(&mut self) {
        let i = self.rng.below(2) as usize;
        let now = self.now.get();
        let lease_ms = self.cfg.ttl_ms;
        let name = self.nodes[i].name;
        match self.rng.below(6) {
            0 if self.nodes[i].runs(now) => {
                let d = self.rng.below(3 * lease_ms);
                self.nodes[i].paused_until = now + d;
                self.counts.pauses += 1;
                self.note(format!("{name} paused for {d} ms"));
            }
            1 => {
                let d = self.rng.below(3 * lease_ms);
                self.nodes[i].stalled_until = now + d;
                self.counts.stalls += 1;
                self.note(format!("{name}'s failover thread stalls for {d} ms"));
            }
            2 => {
                let n = &mut self.nodes[i];
                n.cut = !n.cut;
                if n.cut {
                    self.counts.etcd_cuts += 1;
                }
                let cut = self.nodes[i].cut;
                self.note(format!("etcd {} from {name}", if cut { "cut off" } else { "reachable again" }));
            }
            3 if self.nodes[i].up => {
                let n = &mut self.nodes[i];
                n.up = false;
                self.counts.crashes += 1;
                self.note(format!("{name} crashes"));
            }
            4 if !self.nodes[i].up => self.restart(i),
            5 => {
                let d = self.rng.below(lease_ms);
                let c = &self.nodes[i].clock;
                c.offset.set(c.offset.get() + d);
                self.counts.clock_jumps += 1;
                self.note(format!("{name}'s clock jumps {d} ms forward"));
            }
            _ => {}
        }
    }

    /// Node `i` starts again as configured: B as a replica; A, configured
    /// primary, asks etcd (the real `claim_once`): it serves holding the
    /// key, follows its holder, or waits when a newer history served. If
    /// etcd does not answer it stays down and tries again later.
    fn restart(&mut self, i: usize) {
        let now = self.now.get();
        let name = self.nodes[i].name;
        let cfg = KeeperConfig { name: name.to_string(), ..self.cfg.clone() };
        self.etcd.cut.set(self.nodes[i].cut);
        let n = &mut self.nodes[i];
        n.seen = n.epoch.raw();
        n.paused_until = 0;
        n.stalled_until = 0;
        n.promote = false;
        n.next_turn = now;
        let (role, lease) = if i == 0 {
            let Some(epoch) = n.epoch.restart() else { return };
            match claim_once(&self.etcd, &n.clock, name, epoch.raw(), n.epoch.raw()) {
                Ok(AtStart::Primary(l, renewed)) => {
                    n.epoch = epoch;
                    n.seen = n.seen.max(epoch.raw());
                    (Role::Primary, Some((l, renewed)))
                }
                Ok(AtStart::Replica(h)) => {
                    n.seen = n.seen.max(h.epoch);
                    (Role::Replica, None)
                }
                Ok(AtStart::Stale(served)) => {
                    n.seen = n.seen.max(served);
                    (Role::Waiting, None)
                }
                Err(e) => {
                    self.note(format!("{name} cannot start yet: {e}"));
                    return;
                }
            }
        } else {
            (Role::Replica, None)
        };
        let n = &mut self.nodes[i];
        n.up = true;
        n.role = role;
        n.keeper = Keeper::new(cfg, lease);
        n.serve_until = n.keeper.serve_until();
        self.counts.restarts += 1;
        if role == Role::Waiting {
            self.counts.waits += 1;
        }
        self.note(format!("{name} restarts as {}", role.name()));
    }

    fn step(&mut self) -> Res {
        // Time passes, up to a third of a tick.
        let d = 1 + self.rng.below(self.cfg.tick_ms() / 3);
        self.now.set(self.now.get() + d);
        if self.rng.chance(4) {
            self.fault();
        }
        // Each running node, in a random order: its server loop (appends
        // before or after its failover thread's turn, as the threads race).
        let first = self.rng.below(2) as usize;
        for i in [first, 1 - first] {
            let now = self.now.get();
            if !self.nodes[i].runs(now) {
                continue;
            }
            self.server_turn(i)?;
            let appends_first = self.rng.chance(50);
            if appends_first {
                self.offer_append(i)?;
            }
            let n = &self.nodes[i];
            if now >= n.next_turn && now >= n.stalled_until {
                self.keeper_turn(i);
                self.server_turn(i)?;
            }
            if !appends_first {
                self.offer_append(i)?;
            }
        }
        // A streaming replica follows its primary's history (a waiting
        // node, told by the primary's session, follows it first).
        let now = self.now.get();
        if let Some(p) = (0..2).find(|&i| self.nodes[i].role == Role::Primary && self.nodes[i].runs(now)) {
            let r = 1 - p;
            if self.nodes[r].role == Role::Waiting && self.nodes[r].runs(now) {
                self.nodes[r].change(Change::Follow);
                let name = self.nodes[r].name;
                self.note(format!("{name} follows the primary"));
            }
            if self.nodes[r].role == Role::Replica && self.nodes[r].runs(now) {
                let e = self.nodes[p].epoch;
                self.nodes[r].epoch = self.nodes[r].epoch.max(e);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{} {} epoch {:#x} lease {:?} serve_until {} clock {}{}{}",
                    n.name,
                    n.role.name(),
                    n.epoch.raw(),
                    n.keeper.lease(),
                    n.serve_until,
                    n.clock.now_ms(),
                    if n.up { "" } else { " down" },
                    if n.cut { " cut" } else { "" }
                )
            })
            .collect();
        format!("t={} {}; etcd key {:?}", self.now.get(), nodes.join("; "), self.etcd.key.borrow())
    }
}

/// Runs one seed.
pub fn run(seed: u64, steps: u32) -> Result<FailoverCounts, Failure> {
    let mut sim = FailoverSim::new(seed);
    for step in 0..steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            let message = format!("{m}\n  state: {}", sim.describe());
            return Err(Failure::new("--failover", seed, step, message, &sim.trace));
        }
    }
    sim.counts.etcd_errors = sim.etcd.errors.get();
    sim.counts.lost_answers = sim.etcd.lost.get();
    Ok(sim.counts)
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<FailoverCounts, Failure> {
    super::seeds(first, n, steps, run)
}

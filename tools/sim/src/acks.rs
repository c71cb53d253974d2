//! The acks simulation: the daemon's `remote-*` acknowledgement policy
//! (`mirrorlog::daemon::acks`: `Degradation::decide` for the oldest waiting
//! append, then `end_if_caught_up`, as `settle_remote` calls them on every
//! turn of its loop) under simulated time, driven by one seed.
//!
//! The journal takes steady load in both `remote-*` modes (an append nearly
//! every turn, durable here a little later); the replica receives what is
//! shipped and makes it durable behind, sometimes stalling; the link goes
//! down for outages shorter and longer than the ack timeout, and a new
//! session starts from what the replica holds durably; the journal's
//! `on_replica_loss` is `degrade` or `block`. The daemon sees the replica's
//! positions only as the ack reader reports them (not while the link is
//! down).
//!
//! Checked on every turn: an append is confirmed only when the replica
//! really holds it at its mode's level; answered unconfirmed only after its
//! timeout, or as `local` on a degraded journal; answered in placement
//! order; a degraded journal stops degrading on the turn the connected
//! replica durably holds everything up to where it degraded (the promise
//! of issue 16, item 4, under load that never pauses); at the end, with
//! the link healed and the load stopped, every append is answered. No
//! panic. `mutate-degraded-until-end` puts item 4's defect back.

use std::collections::VecDeque;

use mirrorlog::daemon::acks::{Degradation, RemoteAck};
use mirrorlog::daemon::config::OnReplicaLoss;
use mirrorlog::protocol::Durability;

use super::{counters, Failure, Rng};

counters! {
    /// Counts of what an acks run did (coverage).
    pub struct AckCounts {
        appends,
        confirmed,
        /// Answered as `local` on a degraded journal.
        as_local,
        degradations,
        /// Degradations that ended with the replica caught up.
        recovered,
        /// `replica-timeout` answers (`on_replica_loss = "block"`).
        timeouts,
        outages,
        /// Outages longer than the ack timeout.
        long_outages,
        stalls,
    }
}

struct Waiting {
    id: u64,
    /// One past its last LSN.
    need: u64,
    mode: Durability,
    placed_ms: u64,
    /// When its batch is durable here.
    durable_here_ms: u64,
}

struct AckSim {
    rng: Rng,
    now: u64,
    timeout: u64,
    on_loss: OnReplicaLoss,
    /// Next LSN to place.
    placed_end: u64,
    waiting: VecDeque<Waiting>,
    /// (need, durable-here time) of every placed append, for the durable end.
    placed: VecDeque<(u64, u64)>,
    /// The durable end here.
    local_end: u64,
    /// The replica as it is.
    received: u64,
    durable: u64,
    /// The replica as the daemon last heard (the ack reader's positions).
    seen_received: u64,
    seen_durable: u64,
    link_up: bool,
    link_back_at: u64,
    stall_until: u64,
    deg: Degradation,
    next_id: u64,
    last_answered: u64,
    load: bool,
    counts: AckCounts,
    trace: Vec<String>,
    step: u32,
}

type Res = Result<(), String>;

impl AckSim {
    fn new(seed: u64) -> AckSim {
        let mut rng = Rng(seed.wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1);
        let timeout = 50 + rng.below(250);
        let on_loss = if rng.chance(70) { OnReplicaLoss::Degrade } else { OnReplicaLoss::Block };
        AckSim {
            rng,
            now: 0,
            timeout,
            on_loss,
            placed_end: 1,
            waiting: VecDeque::new(),
            placed: VecDeque::new(),
            local_end: 1,
            received: 1,
            durable: 1,
            seen_received: 1,
            seen_durable: 1,
            link_up: true,
            link_back_at: 0,
            stall_until: 0,
            deg: Degradation::default(),
            next_id: 0,
            last_answered: 0,
            load: true,
            counts: AckCounts::default(),
            trace: Vec::new(),
            step: 0,
        }
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{} ({} ms): {s}", self.step, self.now));
    }

    /// One turn: time passes, load arrives, the link and the replica move,
    /// then the daemon settles (the policy under test).
    fn turn(&mut self) -> Res {
        self.now += 1 + self.rng.below(20);
        if self.load {
            for _ in 0..self.rng.below(3) + u64::from(self.rng.chance(90)) {
                let n = 1 + self.rng.below(4);
                let mode = if self.rng.chance(50) { Durability::RemoteDurable } else { Durability::RemoteReceived };
                self.placed_end += n;
                let durable_here_ms = self.now + self.rng.below(15);
                self.placed.push_back((self.placed_end, durable_here_ms));
                self.waiting.push_back(Waiting {
                    id: self.next_id,
                    need: self.placed_end,
                    mode,
                    placed_ms: self.now,
                    durable_here_ms,
                });
                self.next_id += 1;
                self.counts.appends += 1;
            }
        }
        // Durable here in placement order.
        while let Some(&(need, at)) = self.placed.front() {
            if at > self.now {
                break;
            }
            self.local_end = need;
            self.placed.pop_front();
        }
        self.link();
        self.settle()
    }

    fn link(&mut self) {
        if self.link_up && self.load && self.rng.below(1000) < 3 {
            let len = 10 + self.rng.below(600);
            self.link_up = false;
            self.link_back_at = self.now + len;
            self.counts.outages += 1;
            self.counts.long_outages += u64::from(len > self.timeout);
            self.note(format!("the link goes down for {len} ms (timeout {} ms)", self.timeout));
            return;
        }
        if !self.link_up {
            if self.now < self.link_back_at {
                return;
            }
            // A new session starts from what the replica holds durably.
            self.link_up = true;
            self.received = self.durable;
            self.seen_received = self.received;
            self.seen_durable = self.durable;
            self.note(format!("the link is back: the replica holds {} durably", self.durable));
        }
        if self.load && self.rng.below(1000) < 5 {
            self.stall_until = self.now + self.rng.below(300);
            self.counts.stalls += 1;
            self.note(format!("the replica's disk stalls until {} ms", self.stall_until));
        }
        // Shipped as placed; received, then durable, behind.
        self.received = (self.received + self.rng.below(20)).min(self.placed_end);
        if self.now >= self.stall_until {
            self.durable = (self.durable + self.rng.below(20)).min(self.received);
        }
        self.seen_received = self.received;
        self.seen_durable = self.durable;
    }

    /// `settle_remote`: the oldest waiting append, durable here, is decided
    /// while one can be; then the degradation may end.
    fn settle(&mut self) -> Res {
        while let Some(w) = self.waiting.front() {
            if w.durable_here_ms > self.now {
                break;
            }
            let was_degraded = self.deg.is_degraded();
            let timed_out = self.now - w.placed_ms >= self.timeout;
            let (need, mode, id) = (w.need, w.mode, w.id);
            let d = self
                .deg
                .decide(mode, need, self.seen_received, self.seen_durable, timed_out, self.on_loss, || self.local_end);
            if d == RemoteAck::Wait {
                break;
            }
            self.waiting.pop_front();
            if id < self.last_answered {
                return Err(format!("append {id} answered after a later one"));
            }
            self.last_answered = id;
            match d {
                RemoteAck::Confirmed => {
                    let held = match mode {
                        Durability::RemoteReceived => self.received.max(self.durable),
                        _ => self.durable,
                    };
                    if held < need {
                        return Err(format!(
                            "append up to lsn {} confirmed {mode:?}, but the replica holds {held}",
                            need - 1
                        ));
                    }
                    self.counts.confirmed += 1;
                }
                RemoteAck::AsLocal => {
                    if !was_degraded {
                        return Err(format!(
                            "append up to lsn {} answered as local on a journal not degraded",
                            need - 1
                        ));
                    }
                    self.counts.as_local += 1;
                }
                RemoteAck::Degrade | RemoteAck::Fail => {
                    if !timed_out {
                        return Err(format!("append up to lsn {} given up on before its timeout", need - 1));
                    }
                    if d == RemoteAck::Degrade {
                        self.counts.degradations += 1;
                        self.note(format!(
                            "lsn {} timed out: the journal degrades at {} (replica durable {})",
                            need - 1,
                            self.local_end,
                            self.seen_durable
                        ));
                    } else {
                        self.counts.timeouts += 1;
                    }
                }
                RemoteAck::Wait => {}
            }
        }
        let at = self.deg.since();
        if let Some(ended) = self.deg.end_if_caught_up(self.link_up, self.seen_durable, || self.local_end) {
            self.counts.recovered += 1;
            self.note(format!("the replica holds {} durably: degradation since {ended} ends", self.seen_durable));
        }
        if let Some(at) = at {
            if self.deg.is_degraded() && self.link_up && self.seen_durable >= at {
                return Err(format!(
                    "the journal is still degraded although the connected replica durably holds everything \
                     up to where it degraded ({at}; replica durable {}, end here {})",
                    self.seen_durable, self.local_end
                ));
            }
        }
        Ok(())
    }
}

/// Runs one seed: `steps` turns of load, then the link heals, the load
/// stops, and every append must be answered.
pub fn run(seed: u64, steps: u32) -> Result<AckCounts, Failure> {
    let mut sim = AckSim::new(seed);
    let fail = |sim: &AckSim, message: String| Failure::new("--acks", seed, sim.step, message, &sim.trace);
    // Ten turns per step: the policy is cheap, and outages span many turns.
    for step in 0..steps {
        sim.step = step;
        for _ in 0..10 {
            if let Err(m) = sim.turn() {
                return Err(fail(&sim, m));
            }
        }
    }
    sim.step = steps;
    sim.load = false;
    sim.note("the load stops; the link heals".into());
    for _ in 0..100_000 {
        if sim.waiting.is_empty() {
            return Ok(sim.counts);
        }
        if let Err(m) = sim.turn() {
            return Err(fail(&sim, m));
        }
    }
    Err(fail(&sim, format!("{} appends never answered", sim.waiting.len())))
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<AckCounts, Failure> {
    super::seeds(first, n, steps, run)
}

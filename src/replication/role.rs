//! The node's role and every change to it: one table, one owner.
//!
//! Five places ask for a role change: the operator's promote and demote
//! (the server loop), the replication sender and receiver (a newer primary
//! answered), the etcd thread (a lease lost or taken) and the start-up
//! wait for the peer. They used to store roles directly, and two of them
//! could undo each other: a demotion abandoned on its timeout stored
//! `Primary` over the fence a newer primary had just put on the node, and
//! the fenced node took appends again. Now each asks for a [`Change`],
//! named by why it happens; [`next`] is the whole table of what each
//! change does from each role, and [`RoleCell::change`] applies it
//! atomically to the role as it is at that instant, or refuses it.
//!
//! Invariants (asserted by the tests below over the whole table):
//! - A role that takes appends (`Primary`) is only reached by a promotion
//!   that finished, a start-up that learned it may serve, or a demotion
//!   abandoned before anything fenced it.
//! - A fence is final for the node's current term: from `SteppingDown`
//!   the only way is to `Replica`, and only a new promotion (a new term)
//!   makes the node primary again.
//! - `Standalone` (no peer) is never left, except by a fence from a newer
//!   primary that connects to it.

use std::sync::atomic::{AtomicU8, Ordering};

/// What this node does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// No peer: appends only in `local` mode.
    Standalone = 0,
    Primary = 1,
    Replica = 2,
    /// Fenced (a newer primary exists, or the etcd lease is lost): it takes
    /// no appends and fails the ones waiting, then becomes a replica.
    SteppingDown = 3,
    /// A replica becoming primary: its receiver stops first.
    Promoting = 4,
    /// Configured primary whose peer has not answered yet (every primary
    /// starts here): it takes no appends until it learns that no newer
    /// primary exists (the peer answers), follows a newer one, or an
    /// operator promotes it.
    Waiting = 5,
    /// A planned demotion: no new appends; those taken finish and, when
    /// the operator asked for it, the replica catches up to the end while
    /// the sender keeps shipping. Then a replica.
    Demoting = 6,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Standalone,
        Role::Primary,
        Role::Replica,
        Role::SteppingDown,
        Role::Promoting,
        Role::Waiting,
        Role::Demoting,
    ];

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Primary,
            2 => Role::Replica,
            3 => Role::SteppingDown,
            4 => Role::Promoting,
            5 => Role::Waiting,
            6 => Role::Demoting,
            _ => Role::Standalone,
        }
    }

    /// As status, metrics and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::SteppingDown => "stepping-down",
            Role::Promoting => "promoting",
            Role::Waiting => "waiting-for-peer",
            Role::Demoting => "demoting",
        }
    }

    /// Takes appends.
    pub fn is_primary(self) -> bool {
        matches!(self, Role::Primary | Role::Standalone)
    }

    /// Was taking appends and still writes the ones it took (it pumps the
    /// journals; a fence or a demotion fails or finishes them).
    pub fn writes_appends(self) -> bool {
        matches!(self, Role::Primary | Role::Standalone | Role::SteppingDown | Role::Demoting)
    }

    /// Ships to its replica (a demoting primary keeps shipping so its
    /// replica can catch up).
    pub fn ships(self) -> bool {
        matches!(self, Role::Primary | Role::Demoting)
    }
}

/// A change of role, named by why it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A primary waiting for its peer learns the peer serves a newer
    /// epoch: it follows it.
    Follow,
    /// A primary waiting for its peer learns that it may serve (the peer
    /// takes it as primary, etcd gave it the key, or the operator forced it).
    Serve,
    /// A replica, or a primary waiting for its peer, begins a promotion
    /// (the operator, or etcd after the primary's lease expired).
    BeginPromotion,
    /// The promotion persisted its new term.
    FinishPromotion,
    /// The promotion failed before its term was persisted: back to the
    /// role it began from (`Replica` or `Waiting`).
    AbandonPromotion { back_to: Role },
    /// The operator demotes the primary (planned).
    BeginDemotion,
    /// The demotion did not finish in time: serve again, unless something
    /// fenced the node meanwhile.
    AbandonDemotion,
    /// A newer primary exists, or the etcd lease is lost.
    Fence,
    /// A fenced or demoted node finished its writes: a replica now.
    FinishStepDown,
}

/// The whole table: the role `change` leads to from `from`, or `None` when
/// it does not apply there (the caller's view of the role is stale, or the
/// change is not allowed).
pub fn next(from: Role, change: Change) -> Option<Role> {
    use Role::*;
    Some(match (change, from) {
        (Change::Follow, Waiting) => Replica,
        (Change::Serve, Waiting) => Primary,
        (Change::BeginPromotion, Replica | Waiting) => Promoting,
        (Change::FinishPromotion, Promoting) => Primary,
        (Change::AbandonPromotion { back_to: to @ (Replica | Waiting) }, Promoting) => to,
        (Change::BeginDemotion, Primary) => Demoting,
        (Change::AbandonDemotion, Demoting) => Primary,
        (Change::Fence, Primary | Standalone | Promoting | Demoting) => SteppingDown,
        (Change::FinishStepDown, SteppingDown | Demoting) => Replica,
        _ => return None,
    })
}

/// The role as it starts: a configured primary waits for its peer's
/// answer (or etcd's) before it serves.
pub fn at_start(configured: Role) -> Role {
    match configured {
        Role::Primary => Role::Waiting,
        other => other,
    }
}

/// What asking the peer found (a primary at start).
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// The peer takes us as primary (it is a replica at our epoch or below).
    Primary,
    /// A newer primary exists at this epoch.
    Fenced(u64),
    /// No answer; the reason.
    Unreachable(String),
    /// The peer answers but refuses this node (another protocol version,
    /// set or geometry; or changing role): its message.
    Refused(String),
}

/// What a configured primary waiting at start does with its peer's answer
/// to a probe (`sender::probe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterProbe {
    /// No newer primary exists: serve (a new start in its term).
    Serve,
    /// A newer primary exists at this epoch: follow it.
    Follow(u64),
    /// Keep waiting (no answer, or a refusal): it may have been promoted
    /// meanwhile, so this node takes no appends until it answers, an
    /// operator promotes this node, or the configuration says to serve.
    Wait,
}

/// The start-up rule (issue 16, item 2): a primary whose peer does not
/// answer takes no appends, unless configured to
/// (`unreachable_at_start = "serve"`, `--force-primary`).
pub fn after_probe(probe: &Probe, serve_unreachable: bool) -> AfterProbe {
    match probe {
        Probe::Primary => AfterProbe::Serve,
        Probe::Fenced(e) => AfterProbe::Follow(*e),
        // The defect of issue 16, item 2, for the roles simulation to find.
        Probe::Unreachable(_) | Probe::Refused(_)
            if serve_unreachable || cfg!(feature = "mutate-serve-unreachable") =>
        {
            AfterProbe::Serve
        }
        Probe::Unreachable(_) | Probe::Refused(_) => AfterProbe::Wait,
    }
}

/// How a node answers a peer's `Hello` (a session, or a probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAnswer {
    /// Take the peer as primary; first `Fence` this node (it was serving),
    /// or `Follow` (it was waiting at start; not for a probe).
    Accept { change: Option<Change> },
    /// This node is at a newer epoch: the peer must step down.
    Fenced(u64),
    /// Both nodes may serve at one epoch: a split brain an operator
    /// resolves (`mirrorlog demote` on one).
    SplitBrain,
    /// This node is changing role: not now.
    Busy,
}

/// The rule for a peer's `Hello` at epoch `theirs` to a node in `role` at
/// epoch `mine`: of two nodes that may serve, the higher epoch wins, and
/// two at one epoch are a split brain that an operator resolves; a replica
/// follows any primary not older than its own epoch.
pub fn on_hello(role: Role, mine: u64, theirs: u64, probe: bool) -> HelloAnswer {
    use Role::*;
    if matches!(role, Primary | Standalone | Waiting | Demoting) {
        if theirs < mine {
            return HelloAnswer::Fenced(mine);
        }
        if theirs == mine {
            return HelloAnswer::SplitBrain;
        }
    }
    match role {
        Primary | Standalone | Demoting => HelloAnswer::Accept { change: Some(Change::Fence) },
        Waiting => HelloAnswer::Accept { change: (!probe).then_some(Change::Follow) },
        Replica if theirs < mine => HelloAnswer::Fenced(mine),
        Replica => HelloAnswer::Accept { change: None },
        SteppingDown | Promoting => HelloAnswer::Busy,
    }
}

/// The one place the role is stored.
#[derive(Debug)]
pub struct RoleCell(AtomicU8);

impl RoleCell {
    pub fn new(role: Role) -> RoleCell {
        RoleCell(AtomicU8::new(role as u8))
    }

    pub fn get(&self) -> Role {
        Role::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Applies `change` to the role as it is now: `Ok(from)` with the role
    /// it left, or `Err(now)` with the role that does not allow it. Never
    /// stores a role [`next`] does not give for the current one.
    pub fn change(&self, change: Change) -> Result<Role, Role> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let from = Role::from_u8(cur);
            let Some(to) = next(from, change) else { return Err(from) };
            match self.0.compare_exchange(cur, to as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    debug_assert_eq!(next(from, change), Some(to));
                    return Ok(from);
                }
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes() -> Vec<Change> {
        let mut v = vec![
            Change::Follow,
            Change::Serve,
            Change::BeginPromotion,
            Change::FinishPromotion,
            Change::BeginDemotion,
            Change::AbandonDemotion,
            Change::Fence,
            Change::FinishStepDown,
        ];
        v.extend(Role::ALL.iter().map(|&r| Change::AbandonPromotion { back_to: r }));
        v
    }

    #[test]
    fn the_table_is_exactly_this() {
        use Role::*;
        let allowed: &[(Role, Change, Role)] = &[
            (Waiting, Change::Follow, Replica),
            (Waiting, Change::Serve, Primary),
            (Replica, Change::BeginPromotion, Promoting),
            (Waiting, Change::BeginPromotion, Promoting),
            (Promoting, Change::FinishPromotion, Primary),
            (Promoting, Change::AbandonPromotion { back_to: Replica }, Replica),
            (Promoting, Change::AbandonPromotion { back_to: Waiting }, Waiting),
            (Primary, Change::BeginDemotion, Demoting),
            (Demoting, Change::AbandonDemotion, Primary),
            (Primary, Change::Fence, SteppingDown),
            (Standalone, Change::Fence, SteppingDown),
            (Promoting, Change::Fence, SteppingDown),
            (Demoting, Change::Fence, SteppingDown),
            (SteppingDown, Change::FinishStepDown, Replica),
            (Demoting, Change::FinishStepDown, Replica),
        ];
        let mut n = 0;
        for from in Role::ALL {
            for c in changes() {
                let want = allowed.iter().find(|(f, ch, _)| *f == from && *ch == c).map(|t| t.2);
                assert_eq!(next(from, c), want, "{from:?} + {c:?}");
                n += usize::from(want.is_some());
            }
        }
        assert_eq!(n, allowed.len());
    }

    #[test]
    fn only_a_finished_promotion_a_start_or_an_unfenced_demotion_reaches_primary() {
        for from in Role::ALL {
            for c in changes() {
                if next(from, c) == Some(Role::Primary) {
                    assert!(
                        matches!(
                            (from, c),
                            (Role::Promoting, Change::FinishPromotion)
                                | (Role::Waiting, Change::Serve)
                                | (Role::Demoting, Change::AbandonDemotion)
                        ),
                        "{from:?} + {c:?} reaches primary"
                    );
                }
            }
        }
    }

    #[test]
    fn a_fence_is_final_for_the_term() {
        for c in changes() {
            let to = next(Role::SteppingDown, c);
            assert!(to.is_none() || to == Some(Role::Replica), "{c:?} leads a fenced node to {to:?}");
        }
        // Every role that takes or writes appends can be fenced.
        for r in Role::ALL.into_iter().filter(|r| r.writes_appends() && *r != Role::SteppingDown) {
            assert_eq!(next(r, Change::Fence), Some(Role::SteppingDown), "{r:?}");
        }
    }

    #[test]
    fn standalone_is_left_only_by_a_fence() {
        for c in changes() {
            let to = next(Role::Standalone, c);
            assert!(to.is_none() || c == Change::Fence, "{c:?} leads standalone to {to:?}");
        }
    }

    /// The defect this module was written for: a demotion fenced midway,
    /// then abandoned on its timeout, stays fenced.
    #[test]
    fn an_abandoned_demotion_does_not_undo_a_fence() {
        let cell = RoleCell::new(Role::Primary);
        assert_eq!(cell.change(Change::BeginDemotion), Ok(Role::Primary));
        assert_eq!(cell.change(Change::Fence), Ok(Role::Demoting));
        assert_eq!(cell.change(Change::AbandonDemotion), Err(Role::SteppingDown));
        assert_eq!(cell.get(), Role::SteppingDown);
        assert_eq!(cell.change(Change::FinishStepDown), Ok(Role::SteppingDown));
        assert_eq!(cell.get(), Role::Replica);
    }

    /// The same for a promotion fenced by etcd before it persisted its term.
    #[test]
    fn an_abandoned_promotion_does_not_undo_a_fence() {
        let cell = RoleCell::new(Role::Replica);
        assert_eq!(cell.change(Change::BeginPromotion), Ok(Role::Replica));
        assert_eq!(cell.change(Change::Fence), Ok(Role::Promoting));
        assert_eq!(cell.change(Change::AbandonPromotion { back_to: Role::Replica }), Err(Role::SteppingDown));
        assert_eq!(cell.change(Change::FinishPromotion), Err(Role::SteppingDown));
        assert_eq!(cell.get(), Role::SteppingDown);
    }

    #[test]
    fn a_configured_primary_starts_waiting_and_the_cell_round_trips_every_role() {
        assert_eq!(at_start(Role::Primary), Role::Waiting);
        assert_eq!(at_start(Role::Replica), Role::Replica);
        assert_eq!(at_start(Role::Standalone), Role::Standalone);
        for r in Role::ALL {
            assert_eq!(RoleCell::new(r).get(), r);
        }
    }

    #[test]
    fn a_primary_whose_peer_does_not_answer_at_start_takes_no_appends() {
        assert_eq!(after_probe(&Probe::Primary, false), AfterProbe::Serve);
        assert_eq!(after_probe(&Probe::Fenced(9), false), AfterProbe::Follow(9));
        assert_eq!(after_probe(&Probe::Fenced(9), true), AfterProbe::Follow(9));
        for p in [Probe::Unreachable("x".into()), Probe::Refused("y".into())] {
            assert_eq!(after_probe(&p, false), AfterProbe::Wait, "{p:?}");
            assert_eq!(after_probe(&p, true), AfterProbe::Serve, "{p:?} with unreachable_at_start = serve");
        }
    }

    #[test]
    fn of_two_nodes_that_may_serve_the_higher_epoch_wins() {
        use HelloAnswer::*;
        for role in [Role::Primary, Role::Standalone, Role::Waiting, Role::Demoting] {
            assert_eq!(on_hello(role, 5, 4, false), Fenced(5), "{role:?}");
            assert_eq!(on_hello(role, 5, 5, false), SplitBrain, "{role:?}");
        }
        for role in [Role::Primary, Role::Standalone, Role::Demoting] {
            // A newer primary fences this one, for a probe too.
            assert_eq!(on_hello(role, 5, 6, true), Accept { change: Some(Change::Fence) });
        }
        assert_eq!(on_hello(Role::Waiting, 5, 6, false), Accept { change: Some(Change::Follow) });
        assert_eq!(on_hello(Role::Waiting, 5, 6, true), Accept { change: None });
        assert_eq!(on_hello(Role::Replica, 5, 4, false), Fenced(5));
        assert_eq!(on_hello(Role::Replica, 5, 5, false), Accept { change: None });
        assert_eq!(on_hello(Role::SteppingDown, 5, 6, false), Busy);
        assert_eq!(on_hello(Role::Promoting, 5, 6, false), Busy);
        // Every change it asks for applies to the role it was asked in.
        for role in Role::ALL {
            for (mine, theirs) in [(5, 4), (5, 5), (5, 6)] {
                if let Accept { change: Some(c) } = on_hello(role, mine, theirs, false) {
                    assert!(next(role, c).is_some(), "{role:?} {c:?}");
                }
            }
        }
    }
}

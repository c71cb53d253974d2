//! The failover rules of the etcd integration, without a socket or a
//! thread: [`Keeper::tick`] is one turn of the failover thread (keep the
//! primary's lease alive or step down; take a free key as a replica and
//! promote), over a [`Coordinator`] (etcd's operations: the HTTP client in
//! production, a simulated etcd in `mirrorlog-sim --failover`) and a
//! [`Clock`]. The thread in `etcd.rs` only sleeps, calls `tick`, and
//! applies what it returns.
//!
//! Invariant (the reason for [`Keeper::serve_until`]): a node takes an
//! append only while the lease it holds cannot have expired at etcd. etcd
//! counts a lease from when it received the renewal, which is after the
//! node sent it; so the node counts from the send, on its own monotonic
//! clock, and stops `budget + tick` before `ttl` (the margin also absorbs
//! a clock that runs slower than etcd's by less than that fraction). The
//! server loop checks `serve_until` on every append ([`may_take_append`]),
//! so a failover thread that is late (paused, starved, its process
//! stopped) cannot leave the node taking appends after its lease may have
//! passed and a replica taken over.

use crate::clock::Clock;
use crate::epoch::Epoch;

use super::role::Role;

/// Who holds the primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub epoch: u64,
    pub lease: i64,
}

/// What `Coordinator::acquire` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Taken,
    /// Someone holds the key.
    NotTaken,
    /// A holder served at this epoch, newer than this node's history: it
    /// must not serve (it may follow that holder, or wait for an operator).
    Stale(u64),
}

/// etcd's operations as the failover rules use them.
pub trait Coordinator {
    /// A new lease of the configured time to live.
    fn grant(&self) -> Result<i64, String>;
    /// Renews the lease; false if it no longer exists.
    fn keepalive(&self, lease: i64) -> Result<bool, String>;
    /// Who holds the primary key.
    fn holder(&self) -> Result<Option<Holder>, String>;
    /// Takes the primary key if nobody holds it and `history` is at least
    /// the highest epoch a holder served at; records `epoch` as served, in
    /// the same transaction.
    fn acquire(&self, lease: i64, name: &str, epoch: u64, history: u64) -> Result<Claim, String>;
    /// Rewrites the key under `lease` with `epoch`, and raises the served
    /// epoch to it.
    fn put(&self, lease: i64, name: &str, epoch: u64) -> Result<(), String>;
}

/// The keeper's settings, in milliseconds.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    pub name: String,
    /// The lease's time to live (etcd's count is at least this long).
    pub ttl_ms: u64,
    /// The longest one request may take.
    pub budget_ms: u64,
    /// A replica takes over when the key is gone.
    pub auto_failover: bool,
}

impl KeeperConfig {
    /// Time between turns: six per lease.
    pub fn tick_ms(&self) -> u64 {
        (self.ttl_ms / 6).max(50)
    }
}

/// What a turn asks of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A newer epoch exists (record it as seen).
    Saw(u64),
    /// Step down (the lease is lost, or another node holds the key).
    Fence,
    /// This node took the free key: promote it.
    Promote,
}

/// The node as a turn sees it.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub role: Role,
    /// The epoch on its devices.
    pub epoch: u64,
    /// The newest epoch it heard of.
    pub seen: u64,
    /// It holds every record its primary acknowledged
    /// (`replication::may_lead`): an incomplete replica never takes the key.
    pub complete: bool,
}

/// The failover state of one node: the lease it holds and when it last
/// renewed it, the epoch last written to the key.
pub struct Keeper {
    cfg: KeeperConfig,
    /// The lease held, and when its last successful renewal (or grant) was
    /// sent, by the clock.
    held: Option<(i64, u64)>,
    written_epoch: u64,
}

impl Keeper {
    /// `lease`: the lease taken at start and when its grant was sent.
    pub fn new(cfg: KeeperConfig, lease: Option<(i64, u64)>) -> Keeper {
        Keeper { cfg, held: lease, written_epoch: 0 }
    }

    pub fn config(&self) -> &KeeperConfig {
        &self.cfg
    }

    pub fn lease(&self) -> Option<i64> {
        self.held.map(|h| h.0)
    }

    /// Until when (by the clock, exclusive) this node may take appends: 0
    /// when it holds no lease.
    pub fn serve_until(&self) -> u64 {
        let margin = self.cfg.budget_ms + self.cfg.tick_ms();
        self.held.map_or(0, |(_, renewed)| (renewed + self.cfg.ttl_ms).saturating_sub(margin))
    }

    /// Holds `lease`, taken with a grant sent at `sent`: counted from a
    /// keep-alive sent now if etcd renews it, since the grant and the
    /// transaction that bound the key to it took time (else from `sent`).
    fn hold(&mut self, c: &impl Coordinator, clock: &impl Clock, lease: i64, sent: u64) {
        self.held = Some((lease, renewed_since(c, clock, lease, sent)));
    }

    fn lose_lease(&mut self, why: &str, out: &mut Vec<Action>) {
        tracing::error!("etcd: {why}; stepping down");
        self.held = None;
        out.push(Action::Fence);
    }

    /// One turn. Returns what the node must do, in order.
    pub fn tick(&mut self, c: &impl Coordinator, clock: &impl Clock, v: View) -> Vec<Action> {
        let mut out = Vec::new();
        let name = self.cfg.name.clone();
        match v.role {
            // A demoting primary keeps its lease until it is a replica.
            Role::Primary | Role::Demoting | Role::Promoting if self.held.is_some() || v.role == Role::Primary => {
                let Some((l, _)) = self.held else {
                    // Promoted by hand while etcd is configured: take the key.
                    let sent = clock.now_ms();
                    match take_key(c, &name, v.epoch, v.epoch) {
                        Ok((l, Claim::Taken)) => {
                            self.hold(c, clock, l, sent);
                            self.written_epoch = v.epoch;
                        }
                        Ok((_, Claim::Stale(served))) => {
                            tracing::error!(served, epoch = v.epoch, "etcd: a primary served at a newer epoch");
                            out.push(Action::Saw(served));
                            out.push(Action::Fence);
                        }
                        Ok((_, Claim::NotTaken)) => {
                            if let Ok(Some(h)) = c.holder() {
                                if h.name != name {
                                    tracing::error!(holder = %h.name, "etcd: another node holds the primary key; stepping down");
                                    out.push(Action::Saw(h.epoch));
                                    out.push(Action::Fence);
                                }
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "etcd: cannot take the primary key"),
                    }
                    return out;
                };
                // Checked before a keep-alive is sent and again as soon as
                // one fails: the next turn may come only a tick later.
                if clock.now_ms() >= self.serve_until() {
                    self.lose_lease("the primary lease could not be renewed in time", &mut out);
                    return out;
                }
                let sent = clock.now_ms();
                match c.keepalive(l) {
                    Ok(true) => {
                        self.held = Some((l, sent));
                        if self.written_epoch != v.epoch && c.put(l, &name, v.epoch).is_ok() {
                            self.written_epoch = v.epoch;
                        }
                    }
                    Ok(false) => self.lose_lease("the primary lease expired", &mut out),
                    Err(err) => {
                        tracing::warn!(error = %err, "etcd: lease keep-alive failed");
                        if clock.now_ms() >= self.serve_until() {
                            self.lose_lease("the primary lease could not be renewed in time", &mut out);
                        }
                    }
                }
            }
            Role::Replica if self.cfg.auto_failover => match c.holder() {
                Ok(None) if !v.complete => {
                    tracing::error!(
                        "etcd: the primary's lease is gone, but this replica is incomplete (a journal is \
                        being sent to it whole): not taking over, which would lose records the primary acknowledged"
                    );
                }
                Ok(None) => {
                    // Recorded as served before this node can take an
                    // append: the epoch its promotion will reach.
                    let Some(next) = Epoch::from_raw(v.epoch).promotion(Epoch::from_raw(v.seen)) else {
                        tracing::error!(epoch = v.epoch, "etcd: no term is left to promote to");
                        return out;
                    };
                    let sent = clock.now_ms();
                    match take_key(c, &name, next.raw(), v.epoch) {
                        Ok((l, Claim::Taken)) => {
                            tracing::warn!("etcd: the primary's lease is gone; taking over");
                            self.hold(c, clock, l, sent);
                            self.written_epoch = 0;
                            out.push(Action::Promote);
                        }
                        Ok((_, Claim::Stale(served))) => {
                            out.push(Action::Saw(served));
                            tracing::warn!(served, epoch = v.epoch,
                                "etcd: the primary's lease is gone, but this replica never followed its newest run: not taking over");
                        }
                        Ok((_, Claim::NotTaken)) => {}
                        Err(err) => tracing::warn!(error = %err, "etcd: cannot take the primary key"),
                    }
                }
                Ok(Some(h)) => out.push(Action::Saw(h.epoch)),
                Err(err) => tracing::debug!(error = %err, "etcd unreachable"),
            },
            _ => {
                // A replica keeps no lease.
                self.held = None;
            }
        }
        out
    }
}

/// A new lease, and whether the primary key was taken under it
/// (`Coordinator::acquire` with `epoch` and `history`).
fn take_key(c: &impl Coordinator, name: &str, epoch: u64, history: u64) -> Result<(i64, Claim), String> {
    let lease = c.grant()?;
    Ok((lease, c.acquire(lease, name, epoch, history)?))
}

/// When `lease`, granted by a request sent at `sent`, was last renewed:
/// the send time of a keep-alive sent now if etcd renews it, else `sent`.
/// A holder counts its lease from there; without this, a grant and a
/// transaction that were slow (each within the request budget) could leave
/// a new holder late at its first turn, stepping down at once.
pub fn renewed_since(c: &impl Coordinator, clock: &impl Clock, lease: i64, sent: u64) -> u64 {
    let now = clock.now_ms();
    match c.keepalive(lease) {
        Ok(true) => now,
        _ => sent,
    }
}

/// What a node configured as primary does at start, by the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// We hold the key, under this lease, last renewed at this time of the
    /// clock: serve as primary.
    Primary(i64, u64),
    /// Someone else does: be its replica.
    Replica(Holder),
    /// Nobody does, but a holder served at this epoch, newer than our
    /// history: wait (for it, or for an operator).
    Stale(u64),
}

/// One attempt of a node configured as primary, at start, to take (or
/// keep) the key, or learn who holds it. `epoch` is what it will serve at,
/// `history` its epoch now. `Err`: try again.
pub fn claim_once(
    c: &impl Coordinator,
    clock: &impl Clock,
    name: &str,
    epoch: u64,
    history: u64,
) -> Result<AtStart, String> {
    let sent = clock.now_ms();
    let (lease, claim) = take_key(c, name, epoch, history)?;
    match claim {
        Claim::Taken => return Ok(AtStart::Primary(lease, renewed_since(c, clock, lease, sent))),
        Claim::Stale(served) => {
            // Unless the key is ours from before a restart.
            match c.holder()? {
                Some(h) if h.name == name && h.epoch >= served => {}
                Some(h) => return Ok(AtStart::Replica(h)),
                None => return Ok(AtStart::Stale(served)),
            }
        }
        Claim::NotTaken => {}
    }
    match c.holder()? {
        Some(h) if h.name == name => {
            // Ours, from before a restart: rebind it to the new lease.
            c.put(lease, name, epoch)?;
            Ok(AtStart::Primary(lease, renewed_since(c, clock, lease, sent)))
        }
        Some(h) => Ok(AtStart::Replica(h)),
        None => Err("the key vanished; trying again".to_string()),
    }
}

/// Whether a node in `role` takes an append at `now` (by the clock of
/// `serve_until`, which is `u64::MAX` without etcd): `Err` says why not.
pub fn may_take_append(role: Role, now_ms: u64, serve_until: u64) -> Result<(), Refusal> {
    match role {
        // Checked here, on every append, and not only at the failover
        // thread's next turn, which may come late.
        // `mutate-lease-unchecked` puts back the defect the failover
        // simulation found (appends taken by the role alone).
        Role::Primary if now_ms >= serve_until && !cfg!(feature = "mutate-lease-unchecked") => Err(Refusal::LeaseLate),
        Role::Primary | Role::Standalone => Ok(()),
        Role::SteppingDown => Err(Refusal::Fenced),
        r => Err(Refusal::Role(r)),
    }
}

/// Why a node takes no append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is stepping down: a newer primary exists (or its lease is lost).
    Fenced,
    /// It holds no lease it can count on: not taken yet (promoted by
    /// hand, the failover thread has not taken the key), or not renewed
    /// in time (it may have passed at etcd; the thread steps down).
    LeaseLate,
    /// It is not primary.
    Role(Role),
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// etcd with one lease of `ttl_ms` on a settable clock; requests take
    /// no time, and fail while `down`.
    struct FakeEtcd {
        now: Cell<u64>,
        ttl_ms: u64,
        down: Cell<bool>,
        lease: Cell<Option<(i64, u64)>>,
        key: RefCell<Option<Holder>>,
    }

    impl FakeEtcd {
        fn new(ttl_ms: u64) -> FakeEtcd {
            FakeEtcd {
                now: Cell::new(1_000),
                ttl_ms,
                down: Cell::new(false),
                lease: Cell::new(None),
                key: RefCell::new(None),
            }
        }
        fn call<T>(&self, f: impl FnOnce() -> T) -> Result<T, String> {
            if self.down.get() {
                return Err("down".into());
            }
            if let Some((_, t)) = self.lease.get() {
                if t <= self.now.get() {
                    self.lease.set(None);
                    *self.key.borrow_mut() = None;
                }
            }
            Ok(f())
        }
    }

    impl Clock for FakeEtcd {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
    }

    impl Coordinator for FakeEtcd {
        fn grant(&self) -> Result<i64, String> {
            self.call(|| {
                self.lease.set(Some((7, self.now.get() + self.ttl_ms)));
                7
            })
        }
        fn keepalive(&self, lease: i64) -> Result<bool, String> {
            self.call(|| match self.lease.get() {
                Some((l, _)) if l == lease => {
                    self.lease.set(Some((l, self.now.get() + self.ttl_ms)));
                    true
                }
                _ => false,
            })
        }
        fn holder(&self) -> Result<Option<Holder>, String> {
            self.call(|| self.key.borrow().clone())
        }
        fn acquire(&self, lease: i64, name: &str, epoch: u64, _history: u64) -> Result<Claim, String> {
            self.call(|| {
                if self.key.borrow().is_some() {
                    return Claim::NotTaken;
                }
                *self.key.borrow_mut() = Some(Holder { name: name.into(), epoch, lease });
                Claim::Taken
            })
        }
        fn put(&self, lease: i64, name: &str, epoch: u64) -> Result<(), String> {
            self.call(|| *self.key.borrow_mut() = Some(Holder { name: name.into(), epoch, lease }))
        }
    }

    fn cfg(auto_failover: bool) -> KeeperConfig {
        KeeperConfig { name: "a".into(), ttl_ms: 6_000, budget_ms: 2_000, auto_failover }
    }

    fn primary(v_epoch: u64) -> View {
        View { role: Role::Primary, epoch: v_epoch, seen: v_epoch, complete: true }
    }

    #[test]
    fn a_primary_renews_its_lease_each_turn_and_serves_until_half_a_lease_after_the_last_renewal() {
        let e = FakeEtcd::new(6_000);
        let l = e.grant().unwrap();
        let mut k = Keeper::new(cfg(false), Some((l, e.now_ms())));
        // ttl 6 s, budget 2 s, tick 1 s: serve until 3 s after the send.
        assert_eq!(k.serve_until(), e.now_ms() + 3_000);
        for _ in 0..10 {
            e.now.set(e.now.get() + 1_000);
            assert_eq!(k.tick(&e, &e, primary(1)), vec![]);
            assert_eq!(k.serve_until(), e.now_ms() + 3_000);
        }
        // The epoch is written to the key once.
        assert_eq!(e.key.borrow().as_ref().map(|h| h.epoch), Some(1));
    }

    #[test]
    fn a_primary_cut_off_from_etcd_steps_down_before_its_lease_can_pass_at_etcd() {
        let e = FakeEtcd::new(6_000);
        let l = e.grant().unwrap();
        let mut k = Keeper::new(cfg(false), Some((l, e.now_ms())));
        let expires = e.now_ms() + 6_000;
        e.down.set(true);
        let mut fenced_at = None;
        for _ in 0..6 {
            e.now.set(e.now.get() + 1_000);
            if k.tick(&e, &e, primary(1)) == vec![Action::Fence] {
                fenced_at = Some(e.now_ms());
                break;
            }
        }
        let fenced_at = fenced_at.expect("stepped down");
        assert!(fenced_at < expires, "stepped down at {fenced_at}, the lease expires at {expires}");
        assert_eq!(k.lease(), None);
        assert_eq!(k.serve_until(), 0);
    }

    #[test]
    fn a_replica_takes_a_free_key_and_promotes_and_one_with_a_holder_records_its_epoch() {
        let e = FakeEtcd::new(6_000);
        let mut k = Keeper::new(cfg(true), None);
        let replica = View { role: Role::Replica, epoch: 1 << 32, seen: 1 << 32, complete: true };
        *e.key.borrow_mut() = Some(Holder { name: "b".into(), epoch: 3 << 32, lease: 9 });
        assert_eq!(k.tick(&e, &e, replica), vec![Action::Saw(3 << 32)]);
        *e.key.borrow_mut() = None;
        // An incomplete replica leaves the key free (it would lose what it lacks).
        assert_eq!(k.tick(&e, &e, View { complete: false, ..replica }), vec![]);
        assert_eq!(*e.key.borrow(), None);
        assert_eq!(k.tick(&e, &e, replica), vec![Action::Promote]);
        assert_eq!(e.key.borrow().as_ref().map(|h| h.epoch), Some(2 << 32), "the promotion's epoch is recorded");
        assert_eq!(k.serve_until(), e.now_ms() + 3_000);
        // Without automatic failover it never takes the key.
        let mut k = Keeper::new(cfg(false), None);
        *e.key.borrow_mut() = None;
        assert_eq!(k.tick(&e, &e, replica), vec![]);
        assert_eq!(*e.key.borrow(), None);
    }

    /// The defect `mirrorlog-sim --failover` found (seed 6): the server
    /// loop took appends by the role alone, so a primary whose failover
    /// thread was late (its process paused past the lease, the thread
    /// starved) took appends after its lease had passed at etcd and the
    /// replica had taken over, until its next turn stepped it down.
    #[test]
    fn a_primary_takes_no_append_once_its_lease_may_have_passed_even_before_its_failover_turn() {
        let e = FakeEtcd::new(6_000);
        let l = e.grant().unwrap();
        let k = Keeper::new(cfg(false), Some((l, e.now_ms())));
        let until = k.serve_until();
        assert_eq!(may_take_append(Role::Primary, until - 1, until), Ok(()));
        // Paused past the lease: no turn ran since, the role is unchanged.
        e.now.set(e.now.get() + 7_000);
        assert_eq!(e.holder(), Ok(None), "etcd expired the lease");
        assert_eq!(may_take_append(Role::Primary, e.now_ms(), until), Err(Refusal::LeaseLate));
        assert_eq!(may_take_append(Role::Primary, until, until), Err(Refusal::LeaseLate));
        // Without etcd nothing bounds it; other roles refuse as before.
        assert_eq!(may_take_append(Role::Primary, u64::MAX - 1, u64::MAX), Ok(()));
        assert_eq!(may_take_append(Role::Standalone, 5, u64::MAX), Ok(()));
        assert_eq!(may_take_append(Role::SteppingDown, 0, u64::MAX), Err(Refusal::Fenced));
        assert_eq!(may_take_append(Role::Replica, 0, u64::MAX), Err(Refusal::Role(Role::Replica)));
    }
}

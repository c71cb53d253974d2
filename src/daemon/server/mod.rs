//! The server: one event loop thread on tokio-uring that runs the network
//! (io_uring sockets) and the disk (the engine's `Driver`, its own io_uring,
//! whose completions wake the loop through an eventfd).
//!
//! Every connection's appends are placed into the journals' open batches
//! right where their frames are decoded, on the loop's thread; the pump task
//! runs after the ready connections and writes whatever batches formed, so
//! appends from many connections share one group commit with no hop
//! between threads.
//!
//! One file per job (in the manner of mini-redis): `event_loop` (the
//! pump-then-settle turn, signals, drain), `listen` (binding, accepting),
//! `conn` (a connection's socket, frame reading, answers, back-pressure),
//! `dispatch` (a request to its handler), `appends` (placement, idempotence,
//! acks and the pure replica-ack decision), `reads` (reads, subscriptions),
//! `roles` (promote, demote, following a fence), `admin` (HTTP metrics and
//! status), `scrub` (the background scrub and its progress), `driven` (the
//! server turned by a caller: the wire simulator). This file holds the
//! state they share: `Srv` and each journal's `Jd`. Everything runs on the
//! loop's one thread (`Rc`, `Cell`), but the scrub's own thread.
//!
//! Invariants:
//! * An append is acknowledged only once `Journal::poll` says its records
//!   are durable on every healthy mirror (`settle`). Acks of one journal are
//!   settled in placement order.
//! * Records of one append are placed contiguously: only this thread places
//!   records, and `submit_many` places all of a request before returning.
//! * Every `select!` is `biased` (branches polled in the order written;
//!   tokio's default draws one at random), so a simulator's seed replays.
//! * Bounded: connections (`max_connections`), per-connection bytes
//!   waiting for durability and responses waiting to be sent
//!   (`max_inflight_bytes`; past it the connection is not read), frame size
//!   (`max_frame_bytes`), one read or subscription read at a time per
//!   request, batch buffers per journal (the engine).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

// The daemon's clock: tokio's, which a simulator pauses and moves
// (`Driven`); in production the same monotonic clock as `std`'s.
use tokio::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::acks::{Degradation, RemoteAck};
use super::config::{DaemonConfig, Listen, OnReplicaLoss};
use super::metrics::{self, Metrics};
use super::notify::Notifier;
use super::producers::{stored_crcs, verify_resend, Admit, Producers};
use crate::clock::{Clock, Mono};
use crate::epoch::Epoch;
use crate::protocol::{codes, Durability, Frame, Op, ProtoError, Request, Response, WireRecord, HEADER_LEN, VERSION};
use crate::replication::failover::{self, Refusal};
use crate::replication::{self, Change, JRepl, ReplShared, Role};
use crate::{Driver, Error, Journal, MirrorLog, Tag, Ticket};

mod admin;
mod appends;
mod conn;
mod dispatch;
mod driven;
mod event_loop;
mod listen;
mod reads;
mod resilver;
mod roles;
mod scrub;

use admin::*;
use appends::*;
use conn::*;
use dispatch::*;
use listen::*;
use reads::*;
use resilver::*;
use roles::*;
use scrub::*;

pub use conn::Stream;
pub use driven::Driven;
pub(crate) use event_loop::serve;
pub(crate) use listen::{bind, Bound};

/// Subscriptions one connection may hold at once.
const MAX_SUBSCRIPTIONS: usize = 16;

/// One journal as the server sees it.
struct Jd {
    j: Journal,
    durability: Cell<Durability>,
    /// `local` appends waiting for local durability, in placement order.
    pending: RefCell<VecDeque<Ack>>,
    /// `remote-*` appends waiting for local durability and the replica.
    remote: RefCell<VecDeque<Ack>>,
    /// The replica's progress on this journal.
    jr: Arc<JRepl>,
    on_loss: OnReplicaLoss,
    /// Whether `remote-*` appends are acknowledged as `local` (after a
    /// timeout with `on_replica_loss = "degrade"`), until the replica
    /// catches up to where that began.
    degradation: Cell<Degradation>,
    producers: RefCell<Producers>,
    /// Woken when the durable end moves (subscriptions wait on it).
    advanced: Notify,
    last_durable: Cell<u64>,
}

impl Jd {
    /// Fails every append waiting on this journal, local and remote, in
    /// placement order; returns how many.
    fn fail_waiting(&self, code: u16, msg: &str) -> usize {
        let mut n = 0;
        for q in [&self.pending, &self.remote] {
            let drained = std::mem::take(&mut *q.borrow_mut());
            n += drained.len();
            for a in drained {
                a.fail_with(code, msg);
            }
        }
        n
    }
}

/// The server's state, owned by the loop thread.
pub(crate) struct Srv {
    log: Arc<MirrorLog>,
    repl: Arc<ReplShared>,
    cfg: DaemonConfig,
    journals: RefCell<HashMap<String, Rc<Jd>>>,
    jlist: RefCell<Vec<Journal>>,
    driver: RefCell<Driver>,
    kick: Notify,
    /// Bumped by every socket read that brought bytes (idle polling).
    activity: Cell<u64>,
    draining: Cell<bool>,
    drain: Notify,
    m: Metrics,
    started: Instant,
    /// Disk work that would go to the blocking pool runs on the loop's
    /// thread (`Driven`).
    inline_blocking: bool,
    /// The running or last scrub (`mirrorlog scrub`).
    scrub: Arc<Scrubbing>,
    /// The running or last resilver (`mirrorlog replace`).
    resilver: Arc<Resilvering>,
}

impl Srv {
    pub(crate) fn new(log: Arc<MirrorLog>, cfg: DaemonConfig, repl: Arc<ReplShared>) -> crate::Result<Rc<Srv>> {
        Self::build(log, cfg, repl, false)
    }

    fn build(
        log: Arc<MirrorLog>,
        cfg: DaemonConfig,
        repl: Arc<ReplShared>,
        inline_blocking: bool,
    ) -> crate::Result<Rc<Srv>> {
        let driver = Driver::for_log(&log)?;
        let srv = Rc::new(Srv {
            log,
            repl,
            cfg,
            journals: RefCell::new(HashMap::new()),
            jlist: RefCell::new(Vec::new()),
            driver: RefCell::new(driver),
            kick: Notify::new(),
            activity: Cell::new(0),
            draining: Cell::new(false),
            drain: Notify::new(),
            m: Metrics::default(),
            started: Instant::now(),
            inline_blocking,
            scrub: Arc::new(Scrubbing::default()),
            resilver: Arc::new(Resilvering::default()),
        });
        // A member left rebuilding by the last run resumes its resilver
        // (not when driven: the simulator runs no threads of its own).
        if !inline_blocking {
            let rates = (srv.cfg.resilver.rate, srv.cfg.resilver.busy_rate);
            if srv.resilver.start(srv.log.clone(), rates).map_err(crate::Error::Io)? {
                tracing::warn!("a mirror member was being resilvered: resuming");
            }
        }
        for name in srv.log.journal_names() {
            let j = srv.log.journal(&name)?;
            srv.add_journal(j);
        }
        Ok(srv)
    }

    /// Builds a journal's idempotence table from the producer tags in its
    /// newest segments.
    fn producers_from_disk(&self, j: &Journal) -> Producers {
        let idem = &self.cfg.idempotence;
        let t0 = Instant::now();
        let (producers, tagged, res) = Producers::from_journal(j, idem.window, idem.max_producers, idem.scan_segments);
        if let Err(e) = res {
            tracing::warn!(journal = j.name(), error = %e, "could not rebuild the idempotence table from the journal");
        }
        tracing::info!(
            journal = j.name(),
            next_lsn = j.next_lsn(),
            producers = producers.len(),
            tagged_records = tagged,
            seconds = t0.elapsed().as_secs_f64(),
            "journal ready"
        );
        producers
    }

    fn add_journal(&self, j: Journal) {
        let spec = self.cfg.journals.iter().find(|s| s.name == j.name());
        let producers = self.producers_from_disk(&j);
        let jd = Rc::new(Jd {
            last_durable: Cell::new(j.next_lsn()),
            j: j.clone(),
            durability: Cell::new(spec.map(|s| s.durability).unwrap_or(Durability::Local)),
            pending: RefCell::new(VecDeque::new()),
            remote: RefCell::new(VecDeque::new()),
            jr: self.repl.journal(j.id()),
            on_loss: spec.map(|s| s.on_replica_loss).unwrap_or(OnReplicaLoss::Block),
            degradation: Cell::new(Degradation::default()),
            producers: RefCell::new(producers),
            advanced: Notify::new(),
        });
        self.journals.borrow_mut().insert(j.name().to_string(), jd);
        self.jlist.borrow_mut().push(j);
    }

    /// The journal of this name. On a replica the receiver creates and
    /// deletes journals; the map follows the engine's on each lookup.
    fn journal(&self, name: &str) -> Option<Rc<Jd>> {
        let have = self.journals.borrow().get(name).cloned();
        if self.repl.role().is_primary() {
            return have;
        }
        match (have, self.log.journal(name).ok()) {
            (Some(jd), Some(j)) if jd.j.id() == j.id() => Some(jd),
            (old, now) => {
                if old.is_some() {
                    self.journals.borrow_mut().remove(name);
                    self.jlist.borrow_mut().retain(|j| j.name() != name);
                }
                let j = now?;
                self.add_journal(j);
                self.journals.borrow().get(name).cloned()
            }
        }
    }

    /// Rebuilds every journal's entry from the engine (after a role change:
    /// a replica's journals came from its primary, and its idempotence
    /// tables must know what the primary's producers wrote).
    fn reload_journals(&self) {
        self.journals.borrow_mut().clear();
        self.jlist.borrow_mut().clear();
        for j in self.log.journals() {
            self.add_journal(j);
        }
    }

    /// Writes batches and reaps completions; waits for one if `wait`.
    /// (No allocation: it runs on every turn of the loop.)
    fn pump(&self, wait: bool) -> crate::Result<usize> {
        // A replica's batches are written by its receiver's own Driver.
        let n = if self.repl.role().writes_appends() {
            self.driver.borrow_mut().pump_all(&self.jlist.borrow(), wait)?
        } else {
            self.driver.borrow_mut().pump_all(&[], wait)?
        };
        self.settle();
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.driver.borrow().in_flight()
    }

    fn pending_acks(&self) -> usize {
        self.journals.borrow().values().map(|jd| jd.pending.borrow().len() + jd.remote.borrow().len()).sum()
    }

    fn remote_acks(&self) -> usize {
        self.journals.borrow().values().map(|jd| jd.remote.borrow().len()).sum()
    }

    /// Some `local` append waits for its batch.
    fn local_acks_waiting(&self) -> bool {
        self.journals.borrow().values().any(|jd| !jd.pending.borrow().is_empty())
    }
}

pub(crate) fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Default | Durability::Local => "local",
        Durability::RemoteReceived => "remote-received",
        Durability::RemoteDurable => "remote-durable",
    }
}

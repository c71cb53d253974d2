//! The replica's side: a thread that listens on the replication address,
//! takes one primary's session at a time, and applies what it ships with
//! its own `Driver`, acking received and durable LSNs per journal.
//!
//! It also answers a primary while this node is primary: a peer with a
//! higher epoch makes this node step down (the server loop fails the
//! appends waiting and stops taking new ones) and the session goes on with
//! this node as its replica; a lower or equal epoch is refused. A node
//! waiting for its peer at start follows a higher epoch at once.
//!
//! Invariants:
//! * Nothing is applied unless it continues the journal's chain
//!   (`Journal::apply_shipment` checks every byte); a refused batch ends
//!   the session with `Failed` and nothing of it is written.
//! * `durable` in an ack is the journal's durable next LSN here: every
//!   record below it is on every healthy mirror of this node.
//! * A mark is applied only once every record below it is durable here.
//! * Nothing this node holds is cut back, dropped or deleted for a
//!   primary whose history does not hold the run that wrote it
//!   (`check_cut`: a split brain, reported and refused; an operator
//!   decides). The primary's epoch is taken only once the handshake's
//!   cut-backs passed.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::role::{self, HelloAnswer};
use super::wire::{Msg, REPL_VERSION};
use super::{configure, max_body, Change, FrameConn, ReplShared, Role};
use crate::epoch::{Epoch, History};
use crate::{Driver, Error, Journal, MirrorLog};

/// The first record of `j` from `from` on that belongs to a run the
/// primary's history does not hold, or to a term it holds under another
/// nonce than this node's (two promotions to one term number): its lsn and
/// epoch. A chain's epochs never decrease, so this walks span by span of
/// held runs, each found from the segment headers and about one segment's
/// read (`Journal::first_record_above`).
fn foreign_record(j: &Journal, from: u64, primary: &History, mine: &History) -> crate::Result<Option<(u64, u64)>> {
    let (mut at, mut below) = (from, 0u64);
    loop {
        let Some((lsn, e)) = j.first_record_above(at, below)? else { return Ok(None) };
        let epoch = Epoch::from_raw(e);
        match primary.held_up_to(epoch) {
            Some(top) if primary.same_term(mine, epoch.term()) => (at, below) = (lsn, top.raw()),
            _ => return Ok(Some((lsn, e))),
        }
    }
}

pub struct Receiver {
    pub log: Arc<MirrorLog>,
    pub shared: Arc<ReplShared>,
    pub listener: TcpListener,
}

impl Receiver {
    pub fn run(self) {
        if let Err(e) = self.listener.set_nonblocking(true) {
            tracing::error!(error = %e, "replication listener");
            return;
        }
        while !self.shared.stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok((s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    if let Err(e) = configure(&s, self.shared.cfg.socket_buffer) {
                        tracing::warn!(error = %e, "replication socket options");
                    }
                    let r = self.session(s);
                    // `connected` first: once `applying` is false a promotion
                    // may finish and its sender set `connected` for its own
                    // session, which this must not overwrite.
                    if !self.shared.role().ships() {
                        self.shared.connected.store(false, Ordering::Release);
                    }
                    self.shared.applying.store(false, Ordering::Release);
                    match r {
                        Ok(()) => tracing::info!(peer = %peer, "replication session closed"),
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "replication session ended");
                            self.shared.error(&e);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replication accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn session(&self, s: TcpStream) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let (block, seg, slots, batch_buf) = self.log.geometry();
        let mut c = FrameConn::new(s, max_body(batch_buf));
        let h = match c.recv(self.shared.cfg.peer_timeout).map_err(io)? {
            Msg::Hello(h) => h,
            other => return Err(format!("expected hello, got {other:?}")),
        };
        let mine = self.log.epoch();
        self.shared.saw_epoch(h.epoch);
        let refuse = |c: &mut FrameConn, message: String| -> Result<(), String> {
            let _ = c.send(&Msg::Refused { message: message.clone() });
            Err(message)
        };
        if h.version != REPL_VERSION {
            return refuse(&mut c, format!("replication version {} (this node speaks {REPL_VERSION})", h.version));
        }
        if h.set_uuid != self.log.set_uuid() {
            return refuse(
                &mut c,
                "the peer's mirror set is a different set: format this replica's devices empty (mirrorlog format, or a fresh --data-dir) so it takes the primary's".into(),
            );
        }
        if h.block_size != block || h.segment_size != seg || h.slot_count > slots || h.batch_buf > batch_buf {
            return refuse(
                &mut c,
                format!(
                    "geometry differs: block {} / {block}, segment {} / {seg}, slots {} / {slots}, batch buffer {} / {batch_buf} (peer / here)",
                    h.block_size, h.segment_size, h.slot_count, h.batch_buf
                ),
            );
        }
        let fenced = |c: &mut FrameConn, epoch: u64| -> Result<(), String> {
            let _ = c.send(&Msg::Fenced {
                epoch,
                message: format!("this node ({}) is at epoch {epoch}, newer than {}", self.shared.cfg.name, h.epoch),
            });
            Err(format!("refused {} at epoch {}: this node is at epoch {epoch}", h.name, h.epoch))
        };
        match role::on_hello(self.shared.role(), mine, h.epoch, h.probe) {
            HelloAnswer::Fenced(epoch) => return fenced(&mut c, epoch),
            HelloAnswer::SplitBrain => {
                return refuse(
                    &mut c,
                    format!("split brain: both nodes are primary at epoch {mine}; demote one (mirrorlog demote)"),
                );
            }
            HelloAnswer::Busy => return refuse(&mut c, "this node is changing role; try again".into()),
            HelloAnswer::Accept { change: Some(Change::Fence) } => {
                tracing::error!(peer = %h.name, epoch = h.epoch, mine, "a newer primary exists: stepping down to replica");
                let _ = self.shared.change(Change::Fence);
                // The server loop fails waiting appends and lets writes finish.
                let deadline = Instant::now() + Duration::from_secs(30);
                while self.shared.role() != Role::Replica {
                    if Instant::now() > deadline {
                        return Err("stepping down did not finish in time".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            HelloAnswer::Accept { change: Some(c2) } => {
                // A newer primary while this node waited at start: follow it.
                // It took no appends while waiting, so there is nothing to
                // step down from.
                if self.shared.change(c2).is_err() {
                    return refuse(&mut c, "this node is changing role; try again".into());
                }
            }
            HelloAnswer::Accept { change: None } => {}
        }
        c.send(&Msg::HelloOk { epoch: mine.max(h.epoch), name: self.shared.cfg.name.clone() }).map_err(io)?;
        if h.probe {
            return Ok(());
        }
        self.shared.applying.store(true, Ordering::Release);
        *self.shared.peer_name.lock() = h.name.clone();
        self.shared.connected.store(true, Ordering::Release);
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(primary = %h.name, epoch = h.epoch, history = %h.history, "replicating from primary");
        let mut st = Apply {
            log: &self.log,
            shared: &self.shared,
            driver: Driver::for_log(&self.log).map_err(|e| e.to_string())?,
            sent: HashMap::new(),
            received: HashMap::new(),
            primary_epoch: h.epoch,
            primary: h.history.clone(),
            mine: self.log.history(),
            primary_name: h.name.clone(),
            adopted: false,
            allow_diverged: self.shared.discard_diverged.swap(false, Ordering::AcqRel),
            diverged: None,
        };
        let res = self.serve(&mut c, &mut st);
        st.drain();
        if let Err(e) = &res {
            let _ = match st.diverged.take() {
                Some(journal) => c.send(&Msg::Diverged { journal, message: e.clone() }),
                None => c.send(&Msg::Failed { message: e.clone() }),
            };
        }
        res
    }

    fn serve(&self, c: &mut FrameConn, st: &mut Apply<'_>) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let fd = c.stream.as_raw_fd();
        let mut last_frame = Instant::now();
        let mut last_ack = Instant::now();
        let mut out = Vec::new();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.shared.role() != Role::Replica {
                return Err(format!("no longer a replica ({})", self.shared.role().name()));
            }
            // Handle every whole frame buffered.
            let mut any = false;
            while let Some(m) = c.try_decoded().map_err(io)? {
                any = true;
                last_frame = Instant::now();
                if let Some(reply) = st.handle(m)? {
                    c.send(&reply).map_err(io)?;
                }
            }
            // One listing per turn: journals change only in `handle`, above.
            let js = self.log.journals();
            st.driver.pump_all(&js, false).map_err(|e| e.to_string())?;
            // Ack what moved (and at least once a second, as a heartbeat).
            out.clear();
            let acks = st.acks(last_ack.elapsed() >= Duration::from_secs(1));
            if !acks.is_empty() {
                Msg::Acks(acks).encode(&mut out);
                c.send_raw(&out).map_err(io)?;
                last_ack = Instant::now();
            }
            if any {
                continue;
            }
            if last_frame.elapsed() > self.shared.cfg.peer_timeout {
                return Err("no frame from the primary in time".into());
            }
            // Wait for the socket, or for a write to finish.
            let wait_ms = if st.driver.in_flight() > 0 { 0 } else { 50 };
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            if st.driver.in_flight() > 0 {
                // Writes in flight: block in the ring for one, unless input is ready.
                // SAFETY: one pollfd on our own socket, zero timeout.
                let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
                if ready <= 0 {
                    st.driver.pump_all(&js, true).map_err(|e| e.to_string())?;
                    continue;
                }
            } else {
                // SAFETY: as above, with a short timeout.
                unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            }
            c.set_timeout(Duration::from_millis(1)).map_err(io)?;
            c.fill().map_err(io)?;
        }
    }
}

/// Applies one session's messages.
struct Apply<'a> {
    log: &'a MirrorLog,
    shared: &'a ReplShared,
    driver: Driver,
    /// (received, durable) last acked per journal.
    sent: HashMap<u64, (u64, u64)>,
    received: HashMap<u64, u64>,
    /// The primary's epoch and the runs its history holds (from its hello).
    primary_epoch: u64,
    primary: History,
    /// This node's history before it follows the primary.
    mine: History,
    primary_name: String,
    /// This node took the primary's epoch: done when the stream begins,
    /// after every cut-back of the handshake passed (a node that refused
    /// one keeps its own epoch, so its history stays its own).
    adopted: bool,
    /// An operator allowed this session to cut records of runs the
    /// primary's history does not hold (`discard-diverged`).
    allow_diverged: bool,
    /// The journal whose cut was refused as a split brain.
    diverged: Option<u64>,
}

impl Apply<'_> {
    fn journal(&self, id: u64) -> Result<Journal, String> {
        self.log.journal_by_id(id).ok_or_else(|| format!("no journal with id {id} here"))
    }

    /// Writes until nothing is queued or in flight.
    fn drain(&mut self) {
        loop {
            let js = self.log.journals();
            let busy = js.iter().any(|j| matches!(j.chain_end(), Err(Error::Backpressure)));
            if !busy && self.driver.in_flight() == 0 {
                return;
            }
            if self.driver.pump_all(&js, true).is_err() {
                return;
            }
        }
    }

    /// Before records from `from` on are cut back or dropped: refuses (a
    /// split brain) if one of them belongs to a run the primary's history
    /// does not hold, unless an operator allowed it for this session.
    fn check_cut(&mut self, j: &Journal, from: u64, what: &str) -> Result<(), String> {
        let Some((lsn, epoch)) = foreign_record(j, from, &self.primary, &self.mine).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let epoch = Epoch::from_raw(epoch);
        if self.allow_diverged {
            tracing::error!(journal = j.name(), lsn, %epoch, what,
                "discarding records of a run the new primary never followed, as an operator allowed (discard-diverged)");
            return Ok(());
        }
        let msg = format!(
            "split brain: journal {} holds records from lsn {lsn} on written at epoch {epoch}, a run that primary {} \
             never followed (its history holds {}; this node's, {}); refusing {what}, both histories are kept. Read \
             them here to keep what matters, then run `mirrorlog discard-diverged` on this node to let the \
             primary's history win, or promote this node instead",
            j.name(),
            self.primary_name,
            self.primary,
            self.mine
        );
        tracing::error!("{msg}");
        *self.shared.split_brain.lock() = msg.clone();
        self.diverged = Some(j.id());
        Err(msg)
    }

    /// Takes the primary's epoch once the stream begins (see `adopted`).
    fn adopt(&mut self) -> Result<(), String> {
        if !self.adopted {
            self.log.follow(self.primary_epoch, &self.primary).map_err(|e| e.to_string())?;
            self.adopted = true;
            self.shared.split_brain.lock().clear();
        }
        Ok(())
    }

    fn handle(&mut self, m: Msg) -> Result<Option<Msg>, String> {
        let e = |e: Error| e.to_string();
        if matches!(m, Msg::Batch(_) | Msg::Mark { .. } | Msg::Create { .. } | Msg::Delete { .. } | Msg::Ping) {
            self.adopt()?;
        }
        Ok(match m {
            Msg::Journals(list) => {
                self.drain();
                for j in self.log.journals() {
                    if !list.iter().any(|(id, name)| *id == j.id() && name == j.name()) {
                        self.check_cut(&j, j.info().first_lsn, "to delete it (the primary has no such journal)")?;
                        tracing::warn!(journal = j.name(), "journal not on the primary: deleted");
                        self.log.delete_journal(j.name()).map_err(e)?;
                    }
                }
                let mut ends = Vec::new();
                for (id, name) in &list {
                    let j = match self.log.journal_by_id(*id) {
                        Some(j) => j,
                        None => self.log.create_journal_with_id(name, *id).map_err(e)?,
                    };
                    let end = j.chain_end().map_err(e)?;
                    self.received.insert(*id, end.next_lsn);
                    self.sent.insert(*id, (end.next_lsn, end.next_lsn));
                    ends.push((*id, end));
                }
                Some(Msg::Ends(ends))
            }
            Msg::Probe { journal, lsns } => {
                let j = self.journal(journal)?;
                let samples = lsns.iter().filter_map(|&l| j.record_crc(l).ok().map(|c| (l, c))).collect();
                Some(Msg::Samples { journal, samples })
            }
            Msg::Truncate { journal, keep } => {
                let j = self.journal(journal)?;
                self.check_cut(&j, keep.saturating_add(1), "to cut it back")?;
                Some(self.cut(journal, |j| j.truncate_after(keep))?)
            }
            Msg::Reset { journal, next_lsn } => {
                let j = self.journal(journal)?;
                self.check_cut(&j, j.info().first_lsn, "to drop it and take it again whole")?;
                Some(self.cut(journal, |j| j.reset(next_lsn))?)
            }
            Msg::Batch(s) => {
                let j = self.journal(s.journal_id)?;
                loop {
                    match j.apply_shipment(&s.view()) {
                        Ok(()) => break,
                        Err(Error::Backpressure) => {
                            self.driver.pump_all(&self.log.journals(), true).map_err(e)?;
                            if self.driver.in_flight() == 0 {
                                // A reader has the slot pinned: let it finish.
                                std::thread::sleep(Duration::from_micros(100));
                            }
                        }
                        Err(err) => {
                            return Err(format!("batch {}..{} of {}: {err}", s.first_lsn, s.next_lsn, j.name()))
                        }
                    }
                }
                self.received.insert(s.journal_id, s.next_lsn);
                None
            }
            Msg::Mark { journal, lsn } => {
                let j = self.journal(journal)?;
                while j.next_lsn() < lsn && matches!(j.chain_end(), Err(Error::Backpressure)) {
                    self.driver.pump_all(&self.log.journals(), true).map_err(e)?;
                }
                j.apply_mark(lsn.min(j.next_lsn())).map_err(e)?;
                None
            }
            Msg::Create { journal, name } => {
                if self.log.journal_by_id(journal).is_none() {
                    let j = self.log.create_journal_with_id(&name, journal).map_err(e)?;
                    self.received.insert(journal, j.next_lsn());
                }
                None
            }
            Msg::Delete { journal } => {
                if let Some(j) = self.log.journal_by_id(journal) {
                    self.drain();
                    self.log.delete_journal(j.name()).map_err(e)?;
                }
                self.received.remove(&journal);
                self.sent.remove(&journal);
                None
            }
            Msg::Ping => None,
            other => return Err(format!("unexpected message from the primary: {other:?}")),
        })
    }

    /// Cuts a journal back (`truncate_after` or `reset`) once nothing is
    /// being written, and answers with where its chain now ends.
    fn cut(
        &mut self,
        journal: u64,
        f: impl FnOnce(&Journal) -> crate::Result<crate::ship::ChainEnd>,
    ) -> Result<Msg, String> {
        self.drain();
        let j = self.journal(journal)?;
        let end = f(&j).map_err(|e| e.to_string())?;
        self.received.insert(journal, end.next_lsn);
        self.sent.insert(journal, (end.next_lsn, end.next_lsn));
        Ok(Msg::Ends(vec![(journal, end)]))
    }

    fn acks(&mut self, all: bool) -> Vec<(u64, u64, u64)> {
        let mut v = Vec::new();
        for (&id, &recv) in &self.received {
            let Some(j) = self.log.journal_by_id(id) else { continue };
            let durable = j.next_lsn();
            let now = (recv.max(durable), durable);
            if all || self.sent.get(&id) != Some(&now) {
                self.sent.insert(id, now);
                v.push((id, now.0, now.1));
            }
        }
        v
    }
}

//! The replica's side of a session, sans-IO: what the primary's messages
//! do to this node's journals and what to answer (the receiver's thread
//! only moves frames between this and the socket). It drives the engine
//! (apply, cut back, reset, mark, create, delete) and its own `Driver`.
//!
//! Invariants:
//! * Nothing is applied unless it continues the journal's chain
//!   (`Journal::apply_shipment` checks every byte); a refused batch ends
//!   the session and nothing of it is written.
//! * `durable` in an ack is the journal's durable next LSN here: every
//!   record below it is on every healthy mirror of this node.
//! * A mark is applied only once every record below it is durable here.
//! * A journal that may lack records the primary acknowledged `remote-*`
//!   (being sent whole, or created from the primary's list while the
//!   primary's holds records) is marked incomplete on disk before anything
//!   is dropped, and stays so until this node is durable up to where the
//!   primary's journal ended when the session began (`owed`); a node with
//!   an incomplete journal refuses promotion (`MirrorLog::incomplete`).
//! * Nothing this node holds is cut back, dropped or deleted for a primary
//!   whose history does not hold the run that wrote it (`check_cut`: a
//!   split brain, reported and refused; an operator decides). The
//!   primary's epoch is taken only once the handshake's cut-backs passed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::liveness::Liveness;
use super::role::{self, HelloAnswer, Role};
use super::wire::{Hello, Msg, REPL_VERSION};
use super::ReplShared;
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

/// Whether this node can be a replica of the primary that sent `h`: the
/// same protocol version, mirror set and geometry (the error says which
/// differs and what to do).
pub fn check_hello(log: &MirrorLog, h: &Hello) -> Result<(), String> {
    let (block, seg, slots, batch_buf) = log.geometry();
    if h.version != REPL_VERSION {
        return Err(format!("replication version {} (this node speaks {REPL_VERSION})", h.version));
    }
    if h.set_uuid != log.set_uuid() {
        return Err("the peer's mirror set is a different set: format this replica's devices empty (mirrorlog format, or a fresh --data-dir) so it takes the primary's".into());
    }
    if h.block_size != block || h.segment_size != seg || h.slot_count > slots || h.batch_buf > batch_buf {
        return Err(format!(
            "geometry differs: block {} / {block}, segment {} / {seg}, slots {} / {slots}, batch buffer {} / {batch_buf} (peer / here)",
            h.block_size, h.segment_size, h.slot_count, h.batch_buf
        ));
    }
    Ok(())
}

/// The answer to a primary's hello: `Err` (refused: why) if this node
/// cannot be its replica (`check_hello`), else what `role::on_hello` says
/// for this node's role and epoch.
pub fn answer_hello(log: &MirrorLog, role: Role, h: &Hello) -> Result<HelloAnswer, String> {
    check_hello(log, h)?;
    Ok(role::on_hello(role, log.epoch(), h.epoch, h.probe))
}

/// One primary's session on this replica, with no I/O of its own: the
/// messages the primary sent, handled in order (`handle`), with the
/// answers to send back; the writes they queued, pumped (`pump`); the acks
/// to send (`acks`); and what to tell the primary when the session ends
/// (`finish`). The receiver's thread moves frames between it and the
/// socket.
pub struct ReplicaSession {
    log: Arc<MirrorLog>,
    shared: Arc<ReplShared>,
    driver: Driver,
    /// (received, durable) last acked per journal.
    sent: HashMap<u64, (u64, u64)>,
    received: HashMap<u64, u64>,
    /// Each journal's next LSN on the primary as this session began (its
    /// `Journals` message).
    primary_ends: HashMap<u64, u64>,
    /// Journals marked incomplete on disk, and the LSN this node must be
    /// durable up to for them to be complete again (the on-disk flags, kept
    /// here too so that `acks` reads no superblock).
    owed: HashMap<u64, u64>,
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
    /// When an ack is due as a heartbeat, and when the primary has been
    /// silent too long.
    live: Liveness,
}

impl ReplicaSession {
    /// A session for the primary that sent `hello` (already answered
    /// `HelloOk`) at `now_ms` (monotonic). An operator's `discard-diverged`
    /// applies to this session only.
    pub fn new(
        log: Arc<MirrorLog>,
        shared: Arc<ReplShared>,
        hello: &Hello,
        now_ms: u64,
    ) -> Result<ReplicaSession, String> {
        let driver = Driver::for_log(&log).map_err(|e| e.to_string())?;
        let allow_diverged = shared.discard_diverged.swap(false, Ordering::AcqRel);
        let live = Liveness::new(now_ms, shared.cfg.peer_timeout.as_millis() as u64);
        Ok(ReplicaSession {
            live,
            mine: log.history(),
            log,
            shared,
            driver,
            sent: HashMap::new(),
            received: HashMap::new(),
            primary_ends: HashMap::new(),
            owed: HashMap::new(),
            primary_epoch: hello.epoch,
            primary: hello.history.clone(),
            primary_name: hello.name.clone(),
            adopted: false,
            allow_diverged,
            diverged: None,
        })
    }

    /// Writes what was queued for the journals `js` (this node's, listed
    /// once per turn by the caller; `wait`: until one write completes).
    pub fn pump(&mut self, js: &[Journal], wait: bool) -> Result<(), String> {
        self.driver.pump_all(js, wait).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Writes in flight.
    pub fn in_flight(&self) -> usize {
        self.driver.in_flight()
    }

    /// Ends the session: writes everything queued, and returns what to tell
    /// the primary if it ended in an error (`Diverged` for a refused cut,
    /// else `Failed`).
    pub fn finish(mut self, res: &Result<(), String>) -> Option<Msg> {
        self.drain();
        let e = res.as_ref().err()?;
        Some(match self.diverged.take() {
            Some(journal) => Msg::Diverged { journal, message: e.clone() },
            None => Msg::Failed { message: e.clone() },
        })
    }

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

    /// Handles one message from the primary: the answer to send, if any.
    /// An error ends the session.
    pub fn handle(&mut self, m: Msg) -> Result<Option<Msg>, String> {
        let e = |e: Error| e.to_string();
        if matches!(
            m,
            Msg::Batch(_) | Msg::Mark { .. } | Msg::Writer { .. } | Msg::Create { .. } | Msg::Delete { .. } | Msg::Ping
        ) {
            self.adopt()?;
        }
        Ok(match m {
            Msg::Journals(list) => {
                self.drain();
                for j in self.log.journals() {
                    if !list.iter().any(|(id, name, _)| *id == j.id() && name == j.name()) {
                        self.check_cut(&j, j.info().first_lsn, "to delete it (the primary has no such journal)")?;
                        tracing::warn!(journal = j.name(), "journal not on the primary: deleted");
                        self.log.delete_journal(j.name()).map_err(e)?;
                    }
                }
                let mut ends = Vec::new();
                for &(id, ref name, primary_end) in &list {
                    self.primary_ends.insert(id, primary_end);
                    let j = match self.log.journal_by_id(id) {
                        Some(j) => j,
                        // Holding none of the primary's records, if it has any.
                        None if primary_end > 1 && !cfg!(feature = "mutate-incomplete-unmarked") => {
                            self.log.create_incomplete_journal(name, id).map_err(e)?
                        }
                        None => self.log.create_journal_with_id(name, id).map_err(e)?,
                    };
                    if self.log.is_incomplete(id) {
                        self.owed.insert(id, primary_end);
                    }
                    let end = j.chain_end().map_err(e)?;
                    self.received.insert(id, end.next_lsn);
                    self.sent.insert(id, (end.next_lsn, end.next_lsn));
                    ends.push((id, end));
                }
                self.log.set_synced().map_err(e)?;
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
                // Incomplete on disk before anything is dropped.
                if !cfg!(feature = "mutate-incomplete-unmarked") {
                    self.log.set_incomplete(journal, true).map_err(e)?;
                }
                // (A reset before the journal list: not complete again in
                // this session.)
                let owed = self.primary_ends.get(&journal).copied().unwrap_or(u64::MAX);
                self.owed.insert(journal, owed);
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
            Msg::Writer { journal, writer } => {
                self.journal(journal)?.apply_writer(writer).map_err(e)?;
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
                self.owed.remove(&journal);
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

    /// A frame from the primary arrived at `now_ms`.
    pub fn heard(&mut self, now_ms: u64) {
        self.live.heard(now_ms);
    }

    /// Nothing from the primary for longer than the peer timeout: the
    /// session should end.
    pub fn peer_silent(&self, now_ms: u64) -> bool {
        self.live.peer_silent(now_ms)
    }

    /// The acks to send at `now_ms`: (journal, received, durable) for every
    /// journal whose positions moved since the last acks, or for every
    /// journal when a heartbeat is due (`liveness::HEARTBEAT_MS` since the
    /// last). Marks complete each incomplete journal now durable up to
    /// what it owed.
    pub fn acks(&mut self, now_ms: u64) -> Vec<(u64, u64, u64)> {
        let all = self.live.heartbeat_due(now_ms);
        let mut v = Vec::new();
        for (&id, &recv) in &self.received {
            let Some(j) = self.log.journal_by_id(id) else { continue };
            let durable = j.next_lsn();
            if self.owed.get(&id).is_some_and(|&owed| durable >= owed) {
                match self.log.set_incomplete(id, false) {
                    Ok(()) => {
                        self.owed.remove(&id);
                        tracing::info!(
                            journal = j.name(),
                            durable,
                            "replica journal complete again: caught up past where its primary's ended"
                        );
                    }
                    Err(err) => {
                        tracing::warn!(journal = j.name(), error = %err, "cannot mark the journal complete yet")
                    }
                }
            }
            let now = (recv.max(durable), durable);
            if all || self.sent.get(&id) != Some(&now) {
                self.sent.insert(id, now);
                v.push((id, now.0, now.1));
            }
        }
        if !v.is_empty() {
            self.live.sent(now_ms);
        }
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::epoch::Run;
    use crate::replication::{ReplConfig, Role};
    use crate::ship::{ShipSink, ShipView, Shipment};
    use crate::Config;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Shipment>>);

    impl ShipSink for Collect {
        fn batch(&self, b: &ShipView<'_>) {
            self.0.lock().push(b.to_shipment());
        }
        fn mark(&self, _: u64, _: u64) {}
        fn writer(&self, _: u64, _: u64) {}
        fn created(&self, _: u64, _: &str) {}
        fn deleted(&self, _: u64) {}
    }

    /// The small geometry of these tests, on `name`'s two devices in `dir`.
    fn set_config(dir: &std::path::Path, name: &str) -> Config {
        let mut cfg = Config::new((0..2).map(|i| dir.join(format!("{name}{i}.dev"))));
        cfg.segment_size = 256 << 10;
        cfg.max_record_size = 64 << 10;
        cfg.max_batch_bytes = 32 << 10;
        cfg
    }

    /// `set_config`'s set, formatted on new devices (`uuid`: a replica's).
    pub(crate) fn set(dir: &std::path::Path, name: &str, uuid: Option<[u8; 16]>) -> MirrorLog {
        set_with(dir, name, |c| c.set_uuid = uuid)
    }

    fn set_with(dir: &std::path::Path, name: &str, f: impl FnOnce(&mut Config)) -> MirrorLog {
        let mut cfg = set_config(dir, name);
        for d in &cfg.devices {
            crate::io::create_device_file(d, 8 << 20).expect("device");
        }
        f(&mut cfg);
        MirrorLog::create(&cfg).expect("create")
    }

    pub(crate) fn shared() -> Arc<ReplShared> {
        ReplShared::new(ReplConfig::without_peer(Role::Replica, "replica"))
    }

    fn hello(p: &MirrorLog, epoch: u64, history: History) -> Hello {
        let mut h = super::super::primary_session::hello(p, &shared(), false);
        h.epoch = epoch;
        h.history = history;
        h
    }

    #[test]
    fn a_session_applies_what_it_is_shipped_and_acks_it_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = set(dir.path(), "p", None);
        let sink = Arc::new(Collect::default());
        p.set_ship_sink(Some(sink.clone()));
        let pj = p.create_journal("orders").expect("journal");
        let recs: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_le_bytes().repeat(50 + i as usize)).collect();
        for r in &recs {
            pj.append(r).expect("append");
        }
        let r = Arc::new(set(dir.path(), "r", Some(p.set_uuid())));
        let sh = shared();
        let mut s = ReplicaSession::new(r.clone(), sh.clone(), &hello(&p, p.epoch(), p.history()), 0).expect("session");
        match s.handle(Msg::Journals(vec![(pj.id(), "orders".into(), pj.next_lsn())])).expect("journals") {
            Some(Msg::Ends(e)) => assert_eq!((e.len(), e[0].1.next_lsn), (1, 1)),
            other => panic!("{other:?}"),
        }
        assert!(r.incomplete().is_some(), "created from the list without the primary's 40 records");
        for b in sink.0.lock().drain(..) {
            assert!(s.handle(Msg::Batch(b)).expect("batch").is_none());
        }
        let mut acked = (0, 0);
        for _ in 0..1000 {
            s.pump(&r.journals(), s.in_flight() > 0).expect("pump");
            if let Some(&(_, recv, dur)) = s.acks(0).last() {
                assert!(dur <= recv, "durable never ahead of received");
                acked = (recv, dur);
            }
            if acked.1 == 41 {
                break;
            }
        }
        assert_eq!(acked, (41, 41), "every record acked durable");
        assert_eq!(r.incomplete(), None, "complete once durable up to the primary's end");
        let rj = r.journal("orders").expect("journal");
        for (i, want) in recs.iter().enumerate() {
            assert_eq!(&rj.read(i as u64 + 1).expect("read"), want);
        }
        assert_eq!(r.epoch(), p.epoch(), "the primary's epoch taken once the stream began");
        assert!(s.finish(&Ok(())).is_none());
    }

    /// Applies `batches` and pumps until `r`'s journals are durable up to
    /// `end`.
    fn apply_all(s: &mut ReplicaSession, r: &MirrorLog, batches: Vec<Shipment>, end: u64) {
        for b in batches {
            assert!(s.handle(Msg::Batch(b)).expect("batch").is_none());
        }
        for _ in 0..1000 {
            s.pump(&r.journals(), s.in_flight() > 0).expect("pump");
            if r.journals().iter().all(|j| j.next_lsn() >= end) && s.in_flight() == 0 {
                let _ = s.acks(0);
                return;
            }
        }
        panic!("not durable up to {end}");
    }

    #[test]
    fn a_journal_sent_whole_is_incomplete_on_disk_until_durable_up_to_the_primarys_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = set(dir.path(), "p", None);
        let pj = p.create_journal("orders").expect("journal");
        let sink = Arc::new(Collect::default());
        p.set_ship_sink(Some(sink.clone()));
        let session = |r: &Arc<MirrorLog>| {
            let mut s =
                ReplicaSession::new(r.clone(), shared(), &hello(&p, p.epoch(), p.history()), 0).expect("session");
            s.handle(Msg::Journals(vec![(pj.id(), "orders".into(), pj.next_lsn())])).expect("journals");
            s
        };
        let reopen = |r: Arc<MirrorLog>| {
            drop(r);
            Arc::new(MirrorLog::open(&set_config(dir.path(), "r")).expect("reopen"))
        };
        for i in 0..30u32 {
            pj.append(&i.to_le_bytes().repeat(40)).expect("append");
        }
        let first: Vec<Shipment> = sink.0.lock().drain(..).collect();
        // A replica that holds the first 30 records (its primary acked
        // them remote-durable).
        let r = Arc::new(set(dir.path(), "r", Some(p.set_uuid())));
        let mut s = session(&r);
        apply_all(&mut s, &r, first.clone(), 31);
        assert_eq!(r.incomplete(), None);
        drop(s);
        for i in 30..60u32 {
            pj.append(&i.to_le_bytes().repeat(40)).expect("append");
        }
        let second: Vec<Shipment> = sink.0.lock().drain(..).collect();
        // The next session sends the journal whole (as for a replica
        // behind the primary's mark); the replica restarts part-way.
        let mut s = session(&r);
        s.handle(Msg::Reset { journal: pj.id(), next_lsn: 1 }).expect("reset");
        let why = r.incomplete().expect("incomplete from the reset on");
        assert!(why.contains("orders"), "{why}");
        assert!(super::super::may_lead(&r, false).is_err(), "promotion refused");
        assert!(super::super::may_lead(&r, true).is_ok(), "unless forced");
        apply_all(&mut s, &r, first, 31);
        assert!(r.incomplete().is_some(), "durable to 31 of the primary's 61");
        let _ = s.finish(&Ok(()));
        let r = reopen(r);
        assert!(r.incomplete().is_some(), "the flag is on disk");
        // The session after the restart continues from 31: complete once
        // durable up to where the primary's journal ended as it began.
        let mut s = session(&r);
        apply_all(&mut s, &r, second, 61);
        assert_eq!(r.incomplete(), None);
        let _ = s.finish(&Ok(()));
        let r = reopen(r);
        assert_eq!(r.incomplete(), None, "complete on disk");
        let rj = r.journal("orders").expect("journal");
        for lsn in 1..61 {
            assert_eq!(rj.read(lsn).expect("read"), pj.read(lsn).expect("read"));
        }
    }

    #[test]
    fn a_replica_formatted_by_bootstrap_is_incomplete_until_given_its_primarys_journals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = set(dir.path(), "p", None);
        let pj = p.create_journal("orders").expect("journal");
        pj.append(b"acked").expect("append");
        // Formatted as `bootstrap` does.
        let r = Arc::new(set_with(dir.path(), "b", |c| {
            c.set_uuid = Some(p.set_uuid());
            c.unsynced_replica = true;
        }));
        let why = r.incomplete().expect("no journal given yet");
        assert!(why.contains("formatted as a replica"), "{why}");
        let mut s = ReplicaSession::new(r.clone(), shared(), &hello(&p, p.epoch(), p.history()), 0).expect("session");
        s.handle(Msg::Journals(vec![(pj.id(), "orders".into(), pj.next_lsn())])).expect("journals");
        let why = r.incomplete().expect("the journal lacks the primary's record");
        assert!(why.contains("orders"), "{why}");
    }

    #[test]
    fn a_cut_of_records_the_primary_never_followed_is_refused_and_both_histories_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = set(dir.path(), "p", None);
        let r = Arc::new(set(dir.path(), "r", Some(p.set_uuid())));
        // The replica ran a term of its own (5) and wrote records in it.
        r.begin_run(5 << 32).expect("run");
        let rj = r.create_journal("orders").expect("journal");
        for i in 0..3u8 {
            rj.append(&[i; 100]).expect("append");
        }
        // A primary at term 6 whose history holds terms 1 and 6 only.
        let history = History::from_parts(
            1,
            vec![Run { term: 1, max_start: 0, nonce: 1 }, Run { term: 6, max_start: 0, nonce: 2 }],
        )
        .expect("history");
        let sh = shared();
        let mut s = ReplicaSession::new(r.clone(), sh.clone(), &hello(&p, 6 << 32, history), 0).expect("session");
        s.handle(Msg::Journals(vec![(rj.id(), "orders".into(), 1)])).expect("journals");
        let e = s.handle(Msg::Truncate { journal: rj.id(), keep: 0 }).expect_err("refused");
        assert!(e.contains("split brain"), "{e}");
        assert!(sh.split_brain.lock().contains("split brain"), "reported in status");
        match s.finish(&Err(e)) {
            Some(Msg::Diverged { journal, .. }) => assert_eq!(journal, rj.id()),
            other => panic!("{other:?}"),
        }
        for i in 0..3u8 {
            assert_eq!(rj.read(i as u64 + 1).expect("kept"), vec![i; 100]);
        }
        assert_eq!(Epoch::from_raw(r.epoch()).term(), 5, "its own epoch kept");
    }
}

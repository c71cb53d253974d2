//! Appends: placement, the idempotence check, the acks that wait for
//! local durability and the replica, and the decision when to answer them.

use super::*;

/// An append waiting to be durable.
pub(super) struct Ack {
    pub(super) conn: Rc<Conn>,
    pub(super) request_id: u64,
    /// `None`: durable here already (an idempotent resend of a record read
    /// back from disk).
    pub(super) ticket: Option<Ticket>,
    pub(super) mode: Durability,
    pub(super) first_lsn: u64,
    pub(super) count: u32,
    /// Counted against the connection's in-flight limit (payload and headers).
    pub(super) bytes: usize,
    pub(super) payload: usize,
    pub(super) start: Instant,
    /// A claim's record: answered with `Claimed` (this writer epoch).
    pub(super) claimed: Option<u64>,
}

impl Ack {
    /// Queues the ack: its bytes count against the connection's in-flight
    /// limit until it is answered (`release`).
    pub(super) fn queue(self, jd: &Jd) {
        self.hold();
        self.queue_held(jd);
    }

    /// Counts the ack's bytes against the connection's in-flight limit.
    pub(super) fn hold(&self) {
        self.conn.inflight.set(self.conn.inflight.get() + self.bytes);
    }

    /// `queue` for an ack already held.
    pub(super) fn queue_held(self, jd: &Jd) {
        if self.mode == Durability::Local {
            jd.pending.borrow_mut().push_back(self);
        } else {
            jd.remote.borrow_mut().push_back(self);
        }
    }

    pub(super) fn release(&self) {
        self.conn.inflight.set(self.conn.inflight.get() - self.bytes);
        self.conn.progress.notify_one();
    }

    /// Answers with an error instead.
    pub(super) fn fail(&self, e: &Error) {
        self.fail_with(e.code(), &e.to_string());
    }

    pub(super) fn fail_with(&self, code: u16, msg: &str) {
        self.conn.send(|o| err_frame(o, self.request_id, code, msg));
        self.release();
    }

    pub(super) fn answer(&self) {
        self.conn.send(|o| match self.claimed {
            Some(writer) => Response::Claimed { writer, lsn: self.first_lsn }.encode(Op::Claim, self.request_id, o),
            None => Response::Appended { first_lsn: self.first_lsn, count: self.count }.encode(
                Op::Append,
                self.request_id,
                o,
            ),
        });
        self.release();
    }
}

impl Srv {
    /// Answers every append that became durable (or failed).
    pub(super) fn settle(&self) {
        // Nothing below creates or deletes journals, so the map stays borrowed.
        for jd in self.journals.borrow().values() {
            loop {
                let front = {
                    let p = jd.pending.borrow();
                    match p.front() {
                        None => break,
                        Some(a) => a.ticket.map_or(Ok(true), |t| jd.j.poll(&t)),
                    }
                };
                if let Ok(false) = front {
                    break;
                }
                let Some(a) = jd.pending.borrow_mut().pop_front() else { break };
                match front {
                    Ok(_) => {
                        self.m.append_latency.observe(a.start.elapsed());
                        self.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                        a.answer();
                    }
                    Err(e) => {
                        self.m.error(e.code());
                        a.fail(&e);
                    }
                }
            }
            self.settle_remote(jd);
            let d = jd.j.next_lsn();
            if d != jd.last_durable.get() {
                jd.last_durable.set(d);
                jd.advanced.notify_waiters();
            }
        }
    }

    /// Answers `remote-*` appends that are durable here and confirmed by
    /// the replica (received or durable, as asked), or whose wait for the
    /// replica timed out (then the journal's `on_replica_loss` decides).
    pub(super) fn settle_remote(&self, jd: &Jd) {
        // Runs on every turn of the loop: nothing to do (no lock taken)
        // unless a remote append waits or the journal is degraded.
        if jd.remote.borrow().is_empty() && !jd.degradation.get().is_degraded() {
            return;
        }
        let timeout = self.repl.cfg.ack_timeout;
        let received = jd.jr.received.load(Ordering::Acquire);
        let durable = jd.jr.durable.load(Ordering::Acquire);
        loop {
            let (local, need, mode, age) = {
                let q = jd.remote.borrow();
                let Some(a) = q.front() else { break };
                (a.ticket.map_or(Ok(true), |t| jd.j.poll(&t)), a.first_lsn + a.count as u64, a.mode, a.start.elapsed())
            };
            match local {
                Ok(false) => break,
                Err(e) => {
                    if let Some(a) = jd.remote.borrow_mut().pop_front() {
                        self.m.error(e.code());
                        a.fail(&e);
                    }
                    continue;
                }
                Ok(true) => {
                    // Durable here: later turns need not poll it again while
                    // it waits for the replica.
                    if let Some(a) = jd.remote.borrow_mut().front_mut() {
                        a.ticket = None;
                    }
                }
            }
            let mut deg = jd.degradation.get();
            let decision = deg.decide(mode, need, received, durable, age >= timeout, jd.on_loss, || jd.j.next_lsn());
            jd.degradation.set(deg);
            if decision == RemoteAck::Wait {
                break;
            }
            let Some(a) = jd.remote.borrow_mut().pop_front() else { break };
            match decision {
                RemoteAck::Wait => {
                    // (Not reached: a waiting append stays queued.)
                    jd.remote.borrow_mut().push_front(a);
                    break;
                }
                RemoteAck::Confirmed | RemoteAck::AsLocal => {
                    if decision == RemoteAck::AsLocal {
                        self.m.degraded_acks.set(self.m.degraded_acks.get() + 1);
                    }
                    self.m.append_latency.observe(a.start.elapsed());
                    self.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                    a.answer();
                }
                RemoteAck::Degrade => {
                    tracing::warn!(journal = jd.j.name(), replica_durable = durable, timeout = ?timeout,
                        "replica did not confirm in time: acknowledging remote appends as local until it catches up");
                    self.m.degraded_acks.set(self.m.degraded_acks.get() + 1);
                    self.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                    a.answer();
                }
                RemoteAck::Fail => {
                    self.m.error(codes::REPLICA_TIMEOUT);
                    a.fail_with(
                        codes::REPLICA_TIMEOUT,
                        &format!(
                            "the replica did not confirm lsn {}..{} within {:?} ({}); the records are durable on this node and will still be shipped",
                            a.first_lsn,
                            need - 1,
                            timeout,
                            if self.repl.connected.load(Ordering::Acquire) { "it lags" } else { "it is not connected" }
                        ),
                    );
                }
            }
        }
        let mut deg = jd.degradation.get();
        let connected = self.repl.connected.load(Ordering::Acquire);
        if let Some(at) = deg.end_if_caught_up(connected, durable, || jd.j.next_lsn()) {
            tracing::info!(
                journal = jd.j.name(),
                replica_durable = durable,
                degraded_at = at,
                "replica caught up past where the journal degraded: remote appends wait for it again"
            );
            jd.degradation.set(deg);
        }
    }
}

/// Whether this node takes an append (or a claim) now: `Err((code,
/// message))` if not; a refused role also refuses the connection's later
/// appends (`Conn::role_refused`).
fn may_append(srv: &Srv, conn: &Conn) -> std::result::Result<(), (u16, String)> {
    if srv.draining.get() {
        return Err((codes::SHUTTING_DOWN, "the daemon is shutting down; append not taken".into()));
    }
    if conn.role_refused.get() {
        return Err((
            codes::NOT_PRIMARY,
            "an earlier append of this connection was refused (not primary); reconnect and resend in order".into(),
        ));
    }
    // The role first: a node that takes no appends does not even look the
    // journal up (on a replica that would build its idempotence table).
    let role = srv.repl.role();
    let serve_until = srv.repl.serve_until.load(Ordering::Acquire);
    // The clock is read only when etcd bounds the serving time.
    let now = if serve_until == u64::MAX { 0 } else { Mono.now_ms() };
    if let Err(why) = failover::may_take_append(role, now, serve_until) {
        // `not-primary`, not `fenced`: this append was not taken, and a
        // client sends it again as a first send (`fenced` answers appends
        // that were taken and may have been written).
        conn.role_refused.set(true);
        let msg = match why {
            Refusal::Fenced => {
                let e = srv.repl.seen_epoch.load(Ordering::Acquire);
                format!("fenced: a newer primary exists (epoch {e}); append not taken")
            }
            Refusal::LeaseLate => "this node holds no etcd lease it can count on (not taken yet, or not renewed \
                 in time: it steps down if it cannot renew); append not taken"
                .to_string(),
            Refusal::Role(r) => format!("this node is {} (not primary); append not taken", r.name()),
        };
        return Err((codes::NOT_PRIMARY, msg));
    }
    Ok(())
}

/// Answers a refused append (or claim) with its error, counted.
fn refuse(srv: &Srv, conn: &Conn, rid: u64, code: u16, msg: &str) {
    srv.m.error(code);
    conn.send(|o| err_frame(o, rid, code, msg));
}

/// `may_append`, then `append_target`: the journal and durability of an
/// append (or claim) this node takes now, or why not.
fn admit(
    srv: &Srv,
    conn: &Conn,
    journal: &str,
    durability: Durability,
) -> std::result::Result<(Rc<Jd>, Durability), (u16, String)> {
    may_append(srv, conn)?;
    append_target(srv, journal, durability)
}

/// The journal an append (or claim) goes to and the durability it waits
/// for, or why not.
fn append_target(
    srv: &Srv,
    journal: &str,
    durability: Durability,
) -> std::result::Result<(Rc<Jd>, Durability), (u16, String)> {
    let Some(jd) = srv.journal(journal) else {
        let e = Error::UnknownJournal(journal.to_string());
        return Err((e.code(), e.to_string()));
    };
    let mode = if durability == Durability::Default { jd.durability.get() } else { durability };
    if srv.repl.role() == Role::Standalone && mode != Durability::Local {
        return Err((
            codes::NO_REPLICA,
            format!("durability {} needs a replica; this node runs standalone", durability_name(mode)),
        ));
    }
    Ok((jd, mode))
}

/// `(producer, first_seq, resend)`: who sends the append, and whether it
/// was sent before (see `producers.rs`). `writer`: the writer epoch it is
/// sent under (0: none), which must be the journal's.
#[allow(clippy::too_many_arguments)]
pub(super) fn append(
    srv: &Rc<Srv>,
    conn: &Rc<Conn>,
    rid: u64,
    journal: &str,
    durability: Durability,
    (producer, first_seq, resend): (u64, u64, bool),
    writer: u64,
    records: &[&[u8]],
) {
    let start = Instant::now();
    let fail = |code: u16, msg: &str| refuse(srv, conn, rid, code, msg);
    let (jd, mode) = match admit(srv, conn, journal, durability) {
        Ok(t) => t,
        Err((code, msg)) => return fail(code, &msg),
    };
    // Checked where the LSN is handed out (this thread places every
    // append): a claim raises the epoch before its record is placed, so
    // nothing of a fenced writer is placed after a claim's record.
    if let Err(e) = jd.j.check_writer(writer) {
        return fail(e.code(), &e.to_string());
    }
    let count = records.len() as u64;
    if producer != 0 && first_seq.checked_add(count).is_none() {
        let e = ProtoError::Malformed("sequence numbers overflow");
        return fail(e.code(), &e.to_string());
    }
    let payload: usize = records.iter().map(|r| r.len()).sum();
    let bytes = payload + 32 * records.len();
    let ack = |ticket: Option<Ticket>, first_lsn: u64| Ack {
        conn: conn.clone(),
        request_id: rid,
        ticket,
        mode,
        first_lsn,
        count: count as u32,
        bytes,
        payload,
        start,
        claimed: None,
    };
    if producer != 0 {
        let admit = jd.producers.borrow_mut().admit(producer, first_seq, count, resend);
        match admit {
            Admit::Write => {}
            Admit::Verify { lsn, ticket } => {
                // Answered with the original LSN only once the stored
                // records are known to be these (read back and compared).
                let crcs: Vec<u32> = records.iter().map(|r| crc32c::crc32c(r)).collect();
                let a = ack(ticket, lsn);
                a.hold();
                tokio_uring::spawn(answer_resend(srv.clone(), jd, a, crcs));
                return;
            }
            Admit::Refuse { code, message } => return fail(code, &message),
        }
    }
    let tag = (producer != 0).then_some(Tag { producer, seq: first_seq });
    let res = jd.j.submit_many(records, tag, || srv.pump(true).map(|_| ()));
    match res {
        Ok((first, last)) => {
            if producer != 0 {
                // The durable end as of the loop's last turn (no journal lock
                // per append): it only decides which settled producer may be
                // forgotten, and a value behind the true one is the safe side.
                let durable = jd.last_durable.get();
                jd.producers.borrow_mut().record(producer, first_seq, count, first, Some(last), durable);
            }
            ack(Some(last), first).queue(&jd);
        }
        Err(e) => fail(e.code(), &e.to_string()),
    }
}

/// `Claim`: raises the journal's writer epoch (durably, and shipped to the
/// replica ahead of the claim's record), then appends `payload` as the
/// claim's record, answered with `Claimed` once it is durable at the
/// durability asked: every record an earlier writer got placed lies below
/// it, and is as durable.
pub(super) async fn claim(
    srv: &Rc<Srv>,
    conn: &Rc<Conn>,
    rid: u64,
    journal: &str,
    durability: Durability,
    payload: &[u8],
) {
    let start = Instant::now();
    let fail = |code: u16, msg: &str| refuse(srv, conn, rid, code, msg);
    let (jd, mode) = match admit(srv, conn, journal, durability) {
        Ok(t) => t,
        Err((code, msg)) => return fail(code, &msg),
    };
    let (j, term) = (jd.j.clone(), crate::epoch::Epoch::from_raw(srv.log.epoch()).term());
    let writer = match srv.blocking(move || j.claim_writer(term)).await {
        Ok(w) => w,
        Err(e) => return fail(e.code(), &e.to_string()),
    };
    tracing::info!(journal, writer, "journal claimed by a new writer: earlier writers are fenced");
    // The role may have changed while the epoch was written.
    if let Err((code, msg)) = may_append(srv, conn) {
        return fail(code, &msg);
    }
    let res = jd.j.submit_many(&[payload], None, || srv.pump(true).map(|_| ()));
    match res {
        Ok((first, last)) => Ack {
            conn: conn.clone(),
            request_id: rid,
            ticket: Some(last),
            mode,
            first_lsn: first,
            count: 1,
            bytes: payload.len() + 32,
            payload: payload.len(),
            start,
            claimed: Some(writer),
        }
        .queue(&jd),
        Err(e) => fail(e.code(), &e.to_string()),
    }
}

/// Answers a resend that the idempotence table matched to records written
/// before, once they are durable (and, for `remote-*`, confirmed): with
/// their LSN if each stored payload has the CRC32C of the one resent, else
/// `sequence-conflict` (item 5 of issue 16: a producer id reused with
/// other records is never acknowledged with their LSNs). `a` was held.
pub(super) async fn answer_resend(srv: Rc<Srv>, jd: Rc<Jd>, mut a: Ack, crcs: Vec<u32>) {
    // Not in a queue that a step-down fails (`Jd::fail_waiting`): after each
    // wait, a node that is no longer primary answers as a fenced one does.
    let still_primary = |a: &Ack| -> bool {
        if srv.repl.role().is_primary() {
            return true;
        }
        srv.m.error(codes::FENCED);
        a.fail_with(codes::FENCED, "fenced: this node is no longer primary; the resend was not answered here");
        false
    };
    // The original may still be in flight.
    while let Some(t) = a.ticket {
        match jd.j.poll(&t) {
            Ok(true) => a.ticket = None,
            Ok(false) => {
                let moved = jd.advanced.notified();
                tokio::select! {
                    biased;
                    _ = moved => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            Err(e) => {
                srv.m.error(e.code());
                return a.fail(&e);
            }
        }
        if !still_primary(&a) {
            return;
        }
    }
    let (j, first, n) = (jd.j.clone(), a.first_lsn, crcs.len());
    let stored = srv.blocking(move || stored_crcs(&j, first, n)).await;
    if !still_primary(&a) {
        return;
    }
    match verify_resend(first, &crcs, stored) {
        Ok(()) => {
            srv.m.deduplicated.set(srv.m.deduplicated.get() + 1);
            if a.mode == Durability::Local {
                srv.m.acked(jd.j.name(), a.count as u64, a.payload as u64);
                a.answer();
            } else {
                // Durable here; the replica confirms it like any other.
                a.queue_held(&jd);
            }
        }
        Err((code, message)) => {
            srv.m.error(code);
            a.fail_with(code, &message);
        }
    }
}

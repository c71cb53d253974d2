//! Role changes the operator asks for (promote, demote) or the replication
//! threads made (a fence to follow); every change goes through
//! `replication::role`.

use super::*;

impl Srv {
    /// Follows a role change made by the replication threads: a fenced
    /// primary fails what waits and steps down once its writes are done.
    pub(super) fn check_role(self: &Rc<Self>) {
        // A load first: the loop checks every turn, a promotion is rare.
        if self.repl.promote_requested.load(Ordering::Acquire)
            && self.repl.promote_requested.swap(false, Ordering::AcqRel)
        {
            let srv = self.clone();
            tokio_uring::spawn(async move {
                if let Err((code, msg)) = promote(&srv, false).await {
                    tracing::error!(code, msg, "automatic promotion failed");
                }
            });
        }
        if self.repl.serve_requested.load(Ordering::Acquire) && self.repl.serve_requested.swap(false, Ordering::AcqRel)
        {
            let srv = self.clone();
            tokio_uring::spawn(async move {
                if let Err((code, msg)) = serve_after_wait(&srv).await {
                    tracing::error!(code, msg, "could not start serving after the peer answered");
                }
            });
        }
        if self.repl.role() != Role::SteppingDown {
            return;
        }
        let epoch = self.repl.seen_epoch.load(Ordering::Acquire);
        let msg = format!("fenced: a newer primary exists (epoch {epoch}); this node is a replica now");
        for jd in self.journals.borrow().values() {
            for _ in 0..jd.fail_waiting(codes::FENCED, &msg) {
                self.m.error(codes::FENCED);
            }
        }
        if self.in_flight() == 0
            && self.log.journals().iter().all(|j| !matches!(j.chain_end(), Err(Error::Backpressure)))
        {
            replication::stop_primary(&self.log, &self.repl);
            let _ = self.repl.change(Change::FinishStepDown);
        }
    }
}

/// Answers Promote/Demote: the status after the change, or the error.
pub(super) fn role_change_answer(srv: &Srv, conn: &Conn, rid: u64, op: Op, res: Result<(), (u16, String)>) {
    match res {
        Ok(()) => {
            let json = srv.status_json();
            conn.send(|o| Response::Status { json: &json }.encode(op, rid, o));
        }
        Err((code, msg)) => {
            srv.m.error(code);
            conn.send(|o| err_frame(o, rid, code, &msg));
        }
    }
}

/// Makes this replica the primary: its receiver stops (after writing
/// everything received), the epoch rises past any seen, the idempotence
/// tables are rebuilt from the journals, and it starts shipping to its peer.
/// Refused (`incomplete`) while it lacks records its primary acknowledged,
/// unless `force`.
pub(super) async fn promote(srv: &Rc<Srv>, force: bool) -> Result<(), (u16, String)> {
    let r = &srv.repl;
    let from = match r.role() {
        Role::Primary | Role::Standalone => return Ok(()),
        // A primary waiting for its peer at start: the operator decides it
        // serves (a new term, above any epoch seen).
        from @ (Role::Replica | Role::Waiting) => from,
        other => return Err((codes::NOT_PRIMARY, format!("this node is {}; try again", other.name()))),
    };
    // Epochs are `term << 32 | start`: a promotion starts a new term, above
    // every epoch either site can reach by restarting, so a promoted
    // replica always wins against its old primary (crate::epoch).
    let epoch = Epoch::from_raw(srv.log.epoch())
        .promotion(Epoch::from_raw(r.seen_epoch.load(Ordering::Acquire)))
        .ok_or_else(|| {
            (
                crate::Error::Corrupt(String::new()).code(),
                format!(
                    "no term is left above epoch {} (seen {}): this node cannot be promoted",
                    srv.log.epoch(),
                    r.seen_epoch.load(Ordering::Acquire)
                ),
            )
        })?;
    if let Err(now) = r.change(Change::BeginPromotion) {
        return Err((
            codes::NOT_PRIMARY,
            format!("the role changed meanwhile (this node is {}); try again", now.name()),
        ));
    }
    // The receiver sees the role, writes what it holds and ends its session.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.applying.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            let _ = r.change(Change::AbandonPromotion { back_to: from });
            return Err((codes::NOT_PRIMARY, "the replication receiver did not stop in time".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Checked once the receiver stopped: no reset can begin after it.
    if let Err(why) = replication::may_lead(&srv.log, force) {
        let _ = r.change(Change::AbandonPromotion { back_to: from });
        return Err((codes::INCOMPLETE, why));
    }
    // The new term joins the runs its history holds (with a nonce of its
    // own): a replica's records of any other run are a split brain.
    let log = srv.log.clone();
    if let Err(e) = srv.blocking(move || log.begin_run(epoch.raw())).await {
        let _ = r.change(Change::AbandonPromotion { back_to: from });
        return Err((e.code(), format!("persisting epoch {epoch}: {e}")));
    }
    srv.reload_journals();
    // The etcd thread may have made us step down meanwhile.
    if let Err(now) = r.change(Change::FinishPromotion) {
        return Err((codes::NOT_PRIMARY, format!("promotion overtaken: this node is {}", now.name())));
    }
    if let Err(e) = replication::start_primary(&srv.log, r) {
        tracing::error!(error = %e, "replication sender did not start");
    }
    tracing::warn!(%epoch, "promoted: this node is the primary");
    Ok(())
}

/// A primary that waited for its peer at start may serve (the peer
/// answered and takes it as primary): the next start's epoch, then the
/// role and the shipping sink together on this thread, before any append.
pub(super) async fn serve_after_wait(srv: &Rc<Srv>) -> Result<(), (u16, String)> {
    let r = &srv.repl;
    if r.role() != Role::Waiting {
        return Ok(());
    }
    replication::may_lead(&srv.log, false).map_err(|why| (codes::INCOMPLETE, why))?;
    let Some(epoch) = Epoch::from_raw(srv.log.epoch()).restart() else {
        return Err((codes::NOT_PRIMARY, "no start is left in this term: promote this node instead".into()));
    };
    let log = srv.log.clone();
    srv.blocking(move || log.begin_run(epoch.raw()))
        .await
        .map_err(|e| (e.code(), format!("raising the epoch: {e}")))?;
    if let Err(now) = r.change(Change::Serve) {
        return Err((codes::NOT_PRIMARY, format!("the role changed meanwhile: this node is {}", now.name())));
    }
    srv.reload_journals();
    if let Err(e) = replication::start_primary(&srv.log, r) {
        tracing::error!(error = %e, "replication sender did not start");
    }
    tracing::warn!(%epoch, "serving as primary: the peer answered");
    Ok(())
}

/// Makes this primary a replica (planned): no new appends; the waiting
/// ones finish; with `sync`, waits until the replica is durable at every
/// journal's end, so promoting it loses nothing. A fence meanwhile (a newer
/// primary answered, the etcd lease was lost) ends the demotion: the node
/// steps down as fenced and never goes back to primary (`role.rs`).
pub(super) async fn demote(srv: &Rc<Srv>, sync: bool, timeout: Duration) -> Result<(), (u16, String)> {
    let r = &srv.repl;
    match r.role() {
        Role::Replica => return Ok(()),
        Role::Primary => {}
        Role::Standalone => {
            return Err((codes::NO_REPLICA, "this node runs standalone: there is no replica to hand over to".into()))
        }
        other => return Err((codes::NOT_PRIMARY, format!("this node is {}; try again", other.name()))),
    }
    if let Err(now) = r.change(Change::BeginDemotion) {
        return Err((codes::NOT_PRIMARY, format!("this node is {}; try again", now.name())));
    }
    let deadline = Instant::now() + timeout;
    let fenced = || {
        let e = r.seen_epoch.load(Ordering::Acquire);
        Err((
            codes::FENCED,
            format!(
                "fenced during the demotion: a newer primary exists (epoch {e}); this node steps down to replica \
                 without the handover it was asked for"
            ),
        ))
    };
    let undo = |why: String| {
        srv.kick.notify_one();
        match r.change(Change::AbandonDemotion) {
            Ok(_) => Err((codes::TIMEOUT, format!("{why}; still primary"))),
            Err(_) => fenced(),
        }
    };
    // Appends already taken are answered (pumped by the loop).
    while srv.pending_acks() > 0 || srv.in_flight() > 0 {
        if r.role() != Role::Demoting {
            return fenced();
        }
        if Instant::now() > deadline {
            return undo("appends in flight did not finish in time".into());
        }
        srv.kick.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if sync {
        loop {
            if r.role() != Role::Demoting {
                return fenced();
            }
            let behind: Vec<String> = srv
                .log
                .journals()
                .iter()
                .filter(|j| r.journal(j.id()).durable.load(Ordering::Acquire) < j.next_lsn())
                .map(|j| j.name().to_string())
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return undo(format!("the replica is not durable at the end of {behind:?} in time"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    if r.change(Change::FinishStepDown).is_err() {
        return fenced();
    }
    replication::stop_primary(&srv.log, r);
    tracing::warn!(sync, "demoted: this node is a replica");
    Ok(())
}

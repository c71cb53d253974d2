//! One request to the code that serves it.

use super::*;

/// Handles one request. The frame borrows the read buffer, which is not
/// touched until every frame in it was handled.
pub(super) async fn handle(srv: &Rc<Srv>, conn: &Rc<Conn>, frame: &Frame<'_>) {
    let rid = frame.request_id;
    let req = match Request::decode(frame, (srv.cfg.limits.max_frame_bytes / 4) as u32) {
        Ok(r) => r,
        Err(e) => {
            srv.m.error(e.code());
            conn.send(|o| proto_err(o, rid, &e));
            return;
        }
    };
    let fail = |e: &Error| {
        srv.m.error(e.code());
        conn.send(|o| err_frame(o, rid, e.code(), &e.to_string()));
    };
    match req {
        Request::Hello { min_version, max_version, .. } => {
            if !(min_version..=max_version).contains(&VERSION) {
                let e = ProtoError::UnsupportedVersion(min_version);
                srv.m.error(e.code());
                conn.send(|o| proto_err(o, rid, &e));
                return;
            }
            let name = srv.cfg.server.name.clone();
            let epoch = srv.log.epoch();
            let primary = srv.repl.role().is_primary();
            conn.send(|o| {
                Response::Hello { version: VERSION, server: &name, epoch, primary }.encode(Op::Hello, rid, o)
            });
        }
        Request::Append { journal, durability, producer, first_seq, resend, writer, records } => {
            let w = writer.unwrap_or(0);
            append(srv, conn, rid, journal, durability, (producer, first_seq, resend), w, &records);
        }
        Request::Claim { journal, durability, payload } => claim(srv, conn, rid, journal, durability, payload).await,
        Request::Read { journal, from, max_count, max_bytes } => {
            let Some(jd) = srv.journal(journal) else {
                return fail(&Error::UnknownJournal(journal.to_string()));
            };
            let max_bytes = (max_bytes as u64).min(srv.cfg.limits.max_frame_bytes) as usize;
            let max_count = max_count.max(1) as usize;
            match read_records(srv, &jd.j, from, max_count, max_bytes).await {
                Ok((recs, next)) => conn.send(|o| encode_records(o, Op::Read, rid, &recs, next)),
                Err(e) => fail(&e),
            }
        }
        Request::Subscribe { journal, from, credit_bytes } => {
            let Some(jd) = srv.journal(journal) else {
                return fail(&Error::UnknownJournal(journal.to_string()));
            };
            if conn.subs.borrow().contains_key(&rid) || conn.subs.borrow().len() >= MAX_SUBSCRIPTIONS {
                let e = ProtoError::Malformed("subscription id in use, or too many subscriptions on this connection");
                srv.m.error(e.code());
                return conn.send(|o| proto_err(o, rid, &e));
            }
            let sub = Rc::new(Sub { credit: Cell::new(credit_bytes as u64), wake: Notify::new() });
            conn.subs.borrow_mut().insert(rid, sub.clone());
            tokio_uring::spawn(subscription(srv.clone(), conn.clone(), jd, rid, from, sub));
        }
        Request::Credit { subscription, bytes } => {
            let sub = conn.subs.borrow().get(&subscription).cloned();
            match sub {
                Some(s) => {
                    s.credit.set(s.credit.get().saturating_add(bytes as u64));
                    s.wake.notify_one();
                }
                None => {
                    srv.m.error(codes::UNKNOWN_SUBSCRIPTION);
                    conn.send(|o| {
                        err_frame(o, rid, codes::UNKNOWN_SUBSCRIPTION, &format!("no subscription {subscription}"))
                    });
                }
            }
        }
        Request::SetMark { .. } | Request::CreateJournal { .. } | Request::DeleteJournal { .. }
            if !srv.repl.role().is_primary() =>
        {
            srv.m.error(codes::NOT_PRIMARY);
            let msg = format!(
                "this node is {} (not primary): marks and journals are set on the primary",
                srv.repl.role().name()
            );
            conn.send(|o| err_frame(o, rid, codes::NOT_PRIMARY, &msg));
        }
        Request::Promote { force } => {
            let res = promote(srv, force).await;
            role_change_answer(srv, conn, rid, Op::Promote, res);
        }
        Request::Demote { sync, timeout_ms } => {
            let res = demote(srv, sync, Duration::from_millis(timeout_ms as u64)).await;
            role_change_answer(srv, conn, rid, Op::Demote, res);
        }
        Request::DiscardDiverged => {
            let res = if srv.repl.split_brain.lock().is_empty() {
                Err((codes::NOT_PRIMARY, "no split brain is reported on this node: nothing to discard".to_string()))
            } else if srv.repl.role().is_primary() {
                Err((
                    codes::NOT_PRIMARY,
                    "this node is primary: run discard-diverged on the replica that holds the diverged records"
                        .to_string(),
                ))
            } else {
                tracing::warn!("an operator allowed the next replication session to cut back diverged records");
                srv.repl.discard_diverged.store(true, Ordering::Release);
                Ok(())
            };
            role_change_answer(srv, conn, rid, Op::DiscardDiverged, res);
        }
        Request::Scrub { action } => scrub_request(srv, conn, rid, action),
        Request::Replace { old, new, force, re_add } => replace_request(srv, conn, rid, old, new, force, re_add).await,
        Request::Detach { member } => detach_request(srv, conn, rid, member).await,
        Request::Sites { request } => {
            let (log, request) = (srv.log.clone(), request.to_string());
            match srv.blocking(move || crate::sites::answer(&log, &request)).await {
                Ok(json) => conn.send(|o| Response::Status { json: &json }.encode(Op::Sites, rid, o)),
                Err(e) => fail(&e),
            }
        }
        Request::SetMark { journal, lsn, writer } => {
            let Some(jd) = srv.journal(journal) else {
                return fail(&Error::UnknownJournal(journal.to_string()));
            };
            let j = jd.j.clone();
            match srv.blocking(move || j.set_mark_as(lsn, writer.unwrap_or(0))).await {
                Ok(()) => conn.send(|o| Response::Ok.encode(Op::SetMark, rid, o)),
                Err(e) => fail(&e),
            }
        }
        Request::GetMark { journal } => match srv.journal(journal) {
            Some(jd) => {
                let lsn = jd.j.mark();
                conn.send(|o| Response::Mark { lsn }.encode(Op::GetMark, rid, o));
            }
            None => fail(&Error::UnknownJournal(journal.to_string())),
        },
        Request::CreateJournal { journal } => match srv.log.create_journal(journal) {
            Ok(j) => {
                srv.add_journal(j);
                tracing::info!(journal, "journal created");
                conn.send(|o| Response::Ok.encode(Op::CreateJournal, rid, o));
            }
            Err(e) => fail(&e),
        },
        Request::DeleteJournal { journal } => match srv.log.delete_journal(journal) {
            Ok(()) => {
                let removed = srv.journals.borrow_mut().remove(journal);
                if let Some(jd) = removed {
                    srv.jlist.borrow_mut().retain(|j| j.name() != journal);
                    let e = Error::UnknownJournal(journal.to_string());
                    jd.fail_waiting(e.code(), &e.to_string());
                    jd.advanced.notify_waiters();
                }
                tracing::info!(journal, "journal deleted");
                conn.send(|o| Response::Ok.encode(Op::DeleteJournal, rid, o));
            }
            Err(e) => fail(&e),
        },
        Request::ListJournals => {
            let names = srv.log.journal_names();
            let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            conn.send(|o| Response::Journals { names: refs }.encode(Op::ListJournals, rid, o));
        }
        Request::Status => {
            let json = srv.status_json();
            conn.send(|o| Response::Status { json: &json }.encode(Op::Status, rid, o));
        }
    }
}

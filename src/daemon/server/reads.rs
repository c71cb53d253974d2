//! Reads and subscriptions: verified reads on the blocking pool, and the
//! credit-driven stream of a journal's records as they become durable.

use super::*;

pub(super) struct Sub {
    pub(super) credit: Cell<u64>,
    pub(super) wake: Notify,
}

pub(super) type OwnedRec = (u64, u64, u32, Vec<u8>);

/// Reads up to `max_count` records / about `max_bytes` from `from` on the
/// blocking pool (reads are synchronous O_DIRECT preads).
pub(super) async fn read_records(
    srv: &Srv,
    j: &Journal,
    from: u64,
    max_count: usize,
    max_bytes: usize,
) -> crate::Result<(Vec<OwnedRec>, u64)> {
    let j = j.clone();
    srv.blocking(move || {
        let first = j.info().first_lsn;
        let from = if from == 0 { first } else { from };
        let next = j.next_lsn();
        if from >= next {
            if from > next {
                return Err(Error::NotYetWritten { lsn: from, next });
            }
            return Ok((Vec::new(), from));
        }
        let mut out: Vec<OwnedRec> = Vec::new();
        let mut bytes = 0usize;
        let chunk = max_bytes.clamp(64 << 10, 1 << 20);
        j.visit(from, chunk, |r| {
            // An answer stays within max_bytes, unless it is a single record.
            if !out.is_empty() && bytes + r.payload.len() + 24 > max_bytes {
                return false;
            }
            out.push((r.lsn, r.epoch, crc32c::crc32c(r.payload), r.payload.to_vec()));
            bytes += r.payload.len() + 24;
            out.len() < max_count && bytes < max_bytes
        })?;
        let next = out.last().map(|r| r.0 + 1).unwrap_or(from);
        Ok((out, next))
    })
    .await
}

pub(super) fn encode_records(o: &mut Vec<u8>, op: Op, rid: u64, recs: &[OwnedRec], next: u64) {
    let records: Vec<WireRecord<'_>> = recs
        .iter()
        .map(|(lsn, epoch, crc, p)| WireRecord { lsn: *lsn, epoch: *epoch, crc32c: *crc, payload: p })
        .collect();
    Response::Records { records, next_lsn: next }.encode(op, rid, o);
}

impl Srv {
    /// Runs `f` (synchronous disk I/O) on the blocking pool, off the loop's
    /// thread; inline when a simulator drives the server (`Driven`: one
    /// thread, so that a seed replays exactly).
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> crate::Result<T> + Send + 'static,
    ) -> crate::Result<T> {
        if self.inline_blocking {
            return f();
        }
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => Err(Error::Io(std::io::Error::other(format!("blocking task failed: {e}")))),
        }
    }
}

pub(super) async fn subscription(srv: Rc<Srv>, conn: Rc<Conn>, jd: Rc<Jd>, rid: u64, from: u64, sub: Rc<Sub>) {
    let max_inflight = srv.cfg.limits.max_inflight_bytes as usize;
    let frame_cap = (srv.cfg.limits.max_frame_bytes as usize).saturating_sub(HEADER_LEN + 64).max(4096);
    let mut next = from;
    // On a replica, a cut-back to its primary's history may replace records
    // this subscription already sent: it ends then, never mixing histories.
    let cuts = jd.j.cut_generation();
    loop {
        if conn.gone.get() || conn.done.get() || !conn.subs.borrow().contains_key(&rid) {
            break;
        }
        if jd.j.cut_generation() != cuts {
            let code = Error::NotYetWritten { lsn: next, next: jd.j.next_lsn() }.code();
            srv.m.error(code);
            conn.send(|o| {
                err_frame(
                    o,
                    rid,
                    code,
                    &format!(
                        "journal {}: this replica was cut back to its primary's history; records sent before lsn \
                         {next} may no longer be there: subscribe again",
                        jd.j.name()
                    ),
                )
            });
            break;
        }
        if sub.credit.get() == 0 || conn.out_len() > max_inflight {
            tokio::select! {
                biased;
                _ = sub.wake.notified() => {}
                _ = conn.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            continue;
        }
        let advanced = jd.advanced.notified();
        let durable = jd.j.next_lsn();
        if next != 0 && next >= durable {
            tokio::select! {
                biased;
                _ = advanced => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if !srv.journals.borrow().contains_key(jd.j.name()) {
                let e = Error::UnknownJournal(jd.j.name().to_string());
                conn.send(|o| err_frame(o, rid, e.code(), &e.to_string()));
                break;
            }
            continue;
        }
        let want = (sub.credit.get() as usize).min(frame_cap);
        match read_records(&srv, &jd.j, next, usize::MAX, want).await {
            Ok((recs, n)) => {
                if recs.is_empty() {
                    next = n;
                    continue;
                }
                // Charged as the client refunds: payload bytes, at least 1 per record.
                let used: u64 = recs.iter().map(|r| (r.3.len() as u64).max(1)).sum();
                sub.credit.set(sub.credit.get().saturating_sub(used));
                next = n;
                conn.send(|o| encode_records(o, Op::Subscribe, rid, &recs, n));
            }
            Err(e) => {
                srv.m.error(e.code());
                conn.send(|o| err_frame(o, rid, e.code(), &e.to_string()));
                break;
            }
        }
    }
    let mut subs = conn.subs.borrow_mut();
    if subs.get(&rid).is_some_and(|x| Rc::ptr_eq(x, &sub)) {
        subs.remove(&rid);
    }
}

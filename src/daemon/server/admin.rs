//! The admin HTTP endpoint (`/metrics`, `/status`) and the status document.

use super::*;

impl Srv {
    pub(super) fn status_json(&self) -> String {
        let st = self.log.status();
        let journals: Vec<serde_json::Value> = st
            .journals
            .iter()
            .map(|i| {
                let jd = self.journal(&i.name);
                serde_json::json!({
                    "name": i.name,
                    "first_lsn": i.first_lsn,
                    "next_lsn": i.next_lsn,
                    "mark": i.mark,
                    "segments": i.segments,
                    "bytes": i.bytes,
                    "missing_segments": i.missing_segments,
                    "durability": jd.as_ref().map(|jd| durability_name(jd.durability.get())).unwrap_or("local"),
                    "producers": jd.as_ref().map(|jd| jd.producers.borrow().len()).unwrap_or(0),
                    "writer": jd.as_ref().map(|jd| jd.j.writer()).unwrap_or(0),
                })
            })
            .collect();
        let mirrors: Vec<serde_json::Value> = st
            .mirrors
            .iter()
            .map(|m| {
                serde_json::json!({
                    "path": m.path, "uuid": m.uuid, "slot": m.slot, "healthy": m.healthy, "state": m.state,
                    "writes": m.writes, "mean_write_us": m.mean_write_us,
                    "read_errors": m.read_errors, "write_errors": m.write_errors,
                    "checksum_errors": m.checksum_errors, "repaired": m.repaired,
                })
            })
            .collect();
        serde_json::json!({
            "server": self.cfg.server.name,
            "version": env!("CARGO_PKG_VERSION"),
            "role": self.repl.role().name(),
            "replication": self.repl_status(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "set_uuid": st.set_uuid,
            "absent_devices": st.absent_devices,
            "scrub": self.scrub.progress().json(),
            "resilver": self.resilver.progress().json(),
            "epoch": st.epoch,
            "block_size": st.block_size,
            "segment_size": st.segment_size,
            "segments_total": st.segments_total,
            "segments_free": st.segments_free,
            "repairs": st.repairs,
            "connections": self.m.connections.get(),
            "mirrors": mirrors,
            "journals": journals,
        })
        .to_string()
    }

    pub(super) fn metrics_text(&self) -> String {
        let st = self.log.status();
        let counters: Vec<(String, crate::JournalCounters)> =
            self.jlist.borrow().iter().map(|j| (j.name().to_string(), j.counters())).collect();
        let mut o = metrics::render(&self.m, &st, &counters);
        metrics::render_repl(&mut o, &self.m, &self.repl_status());
        let p = self.scrub.progress();
        metrics::render_scrub(&mut o, p.state == ScrubState::Running, p.records_done, p.repaired, p.errors.len());
        let r = self.resilver.progress();
        metrics::render_resilver(&mut o, self.resilver.running(), r.p.bytes_done, r.p.bytes_total);
        o
    }

    pub(super) fn repl_status(&self) -> metrics::ReplStatus {
        let r = &self.repl;
        let ob = r.outbox.lock().clone();
        let role = r.role();
        let journals = self
            .log
            .journals()
            .iter()
            .map(|j| {
                let jr = r.journal(j.id());
                let next = j.next_lsn();
                let durable = jr.durable.load(Ordering::Acquire);
                let lag = next.saturating_sub(durable);
                metrics::ReplJournal {
                    name: j.name().to_string(),
                    next_lsn: next,
                    replica_received: jr.received.load(Ordering::Acquire),
                    replica_durable: durable,
                    lag_records: if role.ships() { lag } else { 0 },
                    lag_bytes: match &ob {
                        Some(ob) if role.ships() && lag > 0 => ob.bytes_after(j.id(), durable),
                        _ => 0,
                    },
                    lag_seconds: if role.ships() && lag > 0 {
                        Mono.now_ms().saturating_sub(jr.caught_up_at.load(Ordering::Acquire)) as f64 / 1000.0
                    } else {
                        0.0
                    },
                    degraded: self.journals.borrow().get(j.name()).is_some_and(|jd| jd.degradation.get().is_degraded()),
                }
            })
            .collect();
        metrics::ReplStatus {
            role: role.name().to_string(),
            peer: r.cfg.peer.map(|p| p.to_string()),
            peer_name: r.peer_name.lock().clone(),
            connected: r.connected.load(Ordering::Acquire),
            epoch: self.log.epoch(),
            seen_epoch: r.seen_epoch.load(Ordering::Acquire),
            sessions: r.sessions.load(Ordering::Relaxed),
            session_started_ms: r.session_started_ms.load(Ordering::Relaxed),
            catchup_bytes: r.catchup_bytes.load(Ordering::Relaxed),
            resyncs: r.resyncs.load(Ordering::Relaxed),
            truncations: r.truncations.load(Ordering::Relaxed),
            backlog_bytes: ob.map(|o| o.queued_bytes() as u64).unwrap_or(0),
            last_error: r.last_error.lock().clone(),
            split_brain: r.split_brain.lock().clone(),
            incomplete: self.log.incomplete().unwrap_or_default(),
            journals,
        }
    }
}

pub(super) async fn http_metrics<S: Stream>(srv: Rc<Srv>, s: S) {
    let mut req = Vec::with_capacity(1024);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if req.len() >= 8192 || Instant::now() > deadline {
            return;
        }
        req.reserve(1024);
        let at = req.len();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_into(req, at)).await;
        let Ok((Ok(n), b)) = r else { return };
        req = b;
        if n == 0 || req.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let (status, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?") {
        ("200 OK", srv.metrics_text())
    } else if req.starts_with(b"GET /status ") {
        ("200 OK", srv.status_json())
    } else {
        ("404 Not Found", "GET /metrics or /status\n".to_string())
    };
    let ctype = if body.starts_with('{') { "application/json" } else { "text/plain; version=0.0.4" };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all_buf(resp.into_bytes()).await;
    s.close();
}

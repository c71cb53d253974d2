//! The event loop: the pump-then-settle turn, listeners, signals and the drain.

use super::*;

/// Runs the loop until SIGTERM/SIGINT and a drain. `on_ready` runs once
/// the listeners accept (then READY=1 is sent).
pub(crate) async fn serve(srv: Rc<Srv>, bound: Bound, notifier: Rc<Notifier>) -> Result<(), String> {
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: efd is a fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    srv.driver.borrow().register_eventfd(efd.as_raw_fd()).map_err(|e| e.to_string())?;
    // SAFETY: an OwnedFd keeps returning the same open descriptor until the
    // AsyncFd is dropped.
    let efd = unsafe { AsyncFd::register(efd) }.map_err(|e| format!("eventfd: {e}"))?;

    let bound_epoll = bound.epoll;
    for l in bound.tcp {
        if bound.epoll {
            let l = Rc::new(tokio::net::TcpListener::from_std(l).map_err(|e| format!("listener: {e}"))?);
            tokio_uring::spawn(accept_loop(srv.clone(), move || {
                let l = l.clone();
                async move {
                    let (s, peer) = l.accept().await?;
                    let _ = s.set_nodelay(true);
                    Ok((s, peer.to_string()))
                }
            }));
        } else {
            let l = Rc::new(tokio_uring::net::TcpListener::from_std(l));
            tokio_uring::spawn(accept_loop(srv.clone(), move || {
                let l = l.clone();
                async move {
                    let (s, peer) = l.accept().await?;
                    let _ = s.set_nodelay(true);
                    Ok((s, peer.to_string()))
                }
            }));
        }
    }
    // Unix sockets are always readiness-based: tokio-uring's Unix listener
    // fails with EOPNOTSUPP on this kernel.
    for path in bound.unix {
        let l = tokio::net::UnixListener::bind(&path).map_err(|e| format!("listen on unix:{}: {e}", path.display()))?;
        let l = Rc::new(l);
        let name = format!("unix:{}", path.display());
        let srv = srv.clone();
        tokio_uring::spawn(async move {
            accept_loop(srv, move || {
                let (l, name) = (l.clone(), name.clone());
                async move { Ok((l.accept().await?.0, name)) }
            })
            .await;
            let _ = std::fs::remove_file(&path);
        });
    }
    if let Some(l) = bound.metrics {
        let srv = srv.clone();
        // On epoll, like client sockets: tokio-uring's operations are only
        // submitted when the loop sleeps, which idle polling postpones.
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| format!("metrics listener: {e}"))?;
        tokio_uring::spawn(async move {
            loop {
                let acc = tokio::select! {
                    biased;
                    a = l.accept() => a,
                    _ = srv.drain.notified() => break,
                };
                if let Ok((s, _)) = acc {
                    tokio_uring::spawn(http_metrics(srv.clone(), s));
                }
            }
        });
    }
    if let Some(every) = Notifier::watchdog_interval() {
        let n = notifier.clone();
        tokio_uring::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                n.notify("WATCHDOG=1");
            }
        });
    }
    {
        let srv = srv.clone();
        let notifier = notifier.clone();
        tokio_uring::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                biased;
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            notifier.notify("STOPPING=1");
            srv.begin_drain();
        });
    }
    notifier.notify("READY=1");
    // Scripts and tests wait for "server: ready": keep its target stable.
    tracing::info!(target: "mirrorlog::daemon::server", "ready");

    // The pump: writes batches as they form, wakes on completions.
    let mut drain_deadline: Option<Instant> = None;
    let repl_wake = srv.repl.wake.clone();
    // Invariant: while the loop polls, the runtime never sleeps, and
    // tokio-uring submits its queued operations only when it is about to
    // sleep. So idle polling requires that nothing here uses tokio-uring's
    // ring: client, Unix and metrics sockets are on epoll (the Driver has
    // its own ring), and `network = "io_uring"` turns idle polling off.
    let idle_poll = if bound_epoll { srv.cfg.server.idle_poll } else { Duration::ZERO };
    if !bound_epoll && !srv.cfg.server.idle_poll.is_zero() {
        tracing::info!(
            "idle polling is off: network = \"io_uring\" submits socket operations only when the loop sleeps"
        );
    }
    // When the loop last saw work: a disk completion or a socket read.
    let mut busy_at = Instant::now();
    let mut seen = srv.activity.get();
    loop {
        match srv.turn() {
            Ok(n) if n > 0 || srv.activity.get() != seen => {
                seen = srv.activity.get();
                busy_at = Instant::now();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "the write driver failed");
                return Err(e.to_string());
            }
        }
        if srv.draining.get() {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + srv.cfg.limits.drain_timeout);
            if srv.drained() {
                tracing::info!("drained");
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(pending = srv.pending_acks(), "drain timeout: closing with appends unanswered");
                break;
            }
        }
        // Idle polling: shortly after work, poll again instead of sleeping.
        // The yield lets the runtime poll the sockets without blocking and
        // run the connections that became ready; pump() reads the disk
        // ring's completions directly.
        if !idle_poll.is_zero() && !srv.draining.get() && busy_at.elapsed() < idle_poll {
            tokio::task::yield_now().await;
            continue;
        }
        let gcw = srv.cfg.limits.group_commit_wait;
        // remote-* appends wait on the replica's acks (which wake the loop)
        // and on their timeout (this tick).
        let tick = if srv.remote_acks() > 0 || matches!(srv.repl.role(), Role::SteppingDown | Role::Demoting) {
            Duration::from_millis(5)
        } else {
            Duration::from_secs(3600)
        };
        if srv.in_flight() > 0 {
            tokio::select! {
                biased;
                g = efd.readable() => {
                    if let Ok(mut g) = g {
                        let mut v = [0u8; 8];
                        // SAFETY: reading 8 bytes into v from our eventfd.
                        let r = unsafe { libc::read(g.get_inner().as_raw_fd(), v.as_mut_ptr() as *mut _, 8) };
                        if r < 0 {
                            g.clear_ready();
                        }
                    }
                }
                _ = srv.kick.notified() => {}
                _ = repl_wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        } else if srv.local_acks_waiting() {
            // Open batches waiting out the group-commit wait (or a retry).
            let wait = if gcw.is_zero() { Duration::from_micros(100) } else { gcw };
            tokio::select! {
                biased;
                _ = tokio::time::sleep(wait) => {}
                _ = srv.kick.notified() => {}
                _ = repl_wake.notified() => {}
            }
        } else {
            tokio::select! {
                biased;
                _ = srv.kick.notified() => {}
                _ = repl_wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = tokio::time::sleep(Duration::from_millis(200)), if srv.draining.get() => {}
            }
        }
        // Let every other ready task (connections whose reads completed)
        // place its appends first: they join the next batch.
        tokio::task::yield_now().await;
    }
    Ok(())
}

impl Srv {
    /// The work of one turn of the loop: follow a role change, write the
    /// batches that formed, reap completions, answer what became durable.
    /// Returns how many batch writes finished.
    pub(super) fn turn(self: &Rc<Self>) -> crate::Result<usize> {
        self.check_role();
        self.pump(false)
    }

    /// Stops taking connections and appends; what was taken is answered.
    pub(super) fn begin_drain(&self) {
        tracing::info!(pending = self.pending_acks(), "stopping: draining in-flight appends");
        self.scrub.cancel();
        self.resilver.stop();
        self.draining.set(true);
        self.drain.notify_waiters();
        self.kick.notify_one();
    }

    /// Every append taken is answered, and every connection has flushed its
    /// answers and closed.
    pub(super) fn drained(&self) -> bool {
        self.pending_acks() == 0 && self.in_flight() == 0 && self.m.connections.get() == 0
    }
}

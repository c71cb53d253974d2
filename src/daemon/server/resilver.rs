//! The resilver of a member that joined by `mirrorlog replace` (or was
//! being resilvered when the daemon stopped): `MirrorLog::resilver` on a
//! thread of its own, paced to `resilver.rate` (`busy_rate` while the node
//! writes), with its progress for status and metrics.

use super::*;

use std::sync::atomic::AtomicBool;

/// Bytes per read and write of the copy while the node takes no writes
/// (large pieces: the copy's own rate, docs/benchmarks.md), and while it
/// does (small ones: an append waits behind one at most briefly).
const CHUNK_IDLE: usize = 4 << 20;
const CHUNK_BUSY: usize = 256 << 10;

/// The resilver's state, shared by its thread and the server loop.
#[derive(Default)]
pub(super) struct Resilvering {
    /// (a thread runs, another member joined while it ran): the thread
    /// looks again before it ends, so a member never waits for the next
    /// start.
    thread: parking_lot::Mutex<(bool, bool)>,
    stop: AtomicBool,
    progress: parking_lot::Mutex<ResilverRun>,
}

/// Where the running or last resilver is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResilverState {
    /// None since the daemon started.
    #[default]
    None,
    Running,
    Finished,
    /// The daemon stopping: it resumes at the next start.
    Stopped,
    /// The member was detached.
    Cancelled,
    Failed,
}

impl ResilverState {
    /// As status gives it ("" for none).
    pub(crate) fn name(self) -> &'static str {
        match self {
            ResilverState::None => "",
            ResilverState::Running => "running",
            ResilverState::Finished => "finished",
            ResilverState::Stopped => "stopped",
            ResilverState::Cancelled => "cancelled",
            ResilverState::Failed => "failed",
        }
    }
}

/// The running or last resilver.
#[derive(Debug, Default, Clone)]
pub(crate) struct ResilverRun {
    pub state: ResilverState,
    pub device: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub p: crate::resilver::ResilverProgress,
    pub error: String,
}

impl Resilvering {
    pub(super) fn progress(&self) -> ResilverRun {
        self.progress.lock().clone()
    }

    pub(super) fn running(&self) -> bool {
        self.thread.lock().0
    }

    /// Starts the resilver of the rebuilding member, if there is one (a
    /// thread running already takes it on). Returns whether there is one.
    pub(super) fn start(self: &Arc<Self>, log: Arc<MirrorLog>, rates: (u64, u64)) -> std::io::Result<bool> {
        let Some(device) = rebuilding(&log) else { return Ok(false) };
        let mut t = self.thread.lock();
        if t.0 {
            t.1 = true;
            return Ok(true);
        }
        self.stop.store(false, Ordering::Release);
        self.begin(device);
        let me = self.clone();
        std::thread::Builder::new().name("resilver".into()).spawn(move || me.thread_main(&log, rates))?;
        t.0 = true;
        Ok(true)
    }

    fn begin(&self, device: String) {
        *self.progress.lock() =
            ResilverRun { state: ResilverState::Running, device, started_unix_ms: unix_ms(), ..ResilverRun::default() };
    }

    fn thread_main(&self, log: &MirrorLog, rates: (u64, u64)) {
        loop {
            self.run(log, rates);
            let mut t = self.thread.lock();
            let next = rebuilding(log);
            if !t.1 || self.stop.load(Ordering::Acquire) || next.is_none() {
                t.0 = false;
                return;
            }
            t.1 = false;
            drop(t);
            self.begin(next.unwrap_or_default());
        }
    }

    /// Stops a running resilver where it is (persisted; the next start
    /// resumes it).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn run(&self, log: &MirrorLog, (rate, busy_rate): (u64, u64)) {
        tracing::warn!(device = %self.progress.lock().device, rate, busy_rate, "resilver started");
        let t0 = std::time::Instant::now();
        let mut pace = Pace::new(rate, busy_rate, log.batches_written());
        let mut last = std::time::Instant::now();
        let busy = std::cell::Cell::new(false);
        let chunk = || if busy.get() { CHUNK_BUSY } else { CHUNK_IDLE };
        let res = log.resilver_with(&chunk, |p| {
            if last.elapsed() >= std::time::Duration::from_millis(100) {
                self.progress.lock().p = p.clone();
                last = std::time::Instant::now();
            }
            pace.wait(p.bytes_done, || log.batches_written(), &self.stop);
            busy.set(pace.busy());
            !self.stop.load(Ordering::Acquire)
        });
        let mut run = self.progress.lock();
        run.finished_unix_ms = unix_ms();
        match res {
            Ok(Some(p)) => {
                run.state = if p.cancelled {
                    ResilverState::Cancelled
                } else if p.stopped {
                    ResilverState::Stopped
                } else {
                    ResilverState::Finished
                };
                run.p = p;
            }
            Ok(None) => run.state = ResilverState::Finished,
            Err(e) => {
                run.state = ResilverState::Failed;
                run.error = e.to_string();
            }
        }
        tracing::warn!(
            device = %run.device,
            state = run.state.name(),
            bytes = run.p.bytes_done,
            seconds = t0.elapsed().as_secs_f64(),
            error = %run.error,
            "resilver ended"
        );
    }
}

/// The device of the member being resilvered, if any.
fn rebuilding(log: &MirrorLog) -> Option<String> {
    log.status().mirrors.into_iter().find(|m| m.state == "rebuilding").map(|m| m.path)
}

impl ResilverRun {
    /// The status JSON's `resilver` part.
    pub(crate) fn json(&self) -> serde_json::Value {
        let end = if self.finished_unix_ms == 0 { unix_ms() } else { self.finished_unix_ms };
        let secs = end.saturating_sub(self.started_unix_ms) as f64 / 1000.0;
        let rate = if secs > 0.0 { self.p.bytes_done as f64 / secs } else { 0.0 };
        let left = self.p.bytes_total.saturating_sub(self.p.bytes_done);
        let eta = (self.state == ResilverState::Running && rate > 0.0).then(|| left as f64 / rate);
        serde_json::json!({
            "state": self.state.name(),
            "device": self.device,
            "started_unix_ms": self.started_unix_ms,
            "finished_unix_ms": self.finished_unix_ms,
            "slots_done": self.p.slots_done,
            "slots_total": self.p.slots_total,
            "bytes_done": self.p.bytes_done,
            "bytes_total": self.p.bytes_total,
            "bytes_per_second": rate,
            "eta_seconds": eta,
            "resumed": self.p.resumed,
            "error": self.error,
        })
    }
}

/// Answers `Replace`: the new (or re-added) device joins, rebuilding, and
/// its resilver starts; then the status.
pub(super) async fn replace_request(
    srv: &Rc<Srv>,
    conn: &Conn,
    rid: u64,
    old: &str,
    new: &str,
    force: bool,
    re_add: bool,
) {
    let log = srv.log.clone();
    let (old_s, new_p) = (old.to_string(), std::path::PathBuf::from(new));
    let joined = srv.blocking(move || if re_add { log.re_add(&new_p) } else { log.replace(&old_s, &new_p, force) });
    let res = match joined.await {
        Ok(bay) => {
            tracing::warn!(
                old,
                new,
                slot = bay,
                "mirror member replaced: add {new} to storage.devices of the configuration (a restart resumes its resilver), take {old} out once the resilver finished"
            );
            match srv.resilver.start(srv.log.clone(), (srv.cfg.resilver.rate, srv.cfg.resilver.busy_rate)) {
                Ok(_) => Ok(()),
                Err(e) => Err((codes::IO, format!("starting the resilver thread: {e}"))),
            }
        }
        Err(e) => Err((e.code(), e.to_string())),
    };
    role_change_answer(srv, conn, rid, Op::Replace, res);
}

/// Answers `Detach`: the member leaves the set (a resilver of it stops);
/// then the status.
pub(super) async fn detach_request(srv: &Rc<Srv>, conn: &Conn, rid: u64, member: &str) {
    let log = srv.log.clone();
    let who = member.to_string();
    let res = match srv.blocking(move || log.detach(&who)).await {
        Ok(()) => Ok(()),
        Err(e) => Err((e.code(), e.to_string())),
    };
    role_change_answer(srv, conn, rid, Op::Detach, res);
}

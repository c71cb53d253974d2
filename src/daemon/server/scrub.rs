//! The scrub: every record of every journal, from its mark, read and
//! verified on every healthy mirror, bad copies rewritten from good ones
//! (`Journal::scrub`), on a thread of its own (synchronous reads, paced to
//! `scrub.rate`), with its progress for status and metrics. One at a time;
//! `mirrorlog scrub start|status|cancel`.

use super::*;

use std::sync::atomic::AtomicBool;

/// Records and bytes between two updates of the shared progress.
const UPDATE_EVERY: u64 = 256;
/// Errors kept from one scrub (journals it could not scrub).
const MAX_ERRORS: usize = 16;
/// Bytes per read: small, so that an append waiting behind one waits
/// little (docs/benchmarks.md, the scrub under load).
const CHUNK: usize = 64 << 10;

/// A scrub's state, shared by its thread and the server loop.
#[derive(Default)]
pub(super) struct Scrubbing {
    running: AtomicBool,
    cancel: AtomicBool,
    progress: parking_lot::Mutex<Progress>,
}

/// Where the running or last scrub is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScrubState {
    /// None since the daemon started.
    #[default]
    None,
    Running,
    Finished,
    Cancelled,
}

impl ScrubState {
    /// As status gives it ("" for none).
    pub(crate) fn name(self) -> &'static str {
        match self {
            ScrubState::None => "",
            ScrubState::Running => "running",
            ScrubState::Finished => "finished",
            ScrubState::Cancelled => "cancelled",
        }
    }
}

/// The running or last scrub.
#[derive(Debug, Default, Clone)]
pub(crate) struct Progress {
    /// Scrubs started since the daemon started.
    pub runs: u64,
    pub state: ScrubState,
    pub started_unix_ms: u64,
    /// 0 while running.
    pub finished_unix_ms: u64,
    /// Records to verify, summed over the mirrors, as the scrub began
    /// (appends since are not scrubbed by it).
    pub records_total: u64,
    pub records_done: u64,
    pub bytes_done: u64,
    /// Bad copies rewritten from a good mirror.
    pub repaired: u64,
    /// Journals it could not scrub through, and why (a record bad on
    /// every mirror: `corrupt`).
    pub errors: Vec<String>,
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Scrubbing {
    pub(super) fn progress(&self) -> Progress {
        self.progress.lock().clone()
    }

    /// Starts a scrub on its own thread unless one runs. Returns whether
    /// this call started one.
    pub(super) fn start(self: &Arc<Self>, log: Arc<MirrorLog>, rates: (u64, u64)) -> std::io::Result<bool> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        self.cancel.store(false, Ordering::Release);
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("scrub".into()).spawn(move || me.run(&log, rates));
        if let Err(e) = spawned {
            self.running.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }

    pub(super) fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    fn run(&self, log: &MirrorLog, (rate, busy_rate): (u64, u64)) {
        let journals = log.journals();
        let members = log.status().mirrors.iter().filter(|m| m.healthy).count() as u64;
        let total: u64 = journals
            .iter()
            .map(|j| {
                let i = j.info();
                i.next_lsn.saturating_sub(i.first_lsn.max(i.mark)) * members
            })
            .sum();
        {
            let mut p = self.progress.lock();
            *p = Progress {
                runs: p.runs + 1,
                state: ScrubState::Running,
                started_unix_ms: unix_ms(),
                records_total: total,
                ..Progress::default()
            };
        }
        tracing::info!(journals = journals.len(), records = total, rate, busy_rate, "scrub started");
        let t0 = std::time::Instant::now();
        let mut pace = Pace::new(rate, busy_rate, log.batches_written());
        let (mut records, mut bytes) = (0u64, 0u64);
        for j in journals {
            if self.cancel.load(Ordering::Acquire) {
                break;
            }
            let (base_records, base_bytes) = (records, bytes);
            let res = j.scrub(CHUNK, |r| {
                let (rec, by) = (base_records + r.records, base_bytes + r.bytes);
                if rec % UPDATE_EVERY == 0 {
                    let mut p = self.progress.lock();
                    p.records_done = rec;
                    p.bytes_done = by;
                }
                pace.wait(by, || log.batches_written(), &self.cancel);
                !self.cancel.load(Ordering::Acquire)
            });
            let mut p = self.progress.lock();
            match res {
                Ok(r) => {
                    records = base_records + r.records;
                    bytes = base_bytes + r.bytes;
                    p.repaired += r.repaired;
                }
                // Deleted while the scrub ran: nothing left to check.
                Err(Error::UnknownJournal(_)) => {}
                Err(e) => {
                    tracing::error!(journal = j.name(), error = %e, "scrub: the journal could not be scrubbed through");
                    if p.errors.len() < MAX_ERRORS {
                        p.errors.push(format!("{}: {e}", j.name()));
                    }
                }
            }
            p.records_done = records;
            p.bytes_done = bytes;
        }
        let cancelled = self.cancel.load(Ordering::Acquire);
        let p = {
            let mut p = self.progress.lock();
            p.state = if cancelled { ScrubState::Cancelled } else { ScrubState::Finished };
            p.finished_unix_ms = unix_ms();
            p.clone()
        };
        tracing::warn!(
            state = p.state.name(),
            records = p.records_done,
            bytes = p.bytes_done,
            repaired = p.repaired,
            errors = p.errors.len(),
            seconds = t0.elapsed().as_secs_f64(),
            "scrub ended"
        );
        self.running.store(false, Ordering::Release);
    }
}

/// A token bucket at `rate` bytes/s, or `busy_rate` while the node writes.
pub(super) struct Pace {
    rate: u64,
    busy_rate: u64,
    /// Bytes the scrub may have verified by `last`.
    allowed: f64,
    last: std::time::Instant,
    /// Device writes at the last look, and when that was.
    writes: u64,
    looked: std::time::Instant,
    busy: bool,
}

impl Pace {
    /// How often the scrub looks whether the node writes.
    const LOOK: std::time::Duration = std::time::Duration::from_millis(1);
    /// Longest sleep, and the most credit saved up (as time at the rate).
    const MAX_WAIT: f64 = 0.1;

    pub(super) fn new(rate: u64, busy_rate: u64, writes: u64) -> Pace {
        let now = std::time::Instant::now();
        Pace { rate, busy_rate, allowed: 0.0, last: now, writes, looked: now, busy: false }
    }

    /// Whether the node was writing at the last look.
    pub(super) fn busy(&self) -> bool {
        self.busy
    }

    /// Sleeps while `done` bytes run ahead of the rate (in sleeps of at
    /// most `MAX_WAIT`, looking again whether the node writes between),
    /// or until `quit` is set.
    pub(super) fn wait(&mut self, done: u64, writes: impl Fn() -> u64, quit: &AtomicBool) {
        while !quit.load(Ordering::Acquire) {
            let now = std::time::Instant::now();
            if now - self.looked >= Self::LOOK {
                let w = writes();
                self.busy = w != self.writes;
                (self.writes, self.looked) = (w, now);
            }
            // Busy: the lower of the two (0 is unpaced, the highest).
            let rate = match (self.busy, self.rate, self.busy_rate) {
                (true, 0, b) => b,
                (true, r, b) if b > 0 => r.min(b),
                (_, r, _) => r,
            };
            if rate == 0 {
                return;
            }
            let rate = rate as f64;
            let done = done as f64;
            self.allowed = (self.allowed + (now - self.last).as_secs_f64() * rate).min(done + rate * Self::MAX_WAIT);
            self.last = now;
            if done <= self.allowed {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs_f64(((done - self.allowed) / rate).min(Self::MAX_WAIT)));
        }
    }
}

impl Progress {
    /// The status JSON's `scrub` part.
    pub(crate) fn json(&self) -> serde_json::Value {
        let end = if self.finished_unix_ms == 0 { unix_ms() } else { self.finished_unix_ms };
        let secs = end.saturating_sub(self.started_unix_ms) as f64 / 1000.0;
        let rate = if secs > 0.0 { self.bytes_done as f64 / secs } else { 0.0 };
        let left = self.records_total.saturating_sub(self.records_done);
        let eta = if self.state == ScrubState::Running && self.records_done > 0 && secs > 0.0 {
            Some(secs * left as f64 / self.records_done as f64)
        } else {
            None
        };
        serde_json::json!({
            "state": self.state.name(),
            "runs": self.runs,
            "started_unix_ms": self.started_unix_ms,
            "finished_unix_ms": self.finished_unix_ms,
            "records_total": self.records_total,
            "records_done": self.records_done,
            "bytes_done": self.bytes_done,
            "bytes_per_second": rate,
            "eta_seconds": eta,
            "repaired": self.repaired,
            "errors": self.errors,
        })
    }
}

/// Answers `Scrub`: starts or cancels it, then the status.
pub(super) fn scrub_request(srv: &Srv, conn: &Conn, rid: u64, action: crate::protocol::ScrubAction) {
    use crate::protocol::ScrubAction;
    let res = match action {
        ScrubAction::Status => Ok(()),
        ScrubAction::Cancel => {
            srv.scrub.cancel();
            Ok(())
        }
        ScrubAction::Start => match srv.scrub.start(srv.log.clone(), (srv.cfg.scrub.rate, srv.cfg.scrub.busy_rate)) {
            Ok(_) => Ok(()),
            Err(e) => Err((codes::IO, format!("starting the scrub thread: {e}"))),
        },
    };
    role_change_answer(srv, conn, rid, Op::Scrub, res);
}

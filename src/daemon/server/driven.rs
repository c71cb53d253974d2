//! The server driven from outside: by a caller that owns the executor, the
//! streams and the clock. The simulator (`tools/sim --wire`) runs the
//! daemon's real connection, dispatch, append, idempotence and ack code
//! this way, over simulated wires, devices and time, on one thread.
//!
//! What differs from `serve` is only what `serve` owns: the sockets and
//! listeners (here the caller hands in a `Stream` per connection), signals
//! (`begin_drain`), the wait between turns (the caller runs other tasks
//! and moves the clock), and the blocking pool (its disk work runs inline,
//! so a seed replays exactly). The turn itself, the drain condition and
//! everything a connection does are the same functions.
//!
//! Use on a current-thread tokio runtime inside a `tokio::task::LocalSet`
//! (connections are local tasks); its clock may be paused
//! (`tokio::time::pause`): every timer of the server (frame timeout, ack
//! timeouts, drain deadline) reads tokio's clock.

use super::*;

/// A server whose loop the caller turns.
pub struct Driven {
    srv: Rc<Srv>,
}

impl Driven {
    /// A server of `log`'s journals, in the role `repl` holds.
    pub fn new(log: Arc<MirrorLog>, cfg: DaemonConfig, repl: Arc<ReplShared>) -> crate::Result<Driven> {
        Ok(Driven { srv: Srv::build(log, cfg, repl, true)? })
    }

    /// Serves a client on `s` (a task of the `LocalSet` this is called
    /// in), as an accepted socket is served.
    pub fn connect<S: Stream>(&self, s: S, peer: &str) {
        tokio::task::spawn_local(connection(self.srv.clone(), Rc::new(s), peer.to_string()));
    }

    /// One turn of the event loop's work (`Srv::turn`): returns how many
    /// batch writes finished. An error is the write driver's failure, on
    /// which the daemon exits.
    pub fn turn(&self) -> crate::Result<usize> {
        self.srv.turn()
    }

    /// What SIGTERM starts: no new connection or append is taken, and what
    /// was taken is answered.
    pub fn begin_drain(&self) {
        self.srv.begin_drain()
    }

    /// The drain is complete: every append taken was answered, and every
    /// connection flushed its answers and closed.
    pub fn drained(&self) -> bool {
        self.srv.drained()
    }

    /// Appends taken and not answered yet (every journal, both queues).
    pub fn waiting_acks(&self) -> usize {
        self.srv.pending_acks()
    }

    /// Connections open.
    pub fn connections(&self) -> u64 {
        self.srv.m.connections.get()
    }
}

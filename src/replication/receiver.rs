//! The replica's side: a thread that listens on the replication address,
//! takes one primary's session at a time, and applies what it ships with
//! its own `Driver`, acking received and durable LSNs per journal.
//!
//! It also answers a primary while this node is primary: a peer with a
//! higher epoch makes this node step down (the server loop fails the
//! appends waiting and stops taking new ones) and the session goes on with
//! this node as its replica; a lower or equal epoch is refused. A node
//! waiting for its peer at start follows a higher epoch at once.
//!
//! What a session does to the journals, and its invariants, are in
//! `replica_session` (sans-IO); this file holds the socket and the thread.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::replica_session::{answer_hello, ReplicaSession};
use super::role::HelloAnswer;
use super::wire::Msg;
use super::{configure, max_body, Change, FrameConn, ReplShared, Role};
use crate::clock::{Clock, Mono};
use crate::MirrorLog;

pub struct Receiver {
    pub log: Arc<MirrorLog>,
    pub shared: Arc<ReplShared>,
    pub listener: TcpListener,
}

impl Receiver {
    pub fn run(self) {
        if let Err(e) = self.listener.set_nonblocking(true) {
            tracing::error!(error = %e, "replication listener");
            return;
        }
        while !self.shared.stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok((s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    if let Err(e) = configure(&s, self.shared.cfg.socket_buffer) {
                        tracing::warn!(error = %e, "replication socket options");
                    }
                    let r = self.session(s);
                    // `connected` first: once `applying` is false a promotion
                    // may finish and its sender set `connected` for its own
                    // session, which this must not overwrite.
                    if !self.shared.role().ships() {
                        self.shared.connected.store(false, Ordering::Release);
                    }
                    self.shared.applying.store(false, Ordering::Release);
                    match r {
                        Ok(()) => tracing::info!(peer = %peer, "replication session closed"),
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "replication session ended");
                            self.shared.error(&e);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replication accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn session(&self, s: TcpStream) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let (_, _, _, batch_buf) = self.log.geometry();
        let mut c = FrameConn::new(s, max_body(batch_buf));
        let h = match c.recv(self.shared.cfg.peer_timeout).map_err(io)? {
            Msg::Hello(h) => h,
            other => return Err(format!("expected hello, got {other:?}")),
        };
        let mine = self.log.epoch();
        self.shared.saw_epoch(h.epoch);
        let refuse = |c: &mut FrameConn, message: String| -> Result<(), String> {
            let _ = c.send(&Msg::Refused { message: message.clone() });
            Err(message)
        };
        let answer = match answer_hello(&self.log, self.shared.role(), &h) {
            Ok(a) => a,
            Err(message) => return refuse(&mut c, message),
        };
        let fenced = |c: &mut FrameConn, epoch: u64| -> Result<(), String> {
            let _ = c.send(&Msg::Fenced {
                epoch,
                message: format!("this node ({}) is at epoch {epoch}, newer than {}", self.shared.cfg.name, h.epoch),
            });
            Err(format!("refused {} at epoch {}: this node is at epoch {epoch}", h.name, h.epoch))
        };
        match answer {
            HelloAnswer::Fenced(epoch) => return fenced(&mut c, epoch),
            HelloAnswer::SplitBrain => {
                return refuse(
                    &mut c,
                    format!("split brain: both nodes are primary at epoch {mine}; demote one (mirrorlog demote)"),
                );
            }
            HelloAnswer::Busy => return refuse(&mut c, "this node is changing role; try again".into()),
            HelloAnswer::Accept { change: Some(Change::Fence) } => {
                tracing::error!(peer = %h.name, epoch = h.epoch, mine, "a newer primary exists: stepping down to replica");
                let _ = self.shared.change(Change::Fence);
                // The server loop fails waiting appends and lets writes finish.
                let deadline = Instant::now() + Duration::from_secs(30);
                while self.shared.role() != Role::Replica {
                    if Instant::now() > deadline {
                        return Err("stepping down did not finish in time".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            HelloAnswer::Accept { change: Some(c2) } => {
                // A newer primary while this node waited at start: follow it.
                // It took no appends while waiting, so there is nothing to
                // step down from.
                if self.shared.change(c2).is_err() {
                    return refuse(&mut c, "this node is changing role; try again".into());
                }
            }
            HelloAnswer::Accept { change: None } => {}
        }
        c.send(&Msg::HelloOk { epoch: mine.max(h.epoch), name: self.shared.cfg.name.clone() }).map_err(io)?;
        if h.probe {
            return Ok(());
        }
        self.shared.applying.store(true, Ordering::Release);
        *self.shared.peer_name.lock() = h.name.clone();
        self.shared.connected.store(true, Ordering::Release);
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(primary = %h.name, epoch = h.epoch, history = %h.history, "replicating from primary");
        let mut st = ReplicaSession::new(self.log.clone(), self.shared.clone(), &h, Mono.now_ms())?;
        let res = self.serve(&mut c, &mut st);
        if let Some(m) = st.finish(&res) {
            let _ = c.send(&m);
        }
        res
    }

    fn serve(&self, c: &mut FrameConn, st: &mut ReplicaSession) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let fd = c.stream.as_raw_fd();
        let mut out = Vec::new();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.shared.role() != Role::Replica {
                return Err(format!("no longer a replica ({})", self.shared.role().name()));
            }
            // Handle every whole frame buffered.
            let mut any = false;
            while let Some(m) = c.try_decoded().map_err(io)? {
                any = true;
                if let Some(reply) = st.handle(m)? {
                    c.send(&reply).map_err(io)?;
                }
            }
            if any {
                // Once per turn, after the frames were handled.
                st.heard(Mono.now_ms());
            }
            // One listing per turn: journals change only in `handle`, above.
            let js = self.log.journals();
            st.pump(&js, false)?;
            // Ack what moved (and every journal, as a heartbeat, when due).
            out.clear();
            let now = Mono.now_ms();
            let acks = st.acks(now);
            if !acks.is_empty() {
                Msg::Acks(acks).encode(&mut out);
                c.send_raw(&out).map_err(io)?;
            }
            if any {
                continue;
            }
            if st.peer_silent(now) {
                return Err("no frame from the primary in time".into());
            }
            // Wait for the socket, or for a write to finish.
            let wait_ms = if st.in_flight() > 0 { 0 } else { 50 };
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            if st.in_flight() > 0 {
                // Writes in flight: block in the ring for one, unless input is ready.
                // SAFETY: one pollfd on our own socket, zero timeout.
                let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
                if ready <= 0 {
                    st.pump(&js, true)?;
                    continue;
                }
            } else {
                // SAFETY: as above, with a short timeout.
                unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            }
            c.set_timeout(Duration::from_millis(1)).map_err(io)?;
            c.fill().map_err(io)?;
        }
    }
}

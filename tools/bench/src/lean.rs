//! `--endpoint … --lean`: a lean load generator for a running daemon. One
//! thread, one epoll set, non-blocking sockets, each connection closed loop
//! with its own producer id and sequence (so the daemon does the same
//! idempotence work as for the real client). It exists because on a small
//! machine the load generator shares the CPUs with the daemon: the real
//! client library (tokio tasks, a oneshot and a permit per request, resend
//! bookkeeping) costs more per request than what it measures. It has no
//! failover and no resends: a lost connection ends the run with an error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mirrorlog::client::{Client, ClientConfig};
use mirrorlog::frames::FrameBuf;
use mirrorlog::protocol::{Durability, Op, Request, Response, VERSION};

use crate::load::{payload, run_workers, Lat, Load, Progress, Sizes};
use crate::report::Report;

struct Conn {
    s: TcpStream,
    id: usize,
    producer: u64,
    seq: u64,
    rid: u64,
    sent_at: Instant,
    payload: Vec<u8>,
    frame: Vec<u8>,
    rbuf: FrameBuf,
    /// An append answered with an error is resent (same sequence) then.
    retry_at: Option<Instant>,
}

pub struct LeanOpts<'a> {
    pub endpoint: &'a str,
    pub journal: &'a str,
    pub durability: Durability,
    pub record_size: Sizes,
    pub ack_log: Option<&'a crate::load::AckLog>,
}

const MAX_FRAME: u32 = 64 << 20;

/// Connects and says Hello (blocking; connection 0 also creates the
/// journal), then makes the socket non-blocking.
fn connect(endpoint: &str, id: usize, journal: &str) -> Result<Conn, String> {
    let mut s = TcpStream::connect(endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rbuf = FrameBuf::new(MAX_FRAME);
    let hello = Request::Hello { min_version: VERSION, max_version: VERSION, client: "mirrorlog-bench-lean" };
    round_trip(&mut s, &mut rbuf, hello, Op::Hello, |r| match r {
        Response::Hello { primary: true, .. } => Ok(()),
        Response::Hello { .. } => Err(format!("{endpoint} is not a primary")),
        _ => Err("no Hello answer".into()),
    })?;
    if id == 0 {
        round_trip(&mut s, &mut rbuf, Request::CreateJournal { journal }, Op::CreateJournal, |r| match r {
            Response::Error { code: 8, .. } => Ok(()), // journal-exists
            Response::Error { code, message } => Err(format!("create {journal}: {code}: {message}")),
            _ => Ok(()),
        })?;
    }
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let producer = rand::random::<u64>() | 1; // 0 means "no producer"
    Ok(Conn {
        s,
        id,
        producer,
        seq: 1,
        rid: 10,
        sent_at: Instant::now(),
        payload: Vec::new(),
        frame: Vec::new(),
        rbuf,
        retry_at: None,
    })
}

/// One blocking request and its answer, judged by `check`.
fn round_trip(
    s: &mut TcpStream,
    rbuf: &mut FrameBuf,
    req: Request<'_>,
    op: Op,
    check: impl FnOnce(Response<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut out = Vec::new();
    req.encode(1, &mut out);
    s.write_all(&out).map_err(|e| e.to_string())?;
    loop {
        if let Some(f) = rbuf.next_frame().map_err(|e| e.to_string())? {
            return check(Response::decode(&f, op).map_err(|e| e.to_string())?);
        }
        if rbuf.fill_with(4096, |room| s.read(room)).map_err(|e| e.to_string())? == 0 {
            return Err("the daemon closed the connection".into());
        }
    }
}

impl Conn {
    /// Encodes and sends the next append (one request outstanding per
    /// connection, so the socket's send buffer is normally empty).
    fn send_next(&mut self, o: &LeanOpts<'_>, p: &Progress) -> Result<(), String> {
        self.payload.resize(o.record_size.of(self.id, self.seq), 0);
        payload(&mut self.payload, self.id, self.seq);
        self.frame.clear();
        self.rid += 1;
        Request::Append {
            journal: o.journal,
            durability: o.durability,
            producer: self.producer,
            first_seq: self.seq,
            // A retry after an error answer (replica-timeout: written here)
            // may find it written: the daemon answers with the original.
            resend: self.retry_at.is_some(),
            writer: None,
            records: vec![&self.payload],
        }
        .encode(self.rid, &mut self.frame);
        self.sent_at = Instant::now();
        let mut off = 0;
        while off < self.frame.len() {
            match self.s.write(&self.frame[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !p.stopped() => std::thread::yield_now(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

pub fn run_lean(load: &Load, o: &LeanOpts<'_>, label: String) -> Result<Report, String> {
    if load.rate.is_some() {
        return Err("--lean is closed loop only (no --rate)".into());
    }
    let mut conns = Vec::with_capacity(load.clients);
    for id in 0..load.clients.max(1) {
        conns.push(connect(o.endpoint, id, o.journal)?);
    }
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own (closed on every return).
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for (i, c) in conns.iter().enumerate() {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // SAFETY: registering our own socket with our own epoll set.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, c.s.as_raw_fd(), &mut ev) } < 0 {
            return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
    }
    // Space is kept by a real client on its own thread (its own connection).
    let keeper = if o.ack_log.is_none() {
        let rt = crate::remote::runtime()?;
        let c = rt.block_on(Client::connect(ClientConfig::new([o.endpoint.to_string()]))).map_err(|e| e.to_string())?;
        Some((rt, c))
    } else {
        None
    };
    let keeper = parking_lot::Mutex::new(keeper);
    let conns = parking_lot::Mutex::new(conns);
    let report = run_workers(label, 2, load, o.record_size.mean(), |w, p| {
        if w == 1 {
            if let Some((rt, c)) = keeper.lock().take() {
                rt.block_on(crate::remote::keep_space(&c, o.journal, p));
            }
            return crate::report::new_hist();
        }
        let mut conns = conns.lock();
        let mut lat = Lat::new();
        if let Err(e) = drive(&mut conns, ep.as_raw_fd(), load, o, p, &mut lat) {
            p.error(e);
            p.halt();
        }
        // Appends still unanswered at the stop are not counted (nor logged).
        lat.all
    });
    if let Some(a) = o.ack_log {
        a.flush().map_err(|e| format!("ack log: {e}"))?;
    }
    Ok(report)
}

/// The load loop: every connection closed loop until the run stops. An
/// error answer to an append is counted and the append retried (same
/// sequence) after 1 ms; anything else unexpected ends the run.
fn drive(
    conns: &mut [Conn],
    ep: i32,
    load: &Load,
    o: &LeanOpts<'_>,
    p: &Progress,
    lat: &mut Lat,
) -> Result<(), String> {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    for c in conns.iter_mut() {
        c.send_next(o, p)?;
    }
    let mut retries = 0usize;
    while !p.stopped() {
        if retries > 0 {
            let now = Instant::now();
            for c in conns.iter_mut() {
                if c.retry_at.is_some_and(|t| t <= now) {
                    retries -= 1;
                    c.send_next(o, p)?;
                    c.retry_at = None;
                }
            }
        }
        let timeout = if load.poll {
            0
        } else if retries > 0 {
            1
        } else {
            100
        };
        // SAFETY: events is a valid buffer of events.len() entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            let c = &mut conns[ev.u64 as usize];
            let fd = c.s.as_raw_fd();
            let r = c.rbuf.append_with(4096, |b| {
                let spare = b.spare_capacity_mut();
                // SAFETY: recv into the vector's allocated, unused capacity.
                let r =
                    unsafe { libc::recv(fd, spare.as_mut_ptr() as *mut libc::c_void, spare.len(), libc::MSG_DONTWAIT) };
                if r > 0 {
                    // SAFETY: the kernel initialised r more bytes.
                    unsafe { b.set_len(b.len() + r as usize) };
                }
                Ok::<isize, ()>(r)
            });
            let r = r.unwrap_or(-1);
            if r == 0 {
                return Err("the daemon closed a connection".into());
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(format!("recv: {e}"));
            }
            let mut answered = false;
            while let Some(f) = c.rbuf.next_frame().map_err(|e| e.to_string())? {
                if f.request_id != c.rid {
                    return Err(format!("an answer to request {} on a connection waiting for {}", f.request_id, c.rid));
                }
                match Response::decode(&f, Op::Append).map_err(|e| e.to_string())? {
                    Response::Appended { first_lsn, .. } => {
                        lat.record(p, c.sent_at);
                        p.acked(1);
                        if let Some(a) = o.ack_log {
                            a.ack(first_lsn, c.id, c.seq, &c.payload);
                        }
                        c.seq += 1;
                        answered = true;
                    }
                    Response::Error { code, message } => {
                        p.error(format!("{code}: {message}"));
                        c.retry_at = Some(Instant::now() + Duration::from_millis(1));
                        retries += 1;
                    }
                    _ => return Err("an unexpected answer to an append".into()),
                }
            }
            if answered && !p.stopped() {
                c.send_next(o, p)?;
            }
        }
    }
    Ok(())
}

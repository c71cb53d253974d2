//! A client connection: its socket (io_uring or epoll), the frames read
//! from it, the answers written to it, and back-pressure (a connection
//! whose answers or appends in flight pass `max_inflight_bytes` is not read).

use super::*;
use crate::frames::FrameBuf;

/// A stream's `try_send`, kept by its connection.
pub(super) type DirectSend = Box<dyn Fn(&[u8]) -> std::io::Result<usize>>;

/// A client connection's shared state (its reader and writer tasks, and
/// the acks and subscriptions that answer it).
pub(super) struct Conn {
    pub(super) out: RefCell<Vec<u8>>,
    pub(super) out_ready: Notify,
    /// Acks or output drained: the reader may go on.
    pub(super) progress: Notify,
    /// Bytes of appends waiting for durability.
    pub(super) inflight: Cell<usize>,
    /// The socket failed or the connection ended: stop sending.
    pub(super) gone: Cell<bool>,
    /// The reader finished; the writer exits once `out` is empty.
    pub(super) done: Cell<bool>,
    pub(super) subs: RefCell<HashMap<u64, Rc<Sub>>>,
    /// The stream's non-blocking send (`Stream::try_send`), for `flush`.
    direct: DirectSend,
    /// The writer task has a write in progress: direct sends must wait, so
    /// bytes stay in order.
    pub(super) writing: Cell<bool>,
    /// An append of this connection was refused for the node's role
    /// (`not-primary`, `fenced`). Every later append of it is refused too:
    /// the client fails over and resends the refused one with its original
    /// sequence, which a later append taken here (after an undone demote)
    /// would have overtaken, making the resend `sequence-unknown`.
    pub(super) role_refused: Cell<bool>,
}

impl Conn {
    pub(super) fn new(direct: DirectSend) -> Rc<Conn> {
        Rc::new(Conn {
            direct,
            writing: Cell::new(false),
            role_refused: Cell::new(false),
            out: RefCell::new(Vec::with_capacity(16 << 10)),
            out_ready: Notify::new(),
            progress: Notify::new(),
            inflight: Cell::new(0),
            gone: Cell::new(false),
            done: Cell::new(false),
            subs: RefCell::new(HashMap::new()),
        })
    }

    pub(super) fn send(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.gone.get() {
            return;
        }
        f(&mut self.out.borrow_mut());
        self.flush();
    }

    /// Sends what is queued straight from this task with a non-blocking
    /// send(2), and leaves only what the socket would not take to the
    /// writer task. (Waking the writer task for every response cost ~70 µs
    /// per round trip on an idle loop here; docs/benchmarks.md.)
    pub(super) fn flush(&self) {
        if self.writing.get() || self.gone.get() {
            if !self.gone.get() {
                self.out_ready.notify_one();
            }
            return;
        }
        let mut out = self.out.borrow_mut();
        let sent = match (self.direct)(&out) {
            Ok(n) => n,
            Err(_) => {
                self.gone.set(true);
                out.clear();
                self.progress.notify_one();
                return;
            }
        };
        out.drain(..sent);
        if !out.is_empty() {
            self.out_ready.notify_one();
        } else if sent > 0 {
            self.progress.notify_one();
        }
    }

    pub(super) fn out_len(&self) -> usize {
        self.out.borrow().len()
    }
}

pub(super) fn proto_err(out: &mut Vec<u8>, rid: u64, e: &ProtoError) {
    Response::Error { code: e.code(), message: &e.to_string() }.encode(Op::Error, rid, out);
}

pub(super) fn err_frame(out: &mut Vec<u8>, rid: u64, code: u16, msg: &str) {
    Response::Error { code, message: msg }.encode(Op::Error, rid, out);
}

/// A client connection's byte stream: TCP and Unix sockets (io_uring or
/// epoll), or the simulator's wire (`daemon::Driven`). The network seam:
/// the connection code above it runs unchanged on each.
#[allow(async_fn_in_trait)] // One thread: no `Send` bound wanted.
pub trait Stream: 'static {
    /// Reads into `buf` from `at` (its length); `Ok(0)` at end of stream.
    async fn read_into(&self, buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>);
    async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>);
    /// Sends what the stream takes now without waiting (0 if none).
    fn try_send(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// Ends both directions: a read left pending completes, the peer sees
    /// EOF after what was sent.
    fn close(&self);
}

/// `try_send` and `close` of a socket: the same for io_uring and epoll.
macro_rules! fd_sends {
    () => {
        fn try_send(&self, buf: &[u8]) -> std::io::Result<usize> {
            crate::io::send_nonblocking(self.as_raw_fd(), buf)
        }
        fn close(&self) {
            graceful_close(self.as_raw_fd());
        }
    };
}

macro_rules! impl_stream {
    ($t:ty) => {
        impl Stream for $t {
            async fn read_into(&self, buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
                use tokio_uring::buf::BoundedBuf;
                let (r, s) = self.read(buf.slice(at..)).await;
                (r, s.into_inner())
            }
            async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
                self.write_all(buf).await
            }
            fd_sends!();
        }
    };
}
impl_stream!(tokio_uring::net::TcpStream);

/// Ends a connection so that what was sent still arrives: FIN after the
/// queued bytes, then input still unread is discarded (closing with unread
/// input would make the kernel send a reset, which can destroy answers the
/// peer has not read yet), then both directions are shut, which also ends
/// a read pending in io_uring. The descriptor itself is closed on drop.
pub(super) fn graceful_close(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown(2) and recv(2) on our own socket, into a local buffer.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
        let mut junk = [0u8; 4096];
        for _ in 0..256 {
            if libc::recv(fd, junk.as_mut_ptr() as *mut libc::c_void, junk.len(), libc::MSG_DONTWAIT) <= 0 {
                break;
            }
        }
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// The same for readiness-based (epoll) sockets, which tokio-uring's
/// runtime also drives (`server.network = "epoll"`).
macro_rules! impl_stream_epoll {
    ($t:ty) => {
        impl Stream for $t {
            async fn read_into(&self, mut buf: Vec<u8>, at: usize) -> (std::io::Result<usize>, Vec<u8>) {
                debug_assert_eq!(buf.len(), at);
                loop {
                    if let Err(e) = self.readable().await {
                        return (Err(e), buf);
                    }
                    match crate::sockread::read_draining(self, &mut buf) {
                        Ok(n) => return (Ok(n), buf),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return (Err(e), buf),
                    }
                }
            }
            async fn write_all_buf(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
                let mut off = 0;
                while off < buf.len() {
                    if let Err(e) = self.writable().await {
                        return (Err(e), buf);
                    }
                    match self.try_write(&buf[off..]) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return (Err(e), buf),
                    }
                }
                (Ok(()), buf)
            }
            fd_sends!();
        }
    };
}
impl_stream_epoll!(tokio::net::TcpStream);
impl_stream_epoll!(tokio::net::UnixStream);

pub(super) async fn connection<S: Stream>(srv: Rc<Srv>, s: Rc<S>, peer: String) {
    use tracing::Instrument;
    let span = tracing::info_span!("conn", peer = %peer);
    connection_in_span(srv, s).instrument(span).await
}

/// (A span entered with `enter()` across awaits leaks into other tasks:
/// `instrument` enters it only while this task runs.)
pub(super) async fn connection_in_span<S: Stream>(srv: Rc<Srv>, s: Rc<S>) {
    if srv.m.connections.get() as usize >= srv.cfg.limits.max_connections || srv.draining.get() {
        srv.m.connections_rejected.set(srv.m.connections_rejected.get() + 1);
        let (code, msg) = if srv.draining.get() {
            (codes::SHUTTING_DOWN, "the daemon is shutting down".to_string())
        } else {
            (codes::TOO_MANY_CONNECTIONS, format!("at the connection limit ({})", srv.cfg.limits.max_connections))
        };
        srv.m.error(code);
        let mut out = Vec::new();
        err_frame(&mut out, 0, code, &msg);
        let _ = s.write_all_buf(out).await;
        s.close();
        tracing::debug!(code, "connection refused");
        return;
    }
    srv.m.connections.set(srv.m.connections.get() + 1);
    srv.m.connections_total.set(srv.m.connections_total.get() + 1);
    tracing::debug!("connected");
    let conn = {
        let s = s.clone();
        Conn::new(Box::new(move |b| s.try_send(b)))
    };
    let writer = {
        let (conn, s) = (conn.clone(), s.clone());
        tokio_uring::spawn(async move {
            let mut spare = Vec::with_capacity(16 << 10);
            loop {
                let data = {
                    let mut o = conn.out.borrow_mut();
                    if o.is_empty() {
                        None
                    } else {
                        Some(std::mem::replace(&mut *o, std::mem::take(&mut spare)))
                    }
                };
                match data {
                    None if conn.done.get() || conn.gone.get() => break,
                    None => conn.out_ready.notified().await,
                    Some(d) => {
                        conn.writing.set(true);
                        let (r, mut d) = s.write_all_buf(d).await;
                        conn.writing.set(false);
                        if r.is_err() {
                            conn.gone.set(true);
                            conn.out.borrow_mut().clear();
                            conn.progress.notify_one();
                            break;
                        }
                        d.clear();
                        if d.capacity() <= 1 << 20 {
                            spare = d;
                        }
                        conn.progress.notify_one();
                    }
                }
            }
        })
    };
    let why = read_loop(&srv, &conn, &*s).await;
    tracing::debug!(why, "reader done");
    // Answer what was taken before closing (acks come as writes finish).
    while conn.inflight.get() > 0 && !conn.gone.get() {
        conn.progress.notified().await;
    }
    conn.subs.borrow_mut().clear();
    conn.done.set(true);
    conn.out_ready.notify_one();
    let _ = writer.await;
    // Invariant: nothing sends on this connection's descriptor once it is
    // closed (the number may be reused by the next accepted socket): every
    // send checks `gone` first, and tasks that outlive this one (a
    // subscription's read in flight) see it.
    conn.gone.set(true);
    s.close();
    srv.m.connections.set(srv.m.connections.get().saturating_sub(1));
}

/// Reads and handles frames until the connection ends; returns why.
pub(super) async fn read_loop<S: Stream>(srv: &Rc<Srv>, conn: &Rc<Conn>, s: &S) -> &'static str {
    let lim = &srv.cfg.limits;
    let max_frame = lim.max_frame_bytes as u32;
    let max_inflight = lim.max_inflight_bytes as usize;
    let mut fb = FrameBuf::new(max_frame);
    let mut partial_since: Option<Instant> = None;
    loop {
        // Back-pressure: do not read more while too much is waiting.
        let waited_from = Instant::now();
        while (conn.inflight.get() > max_inflight || conn.out_len() > max_inflight) && !conn.gone.get() {
            srv.kick.notify_one();
            conn.progress.notified().await;
        }
        if let Some(t) = partial_since {
            // Time the daemon itself held the connection back does not count.
            partial_since = Some(t + waited_from.elapsed());
        }
        if conn.gone.get() {
            return "socket error";
        }
        if srv.draining.get() {
            return "draining";
        }
        let buf = fb.take(16 << 10);
        let at = buf.len();
        let timeout = match partial_since {
            Some(t) => lim.frame_timeout.saturating_sub(t.elapsed()),
            None => Duration::from_secs(365 * 24 * 3600),
        };
        let read = if partial_since.is_some() {
            tokio::select! {
                biased;
                r = tokio::time::timeout(timeout, s.read_into(buf, at)) => r,
                _ = srv.drain.notified() => return "draining",
            }
        } else {
            tokio::select! {
                biased;
                r = s.read_into(buf, at) => Ok(r),
                _ = srv.drain.notified() => return "draining",
            }
        };
        let (res, b) = match read {
            Ok(r) => r,
            Err(_) => {
                srv.m.error(codes::FRAME_TIMEOUT);
                conn.send(|o| {
                    err_frame(
                        o,
                        0,
                        codes::FRAME_TIMEOUT,
                        &format!("frame not completed within {:?}", lim.frame_timeout),
                    )
                });
                return "frame timeout";
            }
        };
        fb.restore(b);
        match res {
            Ok(0) => return "closed by peer",
            Ok(_) => {}
            Err(_) => return "read error",
        }
        // Handle every complete frame in the buffer.
        let mut handled = false;
        loop {
            let frame = match fb.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    srv.m.error(e.code());
                    tracing::info!(error = %e, "bad frame: closing the connection");
                    conn.send(|o| proto_err(o, 0, &e));
                    return "bad frame";
                }
            };
            handled = true;
            handle(srv, conn, &frame).await;
            // Back-pressure between frames too: many small requests in one
            // read must not pile up unbounded answers.
            while (conn.inflight.get() > max_inflight || conn.out_len() > max_inflight) && !conn.gone.get() {
                srv.kick.notify_one();
                conn.progress.notified().await;
            }
        }
        // The frame clock runs from when the current partial frame began:
        // progress (a frame handled) or an empty buffer restarts it.
        partial_since = if fb.pending() == 0 {
            None
        } else if handled {
            Some(Instant::now())
        } else {
            partial_since.or(Some(Instant::now()))
        };
        // Let the pump write what formed (it runs after the other ready connections).
        srv.activity.set(srv.activity.get().wrapping_add(1));
        srv.kick.notify_one();
    }
}

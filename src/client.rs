//! The Rust client for `mirrorlogd` (`mirrorlog::client`): async on tokio,
//! with a blocking wrapper (`BlockingClient`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), mirrorlog::client::ClientError> {
//! use mirrorlog::client::{Client, ClientConfig};
//! let c = Client::connect(ClientConfig::new(["10.0.0.1:7400", "10.1.0.1:7400"])).await?;
//! let lsn = c.append("default", b"hello").await?;
//! let (recs, _next) = c.read("default", lsn, 1, 1 << 20).await?;
//! assert_eq!(recs[0].payload, b"hello");
//! # Ok(()) }
//! ```
//!
//! Like ActiveMQ's failover transport, the client takes a list of endpoints,
//! connects to the first that answers as primary, and on a lost connection
//! (or a `not-primary`/`fenced`/`shutting-down` answer) reconnects with
//! backoff to whichever endpoint serves as primary, then resends every
//! request that was not answered, in order. Appends carry this client's
//! producer id and their original sequence numbers, so a resend of an
//! append that was written returns its original LSN instead of writing it
//! twice.
//!
//! Invariants:
//! * A request keeps its request id and (for appends) its sequence numbers
//!   for its whole life; both are given out under the client's lock in the
//!   order requests are put on the wire, so sequences only grow there.
//! * The hot path has no task hop: a request is sent by the calling task
//!   itself (a non-blocking send under the lock) unless the writer task is
//!   mid-write; the reader task answers it directly.
//! * Every frame received is checked (frame CRC, and each record's CRC32C)
//!   before anything in it is used.
//! * Bounded: at most `max_inflight` requests wait for an answer (callers
//!   wait for a slot), and each has a deadline (`request_timeout`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::frames::FrameBuf;
use crate::protocol::{
    codes, seal_frame, Durability, Op, ProtoError, Request, Response, DEFAULT_MAX_BODY, HEADER_LEN, VERSION,
};

/// An error from the client: a numbered code (the daemon's, or `timeout`
/// and `unavailable` from the client itself) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error {code} {name})", name = codes::name(*.code))]
pub struct ClientError {
    pub code: u16,
    pub message: String,
}

impl ClientError {
    fn new(code: u16, message: impl Into<String>) -> ClientError {
        ClientError { code, message: message.into() }
    }
    fn proto(e: &ProtoError) -> ClientError {
        ClientError::new(e.code(), e.to_string())
    }
    /// The stable name of the code.
    pub fn name(&self) -> &'static str {
        codes::name(self.code)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Client settings. `ClientConfig::new(endpoints)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` of each appliance, tried in order.
    pub endpoints: Vec<String>,
    /// Per attempt to connect to one endpoint.
    pub connect_timeout: Duration,
    /// How long a request may wait for its answer, resends included.
    pub request_timeout: Duration,
    /// Requests waiting for an answer at once.
    pub max_inflight: usize,
    /// First and largest wait between rounds of reconnect attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The producer id of appends (random if `None`); 0 turns idempotence off.
    pub producer: Option<u64>,
    /// The first sequence number of this client's appends to each journal
    /// (sequences are per journal; default: 1 for a random producer; for a
    /// fixed one, the clock in microseconds). A fixed producer id must
    /// continue above its earlier sequences.
    pub first_sequence: Option<u64>,
    /// Name sent in Hello.
    pub client_name: String,
    /// Largest frame body accepted from a server (its `limits.max_frame_bytes`
    /// plus one record may exceed the protocol default).
    pub max_frame: u32,
    /// Connect to the first endpoint that answers, primary or not (a
    /// replica serves reads, subscriptions, marks and the journal list up
    /// to what it holds durably: the DR copy). Appends there are refused
    /// with `not-primary`. Default false: only a primary.
    pub any_role: bool,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            max_inflight: 1024,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            producer: None,
            first_sequence: None,
            client_name: format!("mirrorlog-client/{}", env!("CARGO_PKG_VERSION")),
            max_frame: 1 << 30,
            any_role: false,
        }
    }
}

/// A record as read from the daemon (its CRC32C was checked on receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub epoch: u64,
    pub crc32c: u32,
    pub payload: Vec<u8>,
}

/// What the server said, owned.
#[derive(Debug)]
enum Reply {
    Hello { server: String, epoch: u64, primary: bool },
    Appended { first_lsn: u64 },
    Claimed { writer: u64, lsn: u64 },
    Records { records: Vec<Record>, next_lsn: u64 },
    Mark(u64),
    Journals(Vec<String>),
    Status(String),
    Ok,
}

fn owned(resp: Response<'_>) -> Result<Reply> {
    Ok(match resp {
        Response::Hello { server, epoch, primary, .. } => Reply::Hello { server: server.to_string(), epoch, primary },
        Response::Appended { first_lsn, .. } => Reply::Appended { first_lsn },
        Response::Claimed { writer, lsn } => Reply::Claimed { writer, lsn },
        Response::Records { records, next_lsn } => {
            let mut out = Vec::with_capacity(records.len());
            for r in records {
                if crc32c::crc32c(r.payload) != r.crc32c {
                    return Err(ClientError::new(14, format!("record {} failed its CRC32C on receipt", r.lsn)));
                }
                out.push(Record { lsn: r.lsn, epoch: r.epoch, crc32c: r.crc32c, payload: r.payload.to_vec() });
            }
            Reply::Records { records: out, next_lsn }
        }
        Response::Mark { lsn } => Reply::Mark(lsn),
        Response::Journals { names } => Reply::Journals(names.iter().map(|s| s.to_string()).collect()),
        Response::Status { json } => Reply::Status(json.to_string()),
        Response::Ok => Reply::Ok,
        Response::Error { code, message } => return Err(ClientError::new(code, message)),
    })
}

#[derive(Debug, Clone, Copy)]
struct SeqAt {
    /// The durability byte (just after the journal name).
    dur: usize,
    /// The first sequence number.
    seq: usize,
    count: u64,
}

struct Cmd {
    op: Op,
    /// The encoded frame with request id 0 (and sequence 0 for appends).
    frame: Vec<u8>,
    /// Where an append's durability byte and first sequence number are in
    /// `frame`, and how many records it holds.
    seq_at: Option<SeqAt>,
    reply: Reply_,
    /// A request slot (none for Credit, which nothing answers).
    permit: Option<OwnedSemaphorePermit>,
}

enum Reply_ {
    Once(oneshot::Sender<Result<Reply>>),
    /// A subscription: its records, and its request id once given.
    Stream(mpsc::UnboundedSender<Result<Reply>>, Arc<AtomicU64>),
    /// No answer expected (Credit).
    None,
}

struct Pending {
    op: Op,
    frame: Vec<u8>,
    /// An append's durability byte in `frame` (its `RESEND` bit is set
    /// when the append goes out again).
    resend_at: Option<usize>,
    /// Its transmission on the current connection may have been taken.
    in_flight: bool,
    /// An earlier transmission may have been taken (written): it goes out
    /// again as a resend.
    maybe_written: bool,
    reply: Reply_,
    deadline: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Sets a frame's request id and (optionally) an append's first sequence,
/// then seals it (its CRC is computed once, here).
fn patch(frame: &mut [u8], rid: u64, seq: Option<(usize, u64)>) {
    frame[4..12].copy_from_slice(&rid.to_le_bytes());
    if let Some((at, s)) = seq {
        frame[at..at + 8].copy_from_slice(&s.to_le_bytes());
    }
    seal_frame(frame);
}

/// A connection (with failover) to mirrorlog appliances. Cheap to clone;
/// use from many tasks at once: requests pipeline on one connection.
#[derive(Clone)]
pub struct Client {
    h: Arc<Handle>,
    slots: Arc<Semaphore>,
    info: Arc<parking_lot::Mutex<(String, String, u64)>>,
    producer: u64,
    timeout: Duration,
}

/// Shared by the client handles and the connection tasks; dropping the last
/// `Client` ends the connection once every request is answered.
struct Handle {
    sh: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.sh.st.lock().closed = true;
        self.sh.wake_super.notify_one();
    }
}

struct Shared {
    st: parking_lot::Mutex<State>,
    wake_super: Notify,
}

struct State {
    pending: BTreeMap<u64, Pending>,
    next_rid: u64,
    /// Per journal (by name), the next sequence of this client's appends.
    next_seq: std::collections::HashMap<Vec<u8>, u64>,
    /// Where a journal's sequences start.
    first_seq: u64,
    link: Option<Link>,
    closed: bool,
}

/// The current connection as the senders see it.
struct Link {
    gen: u64,
    stream: Arc<TcpStream>,
    /// Bytes queued for the writer task (the socket would not take them).
    out: Vec<u8>,
    /// The writer task is writing: queue behind it to keep bytes in order.
    writing: bool,
    wake_writer: Arc<Notify>,
}

impl Link {
    /// Sends `bytes` now if nothing is queued ahead of them (a non-blocking
    /// send from the calling task), queuing what the socket does not take.
    /// Returns false if the socket failed.
    fn send(&mut self, bytes: &[u8]) -> bool {
        let mut sent = 0;
        if !self.writing && self.out.is_empty() {
            match crate::io::send_nonblocking(self.stream.as_raw_fd(), bytes) {
                Ok(n) => sent = n,
                Err(_) => return false,
            }
        }
        if sent < bytes.len() {
            self.out.extend_from_slice(&bytes[sent..]);
            self.wake_writer.notify_one();
        }
        true
    }
}

impl Shared {
    /// Takes a new request: gives it its request id (and sequence numbers),
    /// remembers it until answered, and sends it if connected.
    fn submit(&self, cmd: Cmd, timeout: Duration) {
        let mut st = self.st.lock();
        let st = &mut *st;
        let rid = st.next_rid;
        st.next_rid += 1;
        let mut frame = cmd.frame;
        let seq = cmd.seq_at.map(|SeqAt { dur, seq: at, count }| {
            // Sequences are per journal (the journal name precedes the
            // durability byte in the frame).
            let journal = frame.get(HEADER_LEN + 2..dur).unwrap_or_default();
            let first = st.first_seq;
            let next = match st.next_seq.get_mut(journal) {
                Some(n) => n,
                None => st.next_seq.entry(journal.to_vec()).or_insert(first),
            };
            let s = *next;
            *next += count;
            (at, s)
        });
        if let Reply_::None = cmd.reply {
            // Credit names its subscription in the body; nothing answers it.
            patch(&mut frame, 0, None);
            if let Some(l) = st.link.as_mut() {
                if !l.send(&frame) {
                    drop_link(st);
                    self.wake_super.notify_one();
                }
            }
            return;
        }
        if let Reply_::Stream(_, cell) = &cmd.reply {
            cell.store(rid, Ordering::Release);
        }
        patch(&mut frame, rid, seq);
        let in_flight = st.link.is_some();
        if let Some(l) = st.link.as_mut() {
            if !l.send(&frame) {
                drop_link(st);
                self.wake_super.notify_one();
            }
        }
        st.pending.insert(
            rid,
            Pending {
                op: cmd.op,
                frame,
                resend_at: cmd.seq_at.map(|s| s.dur),
                in_flight,
                maybe_written: false,
                reply: cmd.reply,
                deadline: Instant::now() + timeout,
                _permit: cmd.permit,
            },
        );
    }
}

impl Client {
    /// Connects to the first endpoint that answers as primary (waiting up
    /// to `request_timeout` while none does) and starts the connection tasks.
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        if cfg.endpoints.is_empty() {
            return Err(ClientError::new(1, "no endpoints given"));
        }
        let producer = cfg.producer.unwrap_or_else(|| loop {
            let p = rand::random::<u64>();
            if p != 0 {
                break p;
            }
        });
        // A new (random) producer starts at 1: a daemon that does not know
        // it takes a resend of its first append (protocol.md). A fixed one
        // continues where the caller says, else from the clock (above its
        // earlier runs unless the clock stepped back; if it did, appends
        // fail with sequence-conflict, never take another record's LSN).
        let first_seq = match (cfg.producer, cfg.first_sequence) {
            (_, Some(s)) => s.max(1),
            (None, None) => 1,
            (Some(_), None) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1)
                .max(1),
        };
        let info = Arc::new(parking_lot::Mutex::new((String::new(), String::new(), 0)));
        let slots = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
        let deadline = Instant::now() + cfg.request_timeout;
        let mut first = None;
        let mut backoff = cfg.backoff_min;
        let mut last_err = ClientError::new(codes::UNAVAILABLE, "no endpoint answered");
        while first.is_none() {
            match connect_any(&cfg, 0).await {
                Ok(c) => first = Some(c),
                Err(e) => last_err = e,
            }
            if first.is_none() {
                if Instant::now() + backoff > deadline {
                    return Err(last_err);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
        let Some(first) = first else { return Err(last_err) };
        let sh = Arc::new(Shared {
            st: parking_lot::Mutex::new(State {
                pending: BTreeMap::new(),
                next_rid: 1,
                next_seq: std::collections::HashMap::new(),
                first_seq,
                link: None,
                closed: false,
            }),
            wake_super: Notify::new(),
        });
        let timeout = cfg.request_timeout;
        let mut sup = Supervisor { cfg, sh: sh.clone(), info: info.clone(), gen: 0 };
        sup.install(first);
        tokio::spawn(sup.run());
        Ok(Client { h: Arc::new(Handle { sh }), slots, info, producer, timeout })
    }

    /// This client's producer id (0: appends are not idempotent).
    pub fn producer(&self) -> u64 {
        self.producer
    }

    /// The endpoint, server name and epoch of the current connection.
    pub fn server(&self) -> (String, String, u64) {
        self.info.lock().clone()
    }

    /// Waits for one of the `max_inflight` request slots.
    async fn slot(&self) -> Result<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.map_err(|_| ClientError::new(codes::UNAVAILABLE, "client closed"))
    }

    async fn call(&self, op: Op, frame: Vec<u8>, seq_at: Option<SeqAt>) -> Result<Reply> {
        let permit = self.slot().await?;
        let (tx, rx) = oneshot::channel();
        self.h.sh.submit(Cmd { op, frame, seq_at, reply: Reply_::Once(tx), permit: Some(permit) }, self.timeout);
        rx.await.map_err(|_| ClientError::new(codes::UNAVAILABLE, "client closed"))?
    }

    /// Appends one record; returns its LSN once it is durable as the
    /// journal's default durability says.
    pub async fn append(&self, journal: &str, payload: &[u8]) -> Result<u64> {
        self.append_batch_with(journal, &[payload], Durability::Default).await
    }

    /// Appends records with consecutive LSNs, with a durability mode;
    /// returns the first LSN.
    pub async fn append_batch_with(&self, journal: &str, records: &[&[u8]], durability: Durability) -> Result<u64> {
        self.append_inner(journal, records, durability, None).await
    }

    /// `append_batch_with` by the writer that claimed the journal
    /// (`claim`): refused with `writer-fenced` (18) once another writer
    /// claimed it.
    pub async fn append_as(
        &self,
        journal: &str,
        records: &[&[u8]],
        durability: Durability,
        writer: u64,
    ) -> Result<u64> {
        self.append_inner(journal, records, durability, Some(writer)).await
    }

    async fn append_inner(
        &self,
        journal: &str,
        records: &[&[u8]],
        durability: Durability,
        writer: Option<u64>,
    ) -> Result<u64> {
        let req = Request::Append {
            journal,
            durability,
            producer: self.producer,
            first_seq: 0,
            resend: false,
            writer,
            records: records.to_vec(),
        };
        let mut frame =
            Vec::with_capacity(HEADER_LEN + 40 + journal.len() + records.iter().map(|r| r.len() + 4).sum::<usize>());
        req.encode_unsealed(0, &mut frame);
        let dur = HEADER_LEN + 2 + journal.len();
        let seq = dur + 1 + if writer.is_some() { 8 } else { 0 } + 8;
        let seq_at = (self.producer != 0).then_some(SeqAt { dur, seq, count: records.len() as u64 });
        match self.call(Op::Append, frame, seq_at).await? {
            Reply::Appended { first_lsn } => Ok(first_lsn),
            r => Err(unexpected(&r)),
        }
    }

    /// Reads up to `max_count` records (about `max_bytes`) from `from` (0:
    /// the first retained). Returns them and the LSN to read next.
    pub async fn read(&self, journal: &str, from: u64, max_count: u32, max_bytes: u32) -> Result<(Vec<Record>, u64)> {
        let mut frame = Vec::new();
        Request::Read { journal, from, max_count, max_bytes }.encode_unsealed(0, &mut frame);
        match self.call(Op::Read, frame, None).await? {
            Reply::Records { records, next_lsn } => Ok((records, next_lsn)),
            r => Err(unexpected(&r)),
        }
    }

    pub async fn set_mark(&self, journal: &str, lsn: u64) -> Result<()> {
        self.set_mark_inner(journal, lsn, None).await
    }

    /// `set_mark` by the journal's writer (`claim`).
    pub async fn set_mark_as(&self, journal: &str, lsn: u64, writer: u64) -> Result<()> {
        self.set_mark_inner(journal, lsn, Some(writer)).await
    }

    async fn set_mark_inner(&self, journal: &str, lsn: u64, writer: Option<u64>) -> Result<()> {
        let mut frame = Vec::new();
        Request::SetMark { journal, lsn, writer }.encode_unsealed(0, &mut frame);
        self.call(Op::SetMark, frame, None).await.map(|_| ())
    }

    /// Claims `journal` for this client as its one writer: every earlier
    /// writer is fenced (its appends and marks fail with `writer-fenced`).
    /// `payload` is appended as the claim's record. Returns the writer
    /// epoch to send with `append_as` and `set_mark_as`, and the claim
    /// record's LSN: every record of an earlier writer lies below it and
    /// is durable as `durability` says.
    pub async fn claim(&self, journal: &str, durability: Durability, payload: &[u8]) -> Result<(u64, u64)> {
        let mut frame = Vec::new();
        Request::Claim { journal, durability, payload }.encode_unsealed(0, &mut frame);
        match self.call(Op::Claim, frame, None).await? {
            Reply::Claimed { writer, lsn } => Ok((writer, lsn)),
            r => Err(unexpected(&r)),
        }
    }

    pub async fn get_mark(&self, journal: &str) -> Result<u64> {
        let mut frame = Vec::new();
        Request::GetMark { journal }.encode_unsealed(0, &mut frame);
        match self.call(Op::GetMark, frame, None).await? {
            Reply::Mark(l) => Ok(l),
            r => Err(unexpected(&r)),
        }
    }

    pub async fn create_journal(&self, journal: &str) -> Result<()> {
        let mut frame = Vec::new();
        Request::CreateJournal { journal }.encode_unsealed(0, &mut frame);
        self.call(Op::CreateJournal, frame, None).await.map(|_| ())
    }

    pub async fn delete_journal(&self, journal: &str) -> Result<()> {
        let mut frame = Vec::new();
        Request::DeleteJournal { journal }.encode_unsealed(0, &mut frame);
        self.call(Op::DeleteJournal, frame, None).await.map(|_| ())
    }

    pub async fn journals(&self) -> Result<Vec<String>> {
        let mut frame = Vec::new();
        Request::ListJournals.encode_unsealed(0, &mut frame);
        match self.call(Op::ListJournals, frame, None).await? {
            Reply::Journals(n) => Ok(n),
            r => Err(unexpected(&r)),
        }
    }

    /// The daemon's status as JSON text.
    pub async fn status(&self) -> Result<String> {
        let mut frame = Vec::new();
        Request::Status.encode_unsealed(0, &mut frame);
        match self.call(Op::Status, frame, None).await? {
            Reply::Status(s) => Ok(s),
            r => Err(unexpected(&r)),
        }
    }

    /// Streams records from `from` (0: the first retained) and follows the
    /// tail. `credit` bytes may be in flight to this subscriber at once.
    pub async fn subscribe(&self, journal: &str, from: u64, credit: u32) -> Result<Subscription> {
        let permit = self.slot().await?;
        // Unbounded, but the server sends at most `credit` bytes beyond
        // what this subscriber has consumed.
        let (tx, rx) = mpsc::unbounded_channel();
        let rid = Arc::new(AtomicU64::new(0));
        let mut frame = Vec::new();
        let credit = credit.max(64 << 10);
        Request::Subscribe { journal, from, credit_bytes: credit }.encode_unsealed(0, &mut frame);
        let cmd = Cmd {
            op: Op::Subscribe,
            frame,
            seq_at: None,
            reply: Reply_::Stream(tx, rid.clone()),
            permit: Some(permit),
        };
        // A subscription lives until its connection or subscriber ends.
        self.h.sh.submit(cmd, Duration::from_secs(365 * 24 * 3600));
        Ok(Subscription { rx, buf: std::collections::VecDeque::new(), rid, consumed: 0, credit, client: self.clone() })
    }
}

impl Subscription {
    /// Gives the server back the credit this subscriber consumed.
    fn grant(&mut self) {
        let rid = self.rid.load(Ordering::Acquire);
        if rid == 0 {
            return;
        }
        let mut frame = Vec::new();
        Request::Credit { subscription: rid, bytes: self.consumed.min(u32::MAX as u64) as u32 }
            .encode_unsealed(0, &mut frame);
        self.consumed = 0;
        self.client
            .h
            .sh
            .submit(Cmd { op: Op::Credit, frame, seq_at: None, reply: Reply_::None, permit: None }, Duration::ZERO);
    }
}

fn unexpected(r: &Reply) -> ClientError {
    ClientError::new(105, format!("unexpected response {r:?}"))
}

/// Records of a subscription, in LSN order.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Result<Reply>>,
    buf: std::collections::VecDeque<Record>,
    rid: Arc<AtomicU64>,
    consumed: u64,
    credit: u32,
    client: Client,
}

impl Subscription {
    /// The next record; `None` when the client is closed.
    pub async fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if let Some(r) = self.buf.pop_front() {
                self.consumed += (r.payload.len() as u64).max(1);
                if self.consumed >= self.credit as u64 / 2 {
                    self.grant();
                }
                return Some(Ok(r));
            }
            match self.rx.recv().await? {
                Ok(Reply::Records { records, .. }) => self.buf.extend(records),
                Ok(r) => return Some(Err(unexpected(&r))),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the connection task

struct Conn {
    endpoint: String,
    server: String,
    epoch: u64,
    primary: bool,
    stream: TcpStream,
    /// Bytes read past the Hello response.
    rest: FrameBuf,
}

async fn read_frame(s: &mut TcpStream, buf: &mut FrameBuf) -> Result<(u8, u64, Vec<u8>)> {
    loop {
        if let Some(f) = buf.next_frame().map_err(|e| ClientError::proto(&e))? {
            return Ok((f.opcode, f.request_id, f.body.to_vec()));
        }
        let mut b = buf.take(64 << 10);
        let r = s.read_buf(&mut b).await;
        buf.restore(b);
        let n = r.map_err(|e| ClientError::new(codes::UNAVAILABLE, e.to_string()))?;
        if n == 0 {
            return Err(ClientError::new(codes::UNAVAILABLE, "connection closed by the server"));
        }
    }
}

async fn connect_one(cfg: &ClientConfig, ep: &str) -> Result<Conn> {
    let unavailable = |e: String| ClientError::new(codes::UNAVAILABLE, format!("{ep}: {e}"));
    let mut s = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(ep))
        .await
        .map_err(|_| unavailable("connect timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let _ = s.set_nodelay(true);
    let mut hello = Vec::new();
    Request::Hello { min_version: VERSION, max_version: VERSION, client: &cfg.client_name }.encode(0, &mut hello);
    let mut rest = FrameBuf::new(cfg.max_frame);
    let reply = tokio::time::timeout(cfg.connect_timeout, async {
        s.write_all(&hello).await.map_err(|e| unavailable(e.to_string()))?;
        read_frame(&mut s, &mut rest).await
    })
    .await
    .map_err(|_| unavailable("no Hello answer".into()))??;
    let (opcode, rid, body) = reply;
    let f = crate::protocol::Frame { opcode, request_id: rid, body: &body };
    match owned(Response::decode(&f, Op::Hello).map_err(|e| ClientError::proto(&e))?)? {
        Reply::Hello { server, epoch, primary } => {
            Ok(Conn { endpoint: ep.to_string(), server, epoch, primary, stream: s, rest })
        }
        r => Err(unexpected(&r)),
    }
}

/// Tries every endpoint once from `start`; returns the first primary.
async fn connect_any(cfg: &ClientConfig, start: usize) -> Result<Conn> {
    let n = cfg.endpoints.len();
    let mut last = ClientError::new(codes::UNAVAILABLE, "no endpoint answered");
    // With `any_role`, a replica serves if no endpoint answers as primary.
    let mut replica = None;
    for k in 0..n {
        let ep = &cfg.endpoints[(start + k) % n];
        match connect_one(cfg, ep).await {
            Ok(c) if c.primary => return Ok(c),
            Ok(c) if cfg.any_role && replica.is_none() => replica = Some(c),
            Ok(c) => {
                last = ClientError::new(codes::NOT_PRIMARY, format!("{} ({}) is not primary", c.endpoint, c.server))
            }
            Err(e) => last = e,
        }
    }
    replica.ok_or(last)
}

/// Owns the connection: installs it, runs its reader and writer tasks,
/// reconnects (with backoff, to the next endpoint that answers as primary)
/// when it is lost or the server asks to fail over, resends everything
/// unanswered, and fails requests whose deadline passed.
struct Supervisor {
    cfg: ClientConfig,
    sh: Arc<Shared>,
    info: Arc<parking_lot::Mutex<(String, String, u64)>>,
    gen: u64,
}

impl Supervisor {
    /// Makes `c` the connection: queues every unanswered request on it
    /// (oldest first) and starts its reader and writer.
    fn install(&mut self, c: Conn) {
        self.gen += 1;
        let gen = self.gen;
        *self.info.lock() = (c.endpoint.clone(), c.server.clone(), c.epoch);
        tracing::debug!(endpoint = %c.endpoint, server = %c.server, "connected");
        let stream = Arc::new(c.stream);
        let wake_writer = Arc::new(Notify::new());
        {
            let mut st = self.sh.st.lock();
            let mut out = Vec::new();
            for p in st.pending.values_mut() {
                // An append sent before may have been written: say so, so
                // the daemon never writes it a second time (protocol.md).
                p.maybe_written |= p.in_flight;
                p.in_flight = true;
                if let (true, Some(at)) = (p.maybe_written, p.resend_at) {
                    if p.frame[at] & crate::protocol::RESEND == 0 {
                        p.frame[at] |= crate::protocol::RESEND;
                        seal_frame(&mut p.frame);
                    }
                }
                out.extend_from_slice(&p.frame);
            }
            if !out.is_empty() {
                wake_writer.notify_one();
            }
            st.link = Some(Link { gen, stream: stream.clone(), out, writing: false, wake_writer: wake_writer.clone() });
        }
        tokio::spawn(reader(self.sh.clone(), stream.clone(), gen, c.rest));
        tokio::spawn(writer(self.sh.clone(), stream, gen, wake_writer));
    }

    async fn run(mut self) {
        let mut start = 1usize;
        let mut backoff = self.cfg.backoff_min;
        loop {
            tokio::select! {
                _ = self.sh.wake_super.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let (connected, done) = {
                let mut st = self.sh.st.lock();
                expire(&mut st.pending);
                let done = st.closed && st.pending.values().all(|p| matches!(p.reply, Reply_::Stream(..)));
                (st.link.is_some(), done)
            };
            if done {
                drop_link(&mut self.sh.st.lock());
                return;
            }
            if connected {
                backoff = self.cfg.backoff_min;
                continue;
            }
            match connect_any(&self.cfg, start).await {
                Ok(c) => self.install(c),
                Err(e) => {
                    tracing::debug!(error = %e, "reconnect failed");
                    start += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    self.sh.wake_super.notify_one();
                }
            }
        }
    }
}

/// Drops connection `gen` (if it is still the current one) and wakes the
/// supervisor to reconnect.
fn lose(sh: &Shared, gen: u64) {
    let mut st = sh.st.lock();
    if st.link.as_ref().is_some_and(|l| l.gen == gen) {
        drop_link(&mut st);
    }
    drop(st);
    sh.wake_super.notify_one();
}

/// Ends the current connection: its socket is shut down, so its reader
/// and writer tasks end and release it.
fn drop_link(st: &mut State) {
    if let Some(l) = st.link.take() {
        let _ = socket2::SockRef::from(&*l.stream).shutdown(std::net::Shutdown::Both);
        l.wake_writer.notify_one();
    }
}

async fn writer(sh: Arc<Shared>, stream: Arc<TcpStream>, gen: u64, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let data = {
                let mut st = sh.st.lock();
                let Some(l) = st.link.as_mut().filter(|l| l.gen == gen) else { return };
                if l.out.is_empty() {
                    l.writing = false;
                    break;
                }
                l.writing = true;
                std::mem::take(&mut l.out)
            };
            let mut off = 0;
            while off < data.len() {
                if stream.writable().await.is_err() {
                    return lose(&sh, gen);
                }
                match stream.try_write(&data[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return lose(&sh, gen),
                }
            }
        }
    }
}

async fn reader(sh: Arc<Shared>, stream: Arc<TcpStream>, gen: u64, mut buf: FrameBuf) {
    loop {
        // Every whole frame buffered, then one read.
        loop {
            let f = match buf.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "bad frame from the server");
                    return lose(&sh, gen);
                }
            };
            if let Some(code) = route(&sh, f.opcode, f.request_id, f.body) {
                tracing::debug!(code, "server asks to fail over");
                return lose(&sh, gen);
            }
        }
        if stream.readable().await.is_err() {
            return lose(&sh, gen);
        }
        match buf.append_with(16 << 10, |b| crate::sockread::read_draining(&*stream, b)) {
            Ok(0) => return lose(&sh, gen),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return lose(&sh, gen),
        }
    }
}

/// Routes one frame to its request. Returns a code if the connection
/// should be abandoned for another endpoint (the request stays pending).
fn route(sh: &Shared, opcode: u8, rid: u64, body: &[u8]) -> Option<u16> {
    let mut st = sh.st.lock();
    let pending = &mut st.pending;
    let f = crate::protocol::Frame { opcode, request_id: rid, body };
    let Some(p) = pending.get(&rid) else {
        if opcode == Op::Error as u8 && rid == 0 {
            // A connection-level error; others (a late answer to a request
            // that timed out, an answer to Credit) are ignored.
            if let Ok(Response::Error { code, message }) = Response::decode(&f, Op::Error) {
                tracing::warn!(code, message, "server error");
                if matches!(code, codes::BAD_MAGIC..=codes::BAD_CHECKSUM)
                    || codes::fails_over(code)
                    || code == codes::FRAME_TIMEOUT
                {
                    return Some(code);
                }
            }
        }
        return None;
    };
    let res = Response::decode(&f, p.op).map_err(|e| ClientError::proto(&e)).and_then(owned);
    if let Err(e) = &res {
        if codes::fails_over(e.code) {
            // `not-primary` and `shutting-down` say this transmission was
            // not taken (`fenced` may answer an append that was written).
            if matches!(e.code, codes::NOT_PRIMARY | codes::SHUTTING_DOWN) {
                if let Some(p) = pending.get_mut(&rid) {
                    p.in_flight = false;
                }
            }
            return Some(e.code);
        }
    }
    match &p.reply {
        Reply_::Once(_) => {
            if let Some(Pending { reply: Reply_::Once(tx), .. }) = pending.remove(&rid) {
                let _ = tx.send(res);
            }
        }
        Reply_::Stream(tx, _) => {
            let failed = res.is_err();
            let next = match &res {
                Ok(Reply::Records { next_lsn, .. }) => Some(*next_lsn),
                _ => None,
            };
            if tx.send(res).is_err() || failed {
                // The subscriber is gone, or the subscription ended.
                pending.remove(&rid);
                return None;
            }
            if let (Some(next), Some(p)) = (next, pending.get_mut(&rid)) {
                // Resubscribe from here after a reconnect.
                resubscribe_from(&mut p.frame, next);
            }
        }
        Reply_::None => {
            pending.remove(&rid);
        }
    }
    None
}

/// Rewrites a Subscribe frame's `from` so that a resend continues where the
/// records received so far end.
fn resubscribe_from(frame: &mut [u8], next: u64) {
    let jlen = u16::from_le_bytes([frame[HEADER_LEN], frame[HEADER_LEN + 1]]) as usize;
    let at = HEADER_LEN + 2 + jlen;
    if frame.len() >= at + 8 {
        frame[at..at + 8].copy_from_slice(&next.to_le_bytes());
        let rid = u64::from_le_bytes(frame[4..12].try_into().unwrap_or([0; 8]));
        patch(frame, rid, None);
    }
}

fn expire(pending: &mut BTreeMap<u64, Pending>) {
    let now = Instant::now();
    let late: Vec<u64> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
    for k in late {
        if let Some(p) = pending.remove(&k) {
            let e = ClientError::new(
                codes::TIMEOUT,
                "no answer within the request timeout (the request may or may not have taken effect)",
            );
            match p.reply {
                Reply_::Once(tx) => {
                    let _ = tx.send(Err(e));
                }
                Reply_::Stream(tx, _) => {
                    let _ = tx.send(Err(e));
                }
                Reply_::None => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// blocking wrapper

/// The client for synchronous code: the same calls, blocking. It runs its
/// own small tokio runtime (one worker thread) for the connection.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    c: Client,
}

impl BlockingClient {
    pub fn connect(cfg: ClientConfig) -> Result<BlockingClient> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| ClientError::new(3, e.to_string()))?;
        let c = rt.block_on(Client::connect(cfg))?;
        Ok(BlockingClient { rt, c })
    }
    pub fn client(&self) -> &Client {
        &self.c
    }
    pub fn server(&self) -> (String, String, u64) {
        self.c.server()
    }
    pub fn append(&self, journal: &str, payload: &[u8]) -> Result<u64> {
        self.rt.block_on(self.c.append(journal, payload))
    }
    pub fn append_batch_with(&self, journal: &str, records: &[&[u8]], d: Durability) -> Result<u64> {
        self.rt.block_on(self.c.append_batch_with(journal, records, d))
    }
    pub fn read(&self, journal: &str, from: u64, max_count: u32, max_bytes: u32) -> Result<(Vec<Record>, u64)> {
        self.rt.block_on(self.c.read(journal, from, max_count, max_bytes))
    }
    pub fn claim(&self, journal: &str, d: Durability, payload: &[u8]) -> Result<(u64, u64)> {
        self.block_on(self.c.claim(journal, d, payload))
    }
    pub fn append_as(&self, journal: &str, records: &[&[u8]], d: Durability, writer: u64) -> Result<u64> {
        self.block_on(self.c.append_as(journal, records, d, writer))
    }
    pub fn set_mark_as(&self, journal: &str, lsn: u64, writer: u64) -> Result<()> {
        self.block_on(self.c.set_mark_as(journal, lsn, writer))
    }
    pub fn set_mark(&self, journal: &str, lsn: u64) -> Result<()> {
        self.rt.block_on(self.c.set_mark(journal, lsn))
    }
    pub fn get_mark(&self, journal: &str) -> Result<u64> {
        self.rt.block_on(self.c.get_mark(journal))
    }
    pub fn create_journal(&self, journal: &str) -> Result<()> {
        self.rt.block_on(self.c.create_journal(journal))
    }
    pub fn delete_journal(&self, journal: &str) -> Result<()> {
        self.rt.block_on(self.c.delete_journal(journal))
    }
    pub fn journals(&self) -> Result<Vec<String>> {
        self.rt.block_on(self.c.journals())
    }
    pub fn status(&self) -> Result<String> {
        self.rt.block_on(self.c.status())
    }
    /// Runs `f` on the client's runtime (for subscriptions and pipelining).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

// ---------------------------------------------------------------------------
// one-shot requests to one node, whatever its role

/// Sends one request to exactly `endpoint` (primary or replica: no
/// failover) and returns the JSON status it answers with. For `Status`,
/// `Promote` and `Demote`: what an operator aims at one node.
pub fn admin(endpoint: &str, req: &Request<'_>, timeout: Duration) -> Result<String> {
    use std::io::{Read, Write};
    let unavailable = |e: String| ClientError::new(codes::UNAVAILABLE, format!("{endpoint}: {e}"));
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(endpoint).map_err(|e| unavailable(e.to_string()))?.collect();
    let addr = addrs.first().copied().ok_or_else(|| unavailable("no address".into()))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| unavailable(e.to_string()))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| unavailable(e.to_string()))?;
    let _ = s.set_nodelay(true);
    let mut out = Vec::new();
    Request::Hello { min_version: VERSION, max_version: VERSION, client: "mirrorlog-admin" }.encode(1, &mut out);
    req.encode(2, &mut out);
    s.write_all(&out).map_err(|e| unavailable(e.to_string()))?;
    let mut buf = FrameBuf::new(DEFAULT_MAX_BODY);
    loop {
        while let Some(f) = buf.next_frame().map_err(|e| ClientError::proto(&e))? {
            if f.request_id == 2 || (f.opcode == Op::Error as u8 && f.request_id == 0) {
                let r = Response::decode(&f, req.op()).map_err(|e| ClientError::proto(&e))?;
                return match r {
                    Response::Status { json } => Ok(json.to_string()),
                    Response::Error { code, message } => Err(ClientError::new(code, message.to_string())),
                    other => Err(ClientError::new(codes::MALFORMED, format!("unexpected answer {other:?}"))),
                };
            }
        }
        let n = buf.fill_with(64 << 10, |room| s.read(room)).map_err(|e| unavailable(e.to_string()))?;
        if n == 0 {
            return Err(unavailable("closed before answering".into()));
        }
    }
}

//! The daemon's configuration file (TOML) and the embedded default.
//!
//! Every table denies unknown keys, and every value is checked while it is
//! parsed, so a mistake is reported with its line and the offending key
//! (`toml` quotes the line and points at the value). Sizes are integers of
//! bytes or strings such as `"64MiB"`; durations are strings such as
//! `"200us"`, `"30s"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::protocol::Durability;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub storage: Storage,
    #[serde(default, rename = "journal")]
    pub journals: Vec<JournalSpec>,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub idempotence: Idempotence,
    #[serde(default)]
    pub scrub: Scrub,
    #[serde(default)]
    pub resilver: Resilver,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub metrics: Metrics,
    /// Reserved for remote-site replication (role, peer, listen address):
    /// accepted as a table so files written for a later version are read,
    /// but refused if it holds keys this version does not know.
    #[serde(default)]
    pub replication: Replication,
}

/// `[storage]`: the mirror set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Member devices: block devices or files (2 or more to mirror).
    pub devices: Vec<PathBuf>,
    /// Size of device files created on first start (files that do not exist).
    #[serde(default = "default_device_size", deserialize_with = "size")]
    pub device_size: u64,
    /// Format the devices when none holds a mirror set (never formats a
    /// device that holds one).
    #[serde(default = "yes")]
    pub create: bool,
    #[serde(default = "default_segment_size", deserialize_with = "size")]
    pub segment_size: u64,
    #[serde(default = "default_block_size", deserialize_with = "size")]
    pub block_size: u64,
    /// Start without a member that is missing, unreadable or blank although
    /// the newest superblock present lists it healthy (it is then marked
    /// failed). Off: such a start is refused, since the members present
    /// cannot show they hold every acknowledged record. A member that
    /// failed while the daemon ran is marked failed on the others, and
    /// they start without it either way.
    #[serde(default)]
    pub start_degraded: bool,
}

/// `[[journal]]`: a journal created at start if it does not exist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSpec {
    pub name: String,
    /// Default durability of appends that ask for the default.
    #[serde(default = "default_durability", deserialize_with = "durability")]
    pub durability: Durability,
    /// When the replica cannot confirm a `remote-*` append within
    /// `replication.ack_timeout`: `block` fails it with `replica-timeout`
    /// (210); `degrade` acknowledges it as `local` and keeps doing so until
    /// the replica has caught up.
    #[serde(default = "default_on_loss", deserialize_with = "on_loss")]
    pub on_replica_loss: OnReplicaLoss,
}

/// `on_replica_loss` of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReplicaLoss {
    Block,
    Degrade,
}

fn default_on_loss() -> OnReplicaLoss {
    OnReplicaLoss::Block
}

fn on_loss<'de, D: Deserializer<'de>>(d: D) -> Result<OnReplicaLoss, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "block" => Ok(OnReplicaLoss::Block),
        "degrade" => Ok(OnReplicaLoss::Degrade),
        _ => Err(serde::de::Error::custom(format!("invalid on_replica_loss {s:?}: use block or degrade"))),
    }
}

/// A client listener: `"127.0.0.1:7400"` or `"unix:/run/mirrorlog/sock"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>()
            .map(Listen::Tcp)
            .map_err(|e| format!("invalid listen address {s:?} ({e}); use HOST:PORT or unix:/path"))
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen", deserialize_with = "listens")]
    pub listen: Vec<Listen>,
    /// A name reported in Hello and status.
    #[serde(default = "default_name")]
    pub name: String,
    /// How the event loop drives client TCP sockets: `epoll` (readiness, the
    /// default) or `io_uring` (completion-based socket reads and writes on
    /// the loop's ring). Unix sockets always use epoll; disk writes always
    /// go through io_uring. See docs/benchmarks.md for why epoll is the
    /// default.
    #[serde(default = "default_network", deserialize_with = "network")]
    pub network: String,
    /// How long the event loop keeps polling (sockets and the disk ring,
    /// without sleeping) after its last piece of work before it blocks.
    /// Waking a sleeping thread costs a cross-CPU wake-up, which on a VM is
    /// a halted vCPU's exit; polling through the short gaps of a busy load
    /// avoids it, at the cost of a busy CPU for that long after the load
    /// stops. `"0us"` always blocks. Off with `network = "io_uring"`, whose
    /// socket operations tokio-uring submits only when the loop sleeps. See
    /// docs/benchmarks.md.
    #[serde(default = "default_idle_poll", deserialize_with = "duration")]
    pub idle_poll: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            name: default_name(),
            network: default_network(),
            idle_poll: default_idle_poll(),
        }
    }
}

fn default_idle_poll() -> Duration {
    Duration::from_millis(1)
}

fn default_network() -> String {
    "epoll".into()
}

fn network<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "epoll" | "io_uring" => Ok(s),
        _ => Err(serde::de::Error::custom(format!("invalid network {s:?}: use epoll or io_uring"))),
    }
}

/// `[limits]`: every bound the daemon enforces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections at once; one more is told `too-many-connections`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest record payload.
    #[serde(default = "default_max_record", deserialize_with = "size")]
    pub max_record_size: u64,
    /// Largest frame body a client may send.
    #[serde(default = "default_max_frame", deserialize_with = "size")]
    pub max_frame_bytes: u64,
    /// Bytes of appends one connection may have waiting for durability, and
    /// of responses waiting to be sent to it; past either, the daemon stops
    /// reading from that connection until they drain (back-pressure).
    #[serde(default = "default_inflight", deserialize_with = "size")]
    pub max_inflight_bytes: u64,
    /// A frame that has started must be complete within this time, or the
    /// connection is closed (slow or stuck clients).
    #[serde(default = "default_frame_timeout", deserialize_with = "duration")]
    pub frame_timeout: Duration,
    /// Group commit: a batch closes at this many bytes.
    #[serde(default = "default_max_batch", deserialize_with = "size")]
    pub max_batch_bytes: u64,
    /// Group commit: batches of one journal written at once (default 2;
    /// 4 on a node that starts as a replica, whose batches come formed from
    /// its primary and are written back to back during catch-up).
    #[serde(default)]
    pub max_inflight_batches: Option<usize>,
    /// Group commit: how long a batch may wait for more appends.
    #[serde(default, deserialize_with = "duration")]
    pub group_commit_wait: Duration,
    /// How long a SIGTERM drain waits for in-flight appends.
    #[serde(default = "default_drain", deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            max_record_size: default_max_record(),
            max_frame_bytes: default_max_frame(),
            max_inflight_bytes: default_inflight(),
            frame_timeout: default_frame_timeout(),
            max_batch_bytes: default_max_batch(),
            max_inflight_batches: None,
            group_commit_wait: Duration::ZERO,
            drain_timeout: default_drain(),
        }
    }
}

/// `[scrub]`: the background check of every record on every mirror
/// (`mirrorlog scrub start`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scrub {
    /// Payload bytes verified per second, summed over the mirrors, while
    /// the node takes no writes ("0": as fast as the disks go). A scrub
    /// sleeps to stay at or below it.
    #[serde(default = "default_scrub_rate", deserialize_with = "size")]
    pub rate: u64,
    /// The same while the node is writing (a batch written in the last millisecond or so: it is looked at before each piece),
    /// as md slows a resync to its minimum under other I/O: the scrub
    /// yields the disks to appends ("0": `rate` always).
    #[serde(default = "default_scrub_busy_rate", deserialize_with = "size")]
    pub busy_rate: u64,
}

impl Default for Scrub {
    fn default() -> Self {
        Scrub { rate: default_scrub_rate(), busy_rate: default_scrub_busy_rate() }
    }
}

fn default_scrub_rate() -> u64 {
    64 << 20
}

fn default_scrub_busy_rate() -> u64 {
    1 << 20
}

/// `[resilver]`: the copy of the log onto a member that joined by
/// `mirrorlog replace`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resilver {
    /// Bytes copied per second while the node takes no writes ("0", the
    /// default: as fast as the disks go).
    #[serde(default, deserialize_with = "size")]
    pub rate: u64,
    /// The same while the node is writing (a batch written in the last millisecond or so: it is looked at before each piece):
    /// md's `speed_limit_min`, the resilver yields the disks to appends
    /// but always moves ("0": `rate` always).
    #[serde(default = "default_resilver_busy_rate", deserialize_with = "size")]
    pub busy_rate: u64,
}

impl Default for Resilver {
    fn default() -> Self {
        Resilver { rate: 0, busy_rate: default_resilver_busy_rate() }
    }
}

fn default_resilver_busy_rate() -> u64 {
    4 << 20
}

/// `[idempotence]`: the producer table behind idempotent appends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotence {
    /// Producers remembered per journal; the least recently used is
    /// forgotten past this.
    #[serde(default = "default_max_producers")]
    pub max_producers: usize,
    /// Appends remembered per producer (their sequence and LSN): a resend
    /// must be within this many of the producer's newest.
    #[serde(default = "default_window")]
    pub window: usize,
    /// At start, the table is rebuilt from the tags of the records in this
    /// many newest segments of each journal.
    #[serde(default = "default_scan_segments")]
    pub scan_segments: usize,
}

impl Default for Idempotence {
    fn default() -> Self {
        Idempotence {
            max_producers: default_max_producers(),
            window: default_window(),
            scan_segments: default_scan_segments(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `mirrorlog=debug,info`, …
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` (default) or `json`.
    #[serde(default = "default_format", deserialize_with = "log_format")]
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: default_level(), format: default_format() }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where `GET /metrics` is served (Prometheus text); absent: off.
    #[serde(default, deserialize_with = "opt_addr")]
    pub listen: Option<SocketAddr>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { listen: Some(default_metrics()) }
    }
}

/// `[replication]`: this node's role and its peer on the other site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// `standalone` (no peer), `primary` or `replica`: the role at start.
    #[serde(default = "default_role", deserialize_with = "role")]
    pub role: String,
    /// The peer's replication address (HOST:PORT): a primary ships there.
    #[serde(default, deserialize_with = "opt_addr")]
    pub peer: Option<SocketAddr>,
    /// This node's replication address: a replica takes its primary's
    /// stream here (and a primary learns of a newer primary here).
    #[serde(default, deserialize_with = "opt_addr")]
    pub listen: Option<SocketAddr>,
    /// How long a `remote-*` append waits for the replica before its
    /// journal's `on_replica_loss` applies.
    #[serde(default = "default_ack_timeout", deserialize_with = "duration")]
    pub ack_timeout: Duration,
    /// Bound of the replication backlog kept in memory (bytes shipped but
    /// not yet sent). Past it the replica is caught up from the segments.
    #[serde(default = "default_backlog", deserialize_with = "size")]
    pub backlog_bytes: u64,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// A session with no frame from the peer for this long is ended.
    #[serde(default = "default_peer_timeout", deserialize_with = "duration")]
    pub peer_timeout: Duration,
    /// A primary at start asks its peer this long whether a newer primary
    /// exists before it serves.
    #[serde(default = "default_startup_wait", deserialize_with = "duration")]
    pub startup_wait: Duration,
    /// What a primary does when its peer cannot be reached within
    /// `startup_wait`: `wait` (default: take no appends until the peer
    /// answers or an operator promotes it; the peer may have been promoted
    /// meanwhile) or `serve` (serve alone at once: what it acknowledges
    /// may meet a promoted peer's history as a split brain).
    #[serde(default = "default_unreachable_at_start", deserialize_with = "unreachable_at_start")]
    pub unreachable_at_start: String,
    /// Socket send and receive buffer sizes for the replication link (0:
    /// the kernel's default).
    #[serde(default = "default_socket_buffer", deserialize_with = "size")]
    pub socket_buffer: u64,
    /// Optional automatic failover through etcd.
    #[serde(default)]
    pub etcd: Option<Etcd>,
}

/// `[replication.etcd]`: a lease-bound key in etcd says who is primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// etcd members, `http://HOST:PORT`.
    pub endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Names the pair (both nodes must use the same).
    #[serde(default = "default_etcd_cluster")]
    pub cluster: String,
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// A replica promotes itself when the primary's lease is gone.
    #[serde(default = "yes")]
    pub auto_failover: bool,
}

fn default_etcd_prefix() -> String {
    "/mirrorlog".into()
}
fn default_etcd_cluster() -> String {
    "default".into()
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            role: default_role(),
            peer: None,
            listen: None,
            ack_timeout: default_ack_timeout(),
            backlog_bytes: default_backlog(),
            connect_timeout: default_connect_timeout(),
            peer_timeout: default_peer_timeout(),
            startup_wait: default_startup_wait(),
            unreachable_at_start: default_unreachable_at_start(),
            socket_buffer: default_socket_buffer(),
            etcd: None,
        }
    }
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backlog() -> u64 {
    64 << 20
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_peer_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_unreachable_at_start() -> String {
    "wait".into()
}

fn unreachable_at_start<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "wait" | "serve" => Ok(s),
        _ => Err(serde::de::Error::custom(format!("invalid unreachable_at_start {s:?}: use wait or serve"))),
    }
}

fn default_startup_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_socket_buffer() -> u64 {
    4 << 20
}

/// Default client port.
pub const DEFAULT_PORT: u16 = 7400;
/// Default metrics port.
pub const DEFAULT_METRICS_PORT: u16 = 7402;

fn yes() -> bool {
    true
}
fn default_device_size() -> u64 {
    1 << 30
}
fn default_segment_size() -> u64 {
    64 << 20
}
fn default_block_size() -> u64 {
    4096
}
fn default_durability() -> Durability {
    Durability::Local
}
fn default_listen() -> Vec<Listen> {
    vec![Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))
}
fn default_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0;
    let n = buf.iter().position(|&b| b == 0).unwrap_or(0);
    if ok && n > 0 {
        String::from_utf8_lossy(&buf[..n]).into_owned()
    } else {
        "mirrorlogd".into()
    }
}
fn default_max_connections() -> usize {
    256
}
fn default_max_record() -> u64 {
    1 << 20
}
fn default_max_frame() -> u64 {
    4 << 20
}
fn default_inflight() -> u64 {
    4 << 20
}
fn default_frame_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_batch() -> u64 {
    1 << 20
}
fn default_inflight_batches() -> usize {
    2
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_max_producers() -> usize {
    4096
}
fn default_window() -> usize {
    1024
}
fn default_scan_segments() -> usize {
    4
}
fn default_level() -> String {
    "info".into()
}
fn default_format() -> String {
    "text".into()
}
fn default_role() -> String {
    "standalone".into()
}

/// Parses `4096`, `"64KiB"`, `"1MiB"`, `"2GiB"`, `"1G"`, `"512k"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("invalid size {s:?}: expected a number of bytes or e.g. \"64MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses `"0"`, `"250us"`, `"5ms"`, `"30s"`, `"2m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. \"200us\", \"5ms\", \"30s\""))?;
    Ok(match unit.trim() {
        "" if n == 0 => Duration::ZERO,
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("invalid duration {s:?}: use a unit: ns, us, ms, s, m")),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    N(u64),
    S(String),
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeRepr::deserialize(d)? {
        SizeRepr::N(n) => Ok(n),
        SizeRepr::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Parses `local`, `remote-received`, `remote-durable`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    Ok(match s {
        "local" => Durability::Local,
        "remote-received" => Durability::RemoteReceived,
        "remote-durable" => Durability::RemoteDurable,
        _ => return Err(format!("invalid durability {s:?}: use local, remote-received or remote-durable")),
    })
}

fn durability<'de, D: Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
    let s = String::deserialize(d)?;
    parse_durability(&s).map_err(serde::de::Error::custom)
}

fn listens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Listen>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("listen needs at least one address"));
    }
    v.iter().map(|s| s.parse::<Listen>().map_err(serde::de::Error::custom)).collect()
}

fn opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s == "off" {
        return Ok(None);
    }
    s.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid address {s:?} ({e}); use HOST:PORT or \"off\"")))
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "text" | "json" => Ok(s),
        _ => Err(serde::de::Error::custom(format!("invalid log format {s:?}: use text or json"))),
    }
}

fn role<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "standalone" | "primary" | "replica" => Ok(s),
        _ => Err(serde::de::Error::custom(format!("invalid role {s:?}: use standalone, primary or replica"))),
    }
}

impl DaemonConfig {
    /// Parses a config file's text. Errors name the line and the key.
    pub fn parse(text: &str) -> Result<DaemonConfig, String> {
        let cfg: DaemonConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<DaemonConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The embedded default: two file mirrors in `dir`, journal `default`.
    pub fn embedded(dir: &Path) -> DaemonConfig {
        DaemonConfig {
            storage: Storage {
                devices: vec![dir.join("mirror0.dev"), dir.join("mirror1.dev")],
                device_size: default_device_size(),
                create: true,
                segment_size: default_segment_size(),
                block_size: default_block_size(),
                start_degraded: false,
            },
            journals: vec![JournalSpec {
                name: "default".into(),
                durability: Durability::Local,
                on_replica_loss: OnReplicaLoss::Block,
            }],
            server: Server::default(),
            limits: Limits::default(),
            idempotence: Idempotence::default(),
            scrub: Scrub::default(),
            resilver: Resilver::default(),
            log: Log::default(),
            metrics: Metrics::default(),
            replication: Replication::default(),
        }
    }

    /// Checks across keys (each key's own value was checked while parsing).
    pub fn check(&self) -> Result<(), String> {
        if self.storage.devices.is_empty() {
            return Err("storage.devices: at least one device is needed (two or more to mirror)".into());
        }
        if self.storage.devices.len() > crate::format::MAX_MEMBERS {
            return Err(format!("storage.devices: at most {} devices", crate::format::MAX_MEMBERS));
        }
        if self.limits.max_connections == 0 {
            return Err("limits.max_connections must be at least 1".into());
        }
        if self.limits.max_record_size == 0 || self.limits.max_record_size > 256 << 20 {
            return Err("limits.max_record_size must be between 1 byte and 256 MiB".into());
        }
        // An append of one maximal record must fit a frame.
        if self.limits.max_frame_bytes < self.limits.max_record_size + 1024 || self.limits.max_frame_bytes > 1 << 30 {
            return Err(format!(
                "limits.max_frame_bytes ({}) must hold one maximal record (limits.max_record_size {} + 1 KiB) and be at most 1 GiB",
                self.limits.max_frame_bytes, self.limits.max_record_size
            ));
        }
        if self.limits.max_inflight_bytes < self.limits.max_frame_bytes {
            return Err("limits.max_inflight_bytes must be at least limits.max_frame_bytes".into());
        }
        if self.limits.max_inflight_batches == Some(0) {
            return Err("limits.max_inflight_batches must be at least 1".into());
        }
        if self.idempotence.window == 0 || self.idempotence.max_producers == 0 {
            return Err("idempotence.window and idempotence.max_producers must be at least 1".into());
        }
        let r = &self.replication;
        match r.role.as_str() {
            "primary" if r.peer.is_none() => {
                return Err(
                    "replication.role = \"primary\" needs replication.peer (the replica's replication address)".into()
                )
            }
            "replica" if r.listen.is_none() => {
                return Err(
                    "replication.role = \"replica\" needs replication.listen (where the primary connects)".into()
                )
            }
            _ => {}
        }
        if let Some(e) = &r.etcd {
            if e.endpoints.is_empty() || e.endpoints.iter().any(|u| !u.starts_with("http://")) {
                return Err("replication.etcd.endpoints: one or more http://HOST:PORT".into());
            }
            if e.lease_ttl < Duration::from_secs(1) {
                return Err("replication.etcd.lease_ttl must be at least 1s".into());
            }
            if r.role == "standalone" {
                return Err("replication.etcd needs role primary or replica".into());
            }
        }
        if r.backlog_bytes < 2 * self.limits.max_batch_bytes.max(self.limits.max_record_size + 4096) {
            return Err("replication.backlog_bytes must hold at least two batches".into());
        }
        let mut names = std::collections::HashSet::new();
        for j in &self.journals {
            if !names.insert(j.name.as_str()) {
                return Err(format!("journal {:?} is listed twice", j.name));
            }
        }
        Ok(())
    }

    /// The engine configuration these settings give.
    pub fn engine(&self) -> crate::Config {
        let mut c = crate::Config::new(self.storage.devices.iter().cloned());
        c.block_size = self.storage.block_size as u32;
        c.segment_size = self.storage.segment_size;
        c.max_record_size = self.limits.max_record_size as u32;
        c.max_batch_bytes = self.limits.max_batch_bytes as usize;
        c.max_inflight_batches = self.limits.max_inflight_batches.unwrap_or(if self.replication.role == "replica" {
            4
        } else {
            default_inflight_batches()
        });
        c.group_commit_wait = self.limits.group_commit_wait;
        c.start_degraded = self.storage.start_degraded;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[storage]
devices = ["/data/m0", "/data/m1"]
device_size = "2GiB"
segment_size = "32MiB"

[[journal]]
name = "default"

[[journal]]
name = "orders"
durability = "remote-durable"

[server]
listen = ["0.0.0.0:7400", "unix:/run/mirrorlog/mirrorlogd.sock"]
idle_poll = "0us"

[limits]
max_connections = 100
group_commit_wait = "200us"

[metrics]
listen = "off"
"#;

    #[test]
    fn parses_a_full_file() {
        let c = DaemonConfig::parse(GOOD).expect("parse");
        assert_eq!(c.storage.device_size, 2 << 30);
        assert_eq!(c.storage.segment_size, 32 << 20);
        assert_eq!(c.journals.len(), 2);
        assert_eq!(c.journals[1].durability, Durability::RemoteDurable);
        assert_eq!(c.server.listen[1], Listen::Unix("/run/mirrorlog/mirrorlogd.sock".into()));
        assert_eq!(c.limits.group_commit_wait, Duration::from_micros(200));
        assert_eq!(c.server.idle_poll, Duration::ZERO);
        assert_eq!(
            DaemonConfig::parse("[storage]\ndevices = [\"/m0\"]").expect("parse").server.idle_poll,
            Duration::from_millis(1)
        );
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.limits.max_frame_bytes, 4 << 20);
    }

    fn err(text: &str) -> String {
        match DaemonConfig::parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[storage]\ndevices = [\"/a\"]\n\n[limits]\nmax_conections = 5\n");
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = err("[storage]\ndevices = [\"/a\"]\nsegment_size = \"64Mx\"\n");
        assert!(e.contains("line 3") && e.contains("segment_size") && e.contains("64Mx"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[server]\nlisten = [\"nowhere\"]\n");
        assert!(e.contains("line 4") && e.contains("listen"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[[journal]]\nname = \"x\"\ndurability = \"fast\"\n");
        assert!(e.contains("line 5") && e.contains("durability"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[limits]\nframe_timeout = \"30\"\n");
        assert!(e.contains("line 4") && e.contains("frame_timeout"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[replication]\nrole = \"leader\"\n");
        assert!(e.contains("line 4") && e.contains("role"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[[journal]]\nname = \"x\"\non_replica_loss = \"hope\"\n");
        assert!(e.contains("line 5") && e.contains("on_replica_loss"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[replication]\nrole = \"primary\"\n");
        assert!(e.contains("replication.peer"), "{e}");
    }

    #[test]
    fn cross_key_checks() {
        let e = err("[storage]\ndevices = []\n");
        assert!(e.contains("storage.devices"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[limits]\nmax_record_size = \"8MiB\"\n");
        assert!(e.contains("max_frame_bytes"), "{e}");
        let e = err("[storage]\ndevices = [\"/a\"]\n[[journal]]\nname = \"a\"\n[[journal]]\nname = \"a\"\n");
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert!(parse_duration("5").is_err());
    }
}

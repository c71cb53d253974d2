//! Optional automatic failover through etcd (v3, its JSON gateway): a key
//! bound to a lease says which node is primary and at which epoch.
//!
//! * The primary holds `PREFIX/CLUSTER/primary` = `{"name","epoch","endpoint"}`
//!   with a lease of `lease_ttl`, kept alive every sixth of it. If half a
//!   lease passes without a renewal (etcd unreachable, the lease expired;
//!   one request may take a third of it), it **steps down** on its own: its appends stop before etcd
//!   can have expired the lease (which runs from a renewal's send time), so
//!   two nodes never both take appends.
//! * A replica with `auto_failover` watches the key; once it is gone (the
//!   primary's lease expired), it takes it in a transaction (only if still
//!   absent) and promotes itself; then it writes its new epoch there.
//! * A node that starts (or returns) while another holds the key is its
//!   replica.
//! * `PREFIX/CLUSTER/epoch` (no lease: it outlives every holder) keeps the
//!   highest epoch any holder served at. A node takes the primary key only
//!   if its own history is at least that new (its epoch is not below it),
//!   in the same transaction; otherwise it waits. So a node that returns
//!   after its peer was promoted, and finds that peer's key expired, does
//!   not serve an older history (which the peer, when it returns, would
//!   meet as a split brain).
//!
//! Manual promotion stays the default: without `[replication.etcd]` nothing
//! here runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use super::{Change, ReplShared, Role};
use crate::MirrorLog;

/// `[replication.etcd]` settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` of etcd members, tried in order.
    pub endpoints: Vec<String>,
    /// The key is `prefix/cluster/primary`.
    pub prefix: String,
    pub cluster: String,
    pub lease_ttl: Duration,
    /// A replica takes over when the key is gone.
    pub auto_failover: bool,
    /// This node's client address, stored in the key for operators.
    pub endpoint: String,
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
}

/// A small client for etcd's v3 JSON gateway.
pub struct Etcd {
    cfg: EtcdConfig,
    agent: ureq::Agent,
    key: String,
    /// The highest epoch any holder served at (no lease).
    epoch_key: String,
    /// The longest one request can take, over every endpoint in turn.
    budget: Duration,
}

/// Who holds the primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub epoch: u64,
    pub lease: i64,
}

impl Etcd {
    pub fn new(cfg: EtcdConfig) -> Etcd {
        // One request, over every endpoint in turn, fits in a third of the
        // lease: a keep-alive that fails still leaves time to step down.
        let n = cfg.endpoints.len().max(1) as u32;
        let t = (cfg.lease_ttl.max(Duration::from_secs(1)) / (3 * n)).max(Duration::from_millis(50));
        let agent = ureq::AgentBuilder::new().timeout_connect(t).timeout(t).build();
        let base = format!("{}/{}", cfg.prefix.trim_end_matches('/'), cfg.cluster);
        let (key, epoch_key) = (format!("{base}/primary"), format!("{base}/epoch"));
        Etcd { cfg, agent, key, epoch_key, budget: t * n }
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let mut last = String::from("no etcd endpoint configured");
        for ep in &self.cfg.endpoints {
            let url = format!("{}/v3/{path}", ep.trim_end_matches('/'));
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(r) => return r.into_json::<serde_json::Value>().map_err(|e| format!("{url}: {e}")),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }

    pub fn grant(&self) -> Result<i64, String> {
        // Rounded up: etcd's lease never ends before our own count of it.
        let ttl = self.cfg.lease_ttl.as_millis().div_ceil(1000).max(1) as u64;
        let r = self.post("lease/grant", json!({ "TTL": ttl }))?;
        r["ID"].as_str().and_then(|s| s.parse().ok()).or_else(|| r["ID"].as_i64()).ok_or(format!("lease grant: {r}"))
    }

    /// Renews the lease; false if it no longer exists.
    pub fn keepalive(&self, lease: i64) -> Result<bool, String> {
        let r = self.post("lease/keepalive", json!({ "ID": lease.to_string() }))?;
        let ttl =
            r["result"]["TTL"].as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| r["result"]["TTL"].as_i64());
        Ok(ttl.unwrap_or(0) > 0)
    }

    pub fn holder(&self) -> Result<Option<Holder>, String> {
        let r = self.post("kv/range", json!({ "key": b64(self.key.as_bytes()) }))?;
        let Some(kv) = r["kvs"].as_array().and_then(|a| a.first()) else { return Ok(None) };
        let v: serde_json::Value =
            serde_json::from_slice(&unb64(kv["value"].as_str().unwrap_or(""))).unwrap_or(serde_json::Value::Null);
        Ok(Some(Holder {
            name: v["name"].as_str().unwrap_or("").to_string(),
            epoch: v["epoch"].as_u64().unwrap_or(0),
            lease: kv["lease"].as_str().and_then(|s| s.parse().ok()).or_else(|| kv["lease"].as_i64()).unwrap_or(0),
        }))
    }

    fn value(&self, name: &str, epoch: u64) -> String {
        b64(json!({ "name": name, "epoch": epoch, "endpoint": self.cfg.endpoint }).to_string().as_bytes())
    }

    /// The highest epoch a holder served at, and the revision it was
    /// written at ((0, 0) if none was).
    pub fn served_epoch(&self) -> Result<(u64, i64), String> {
        let r = self.post("kv/range", json!({ "key": b64(self.epoch_key.as_bytes()) }))?;
        let Some(kv) = r["kvs"].as_array().and_then(|a| a.first()) else { return Ok((0, 0)) };
        let epoch = String::from_utf8(unb64(kv["value"].as_str().unwrap_or("")))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("etcd key {}: not an epoch", self.epoch_key))?;
        let rev = kv["mod_revision"].as_str().and_then(|s| s.parse().ok()).or_else(|| kv["mod_revision"].as_i64());
        Ok((epoch, rev.unwrap_or(0)))
    }

    /// Takes the primary key if nobody holds it and this node's history
    /// (`history`: its epoch now) is at least as new as any holder served
    /// at; records `epoch` (what it will serve at) as served, in the same
    /// transaction.
    pub fn acquire(&self, lease: i64, name: &str, epoch: u64, history: u64) -> Result<Claim, String> {
        let (served, rev) = self.served_epoch()?;
        if served > history {
            return Ok(Claim::Stale(served));
        }
        let (k, ek) = (b64(self.key.as_bytes()), b64(self.epoch_key.as_bytes()));
        let r = self.post(
            "kv/txn",
            json!({
                "compare": [
                    { "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" },
                    { "key": ek, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string() },
                ],
                "success": [
                    { "request_put": { "key": k, "value": self.value(name, epoch), "lease": lease.to_string() } },
                    { "request_put": { "key": ek, "value": b64(served.max(epoch).to_string().as_bytes()) } },
                ],
            }),
        )?;
        Ok(if r["succeeded"].as_bool().unwrap_or(false) { Claim::Taken } else { Claim::NotTaken })
    }

    /// Rewrites the value under our lease (a new epoch after promotion, or
    /// a new lease after a restart of the holder), and raises the served
    /// epoch to `epoch`.
    pub fn put(&self, lease: i64, name: &str, epoch: u64) -> Result<(), String> {
        let k = b64(self.key.as_bytes());
        self.post("kv/put", json!({ "key": k, "value": self.value(name, epoch), "lease": lease.to_string() }))?;
        for _ in 0..3 {
            let (served, rev) = self.served_epoch()?;
            if served >= epoch {
                return Ok(());
            }
            let ek = b64(self.epoch_key.as_bytes());
            let r = self.post(
                "kv/txn",
                json!({
                    "compare": [{ "key": ek, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string() }],
                    "success": [{ "request_put": { "key": ek, "value": b64(epoch.to_string().as_bytes()) } }],
                }),
            )?;
            if r["succeeded"].as_bool().unwrap_or(false) {
                return Ok(());
            }
        }
        Err(format!("etcd key {}: raced three times", self.epoch_key))
    }
}

/// What `Etcd::acquire` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Taken,
    /// Someone holds the key.
    NotTaken,
    /// A holder served at this epoch, newer than this node's history: it
    /// must not serve (it may follow that holder, or wait for an operator).
    Stale(u64),
}

/// What the node should do at start, by the key.
pub enum AtStart {
    /// We hold the key: serve as primary.
    Primary(i64),
    /// Someone else does: be its replica.
    Replica(Holder),
    /// Nobody does, but a holder served at this epoch, newer than our
    /// history: wait (for it, or for an operator).
    Stale(u64),
}

/// At start of a node configured as primary: take (or keep) the key, or
/// learn who holds it. `epoch` is what it will serve at, `history` its
/// epoch now. Retries until etcd answers or `wait` passes.
pub fn claim_at_start(e: &Etcd, name: &str, epoch: u64, history: u64, wait: Duration) -> Result<AtStart, String> {
    let deadline = Instant::now() + wait;
    loop {
        let r = (|| {
            let lease = e.grant()?;
            match e.acquire(lease, name, epoch, history)? {
                Claim::Taken => return Ok(AtStart::Primary(lease)),
                Claim::Stale(served) => {
                    // Unless the key is ours from before a restart.
                    match e.holder()? {
                        Some(h) if h.name == name && h.epoch >= served => {}
                        Some(h) => return Ok(AtStart::Replica(h)),
                        None => return Ok(AtStart::Stale(served)),
                    }
                }
                Claim::NotTaken => {}
            }
            match e.holder()? {
                Some(h) if h.name == name => {
                    // Ours, from before a restart: rebind it to the new lease.
                    e.put(lease, name, epoch)?;
                    Ok(AtStart::Primary(lease))
                }
                Some(h) => Ok(AtStart::Replica(h)),
                None => Err("the key vanished; trying again".to_string()),
            }
        })();
        match r {
            Ok(a) => return Ok(a),
            Err(err) if Instant::now() < deadline => {
                tracing::warn!(error = %err, "etcd: cannot settle the primary key yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => return Err(err),
        }
    }
}

/// The failover thread: keeps the primary's lease alive (stepping down
/// when it cannot), or lets a replica take over when the key is gone.
pub fn run(e: Etcd, log: Arc<MirrorLog>, shared: Arc<ReplShared>, mut lease: Option<i64>) {
    let name = shared.cfg.name.clone();
    let ttl = e.cfg.lease_ttl;
    // Renew six times a lease; step down once half of it passed without a
    // renewal (a request may take a third, and the next check comes a sixth
    // later).
    let tick = (ttl / 6).max(Duration::from_millis(50));
    // The lease from the start counts from before this thread began.
    let mut renewed = Instant::now().checked_sub(tick).unwrap_or_else(Instant::now);
    let mut written_epoch = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let role = shared.role();
        match role {
            // A demoting primary keeps its lease until it is a replica.
            Role::Primary | Role::Demoting | Role::Promoting if lease.is_some() || role == Role::Primary => {
                let Some(l) = lease else {
                    // Promoted by hand while etcd is configured: take the key.
                    let sent = Instant::now();
                    let epoch = log.epoch();
                    match e.grant().and_then(|l| e.acquire(l, &name, epoch, epoch).map(|c| (l, c))) {
                        Ok((l, Claim::Taken)) => {
                            lease = Some(l);
                            renewed = sent;
                            written_epoch = log.epoch();
                        }
                        Ok((_, Claim::Stale(served))) => {
                            tracing::error!(served, epoch, "etcd: a primary served at a newer epoch; stepping down");
                            shared.saw_epoch(served);
                            let _ = shared.change(Change::Fence);
                        }
                        Ok((_, Claim::NotTaken)) => {
                            if let Ok(Some(h)) = e.holder() {
                                if h.name != name {
                                    tracing::error!(holder = %h.name, "etcd: another node holds the primary key; stepping down");
                                    shared.saw_epoch(h.epoch);
                                    let _ = shared.change(Change::Fence);
                                }
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "etcd: cannot take the primary key"),
                    }
                    continue;
                };
                // Invariant: this node stops taking appends before etcd can
                // have expired its lease (which runs from a renewal's send
                // time). A keep-alive may fail only after `budget`, and the
                // next check comes a tick later, so step down while both
                // still fit before the last renewal + ttl: checked before a
                // keep-alive is sent and again as soon as one fails.
                let late = |renewed: Instant| renewed.elapsed() + e.budget + tick >= ttl;
                if late(renewed) {
                    tracing::error!("etcd: the primary lease could not be renewed in time; stepping down");
                    lease = None;
                    let _ = shared.change(Change::Fence);
                    continue;
                }
                let sent = Instant::now();
                match e.keepalive(l) {
                    Ok(true) => {
                        renewed = sent;
                        if written_epoch != log.epoch() && e.put(l, &name, log.epoch()).is_ok() {
                            written_epoch = log.epoch();
                        }
                    }
                    Ok(false) => {
                        tracing::error!("etcd: the primary lease expired; stepping down");
                        lease = None;
                        let _ = shared.change(Change::Fence);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "etcd: lease keep-alive failed");
                        if late(renewed) {
                            tracing::error!("etcd: the primary lease could not be renewed in time; stepping down");
                            lease = None;
                            let _ = shared.change(Change::Fence);
                        }
                    }
                }
            }
            Role::Replica if e.cfg.auto_failover => match e.holder() {
                Ok(None) => {
                    let epoch = log.epoch();
                    // Recorded as served before this node can take an
                    // append: the epoch its promotion will reach.
                    let Some(next) = crate::epoch::Epoch::from_raw(epoch)
                        .promotion(crate::epoch::Epoch::from_raw(shared.seen_epoch.load(Ordering::Acquire)))
                    else {
                        tracing::error!(epoch, "etcd: no term is left to promote to");
                        continue;
                    };
                    let sent = Instant::now();
                    match e.grant().and_then(|l| e.acquire(l, &name, next.raw(), epoch).map(|c| (l, c))) {
                        Ok((l, Claim::Taken)) => {
                            tracing::warn!("etcd: the primary's lease is gone; taking over");
                            lease = Some(l);
                            renewed = sent;
                            written_epoch = 0;
                            shared.promote_requested.store(true, Ordering::Release);
                            shared.wake.notify_one();
                        }
                        Ok((_, Claim::Stale(served))) => {
                            shared.saw_epoch(served);
                            tracing::warn!(served, epoch,
                                "etcd: the primary's lease is gone, but this replica never followed its newest run: not taking over");
                        }
                        Ok((_, Claim::NotTaken)) => {}
                        Err(err) => tracing::warn!(error = %err, "etcd: cannot take the primary key"),
                    }
                }
                Ok(Some(h)) => shared.saw_epoch(h.epoch),
                Err(err) => tracing::debug!(error = %err, "etcd unreachable"),
            },
            _ => {
                // A replica keeps no lease.
                lease = None;
            }
        }
    }
}

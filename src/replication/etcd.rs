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
//! The rules are in `failover.rs` (sans-socket, simulated by
//! `mirrorlog-sim --failover`); this file is etcd's HTTP client (the
//! `Coordinator` those rules use), the claim at start and the thread.
//!
//! Manual promotion stays the default: without `[replication.etcd]` nothing
//! here runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::json;

pub use super::failover::AtStart;
use super::failover::{claim_once, Action, Coordinator, Keeper, KeeperConfig, View};
pub use super::failover::{Claim, Holder};
use super::{Change, ReplShared};
use crate::clock::{Clock, Mono};
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

    /// The failover rules' settings for the node `name`.
    pub fn keeper_config(&self, name: &str) -> KeeperConfig {
        KeeperConfig {
            name: name.to_string(),
            ttl_ms: self.cfg.lease_ttl.as_millis() as u64,
            budget_ms: self.budget.as_millis() as u64,
            auto_failover: self.cfg.auto_failover,
        }
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
}

impl Coordinator for Etcd {
    fn grant(&self) -> Result<i64, String> {
        // Rounded up: etcd's lease never ends before our own count of it.
        let ttl = self.cfg.lease_ttl.as_millis().div_ceil(1000).max(1) as u64;
        let r = self.post("lease/grant", json!({ "TTL": ttl }))?;
        r["ID"].as_str().and_then(|s| s.parse().ok()).or_else(|| r["ID"].as_i64()).ok_or(format!("lease grant: {r}"))
    }

    /// Renews the lease; false if it no longer exists.
    fn keepalive(&self, lease: i64) -> Result<bool, String> {
        let r = self.post("lease/keepalive", json!({ "ID": lease.to_string() }))?;
        let ttl =
            r["result"]["TTL"].as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| r["result"]["TTL"].as_i64());
        Ok(ttl.unwrap_or(0) > 0)
    }

    fn holder(&self) -> Result<Option<Holder>, String> {
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

    /// Takes the primary key if nobody holds it and this node's history
    /// (`history`: its epoch now) is at least as new as any holder served
    /// at; records `epoch` (what it will serve at) as served, in the same
    /// transaction.
    fn acquire(&self, lease: i64, name: &str, epoch: u64, history: u64) -> Result<Claim, String> {
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
    fn put(&self, lease: i64, name: &str, epoch: u64) -> Result<(), String> {
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

/// At start of a node configured as primary: take (or keep) the key, or
/// learn who holds it. `epoch` is what it will serve at, `history` its
/// epoch now. Retries until etcd answers or `wait` passes.
pub fn claim_at_start(e: &Etcd, name: &str, epoch: u64, history: u64, wait: Duration) -> Result<AtStart, String> {
    let deadline = Mono.now_ms() + wait.as_millis() as u64;
    loop {
        match claim_once(e, &Mono, name, epoch, history) {
            Ok(a) => return Ok(a),
            Err(err) if Mono.now_ms() < deadline => {
                tracing::warn!(error = %err, "etcd: cannot settle the primary key yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => return Err(err),
        }
    }
}

/// The failover thread: a turn of the rules (`failover::Keeper`) every
/// sixth of a lease; it publishes until when the node may take appends
/// (`ReplShared::serve_until`) before it acts on what the turn returned.
pub fn run(e: Etcd, log: Arc<MirrorLog>, shared: Arc<ReplShared>, mut keeper: Keeper) {
    let tick = Duration::from_millis(keeper.config().tick_ms());
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let view = View {
            role: shared.role(),
            epoch: log.epoch(),
            seen: shared.seen_epoch.load(Ordering::Acquire),
            complete: super::may_lead(&log, false).is_ok(),
        };
        let actions = keeper.tick(&e, &Mono, view);
        shared.serve_until.store(keeper.serve_until(), Ordering::Release);
        for a in actions {
            match a {
                Action::Saw(epoch) => shared.saw_epoch(epoch),
                Action::Fence => {
                    let _ = shared.change(Change::Fence);
                }
                Action::Promote => {
                    shared.promote_requested.store(true, Ordering::Release);
                    shared.wake.notify_one();
                }
            }
        }
    }
}

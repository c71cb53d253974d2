//! `replication`: the remote-site mirror issue's scenario in one command.
//! A primary and a replica `mirrorlogd` on this machine (each with its own
//! two file mirrors; on one disk here), clients on the primary:
//!
//! * QD1 and `--clients` connections in each durability mode (1 KiB);
//! * the bounds the goals are stated in: a loopback TCP round trip and the
//!   replica's durable 4 KiB mirrored write (raw, measured on its devices
//!   before they are formatted), and the devices' sequential write speed
//!   (1 MiB mirrored writes);
//! * catch-up: the replica stopped, `--catchup` bytes appended, the
//!   replica started; time until the primary reports it durable at the end;
//! * through the fault proxy with `--delay-ms` each way: p50 and p99 per mode.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirrorlog::protocol::{Durability, Request};

use crate::child::{free_port, Proc};
use crate::load::{Load, Sizes};
use crate::raw::run_raw;
use crate::remote::{run_appends, RemoteOpts};
use crate::report::{plot, print, Report};
use crate::{Common, ReplCmpArgs};

struct Site {
    name: &'static str,
    devices: Vec<PathBuf>,
    client: String,
    repl: String,
    cfg: PathBuf,
    proc: Proc,
}

impl Site {
    fn start(&mut self, daemon: &PathBuf) -> Result<(), String> {
        let log = std::fs::File::create(self.cfg.with_extension("log")).map_err(|e| e.to_string())?;
        let child = Command::new(daemon)
            .arg("--config")
            .arg(&self.cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", daemon.display()))?;
        self.proc = Proc(Some(child));
        Ok(())
    }

    fn status(&self) -> Result<serde_json::Value, String> {
        let s = mirrorlog::client::admin(&self.client, &Request::Status, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&s).map_err(|e| e.to_string())
    }

    fn wait(&self, what: &str, within: Duration, ok: impl Fn(&serde_json::Value) -> bool) -> Result<f64, String> {
        let t0 = Instant::now();
        loop {
            if let Ok(st) = self.status() {
                if ok(&st) {
                    return Ok(t0.elapsed().as_secs_f64());
                }
            }
            if t0.elapsed() > within {
                return Err(format!(
                    "{}: {what} not reached in {within:?} (log: {})",
                    self.name,
                    self.cfg.with_extension("log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn caught_up(st: &serde_json::Value) -> bool {
    let r = &st["replication"];
    r["connected"] == true
        && r["journals"]
            .as_array()
            .is_some_and(|js| js.iter().all(|j| j["replica_durable"].as_u64() >= j["next_lsn"].as_u64()))
}

fn config(s: &Site, role: &str, peer: &str, batch: &str) -> String {
    let devs: Vec<String> = s.devices.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
    format!(
        "[storage]\ndevices = [{}]\n[[journal]]\nname = \"default\"\n[server]\nlisten = [\"{}\"]\nname = \"{}\"\n\
         [metrics]\nlisten = \"off\"\n[limits]\n{batch}\n[replication]\nrole = \"{role}\"\npeer = \"{peer}\"\nlisten = \"{}\"\n\
         ack_timeout = \"30s\"\nbacklog_bytes = \"256MiB\"\n",
        devs.join(", "),
        s.client,
        s.name,
        s.repl
    )
}

/// Makes the devices empty: files are recreated zero-filled; block devices
/// (a loop device, say) get their first 2 MiB zeroed (no superblock, so
/// the daemon formats them).
fn fresh(devices: &[PathBuf], size: u64) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    for d in devices {
        if std::fs::metadata(d).map(|m| m.file_type().is_block_device()).unwrap_or(false) {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(d).map_err(|e| format!("{}: {e}", d.display()))?;
            f.write_all(&vec![0u8; 2 << 20])
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("{}: {e}", d.display()))?;
            continue;
        }
        let _ = std::fs::remove_file(d);
        mirrorlog::io::create_device_file(d, size).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    Ok(())
}

pub fn replication(a: &ReplCmpArgs) -> Result<(), String> {
    let json = a.common.json;
    let load = |clients: usize| a.run.load(clients, json);
    let dir = std::env::temp_dir().join(format!("mirrorlog-repl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mk = |name: &'static str, devices: &[PathBuf]| -> Result<Site, String> {
        Ok(Site {
            name,
            devices: devices.to_vec(),
            client: format!("127.0.0.1:{}", free_port()?),
            repl: format!("127.0.0.1:{}", free_port()?),
            cfg: dir.join(format!("{name}.toml")),
            proc: Proc(None),
        })
    };
    let mut p = mk("site-a", &a.primary_devices)?;
    let mut r = mk("site-b", &a.replica_devices)?;

    // The bounds, measured on the replica's devices before they are used.
    fresh(&r.devices, a.common.device_size)?;
    let rc = Common { devices: r.devices.clone(), ..a.common.clone() };
    let quick = Load { clients: 1, secs: 2.0, records: None, rate: None, progress: false, poll: false };
    let w4k = run_raw(&rc, &quick, 4096, "replica devices: raw mirrored 4 KiB write, QD1".into(), 1, false)?;
    let seq1 = run_raw(&rc, &quick, 1 << 20, "replica devices: raw mirrored 1 MiB writes, QD1".into(), 1, false)?;
    let quick2 = Load { clients: 2, ..quick };
    let seq2 = run_raw(&rc, &quick2, 1 << 20, "replica devices: raw mirrored 1 MiB writes, QD2".into(), 1, false)?;
    let seq_mbs = seq1.mb_per_sec().max(seq2.mb_per_sec());
    print(&[w4k.clone(), seq1.clone(), seq2.clone()], json);
    let rtt = crate::daemon_cmp::tcp_ping_pong(20_000)?;

    let batch = a.limits.replace(';', "\n");
    let batch = batch.as_str();
    let mut all: Vec<Report> = Vec::new();
    let start_pair = |p: &mut Site, r: &mut Site, peer_of_p: &str| -> Result<(), String> {
        p.proc.stop();
        r.proc.stop();
        fresh(&p.devices, a.common.device_size)?;
        fresh(&r.devices, a.common.device_size)?;
        std::fs::write(&r.cfg, config(r, "replica", &p.repl, batch)).map_err(|e| e.to_string())?;
        std::fs::write(&p.cfg, config(p, "primary", peer_of_p, batch)).map_err(|e| e.to_string())?;
        r.start(&a.run.daemon)?;
        p.start(&a.run.daemon)?;
        p.wait("replica connected", Duration::from_secs(60), caught_up)?;
        Ok(())
    };
    let peer = r.repl.clone();
    start_pair(&mut p, &mut r, &peer)?;
    let modes = [Durability::Local, Durability::RemoteReceived, Durability::RemoteDurable];
    let name = |d: Durability| match d {
        Durability::Local | Durability::Default => "local",
        Durability::RemoteReceived => "remote-received",
        Durability::RemoteDurable => "remote-durable",
    };
    let ro = |d: Durability, ep: &str| RemoteOpts {
        endpoints: vec![ep.to_string()],
        journal: "default".into(),
        durability: d,
        record_size: Sizes::fixed(1024),
        ack_log: None,
        threads: a.run.client_threads,
        ping: false,
    };
    let mut qd1 = Vec::new();
    let mut many = Vec::new();
    let modes_run: &[Durability] = if a.catchup_only { &[] } else { &modes };
    for &m in modes_run {
        qd1.push(run_appends(&load(1), &ro(m, &p.client), format!("{} QD1", name(m)), a.run.lean)?);
    }
    for &m in modes_run {
        many.push(run_appends(
            &load(a.run.clients),
            &ro(m, &p.client),
            format!("{} {} connections", name(m), a.run.clients),
            a.run.lean,
        )?);
    }
    print(&qd1, json);
    print(&many, json);
    all.extend(qd1.iter().cloned());
    all.extend(many.iter().cloned());

    // Catch-up: the replica down while `catchup` bytes are appended.
    p.wait("caught up", Duration::from_secs(120), caught_up)?;
    r.proc.stop();
    let big = Sizes::fixed(64 << 10);
    let fill = Load {
        clients: 8,
        secs: 3600.0,
        records: Some(a.catchup / (64 << 10)),
        rate: None,
        progress: !json,
        poll: false,
    };
    let o = RemoteOpts { record_size: big, ..ro(Durability::Local, &p.client) };
    let filled = run_appends(&fill, &o, format!("fill {} MiB while the replica is down", a.catchup >> 20), a.run.lean)?;
    print(std::slice::from_ref(&filled), json);
    let lag0 = p.status()?;

    let lag_bytes: u64 =
        lag0["replication"]["journals"].as_array().into_iter().flatten().filter_map(|j| j["lag_bytes"].as_u64()).sum();
    let before = p.status()?["replication"]["session_started_ms"].as_u64().unwrap_or(0);
    r.start(&a.run.daemon)?;
    // From the moment the primary's new session was accepted (the replica's
    // recovery and the sender's reconnect backoff are not catch-up) to the
    // primary seeing the replica durable at the end.
    p.wait("new session", Duration::from_secs(120), |st| {
        st["replication"]["session_started_ms"].as_u64() > Some(before)
    })?;
    p.wait("caught up after restart", Duration::from_secs(600), caught_up)?;
    let done_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let after = p.status()?;
    let started = after["replication"]["session_started_ms"].as_u64().unwrap_or(done_ms);
    let catchup_bytes = after["replication"]["catchup_bytes"].as_u64().unwrap_or(0);
    let catchup_s = done_ms.saturating_sub(started) as f64 / 1000.0;
    // Bytes of segments shipped (records, headers and batch padding).
    let catchup_mbs = catchup_bytes as f64 / 1e6 / catchup_s;

    if a.catchup_only {
        p.proc.stop();
        r.proc.stop();
        if let Ok(l) = std::fs::read_to_string(p.cfg.with_extension("log")) {
            for line in l.lines().filter(|l| l.contains("catch-up done")) {
                println!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "catch-up of {} MiB: {catchup_s:.2} s = {catchup_mbs:.0} MB/s; sequential mirrored write {seq_mbs:.0} MB/s: {:.0}%",
            catchup_bytes >> 20,
            100.0 * catchup_mbs / seq_mbs
        );
        return Ok(());
    }
    // Through the fault proxy, `delay_ms` each way.
    let up: std::net::SocketAddr = r.repl.parse().map_err(|e| format!("{e}"))?;
    let proxy = mirrorlog_faultproxy::Proxy::start("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?, up)
        .map_err(|e| e.to_string())?;
    let d = Duration::from_micros((a.delay_ms * 1000.0) as u64);
    proxy.set_delay(mirrorlog_faultproxy::Direction::Both, d);
    start_pair(&mut p, &mut r, &proxy.local_addr().to_string())?;
    let mut delayed = Vec::new();
    for m in modes {
        delayed.push(run_appends(
            &load(1),
            &ro(m, &p.client),
            format!("{} QD1, link +{}ms each way", name(m), a.delay_ms),
            a.run.lean,
        )?);
    }
    for m in modes {
        delayed.push(run_appends(
            &load(a.run.clients),
            &ro(m, &p.client),
            format!("{} {} connections, link +{}ms each way", name(m), a.run.clients, a.delay_ms),
            a.run.lean,
        )?);
    }
    print(&delayed, json);
    p.proc.stop();
    r.proc.stop();
    let _ = std::fs::remove_dir_all(&dir);

    let (l1, rd1) = (qd1[0].q(0.5), qd1[2].q(0.5));
    let bound = l1 + rtt + w4k.q(0.5);
    let ratio = many[2].records_per_sec() / many[0].records_per_sec();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tcp_rtt_p50_us": rtt, "replica_write_4k_p50_us": w4k.q(0.5), "seq_write_mb_s": seq_mbs,
                "qd1_p50_us": {"local": l1, "remote_received": qd1[1].q(0.5), "remote_durable": rd1}, "qd1_bound_us": bound,
                "rps": {"local": many[0].records_per_sec(), "remote_received": many[1].records_per_sec(), "remote_durable": many[2].records_per_sec()},
                "remote_durable_over_local": ratio,
                "catchup": {"bytes": catchup_bytes, "payload_bytes": filled.records * (64 << 10), "lag_bytes_reported": lag_bytes, "seconds": catchup_s, "mb_s": catchup_mbs, "of_seq_write": catchup_mbs / seq_mbs},
                "delayed": delayed.iter().map(|r| serde_json::json!({"run": r.label, "p50_us": r.q(0.5), "p99_us": r.q(0.99), "rps": r.records_per_sec()})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!();
        println!("loopback TCP round trip p50 {rtt} us; replica's durable 4 KiB mirrored write p50 {} us", w4k.q(0.5));
        println!(
            "QD1 p50: local {l1} us, remote-received {} us, remote-durable {rd1} us (goal: <= {l1} + {rtt} + {} = {bound} us)",
            qd1[1].q(0.5),
            w4k.q(0.5)
        );
        println!(
            "{} connections: remote-durable {:.0} rec/s / local {:.0} rec/s = {:.0}% (goal >= 45%); remote-received {:.0} rec/s",
            a.run.clients,
            many[2].records_per_sec(),
            many[0].records_per_sec(),
            100.0 * ratio,
            many[1].records_per_sec()
        );
        println!(
            "catch-up of {} MiB of segments ({} MiB of payload; lag reported {} MiB): {catchup_s:.2} s = {catchup_mbs:.0} MB/s; sequential mirrored write {seq_mbs:.0} MB/s: {:.0}% (goal >= 70%)",
            catchup_bytes >> 20,
            (filled.records * (64 << 10)) >> 20,
            lag_bytes >> 20,
            100.0 * catchup_mbs / seq_mbs
        );
        println!("with the link delayed {} ms each way:", a.delay_ms);
        for r in &delayed {
            println!(
                "  {:<48} p50 {:>7} us  p99 {:>7} us  {:>9.0} rec/s",
                r.label,
                r.q(0.5),
                r.q(0.99),
                r.records_per_sec()
            );
        }
    }
    if let Some(pl) = &a.run.plot {
        all.extend(delayed);
        plot(pl, "replication: durability modes (1 KiB appends)", &all).map_err(|e| e.to_string())?;
    }
    Ok(())
}

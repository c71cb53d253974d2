//! `daemon-vs-embedded`: the daemon issue's scenario in one command. The
//! embedded engine, then `mirrorlogd` on the same devices over loopback TCP
//! (appends with durability `local`, and GetMark pings that touch no disk),
//! and a bare TCP ping-pong between two processes as the network's own
//! round trip. Prints the ratios the goals are stated in.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirrorlog::protocol::Durability;

use crate::child::{free_port, Proc};
use crate::embedded::{run_embedded, EmbeddedOpts};
use crate::load::Sizes;
use crate::remote::{run_appends, run_remote, RemoteOpts};
use crate::report::{plot, print, Report};
use crate::DaemonCmpArgs;

/// QD1 TCP ping-pong over loopback between two processes (like the daemon
/// and its client): 64-byte messages to a `mirrorlog-bench echo` child.
/// Returns the p50 in microseconds.
pub fn tcp_ping_pong(rounds: usize) -> Result<u64, String> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["echo", "--listen", &format!("127.0.0.1:{port}"), "--seconds", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let _guard = Proc(Some(child));
    let t0 = Instant::now();
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("echo peer: {e}")),
        }
    };
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut lat = Vec::with_capacity(rounds);
    let mut msg = [0u8; 64];
    msg[0] = b'P';
    let mut back = [0u8; 64];
    for _ in 0..rounds {
        let t0 = Instant::now();
        s.write_all(&msg).map_err(|e| e.to_string())?;
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        lat.push(t0.elapsed().as_micros() as u64);
    }
    lat.sort_unstable();
    Ok(lat[lat.len() / 2])
}

pub fn daemon_vs_embedded(a: &DaemonCmpArgs) -> Result<(), String> {
    let c = &a.common;
    let json = c.json;
    let load = |clients: usize| a.run.load(clients, json);
    let emb = EmbeddedOpts {
        threads: false,
        loops: 1,
        record_size: Sizes::fixed(1024),
        journal: "default".into(),
        max_batch: None,
        inflight: None,
        format: true,
        ack_log: None,
    };
    let mut all: Vec<Report> = Vec::new();
    let e1 = run_embedded(c, &load(1), &emb, "embedded 1KiB, 1 appender".into())?;
    let emb = EmbeddedOpts { format: false, ..emb };
    let e64 = run_embedded(c, &load(a.run.clients), &emb, format!("embedded 1KiB, {} appenders", a.run.clients))?;
    print(&[e1.clone(), e64.clone()], json);
    // The daemon on the same devices.
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("mirrorlog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cfg = dir.join("mirrorlogd.toml");
    let devs: Vec<String> = c.devices.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndevices = [{}]\ncreate = false\n[[journal]]\nname = \"default\"\n[server]\nlisten = [\"127.0.0.1:{port}\"]\n[metrics]\nlisten = \"off\"\n",
            devs.join(", ")
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(&a.run.daemon)
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", a.run.daemon.display()))?;
    let _guard = Proc(Some(child));
    let endpoint = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    while TcpStream::connect(&endpoint).is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("mirrorlogd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ro = |ping: bool| RemoteOpts {
        endpoints: vec![endpoint.clone()],
        journal: "default".into(),
        durability: Durability::Local,
        record_size: Sizes::fixed(1024),
        ack_log: None,
        threads: a.run.client_threads,
        ping,
    };
    let appends = |clients: usize, label: String| run_appends(&load(clients), &ro(false), label, a.run.lean);
    let d1 = appends(1, "daemon 1KiB local, 1 connection".into())?;
    let d64 = appends(a.run.clients, format!("daemon 1KiB local, {} connections", a.run.clients))?;
    let p1 = run_remote(&load(1), &ro(true), "daemon ping (GetMark), 1 connection".into())?;
    let p64 =
        run_remote(&load(a.run.clients), &ro(true), format!("daemon ping (GetMark), {} connections", a.run.clients))?;
    print(&[d1.clone(), d64.clone(), p1.clone(), p64.clone()], json);
    let tcp = tcp_ping_pong(20_000)?;
    let _ = std::fs::remove_dir_all(&dir);
    all.extend([e1.clone(), e64.clone(), d1.clone(), d64.clone()]);
    let ratio = d64.records_per_sec() / e64.records_per_sec();
    let bound = e1.q(0.5) as f64 + 1.5 * tcp as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "embedded_qd1_p50_us": e1.q(0.5), "daemon_qd1_p50_us": d1.q(0.5), "tcp_ping_pong_p50_us": tcp,
                "qd1_bound_us": bound, "embedded_rps": e64.records_per_sec(), "daemon_rps": d64.records_per_sec(),
                "ratio": ratio, "ping_rps": p64.records_per_sec(), "ping_qd1_p50_us": p1.q(0.5), "poll": a.run.poll, "lean": a.run.lean,
            })
        );
    } else {
        println!();
        if a.run.poll {
            println!("load generator: polling (--poll), embedded loop and daemon clients alike");
        }
        if a.run.lean {
            println!("daemon appends driven by the lean load generator (--lean)");
        }
        println!("loopback TCP ping-pong between two processes (64 B), QD1 p50: {tcp} us");
        println!(
            "QD1 p50: daemon {} us, embedded {} us + 1.5 x {tcp} us = {bound:.0} us (goal: daemon <= that)",
            d1.q(0.5),
            e1.q(0.5)
        );
        println!(
            "{} connections: daemon {:.0} rec/s / embedded {:.0} rec/s = {:.0}% (goal >= 60%); GetMark alone: {:.0} req/s",
            a.run.clients,
            d64.records_per_sec(),
            e64.records_per_sec(),
            100.0 * ratio,
            p64.records_per_sec()
        );
    }
    if let Some(p) = &a.run.plot {
        plot(p, "mirrorlogd over loopback TCP vs the embedded engine", &all).map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! `calibrate`: what the devices and the link to a peer can do, and the
//! engine settings that follow.
//!
//! * Each device alone, then all devices written in parallel (a mirrored
//!   write): durable write latency (p50, p99) and MB/s at QD1 by write size.
//! * Bandwidth with 1 MiB writes at QD1, QD2 and QD4.
//! * With `--peer ADDR` (a `mirrorlog-bench echo` listener, later the
//!   daemon's replication port): TCP round trip of small messages and
//!   one-way bandwidth.
//! * Recommendations: the batch limit (the smallest write size that carries
//!   80% of the best QD1 throughput), batches in flight (the depth past which
//!   parallel writes stop paying), and a segment size (about one second of
//!   write bandwidth, a power of two between 16 MiB and 1 GiB).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::load::Load;
use crate::raw::run_raw;
use crate::report::Report;
use crate::{CalibrateArgs, Common, EchoArgs};

const SIZES: [u64; 6] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20];

struct Point {
    size: u64,
    p50: u64,
    p99: u64,
    mb: f64,
}

fn measure(c: &Common, clients: usize, size: u64, secs: f64) -> Result<Report, String> {
    let load = Load { clients, secs, records: None, rate: None, progress: false, poll: false };
    run_raw(c, &load, size, String::new(), 1, true)
}

fn curve(c: &Common, secs: f64) -> Result<Vec<Point>, String> {
    SIZES
        .iter()
        .map(|&size| {
            let r = measure(c, 1, size, secs)?;
            Ok(Point { size, p50: r.q(0.5), p99: r.q(0.99), mb: r.mb_per_sec() })
        })
        .collect()
}

fn kib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

pub fn calibrate(a: &CalibrateArgs) -> Result<(), String> {
    let c = &a.common;
    if c.devices.is_empty() {
        return Err("--devices is required".into());
    }
    crate::raw::refuse_mirror_sets(c, a.force)?;
    let secs = a.seconds;
    let mut out = serde_json::Map::new();
    let print_curve = |title: &str, pts: &[Point]| {
        if !c.json {
            println!("{title}");
            println!("  {:>8} {:>9} {:>9} {:>9}", "write", "p50 us", "p99 us", "MB/s");
            for p in pts {
                println!("  {:>8} {:>9} {:>9} {:>9.1}", kib(p.size), p.p50, p.p99, p.mb);
            }
        }
    };
    // each device alone
    let mut per_device = Vec::new();
    for d in &c.devices {
        let one = Common { devices: vec![d.clone()], ..c.clone() };
        let pts = curve(&one, secs)?;
        print_curve(&format!("{} alone, durable writes at QD1:", d.display()), &pts);
        per_device.push(serde_json::json!({
            "device": d.display().to_string(),
            "qd1": pts.iter().map(|p| serde_json::json!({"size": p.size, "p50_us": p.p50, "p99_us": p.p99, "mb_per_sec": p.mb})).collect::<Vec<_>>(),
        }));
    }
    out.insert("devices".into(), serde_json::Value::Array(per_device));
    // all devices in parallel: a mirrored write
    let pts = curve(c, secs)?;
    print_curve(&format!("all {} devices in parallel (a mirrored write), QD1:", c.devices.len()), &pts);
    // depth: 1 MiB writes at QD1, 2, 4
    let mut depth = Vec::new();
    for qd in [1usize, 2, 4] {
        let r = measure(c, qd, 1 << 20, secs)?;
        depth.push((qd, r.mb_per_sec()));
    }
    if !c.json {
        println!("mirrored 1 MiB writes by queue depth:");
        for (qd, mb) in &depth {
            println!("  QD{qd}: {mb:.1} MB/s");
        }
    }
    // recommendations
    // Batch limit: among sizes up to 1 MiB (past that a batch costs
    // milliseconds of latency), the smallest with 80% of the best throughput.
    let upto = |p: &&Point| p.size <= 1 << 20;
    let best = pts.iter().filter(upto).map(|p| p.mb).fold(0.0, f64::max);
    let batch = pts
        .iter()
        .filter(upto)
        .find(|p| p.mb >= 0.8 * best)
        .map(|p| p.size)
        .unwrap_or(1 << 20)
        .clamp(64 << 10, 1 << 20);
    let inflight = if depth[1].1 >= 1.2 * depth[0].1 {
        if depth[2].1 >= 1.2 * depth[1].1 {
            4
        } else {
            2
        }
    } else {
        1
    };
    // Segment: about a second of bandwidth, but at least 16 of them must fit.
    let bw = depth.iter().map(|d| d.1).fold(best, f64::max) * 1e6;
    let dev_size =
        c.devices.iter().filter_map(|d| std::fs::metadata(d).ok()).map(|m| m.len()).min().unwrap_or(c.device_size);
    let room = (dev_size / 16).max(16 << 20);
    let room = 1u64 << (63 - room.leading_zeros()); // a power of two at most dev/16
    let segment = (bw as u64).next_power_of_two().min(room).clamp(16 << 20, 1 << 30).max(8 * batch.next_power_of_two());
    let mut peer_json = serde_json::Value::Null;
    if let Some(addr) = &a.peer {
        let (rtt50, rtt99, mbps) = peer(addr, secs)?;
        if !c.json {
            println!("peer {addr}: round trip p50 {rtt50} us, p99 {rtt99} us; one-way bandwidth {mbps:.1} MB/s");
        }
        peer_json = serde_json::json!({"addr": addr, "rtt_p50_us": rtt50, "rtt_p99_us": rtt99, "mb_per_sec": mbps});
    }
    if c.json {
        out.insert(
            "mirrored_qd1".into(),
            pts.iter()
                .map(|p| serde_json::json!({"size": p.size, "p50_us": p.p50, "p99_us": p.p99, "mb_per_sec": p.mb}))
                .collect(),
        );
        out.insert(
            "mirrored_depth".into(),
            depth.iter().map(|(q, mb)| serde_json::json!({"qd": q, "mb_per_sec": mb})).collect(),
        );
        out.insert("peer".into(), peer_json);
        out.insert(
            "recommended".into(),
            serde_json::json!({"max_batch_bytes": batch, "max_inflight_batches": inflight, "segment_size": segment}),
        );
        println!("{}", serde_json::Value::Object(out));
    } else {
        println!(
            "recommended: max_batch_bytes = {} ({}), max_inflight_batches = {inflight}, segment_size = {} ({})",
            batch,
            kib(batch),
            segment,
            kib(segment)
        );
    }
    Ok(())
}

/// Round trip (64-byte ping-pong) and one-way bandwidth to an echo peer.
fn peer(addr: &str, secs: f64) -> Result<(u64, u64, f64), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut h = crate::report::new_hist();
    let mut msg = [0u8; 64];
    msg[0] = b'P';
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs.min(2.0) {
        let t = Instant::now();
        s.write_all(&msg).map_err(|e| e.to_string())?;
        let mut back = [0u8; 64];
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
    }
    // bandwidth: a 'B' header with the byte count, then the bytes; the peer
    // answers with 8 bytes once it has read them all
    let total: u64 = 256 << 20;
    let mut hdr = [0u8; 64];
    hdr[0] = b'B';
    hdr[1..9].copy_from_slice(&total.to_le_bytes());
    let chunk = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    s.write_all(&hdr).map_err(|e| e.to_string())?;
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).map_err(|e| e.to_string())?;
        sent += chunk.len() as u64;
    }
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).map_err(|e| e.to_string())?;
    let mbps = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99), mbps))
}

/// `echo`: the peer side of `calibrate --peer`. Answers 64-byte pings, and
/// acknowledges bandwidth transfers. One connection at a time; runs until
/// killed, or for `--seconds`.
pub fn echo(a: &EchoArgs) -> Result<(), String> {
    let l = TcpListener::bind(&a.listen).map_err(|e| format!("{}: {e}", a.listen))?;
    eprintln!("echo listening on {}", l.local_addr().map_err(|e| e.to_string())?);
    let start = Instant::now();
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        if a.seconds.is_some_and(|s| start.elapsed().as_secs_f64() > s) {
            return Ok(());
        }
        let (mut s, _) = match l.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut msg = [0u8; 64];
        let mut buf = vec![0u8; 1 << 20];
        while s.read_exact(&mut msg).is_ok() {
            match msg[0] {
                b'P' => {
                    if s.write_all(&msg).is_err() {
                        break;
                    }
                }
                b'B' => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&msg[1..9]);
                    let mut left = u64::from_le_bytes(n);
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        match s.read(&mut buf[..want]) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => left -= k as u64,
                        }
                    }
                    if s.write_all(&[1u8; 8]).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

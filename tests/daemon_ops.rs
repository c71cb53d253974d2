//! Operating the daemon: systemd notification (READY=1 after recovery,
//! WATCHDOG=1, STOPPING=1), the unit files, configuration errors, the CLI.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use mirrorlog::client::{BlockingClient, ClientConfig};

fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut b = [0u8; 512];
    let n = sock.recv(&mut b).ok()?;
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

#[test]
fn notify_ready_after_recovery_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    // First run: write records, then SIGKILL so the next start recovers.
    let mut d = Daemon::start(dir.path(), "");
    let last = {
        let c = BlockingClient::connect(ClientConfig::new([d.addr.clone()])).expect("client");
        let mut last = 0;
        for i in 0..200u32 {
            last = c.append("default", &i.to_le_bytes()).expect("append");
        }
        last
    };
    d.kill9();

    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    d.env = vec![("NOTIFY_SOCKET".into(), sock_path.display().to_string()), ("WATCHDOG_USEC".into(), "200000".into())];
    d.spawn();
    let ready = recv(&sock, Duration::from_secs(30)).expect("a notification");
    assert_eq!(ready, "READY=1", "the first notification is READY=1");
    // At READY=1 recovery is done and clients are served: the last record
    // acknowledged before the kill reads back at once.
    let c = BlockingClient::connect(ClientConfig::new([d.addr.clone()])).expect("client right after READY");
    let (recs, _) = c.read("default", last, 1, 4096).expect("read");
    assert_eq!(recs[0].payload, 199u32.to_le_bytes());
    assert!(d.log_text().contains("mirror set open (recovered)"));
    // WATCHDOG=1 keeps coming (every 100 ms for a 200 ms watchdog).
    let t0 = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let m = recv(&sock, Duration::from_secs(5)).expect("watchdog ping");
        assert_eq!(m, "WATCHDOG=1");
        pings += 1;
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    drop(c);
    let st = d.term();
    assert!(st.success(), "exit {st}");
    let mut saw_stopping = false;
    while let Some(m) = recv(&sock, Duration::from_millis(500)) {
        if m == "STOPPING=1" {
            saw_stopping = true;
        }
    }
    assert!(saw_stopping, "STOPPING=1 on SIGTERM");
}

/// `systemd-analyze verify` accepts both units with no warning. The units
/// name the installed binary (/usr/local/bin/mirrorlogd); the test points
/// that at the built one, which is all it changes.
#[test]
fn systemd_units_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["mirrorlogd.service", "mirrorlogd@.service"] {
        let text = std::fs::read_to_string(format!("{root}/systemd/{unit}")).expect("unit file");
        assert!(text.contains("ExecStart=/usr/local/bin/mirrorlogd --config"), "{unit}");
        for key in [
            "Type=notify",
            "WatchdogSec=",
            "User=mirrorlog",
            "ProtectSystem=strict",
            "ReadWritePaths=",
            "DeviceAllow=",
            "NoNewPrivileges=yes",
            "LimitMEMLOCK=",
        ] {
            assert!(text.contains(key), "{unit} lacks {key}");
        }
        let text = text.replace("/usr/local/bin/mirrorlogd", common::daemon::bin());
        std::fs::write(dir.path().join(unit), text).expect("write");
    }
    std::os::unix::fs::symlink("mirrorlogd@.service", dir.path().join("mirrorlogd@east.service")).expect("symlink");
    for unit in ["mirrorlogd.service", "mirrorlogd@east.service"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(unit))
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .expect("run systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("mirrorlogd")).collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {err}");
    }
}

/// The scrub schedule's units verify too (the service names the installed
/// client; the test points it at the built one).
#[test]
fn scrub_timer_units_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["mirrorlog-scrub.service", "mirrorlog-scrub.timer"] {
        let text = std::fs::read_to_string(format!("{root}/systemd/{unit}")).expect("unit file");
        let text = text.replace("/usr/local/bin/mirrorlog", env!("CARGO_BIN_EXE_mirrorlog"));
        std::fs::write(dir.path().join(unit), text).expect("write");
    }
    let svc = std::fs::read_to_string(dir.path().join("mirrorlog-scrub.service")).expect("read");
    assert!(svc.contains("scrub start") && svc.contains("Type=oneshot"), "{svc}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("mirrorlog-scrub.timer"))
        .arg(dir.path().join("mirrorlog-scrub.service"))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("mirrorlog-scrub")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
    let cal = Command::new("systemd-analyze").args(["calendar", "Sun *-*-8..14 03:00"]).output().expect("calendar");
    assert!(cal.status.success(), "{}", String::from_utf8_lossy(&cal.stderr));
}

#[test]
fn config_errors_name_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[storage]\ndevices = [\"/tmp/x\"]\n\n[limits]\nmax_connectons = 4\n").expect("write");
    let out = Command::new(common::daemon::bin()).arg("--config").arg(&p).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("max_connectons"), "{err}");
    std::fs::write(&p, "[storage]\ndevices = [\"/tmp/x\"]\nsegment_size = \"lots\"\n").expect("write");
    let out = Command::new(common::daemon::bin()).arg("--config").arg(&p).arg("--check-config").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("segment_size") && err.contains("lots"), "{err}");
    let out = Command::new(common::daemon::bin()).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "no config and no data dir");
}

/// `--idle-poll` overrides `server.idle_poll`: after its last request the
/// event loop keeps polling that long instead of sleeping, and `0us` sleeps
/// at once. Shown by the daemon's CPU time in the two seconds after one
/// append: most of those seconds while it polls, next to none once it
/// sleeps. A bad value is refused with the flag named.
#[test]
fn idle_poll_flag_sets_how_long_the_loop_polls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(common::daemon::bin())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--idle-poll", "lots", "--check-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--idle-poll") && err.contains("lots"), "{err}");

    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th of the whole line.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<f64> = rest.split(' ').skip(11).take(2).map(|v| v.parse().expect("ticks")).collect();
        (f[0] + f[1]) / tick
    };
    let busy_after_one_append = |poll: &str| -> f64 {
        let data = dir.path().join(poll);
        let addr = format!("127.0.0.1:{}", common::daemon::free_port());
        let mut child = Command::new(common::daemon::bin())
            .arg("--data-dir")
            .arg(&data)
            .args(["--device-size", "64MiB", "--listen", &addr, "--metrics", "off", "--idle-poll", poll])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let c = loop {
            if let Ok(c) = BlockingClient::connect(ClientConfig::new([addr.clone()])) {
                break c;
            }
            assert!(child.try_wait().ok().flatten().is_none(), "mirrorlogd exited");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(c.append("default", b"one").expect("append"), 1);
        let before = cpu(child.id());
        std::thread::sleep(Duration::from_secs(2));
        let used = cpu(child.id()) - before;
        let _ = child.kill();
        let _ = child.wait();
        used
    };
    let polling = busy_after_one_append("60s");
    let sleeping = busy_after_one_append("0us");
    assert!(polling > 0.5, "a loop polling for 60 s used {polling} s of CPU in 2 s");
    assert!(sleeping < 0.2, "a loop that sleeps at once used {sleeping} s of CPU in 2 s");
}

/// The embedded default: `--data-dir` creates two 1 GiB... (here 64 MiB)
/// file mirrors and journal `default`; the CLI appends and reads.
#[test]
fn embedded_default_and_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::daemon::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(common::daemon::bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--device-size")
        .arg("64MiB")
        .arg("--listen")
        .arg(&addr)
        .arg("--metrics")
        .arg("off")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "not ready");
        assert!(child.try_wait().ok().flatten().is_none(), "mirrorlogd exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cli = env!("CARGO_BIN_EXE_mirrorlog");
    let run = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut c = Command::new(cli)
            .arg("--endpoint")
            .arg(&addr)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cli");
        if let Some(mut i) = c.stdin.take() {
            i.write_all(stdin).expect("stdin");
        }
        c.wait_with_output().expect("cli output")
    };
    let o = run(&["append"], b"hello\x00world");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    let o = run(&["append", "--durability", "local"], b"second");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "2");
    let o = run(&["read", "--from", "1", "--count", "2"], b"");
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["lsn"], 1);
    assert_eq!(lines[0]["len"], 11);
    assert_eq!(lines[0]["hex"], "68656c6c6f00776f726c64");
    assert_eq!(lines[0]["crc32c"], crc32c::crc32c(b"hello\x00world"));
    assert_eq!(lines[1]["epoch"], 1);
    let o = run(&["journals", "--json"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[\"default\"]");
    let o = run(&["status", "--json"], b"");
    let st: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("status json");
    assert_eq!(st["mirrors"].as_array().map(|m| m.len()), Some(2));
    let o = run(&["mark", "--set", "2"], b"");
    assert!(o.status.success());
    let o = run(&["mark"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "2");
    let o = run(&["read", "--journal", "nope"], b"");
    assert_eq!(o.status.code(), Some(1), "request errors exit 1");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown-journal"));
    let o = run(&["append", "--durability", "remote-durable"], b"x");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-replica"));
    let o = Command::new(cli).args(["--endpoint", "127.0.0.1:1", "--timeout", "1", "status"]).output().expect("cli");
    assert_eq!(o.status.code(), Some(4), "unreachable exits 4");

    // Offline tools after a clean stop: verify passes, dump matches read.
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
    let devs = format!("{0}/mirror0.dev,{0}/mirror1.dev", dir.path().display());
    let o = Command::new(cli).args(["verify", "--devices", &devs]).output().expect("verify");
    assert!(o.status.success(), "verify: {}", String::from_utf8_lossy(&o.stdout));
    let o = Command::new(cli).args(["dump", "--devices", &devs, "--from", "2"]).output().expect("dump");
    assert!(o.status.success());
    let l: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("dump line");
    assert_eq!(l["lsn"], 2);
    assert_eq!(l["hex"], "7365636f6e64");
    // A flipped byte in one mirror's record: verify exits 3.
    common::flip_byte(&dir.path().join("mirror1.dev"), (1 << 20) + 4096 + 40);
    let o = Command::new(cli).args(["verify", "--devices", &devs, "--json"]).output().expect("verify");
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
}

/// Unix-socket listeners, with the sockets on epoll and on io_uring: a
/// request is answered, and the socket file is removed on a clean stop.
#[test]
fn unix_socket_listener_both_networks() {
    use mirrorlog::frames::FrameBuf;
    use mirrorlog::protocol::{Op, Request, Response};
    use std::io::{Read, Write};
    for network in ["epoll", "io_uring"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("mirrorlogd.sock");
        let cfg = dir.path().join("d.toml");
        std::fs::write(
            &cfg,
            format!(
                "[storage]\ndevices = [\"{d}/m0.dev\", \"{d}/m1.dev\"]\ndevice_size = \"32MiB\"\nsegment_size = \"2MiB\"\n\
                 [[journal]]\nname = \"default\"\n[server]\nlisten = [\"unix:{s}\"]\nnetwork = \"{network}\"\n[metrics]\nlisten = \"off\"\n",
                d = dir.path().display(),
                s = sock.display()
            ),
        )
        .expect("config");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Kill(
            Command::new(common::daemon::bin())
                .arg("--config")
                .arg(&cfg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn"),
        );
        let t0 = Instant::now();
        let mut s = loop {
            match std::os::unix::net::UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) => {
                    assert!(t0.elapsed() < Duration::from_secs(30), "{network}: not ready");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = FrameBuf::new(1 << 20);
        let mut ask = |s: &mut std::os::unix::net::UnixStream, req: Request<'_>, rid: u64| {
            let mut out = Vec::new();
            req.encode(rid, &mut out);
            s.write_all(&out).expect("write");
            loop {
                if let Some(f) = buf.next_frame().expect("a valid frame") {
                    return (f.opcode, f.request_id, f.body.to_vec());
                }
                let n = buf.fill_with(4096, |room| s.read(room)).expect("read");
                assert!(n > 0, "{network}: closed");
            }
        };
        let append = Request::Append {
            journal: "default",
            durability: mirrorlog::protocol::Durability::Local,
            producer: 0,
            first_seq: 0,
            resend: false,
            writer: None,
            records: vec![b"over unix"],
        };
        let a = ask(&mut s, append, 5);
        assert_eq!((a.0, a.1), (Op::Append as u8 | 0x80, 5), "{network}: appended");
        let read = ask(&mut s, Request::Read { journal: "default", from: 1, max_count: 1, max_bytes: 4096 }, 6);
        let f = mirrorlog::protocol::Frame { opcode: read.0, request_id: 6, body: &read.2 };
        match Response::decode(&f, Op::Read) {
            Ok(Response::Records { records, .. }) => assert_eq!(records[0].payload, b"over unix", "{network}"),
            r => panic!("{network}: {r:?}"),
        }
        drop(s);
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        assert!(child.0.wait().expect("wait").success());
        assert!(!sock.exists(), "{network}: socket file removed on stop");
    }
}

//! Runs the real `mirrorlogd` binary for tests: config in a temp folder,
//! file mirrors, loopback ports, SIGKILL/SIGTERM.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, below the kernel's ephemeral range
/// (32768 and up by default), so the many outgoing connections of a
/// concurrent test cannot take it before the daemon binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    // Never the same port twice in one test process: the tests of a file
    // run in parallel, and a port handed out is free only until its daemon
    // binds it (two tests drawing it meanwhile made one daemon fail to
    // start with "Address already in use").
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + (x % 22_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub addr: String,
    pub metrics: String,
    pub log: PathBuf,
    pub env: Vec<(String, String)>,
    starts: u32,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mirrorlogd")
}

impl Daemon {
    /// Writes a config (two 64 MiB file mirrors, 4 MiB segments, journal
    /// `default`, `extra` appended) and starts the daemon.
    pub fn start(dir: &Path, extra: &str) -> Daemon {
        Self::start_with_env(dir, extra, Vec::new())
    }

    pub fn start_with_env(dir: &Path, extra: &str, env: Vec<(String, String)>) -> Daemon {
        Self::start_full(dir, extra, env, "epoll")
    }

    /// Writes the config like `start` but does not start the daemon.
    pub fn configure(dir: &Path, extra: &str) -> Daemon {
        Self::configure_full(dir, extra, Vec::new(), "epoll")
    }

    /// `network`: `epoll` or `io_uring` (`server.network`).
    pub fn start_full(dir: &Path, extra: &str, env: Vec<(String, String)>, network: &str) -> Daemon {
        let mut d = Self::configure_full(dir, extra, env, network);
        d.spawn();
        d.wait_ready();
        d
    }

    fn configure_full(dir: &Path, extra: &str, env: Vec<(String, String)>, network: &str) -> Daemon {
        let port = free_port();
        let mport = free_port();
        let config = dir.join("mirrorlogd.toml");
        let text = format!(
            "[storage]\ndevices = [\"{d}/m0.dev\", \"{d}/m1.dev\"]\ndevice_size = \"64MiB\"\nsegment_size = \"4MiB\"\n\n\
             [[journal]]\nname = \"default\"\n\n[server]\nlisten = [\"127.0.0.1:{port}\"]\nnetwork = \"{network}\"\n\n\
             [metrics]\nlisten = \"127.0.0.1:{mport}\"\n\n{extra}\n",
            d = dir.display()
        );
        std::fs::write(&config, text).expect("write config");
        Daemon {
            child: None,
            dir: dir.to_path_buf(),
            config,
            addr: format!("127.0.0.1:{port}"),
            metrics: format!("127.0.0.1:{mport}"),
            log: dir.join("mirrorlogd.log"),
            env,
            starts: 0,
        }
    }

    /// Rewrites the config's `[replication]` role (for a restart).
    pub fn set_role(&self, role: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let mut out = String::new();
        for l in text.lines() {
            if l.starts_with("role = ") {
                out.push_str(&format!("role = \"{role}\"\n"));
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        std::fs::write(&self.config, out).expect("write config");
    }

    /// The daemon's status (any role), parsed.
    pub fn status(&self) -> serde_json::Value {
        let s = mirrorlog::client::admin(&self.addr, &mirrorlog::protocol::Request::Status, Duration::from_secs(10))
            .expect("status");
        serde_json::from_str(&s).expect("status json")
    }

    /// The daemon's role as its status gives it ("" if it does not answer).
    pub fn role(&self) -> String {
        mirrorlog::client::admin(&self.addr, &mirrorlog::protocol::Request::Status, Duration::from_secs(5))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["role"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Waits until the daemon's role is `want`.
    pub fn wait_role(&self, want: &str, within: Duration) {
        let t0 = Instant::now();
        while self.role() != want {
            assert!(t0.elapsed() < within, "not {want} within {within:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process (appending to the log), without waiting.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config).arg("--log-level").arg("info");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn mirrorlogd"));
        self.starts += 1;
    }

    /// Waits until this start logged `ready` and the client port accepts
    /// connections. (A killed daemon's listening socket may linger a moment
    /// while the kernel tears its io_uring down, so a connect alone proves
    /// nothing.)
    pub fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            let readies = self.log_text().matches("server: ready").count();
            if readies >= self.starts as usize && TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("mirrorlogd exited with {st} during start:\n{}", self.log_text());
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "mirrorlogd not ready:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn term(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn devices(&self) -> Vec<PathBuf> {
        vec![self.dir.join("m0.dev"), self.dir.join("m1.dev")]
    }

    /// GET a path from the metrics listener.
    pub fn http_get(&self, path: &str) -> String {
        self.try_http_get(path, Duration::from_secs(10)).expect("GET from the metrics listener")
    }

    /// The whole HTTP response, or None if it did not come within `timeout`.
    pub fn try_http_get(&self, path: &str, timeout: Duration) -> Option<String> {
        use std::io::Write;
        let mut s = TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        st.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One site of a replicated pair: its daemon and its folder.
pub struct Site {
    pub d: Daemon,
    pub _tmp: tempfile::TempDir,
}

impl Site {
    pub fn devices(&self) -> Vec<PathBuf> {
        self.d.devices()
    }
}

/// The `[replication]` table of one site.
/// (`extra` may set any of the timeouts given here; its value is used.)
pub fn repl_table(role: &str, peer: &str, listen: &str, extra: &str) -> String {
    let defaults: String =
        [("ack_timeout", "2s"), ("peer_timeout", "3s"), ("startup_wait", "2s"), ("connect_timeout", "1s")]
            .iter()
            .filter(|(k, _)| !extra.lines().any(|l| l.trim_start().starts_with(&format!("{k} "))))
            .map(|(k, v)| format!("{k} = \"{v}\"\n"))
            .collect();
    format!("[replication]\nrole = \"{role}\"\npeer = \"{peer}\"\nlisten = \"{listen}\"\n{defaults}{extra}\n")
}

/// A primary (A) and a replica (B); A ships through `proxy` if given
/// (a listener address the caller's proxy forwards to B's replication port).
pub fn pair(journals: &str, repl_extra: &str, via: Option<&dyn Fn(&str) -> String>) -> (Site, Site) {
    pair_via(journals, repl_extra, via, None)
}

/// `pair`, where B (once promoted) also reaches A through a proxy if
/// `via_b` is given, so the link can be cut both ways.
pub fn pair_via(
    journals: &str,
    repl_extra: &str,
    via: Option<&dyn Fn(&str) -> String>,
    via_b: Option<&dyn Fn(&str) -> String>,
) -> (Site, Site) {
    let (ta, tb) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    if std::env::var_os("MLOG_KEEP").is_some() {
        eprintln!("site A in {}, site B in {}", ta.path().display(), tb.path().display());
    }
    let (ra, rb) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let peer_of_a = via.map(|f| f(&rb)).unwrap_or_else(|| rb.clone());
    let peer_of_b = via_b.map(|f| f(&ra)).unwrap_or_else(|| ra.clone());
    let mut b =
        Daemon::configure(tb.path(), &format!("{journals}\n{}", repl_table("replica", &peer_of_b, &rb, repl_extra)));
    let mut a =
        Daemon::configure(ta.path(), &format!("{journals}\n{}", repl_table("primary", &peer_of_a, &ra, repl_extra)));
    b.spawn();
    a.spawn();
    a.wait_ready();
    b.wait_ready();
    let keep = |t: tempfile::TempDir| {
        if std::env::var_os("MLOG_KEEP").is_some() {
            tempfile::TempDir::new_in(t.keep()).expect("tmp")
        } else {
            t
        }
    };
    (Site { d: a, _tmp: keep(ta) }, Site { d: b, _tmp: keep(tb) })
}

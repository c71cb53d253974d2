//! The `mirrorlog-faultproxy` binary, driven through its control port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Kills the child proxy when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut stream, &mut out);
                let _ = out.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Parses `key=value` out of the binary's startup line.
fn field(line: &str, key: &str) -> SocketAddr {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

struct Control {
    out: TcpStream,
    lines: BufReader<TcpStream>,
}

impl Control {
    fn connect(addr: SocketAddr) -> Control {
        let out = TcpStream::connect(addr).unwrap();
        out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Control { lines: BufReader::new(out.try_clone().unwrap()), out }
    }

    fn send(&mut self, cmd: &str) -> String {
        writeln!(self.out, "{cmd}").unwrap();
        let mut reply = String::new();
        self.lines.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }
}

fn round_trip(addr: SocketAddr, msg: &[u8]) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    t.elapsed()
}

#[test]
fn binary_forwards_and_obeys_the_control_port() {
    let upstream = echo_server();
    let child = Command::new(env!("CARGO_BIN_EXE_mirrorlog-faultproxy"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.to_string(), "--control", "127.0.0.1:0"])
        .args(["--delay-ms", "10", "--delay-up-ms", "40"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let listen = field(&line, "listening");
    let control = field(&line, "control");
    assert_eq!(field(&line, "upstream"), upstream);

    // 40 ms up (the more specific flag wins) + 10 ms down.
    assert!(round_trip(listen, b"hello") >= Duration::from_millis(50));

    let mut ctl = Control::connect(control);
    assert_eq!(ctl.send("delay both 0"), "ok");
    assert_eq!(ctl.send("delay down 60"), "ok");
    assert!(round_trip(listen, b"hello") >= Duration::from_millis(60));
    assert_eq!(ctl.send("delay down 0"), "ok");
    assert_eq!(ctl.send("bandwidth both 1000000"), "ok");
    assert_eq!(ctl.send("bandwidth up off"), "ok");
    assert_eq!(ctl.send("pause"), "ok");
    assert_eq!(ctl.send("resume"), "ok");
    assert_eq!(ctl.send("refuse on"), "ok");
    assert_eq!(ctl.send("refuse off"), "ok");
    assert_eq!(ctl.send("blackhole on"), "ok");
    assert_eq!(ctl.send("blackhole off"), "ok");
    assert_eq!(ctl.send("cut"), "ok");
    round_trip(listen, b"still works");
    let stats = ctl.send("stats");
    assert!(stats.starts_with("ok c2s_bytes=21 s2c_bytes=21 "), "{stats}");
    assert!(stats.contains("accepted=3"), "{stats}");
    assert!(ctl.send("help").starts_with("ok commands:"));
    assert!(ctl.send("delay sideways 5").starts_with("err "));
    assert!(ctl.send("bandwidth up fast").starts_with("err "));
    assert!(ctl.send("frobnicate").starts_with("err "));
    assert_eq!(ctl.send("quit"), "ok");
}

//! The line-based control protocol of the `mirrorlog-faultproxy` binary.
//!
//! One command per line; every command gets exactly one reply line, `ok`,
//! `ok <details>` or `err <reason>`. Commands:
//!
//! ```text
//! delay up|down|both MS
//! bandwidth up|down|both BYTES_PER_SEC|off
//! cut
//! blackhole on|off
//! refuse on|off
//! pause
//! resume
//! stats            -> ok c2s_bytes=.. s2c_bytes=.. swallowed_bytes=.. buffered_bytes=.. accepted=.. open=.. refused=.. connect_failures=..
//! help
//! quit             (closes this control connection)
//! ```
//!
//! "up" is client to server, "down" server to client. Usable from a shell
//! (bash): `exec 3<>/dev/tcp/127.0.0.1/7499; echo 'delay both 50' >&3; read -r reply <&3`.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::{Direction, Proxy};

/// One line of help per command.
pub const HELP: &str = "commands: delay up|down|both MS; bandwidth up|down|both BPS|off; cut; blackhole on|off; \
                        refuse on|off; pause; resume; stats; help; quit";

/// Runs one command line against `proxy`. `Ok` holds the text after `ok`
/// (possibly empty), `Err` the reason for the `err` reply.
pub fn execute(proxy: &Proxy, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Err("empty command".into());
    };
    match (cmd.to_ascii_lowercase().as_str(), args) {
        ("delay", [dir, ms]) => {
            let dir: Direction = dir.parse()?;
            let ms: u64 = ms.parse().map_err(|_| format!("bad delay {ms:?} (milliseconds expected)"))?;
            proxy.set_delay(dir, Duration::from_millis(ms));
        }
        ("bandwidth", [dir, bps]) => {
            let dir: Direction = dir.parse()?;
            let rate = if bps.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(bps.parse::<u64>().map_err(|_| format!("bad bandwidth {bps:?} (bytes per second or off)"))?)
            };
            proxy.set_bandwidth(dir, rate);
        }
        ("cut", []) => proxy.cut(),
        ("blackhole", [on]) => proxy.set_blackhole(on_off(on)?),
        ("refuse", [on]) => proxy.set_refuse(on_off(on)?),
        ("pause", []) => proxy.pause(),
        ("resume", []) => proxy.resume(),
        ("stats", []) => return Ok(proxy.stats().to_string()),
        ("help", []) => return Ok(HELP.into()),
        _ => return Err(format!("unknown command or wrong arguments: {:?}; {HELP}", line.trim())),
    }
    Ok(String::new())
}

fn on_off(word: &str) -> Result<bool, String> {
    match word.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {word:?}")),
    }
}

/// Serves one control connection until the peer closes it or sends `quit`.
pub fn serve(proxy: &Proxy, stream: TcpStream) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.eq_ignore_ascii_case("quit") {
            writeln!(out, "ok")?;
            return Ok(());
        }
        match execute(proxy, line) {
            Ok(text) if text.is_empty() => writeln!(out, "ok")?,
            Ok(text) => writeln!(out, "ok {text}")?,
            Err(reason) => writeln!(out, "err {reason}")?,
        }
        out.flush()?;
    }
    Ok(())
}

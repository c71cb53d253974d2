//! `mirrorlog-faultproxy`: run a TCP fault proxy by hand or from a script.
//!
//! Prints one line to stdout once listening:
//! `listening=ADDR upstream=ADDR control=ADDR|none`, then serves until killed.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use mirrorlog_faultproxy::{control, Config, Direction, Proxy, DEFAULT_MAX_BUFFER};

/// A TCP fault proxy: forwards connections from --listen to --upstream and
/// injects delay, bandwidth caps, cuts, blackholes, refusals and pauses,
/// driven by a line-based control port.
#[derive(Parser, Debug)]
#[command(name = "mirrorlog-faultproxy", version)]
struct Args {
    /// Address to accept client connections on (port 0 picks one; see the printed line).
    #[arg(long)]
    listen: SocketAddr,
    /// Address every accepted connection is forwarded to.
    #[arg(long)]
    upstream: SocketAddr,
    /// One-way delay added in both directions, in milliseconds.
    #[arg(long, value_name = "MS")]
    delay_ms: Option<u64>,
    /// One-way delay client to server (overrides --delay-ms for that direction).
    #[arg(long, value_name = "MS")]
    delay_up_ms: Option<u64>,
    /// One-way delay server to client (overrides --delay-ms for that direction).
    #[arg(long, value_name = "MS")]
    delay_down_ms: Option<u64>,
    /// Bandwidth cap in bytes per second, each direction.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    bandwidth: Option<u64>,
    /// Most bytes buffered per connection and direction.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BUFFER)]
    max_buffer: usize,
    /// Line-based control port (commands: delay, bandwidth, cut, blackhole, refuse, pause, resume, stats, help).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorlog-faultproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let config = Config { max_buffer: args.max_buffer, ..Config::default() };
    let proxy = Arc::new(Proxy::start_with(args.listen, args.upstream, config)?);
    if let Some(ms) = args.delay_ms {
        proxy.set_delay(Direction::Both, Duration::from_millis(ms));
    }
    if let Some(ms) = args.delay_up_ms {
        proxy.set_delay(Direction::ClientToServer, Duration::from_millis(ms));
    }
    if let Some(ms) = args.delay_down_ms {
        proxy.set_delay(Direction::ServerToClient, Duration::from_millis(ms));
    }
    if let Some(bps) = args.bandwidth {
        proxy.set_bandwidth(Direction::Both, Some(bps));
    }
    let control_listener = args.control.map(TcpListener::bind).transpose()?;
    let control_addr = control_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    println!(
        "listening={} upstream={} control={}",
        proxy.local_addr(),
        proxy.upstream(),
        control_addr.map_or_else(|| "none".to_string(), |a| a.to_string())
    );
    match control_listener {
        Some(listener) => loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let proxy = Arc::clone(&proxy);
                    let spawned = thread::Builder::new().name("faultproxy-control".into()).spawn(move || {
                        if let Err(e) = control::serve(&proxy, stream) {
                            eprintln!("mirrorlog-faultproxy: control connection {peer}: {e}");
                        }
                    });
                    if let Err(e) = spawned {
                        eprintln!("mirrorlog-faultproxy: cannot serve control connection {peer}: {e}");
                    }
                }
                Err(e) => {
                    eprintln!("mirrorlog-faultproxy: control accept: {e}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        },
        None => loop {
            thread::park();
        },
    }
}

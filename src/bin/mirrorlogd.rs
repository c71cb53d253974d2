//! `mirrorlogd`: the mirrorlog appliance daemon.
//!
//! ```text
//! mirrorlogd --config /etc/mirrorlog/mirrorlogd.toml
//! mirrorlogd --data-dir DIR            # embedded default: two file mirrors in DIR
//! mirrorlogd --data-dir A --role primary --peer B:7410 --repl-listen A:7410   # a two-site pair
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mirrorlog::daemon::config::{parse_size, DaemonConfig, Listen};

#[derive(Parser, Debug)]
#[command(name = "mirrorlogd", version, about = "The mirrorlog journal appliance daemon")]
struct Args {
    /// Configuration file (TOML); see docs/daemon.md.
    #[arg(long, short = 'c', conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Embedded default: two file-backed mirrors in DIR (created on first
    /// start), journal `default`, clients on 127.0.0.1:7400, metrics on
    /// 127.0.0.1:7402.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Size of each mirror file created by --data-dir.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    device_size: u64,
    /// Client listener(s), replacing the configured ones: HOST:PORT or unix:/path.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<Listen>,
    /// Metrics listener (HOST:PORT), or `off`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Log filter (overrides the config): info, debug, mirrorlog=debug, …
    #[arg(long)]
    log_level: Option<String>,
    /// Log format (overrides the config): text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Replication role at start (overrides the config): standalone,
    /// primary or replica.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// The peer site's replication address (HOST:PORT); a primary ships there.
    #[arg(long, value_name = "ADDR")]
    peer: Option<SocketAddr>,
    /// This node's replication address (HOST:PORT); a replica is fed there.
    #[arg(long, value_name = "ADDR")]
    repl_listen: Option<SocketAddr>,
    /// This node's name in Hello, status and the peer's logs.
    #[arg(long)]
    name: Option<String>,
    /// A primary that cannot reach its peer at start serves anyway (for
    /// this start; `replication.unreachable_at_start = "serve"` always).
    /// Only when the peer is known not to have been promoted: otherwise
    /// what this node acknowledges meets the peer's history as a split brain.
    #[arg(long)]
    force_primary: bool,
    /// Start without mirror members that are missing, unreadable or blank
    /// although the set last saw them healthy (for this start;
    /// `storage.start_degraded = true` always). Only when they hold nothing
    /// newer than the members present: they are marked failed.
    #[arg(long)]
    start_degraded: bool,
    /// How long the event loop keeps polling after its last piece of work
    /// before it sleeps (overrides `server.idle_poll`): `0us` on a node
    /// whose cores are shared with other work (docs/daemon.md).
    #[arg(long, value_name = "DURATION", value_parser = mirrorlog::daemon::config::parse_duration)]
    idle_poll: Option<std::time::Duration>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match (&args.config, &args.data_dir) {
        (Some(p), _) => match DaemonConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mirrorlogd: {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(d)) => {
            let mut c = DaemonConfig::embedded(d);
            c.storage.device_size = args.device_size;
            // Small devices get smaller segments: at least 8 per device.
            while c.storage.segment_size > 1 << 20 && c.storage.segment_size * 8 > args.device_size {
                c.storage.segment_size /= 2;
            }
            c
        }
        (None, None) => {
            eprintln!("mirrorlogd: give --config FILE or --data-dir DIR (see --help)");
            return ExitCode::from(2);
        }
    };
    if !args.listen.is_empty() {
        cfg.server.listen = args.listen.clone();
    }
    if let Some(m) = &args.metrics {
        cfg.metrics.listen = if m == "off" {
            None
        } else {
            match m.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("mirrorlogd: --metrics {m:?}: {e}");
                    return ExitCode::from(2);
                }
            }
        };
    }
    if let Some(r) = &args.role {
        if !matches!(r.as_str(), "standalone" | "primary" | "replica") {
            eprintln!("mirrorlogd: --role must be standalone, primary or replica");
            return ExitCode::from(2);
        }
        cfg.replication.role = r.clone();
    }
    if args.peer.is_some() {
        cfg.replication.peer = args.peer;
    }
    if args.repl_listen.is_some() {
        cfg.replication.listen = args.repl_listen;
    }
    if let Some(n) = &args.name {
        cfg.server.name = n.clone();
    }
    if args.start_degraded {
        cfg.storage.start_degraded = true;
    }
    if args.force_primary {
        cfg.replication.unreachable_at_start = "serve".into();
    }
    if let Some(d) = args.idle_poll {
        cfg.server.idle_poll = d;
    }
    if let Some(l) = &args.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(f) = &args.log_format {
        if f != "text" && f != "json" {
            eprintln!("mirrorlogd: --log-format must be text or json");
            return ExitCode::from(2);
        }
        cfg.log.format = f.clone();
    }
    if let Err(e) = cfg.check() {
        eprintln!("mirrorlogd: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mirrorlogd: log level {:?}: {e}", cfg.log.level);
            return ExitCode::from(2);
        }
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    match mirrorlog::daemon::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mirrorlogd: {e}");
            ExitCode::from(1)
        }
    }
}

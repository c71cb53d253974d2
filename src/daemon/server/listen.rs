//! Listeners: bound before the loop starts (so errors come before READY=1),
//! and the accept loops.

use super::*;

/// Listeners bound before the loop starts (so binding errors are reported
/// before READY=1).
pub(crate) struct Bound {
    pub tcp: Vec<std::net::TcpListener>,
    pub unix: Vec<std::path::PathBuf>,
    pub epoll: bool,
    pub metrics: Option<std::net::TcpListener>,
}

pub(crate) fn bind(cfg: &DaemonConfig) -> Result<Bound, String> {
    let mut b = Bound { tcp: Vec::new(), unix: Vec::new(), metrics: None, epoll: cfg.server.network == "epoll" };
    for l in &cfg.server.listen {
        match l {
            Listen::Tcp(a) => b.tcp.push(bind_tcp(*a).map_err(|e| format!("listen on {a}: {e}"))?),
            Listen::Unix(p) => {
                // A socket file left by an earlier run is replaced; anything else is not.
                if let Ok(md) = std::fs::symlink_metadata(p) {
                    use std::os::unix::fs::FileTypeExt;
                    if md.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                b.unix.push(p.clone());
            }
        }
    }
    if let Some(a) = cfg.metrics.listen {
        b.metrics = Some(bind_tcp(a).map_err(|e| format!("metrics on {a}: {e}"))?);
    }
    Ok(b)
}

pub(super) fn bind_tcp(a: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&a.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Accepts connections until the drain starts; each gets its own task.
pub(super) async fn accept_loop<S: Stream, F, Fut>(srv: Rc<Srv>, mut accept: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, String)>>,
{
    loop {
        let acc = tokio::select! {
            biased;
            a = accept() => a,
            _ = srv.drain.notified() => break,
        };
        match acc {
            Ok((s, peer)) => {
                tokio_uring::spawn(connection(srv.clone(), Rc::new(s), peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

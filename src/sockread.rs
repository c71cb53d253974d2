//! Socket reads on tokio's readiness model without the extra `recv(2)`.
//!
//! tokio learns that a socket is drained only from a read that fails with
//! `EAGAIN`, so the usual loop (`readable`, then `try_read` until
//! `WouldBlock`) makes two `recv(2)` calls per request-response round: one
//! that brings the bytes and one that only says there are no more. A read
//! that returns less than the room it was given has drained the socket, so
//! [`read_draining`] keeps those bytes and tells tokio `WouldBlock` for it:
//! the readiness is cleared at once. tokio clears it only if no readiness
//! event arrived since the read began, so bytes that arrive meanwhile are
//! not missed. (A peer can force a short read with bytes still queued by
//! sending TCP urgent data, or descriptors over a Unix socket; that stalls
//! only its own connection, until it sends more (or, mid-frame, until the
//! daemon's frame timeout closes it).
//! The protocol uses neither.)

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// A readiness-registered stream (`try_io` for reads).
pub(crate) trait TryIoRead: AsRawFd {
    fn try_io_read(&self, f: impl FnOnce() -> io::Result<usize>) -> io::Result<usize>;
}

impl TryIoRead for tokio::net::TcpStream {
    fn try_io_read(&self, f: impl FnOnce() -> io::Result<usize>) -> io::Result<usize> {
        self.try_io(tokio::io::Interest::READABLE, f)
    }
}

impl TryIoRead for tokio::net::UnixStream {
    fn try_io_read(&self, f: impl FnOnce() -> io::Result<usize>) -> io::Result<usize> {
        self.try_io(tokio::io::Interest::READABLE, f)
    }
}

/// One non-blocking read into `buf`'s spare capacity (the caller reserves
/// room). `Ok(0)` is end of stream; `WouldBlock` means wait for readiness.
pub(crate) fn read_draining<S: TryIoRead>(s: &S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut got = None;
    let r = s.try_io_read(|| {
        let n = recv_into(s.as_raw_fd(), buf)?;
        got = Some(n);
        if n > 0 && buf.len() < buf.capacity() {
            // Short read: drained. The bytes are kept (`got`); the error
            // only makes tokio clear the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match got {
        Some(n) => Ok(n),
        None => r,
    }
}

/// `recv(2)` into the spare capacity of `buf`, extending it by what came.
fn recv_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(16 << 10);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most spare.len() bytes into the vector's
    // unused, allocated capacity, and we own the descriptor's use here.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr() as *mut libc::c_void, spare.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first n bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Real sockets: a short read returns the bytes and clears readiness;
    /// bytes sent afterwards make the socket readable again (no lost wake-up).
    #[test]
    fn a_short_read_keeps_its_bytes_and_later_bytes_still_wake_the_reader() {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        };
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut peer = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
            let (s, _) = l.accept().expect("accept");
            s.set_nonblocking(true).expect("nonblocking");
            let s = tokio::net::TcpStream::from_std(s).expect("register");
            let mut buf = Vec::with_capacity(4096);
            for round in 0..3u8 {
                peer.write_all(&[round; 100]).expect("write");
                let n = loop {
                    s.readable().await.expect("readable");
                    match read_draining(&s, &mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => panic!("read: {e}"),
                    }
                };
                assert_eq!(n, 100);
                assert!(buf[buf.len() - 100..].iter().all(|&b| b == round));
                // Drained: a non-blocking check finds nothing more buffered.
                let mut probe = [0u8; 1];
                assert!(s.try_read(&mut probe).is_err());
            }
            assert_eq!(buf.len(), 300);
            drop(peer);
            s.readable().await.expect("readable");
            assert_eq!(read_draining(&s, &mut buf).expect("eof"), 0);
        });
    }
}

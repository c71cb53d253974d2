//! Raw protocol frames over a blocking socket, for tests that need exact
//! control of what is sent on one connection.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use mirrorlog::frames::FrameBuf;
use mirrorlog::protocol::{Op, Response};

pub fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    {
        use std::os::fd::AsRawFd;
        LEFT.with(|l| l.borrow_mut().remove(&s.as_raw_fd()));
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

thread_local! {
    /// Bytes read past the last frame, per socket (by fd).
    static LEFT: std::cell::RefCell<std::collections::HashMap<i32, FrameBuf>> = Default::default();
}

/// Reads one frame: (opcode, request id, body).
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, u64, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let mut buf = LEFT.with(|l| l.borrow_mut().remove(&fd)).unwrap_or_else(|| FrameBuf::new(64 << 20));
    loop {
        if let Ok(Some(f)) = buf.next_frame() {
            let out = (f.opcode, f.request_id, f.body.to_vec());
            LEFT.with(|l| l.borrow_mut().insert(fd, buf));
            return Some(out);
        }
        match buf.fill_with(4096, |room| s.read(room)) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

pub fn error_code(f: &(u8, u64, Vec<u8>)) -> Option<u16> {
    let frame = mirrorlog::protocol::Frame { opcode: f.0, request_id: f.1, body: &f.2 };
    match Response::decode(&frame, Op::Error) {
        Ok(Response::Error { code, .. }) => Some(code),
        _ => None,
    }
}

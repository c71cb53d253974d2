//! The receive side of every framed connection (client protocol and
//! replication link), with no I/O: bytes in, however the caller reads them
//! (io_uring into an owned buffer, epoll or tokio into spare capacity, a
//! blocking `Read` into a slice), whole checked frames out, one at a time.
//! The daemon, the client, the replication link, the bench's load
//! generator and the tests all read frames through it.
//!
//! Invariants (asserted by the tests below):
//! - A frame is handed out only whole and checked (`decode_frame`: magic,
//!   version, length within `max_body`, CRC32C), in the order its bytes
//!   arrived, whatever the read boundaries were.
//! - A body longer than `max_body` is refused from its header, before its
//!   bytes are buffered: the buffer holds at most one frame's header and
//!   body plus one read's worth of bytes beyond what was handed out.
//! - After an error the stream is out of step: the caller closes the
//!   connection (a fatal `ProtoError`).

use crate::protocol::{decode_frame, Frame, ProtoError};

/// A connection's receive buffer.
#[derive(Debug)]
pub struct FrameBuf {
    /// Bytes `pos..end` are received and not yet handed out; `end..len()`
    /// is initialised room for the next slice read.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    max_body: u32,
}

impl FrameBuf {
    pub fn new(max_body: u32) -> FrameBuf {
        FrameBuf { buf: Vec::with_capacity(64 << 10), pos: 0, end: 0, max_body }
    }

    /// The next whole frame, checked. `Ok(None)`: more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, ProtoError> {
        match decode_frame(&self.buf[self.pos..self.end], self.max_body)? {
            None => Ok(None),
            Some((f, n)) => {
                self.pos += n;
                Ok(Some(f))
            }
        }
    }

    /// Bytes received and not yet handed out (part of a frame, or frames
    /// not asked for yet).
    pub fn pending(&self) -> usize {
        self.end - self.pos
    }

    /// Moves what is pending to the front (after frames were handed out),
    /// and gives back the memory of a buffer that grew past 4 MiB for one
    /// large frame once little is pending.
    pub fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.buf.capacity() > 4 << 20 && self.end < 64 << 10 {
            self.buf.truncate(self.end);
            self.buf.shrink_to(256 << 10);
        }
    }

    /// For a read into an owned buffer (io_uring): the buffer, compacted,
    /// with room for at least `min_room` more bytes after its `len()`
    /// (where the read goes). Give it back with [`FrameBuf::restore`].
    pub fn take(&mut self, min_room: usize) -> Vec<u8> {
        self.compact();
        self.buf.truncate(self.end);
        if self.buf.capacity() - self.buf.len() < min_room {
            self.buf.reserve(min_room.max(64 << 10));
        }
        self.end = 0;
        std::mem::take(&mut self.buf)
    }

    /// Takes back the buffer of [`FrameBuf::take`], with what the read
    /// appended.
    pub fn restore(&mut self, buf: Vec<u8>) {
        self.end = buf.len();
        self.pos = 0;
        self.buf = buf;
    }

    /// For a read that appends to a `Vec` (into its spare capacity): `read`
    /// gets the buffer with room for at least `min_room` bytes and must only
    /// append. Returns what `read` returned.
    pub fn append_with<T, E>(
        &mut self,
        min_room: usize,
        read: impl FnOnce(&mut Vec<u8>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut b = self.take(min_room);
        let r = read(&mut b);
        self.restore(b);
        r
    }

    /// For a read into a slice (`std::io::Read`): `read` gets at least
    /// `room` bytes of initialised room and returns how many it filled.
    pub fn fill_with<E>(&mut self, room: usize, read: impl FnOnce(&mut [u8]) -> Result<usize, E>) -> Result<usize, E> {
        self.compact();
        if self.buf.len() < self.end + room {
            self.buf.resize(self.end + room, 0);
        }
        let n = read(&mut self.buf[self.end..])?;
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
        Ok(n)
    }

    /// Appends bytes already read.
    pub fn extend(&mut self, bytes: &[u8]) {
        // (A copy; the other entries avoid it.)
        let _ = self.fill_with(bytes.len(), |room| {
            room[..bytes.len()].copy_from_slice(bytes);
            Ok::<usize, ()>(bytes.len())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_frame, HEADER_LEN};

    fn frames(n: usize) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for i in 0..n {
            let body: Vec<u8> = (0..(i * 37) % 300).map(|b| b as u8 ^ i as u8).collect();
            encode_frame(&mut wire, 0x02, i as u64, |b| b.extend_from_slice(&body));
            want.push((i as u64, body));
        }
        (wire, want)
    }

    fn drain(fb: &mut FrameBuf, got: &mut Vec<(u64, Vec<u8>)>) {
        while let Some(f) = fb.next_frame().expect("valid") {
            got.push((f.request_id, f.body.to_vec()));
        }
    }

    #[test]
    fn frames_come_out_whole_and_in_order_whatever_the_read_boundaries() {
        let (wire, want) = frames(40);
        for chunk in [1usize, 2, 3, 7, 23, 24, 25, 100, 4096, wire.len()] {
            // The three ways of reading, in turn.
            let mut fb = FrameBuf::new(1 << 20);
            let mut got = Vec::new();
            for (k, piece) in wire.chunks(chunk).enumerate() {
                match k % 3 {
                    0 => fb.extend(piece),
                    1 => {
                        fb.append_with(piece.len(), |v| {
                            v.extend_from_slice(piece);
                            Ok::<(), ()>(())
                        })
                        .expect("append");
                    }
                    _ => {
                        let n = fb
                            .fill_with(piece.len() + 10, |room| {
                                room[..piece.len()].copy_from_slice(piece);
                                Ok::<usize, ()>(piece.len())
                            })
                            .expect("fill");
                        assert_eq!(n, piece.len());
                    }
                }
                drain(&mut fb, &mut got);
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(fb.pending(), 0);
        }
    }

    #[test]
    fn an_owned_buffer_read_keeps_a_partial_frame() {
        let (wire, want) = frames(3);
        let mut fb = FrameBuf::new(1 << 20);
        let cut = wire.len() - 5;
        let mut b = fb.take(cut);
        b.extend_from_slice(&wire[..cut]);
        fb.restore(b);
        let mut got = Vec::new();
        drain(&mut fb, &mut got);
        assert_eq!(got.len(), 2);
        let two = 2 * HEADER_LEN + want[0].1.len() + want[1].1.len();
        assert_eq!(fb.pending(), cut - two);
        let pending = fb.pending();
        let mut b = fb.take(16);
        assert_eq!(b.len(), pending, "take keeps the pending bytes, at the front");
        assert_eq!(&b[..], &wire[two..cut]);
        b.extend_from_slice(&wire[cut..]);
        fb.restore(b);
        drain(&mut fb, &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn a_body_over_the_limit_is_refused_from_its_header() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, 0x02, 1, |b| b.extend_from_slice(&[0u8; 2000]));
        let mut fb = FrameBuf::new(1000);
        fb.extend(&wire[..HEADER_LEN]);
        assert_eq!(fb.next_frame(), Err(ProtoError::TooLarge { len: 2000, max: 1000 }));
    }

    #[test]
    fn a_corrupted_byte_is_an_error_never_a_frame() {
        let (mut wire, _) = frames(2);
        let last = wire.len() - 1;
        wire[last] ^= 0x40;
        let mut fb = FrameBuf::new(1 << 20);
        fb.extend(&wire);
        assert!(fb.next_frame().expect("first is fine").is_some());
        assert_eq!(fb.next_frame(), Err(ProtoError::BadChecksum));
    }

    #[test]
    fn a_large_frame_s_memory_is_given_back() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, 0x02, 1, |b| b.extend_from_slice(&vec![9u8; 6 << 20]));
        let mut fb = FrameBuf::new(8 << 20);
        fb.extend(&wire);
        assert_eq!(fb.next_frame().expect("valid").map(|f| f.body.len()), Some(6 << 20));
        fb.compact();
        assert!(fb.buf.capacity() <= 1 << 20, "capacity {}", fb.buf.capacity());
    }
}

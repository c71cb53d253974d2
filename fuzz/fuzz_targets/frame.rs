//! Fuzz the frame decoder and the message decoders: any bytes, any split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorlog::protocol::{decode_frame, Op, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    // decode frames back to back until the input runs out or turns bad
    while let Ok(Some((f, used))) = decode_frame(buf, 1 << 16) {
        let _ = Request::decode(&f, 1 << 12);
        for op in [Op::Hello, Op::Append, Op::Read, Op::Subscribe, Op::GetMark, Op::ListJournals, Op::Status] {
            let _ = Response::decode(&f, op);
        }
        buf = &buf[used..];
    }
    // and the body decoders straight on the raw bytes, checksum or not
    if data.len() > 1 {
        let f = mirrorlog::protocol::Frame { opcode: data[0], request_id: 0, body: &data[1..] };
        let _ = Request::decode(&f, 1 << 12);
        let _ = Response::decode(&f, Op::Read);
    }
});

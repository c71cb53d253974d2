//! Fuzz the replication link's decoder: any bytes as frames (checksummed)
//! and as raw message bodies under every opcode; re-encoding what decodes
//! must give the same message back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorlog::protocol::{decode_frame, Frame};
use mirrorlog::replication::wire::Msg;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((f, used))) = decode_frame(buf, 1 << 20) {
        if let Ok(m) = Msg::decode(&f) {
            let mut out = Vec::new();
            m.encode(&mut out);
            let (g, _) = decode_frame(&out, 1 << 24).expect("own frame").expect("whole");
            assert_eq!(Msg::decode(&g).expect("own message"), m);
        }
        buf = &buf[used..];
    }
    if let Some((&op, body)) = data.split_first() {
        let _ = Msg::decode(&Frame { opcode: op, request_id: 0, body });
        let _ = Msg::decode(&Frame { opcode: 0x41 + op % 10, request_id: 0, body });
        let _ = Msg::decode(&Frame { opcode: 0x61 + op % 7, request_id: 0, body });
    }
});

//! Fuzzes the packet decoder: header then every frame. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surelink_proto::wire::{FrameIter, Header, Reader};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    if Header::decode(&mut r).is_ok() {
        let payload = &data[data.len() - r.remaining()..];
        for frame in FrameIter::new(payload) {
            if let Ok(f) = frame {
                // A decoded bundle yields exactly the messages it counts.
                if let surelink_proto::wire::Frame::Bundle(b) = &f {
                    assert_eq!(b.messages().count() as u64, b.count);
                }
                // Re-encoding a decoded frame must decode to the same frame.
                let mut buf = Vec::new();
                f.encode(&mut buf);
                let again: Vec<_> = FrameIter::new(&buf).collect();
                assert!(matches!(again.as_slice(), [Ok(g)] if *g == f) || matches!(f, surelink_proto::wire::Frame::Padding(_)));
            }
        }
    }
});

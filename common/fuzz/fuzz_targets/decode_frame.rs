//! Fuzzes the sans-IO uplink frame decoder: any bytes, both directions,
//! whole and fed in pieces. It must never panic, and a frame it accepts
//! must re-encode to a frame that decodes and re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use o1_common::wire::{AgentMessage, Decoded, FrameReader, RelayMessage, decode_frame, encode_frame};

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Frame { message, consumed }) = decode_frame::<AgentMessage>(data, MAX) {
        assert!(consumed <= data.len());
        let mut again = Vec::new();
        encode_frame(&message, &mut again, MAX).expect("a decoded message re-encodes");
        // Compare bytes, not messages: NaN floats are legal on the wire and
        // not equal to themselves.
        match decode_frame::<AgentMessage>(&again, MAX) {
            Ok(Decoded::Frame { message: back, .. }) => {
                let mut third = Vec::new();
                encode_frame(&back, &mut third, MAX).expect("re-encodes");
                assert_eq!(third, again);
            }
            other => panic!("re-encoded frame did not decode: {other:?}"),
        }
    }
    let _ = decode_frame::<RelayMessage>(data, MAX);
    let mut reader = FrameReader::new(MAX);
    for piece in data.chunks(7) {
        reader.extend(piece);
        while let Ok(Some(_)) = reader.next_message::<AgentMessage>() {}
    }
});

//! The arithmetic decoder on arbitrary streams, with arbitrary CDFs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nc06::format::fuzzing::decoder(data));

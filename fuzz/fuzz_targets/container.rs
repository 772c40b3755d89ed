//! The NC06 container parser and the binary frame decoders behind it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nc06::format::fuzzing::container(data));

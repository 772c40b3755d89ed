//! Blobs built field by field (valid checksums) and then mutated: reaches the
//! container's validation, index and frame decoders, which mutated bytes rarely do.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nc06::format::fuzzing::structured(data));

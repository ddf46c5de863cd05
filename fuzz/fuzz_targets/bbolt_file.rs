//! Fuzz target: `kvd::fuzzing::bbolt_file` on arbitrary bytes (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzzing::bbolt_file(data));

//! Fuzz target: `kvd::fuzzing::backend_rows` on arbitrary bytes (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzzing::backend_rows(data));

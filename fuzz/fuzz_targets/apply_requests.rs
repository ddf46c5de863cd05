//! Fuzz target: `kvd::fuzzing::apply_requests` on arbitrary bytes (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzzing::apply_requests(data));

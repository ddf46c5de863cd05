//! Fuzz target: `kvd::fuzzing::wal_segment` on arbitrary bytes (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzzing::wal_segment(data));

//! Fuzz target: `kvd::fuzzing::grpc_requests` on arbitrary bytes (see its doc comment).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzzing::grpc_requests(data));

//! Replays the inputs kept from fuzzing (`fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) through the same entry points the fuzz
//! targets call, so every input that once found a bug, and the corpus that
//! reaches the code's corners, runs in every `cargo test` on stable Rust.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz");
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(sub).join(target)) else { continue };
        let mut inputs: Vec<_> = dir.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        inputs.sort();
        for p in inputs {
            let data = std::fs::read(&p).unwrap();
            let res = std::panic::catch_unwind(|| f(&data));
            assert!(res.is_ok(), "{} panicked", p.display());
            n += 1;
        }
    }
    n
}

#[test]
fn wal_segment_corpus() {
    let n = replay("wal_segment", kvd::fuzzing::wal_segment);
    assert!(n > 0, "no kept inputs for wal_segment");
}

#[test]
fn backend_rows_corpus() {
    let n = replay("backend_rows", kvd::fuzzing::backend_rows);
    assert!(n > 0, "no kept inputs for backend_rows");
}

#[test]
fn apply_requests_corpus() {
    let n = replay("apply_requests", kvd::fuzzing::apply_requests);
    assert!(n > 0, "no kept inputs for apply_requests");
}

#[test]
fn grpc_requests_corpus() {
    let n = replay("grpc_requests", kvd::fuzzing::grpc_requests);
    assert!(n > 0, "no kept inputs for grpc_requests");
}

#[test]
fn bbolt_file_corpus() {
    let n = replay("bbolt_file", kvd::fuzzing::bbolt_file);
    assert!(n > 0, "no kept inputs for bbolt_file");
}

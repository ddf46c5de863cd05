//! kvd's allocator settings take effect: mimalloc's arena is committed
//! lazily (the option is set by a constructor, before the first allocation
//! reserves the arena), and `MIMALLOC_ARENA_EAGER_COMMIT` still overrides
//! it. mimalloc prints its options at start-up with `MIMALLOC_VERBOSE=1`.

mod common;

use std::process::Command;

/// What mimalloc reports for `arena_eager_commit` when kvd starts with `env`.
fn arena_eager_commit(env: &[(&str, &str)]) -> String {
    let out = Command::new(common::kvd_bin())
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("kvd runs");
    assert!(out.status.success(), "kvd --version failed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("option 'arena_eager_commit'"))
        .unwrap_or_else(|| panic!("mimalloc printed no arena_eager_commit option:\n{err}"));
    line.rsplit(':').next().unwrap_or_default().trim().to_string()
}

#[test]
fn the_arena_is_committed_lazily_unless_the_environment_says_otherwise() {
    assert_eq!(arena_eager_commit(&[]), "0", "kvd's default");
    assert_eq!(arena_eager_commit(&[("MIMALLOC_ARENA_EAGER_COMMIT", "1")]), "1", "the environment wins");
}

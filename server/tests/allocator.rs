//! kvd's allocator settings take effect: mimalloc's arena is committed
//! lazily and freed memory is purged at once while kvd starts (both set by
//! a constructor, before the first allocation reserves the arena), then
//! after a second once it serves, and the environment still overrides
//! each. mimalloc prints its options at start-up with `MIMALLOC_VERBOSE=1`;
//! kvd logs the purge delay it serves with.

mod common;

use std::process::Command;

/// What mimalloc reports for `option` when kvd starts with `env`.
fn mimalloc_option(option: &str, env: &[(&str, &str)]) -> String {
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
        .find(|l| l.contains(&format!("option '{option}'")))
        .unwrap_or_else(|| panic!("mimalloc printed no {option} option:\n{err}"));
    line.rsplit(':').next().unwrap_or_default().trim().to_string()
}

#[test]
fn the_arena_is_committed_lazily_unless_the_environment_says_otherwise() {
    assert_eq!(mimalloc_option("arena_eager_commit", &[]), "0", "kvd's default");
    let env = [("MIMALLOC_ARENA_EAGER_COMMIT", "1")];
    assert_eq!(mimalloc_option("arena_eager_commit", &env), "1", "the environment wins");
}

#[tokio::test]
async fn freed_memory_is_purged_at_once_while_starting_then_after_a_second() {
    assert_eq!(mimalloc_option("purge_delay", &[]), "0", "while kvd starts");
    assert_eq!(mimalloc_option("purge_delay", &[("MIMALLOC_PURGE_DELAY", "10")]), "10", "the environment wins");
    let dir = tempfile::tempdir().unwrap();
    for (env, delay) in [(&[][..], "1000"), (&[("MIMALLOC_PURGE_DELAY", "10")][..], "10")] {
        let kvd = common::Proc::kvd_with_env(&dir.path().join(delay), &["--log-level", "info"], env);
        kvd.ready().await;
        let log = kvd.log_text();
        let field = format!("purge_delay_ms={delay}");
        assert!(
            log.lines().any(|l| l.split_whitespace().any(|w| w == field)),
            "{env:?}: serving with {delay} ms:\n{log}"
        );
    }
}

//! `--force-new-cluster-member NAME/TOKEN`: `--force-new-cluster` for one
//! named member, once per TOKEN. An operator sets it for every member at
//! once (an environment variable from a shared ConfigMap), so the value says
//! which member it is for, and a member that has acted on a token records it
//! in its data dir: a pod that restarts later with the same, stale value must
//! not reset the membership of a cluster that has grown back since.
//!
//! The record is `<data-dir>/member/force-new-cluster-token`, written
//! durably (temporary file, fsync, rename, fsync of the directory) after the
//! forced membership entry is in the WAL. A crash in between forces again on
//! the next start, which is a no-op then (the log already ends with this
//! member alone), and then writes the record.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Name of the record of the last token acted on, in `<data-dir>/member`.
pub const TOKEN_FILE: &str = "force-new-cluster-token";

/// A parsed `--force-new-cluster-member` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceRequest {
    /// The `--name` of the member to force.
    pub member: String,
    /// Unique per recovery.
    pub token: String,
}

/// Parses `NAME/TOKEN`; an empty value is `None` (off). The token is made of
/// ASCII letters, digits, `.`, `_` and `-`.
pub fn parse(value: &str) -> Result<Option<ForceRequest>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (member, token) = value.split_once('/').ok_or_else(|| format!("{value:?} is not NAME/TOKEN"))?;
    if member.is_empty() {
        return Err(format!("{value:?} has no member name before '/'"));
    }
    if token.is_empty() {
        return Err(format!("{value:?} has no token after '/'"));
    }
    if !token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("token {token:?} may only hold ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(Some(ForceRequest { member: member.to_string(), token: token.to_string() }))
}

/// Whether the member whose directory is `member_dir` has already acted on `token`.
pub fn acted_on(member_dir: &Path, token: &str) -> io::Result<bool> {
    match std::fs::read_to_string(member_dir.join(TOKEN_FILE)) {
        Ok(recorded) => Ok(recorded.trim() == token),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Records durably that the member in `member_dir` has acted on `token`.
pub fn record(member_dir: &Path, token: &str) -> io::Result<()> {
    let tmp = member_dir.join(format!("{TOKEN_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, member_dir.join(TOKEN_FILE))?;
    File::open(member_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_token() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("  ").unwrap(), None);
        let r = parse("demo-1/abc-123_x.y").unwrap().unwrap();
        assert_eq!((r.member.as_str(), r.token.as_str()), ("demo-1", "abc-123_x.y"));
        for bad in ["demo-1", "/tok", "demo-1/", "demo-1/to ken", "demo-1/a/b"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_record_remembers_only_the_last_token() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!acted_on(dir.path(), "t1").unwrap());
        record(dir.path(), "t1").unwrap();
        assert!(acted_on(dir.path(), "t1").unwrap());
        assert!(!acted_on(dir.path(), "t2").unwrap());
        record(dir.path(), "t2").unwrap();
        assert!(acted_on(dir.path(), "t2").unwrap() && !acted_on(dir.path(), "t1").unwrap());
        assert!(!dir.path().join(format!("{TOKEN_FILE}.tmp")).exists());
    }
}

//! Version upgrades, gated (pure). When the spec's image differs from one a
//! member pod runs, before the StatefulSet takes it:
//! 1. the versions their tags name must be one minor apart at most, and a
//!    minor version is never downgraded (patch versions move freely; a tag
//!    that is no version, such as `latest`, is not checked);
//! 2. with `spec.backup`, a backup Job for this image must have succeeded
//!    (one is started if none exists);
//! 3. every member must be healthy.
//!
//! The pods are then restarted one at a time as for any template change.

use crate::maintenance::JobObs;

/// A `major.minor.patch` version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version a tag names: `1.2.3` or `v1.2.3`, with an optional
/// pre-release or build suffix (`-rc.1`, `+abc`), which is ignored.
pub fn parse(tag: &str) -> Option<Version> {
    let core = tag.strip_prefix('v').unwrap_or(tag);
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let mut num = || parts.next()?.parse::<u64>().ok();
    let v = Version { major: num()?, minor: num()?, patch: num()? };
    parts.next().is_none().then_some(v)
}

/// The version of an image reference's tag (none for a digest or no tag).
pub fn image_version(image: &str) -> Option<Version> {
    if image.contains('@') {
        return None;
    }
    let (repo, tag) = image.rsplit_once(':')?;
    // A colon before the last slash is a registry port, not a tag.
    if tag.contains('/') || repo.is_empty() {
        return None;
    }
    parse(tag)
}

/// Why going from `from` to `to` is refused, if it is.
pub fn refusal(from: Version, to: Version) -> Option<String> {
    if from.major != to.major {
        return Some(format!("{from} to {to} changes the major version; go through a backup and a new cluster"));
    }
    if to.minor > from.minor + 1 {
        return Some(format!(
            "{from} to {to} skips {}.{}: upgrade one minor version at a time",
            from.major,
            from.minor + 1
        ));
    }
    if to.minor < from.minor {
        return Some(format!("{from} to {to} downgrades the minor version, which kvd does not support"));
    }
    None
}

/// The rotation-like token of the backup taken before upgrading to `image`.
pub fn backup_token(image: &str) -> String {
    format!("upgrade to {image}")
}

/// What the gate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// No member pod runs another image, or all is ready: go on.
    Open,
    /// The change must not happen (Degraded with this reason and message).
    Refused(&'static str, String),
    /// Start the backup Job for `token`.
    Backup(String),
    /// Wait (reason, message).
    Wait(&'static str, String),
}

/// The gate for moving the members from `running` images to `desired`.
/// `backup`: with `spec.backup`, the token and the Job its backup runs in;
/// `jobs`: the Jobs there are; `healthy`: every member is healthy.
pub fn gate(desired: &str, running: &[&str], backup: Option<(&str, &str)>, jobs: &[JobObs], healthy: bool) -> Gate {
    let others: Vec<&str> = running.iter().copied().filter(|i| *i != desired).collect();
    if others.is_empty() {
        return Gate::Open;
    }
    if let Some(to) = image_version(desired) {
        for from in others.iter().filter_map(|i| image_version(i)) {
            if let Some(why) = refusal(from, to) {
                return Gate::Refused("UpgradeRefused", why);
            }
        }
    }
    if let Some((token, job)) = backup {
        match jobs.iter().find(|j| j.name == job) {
            None => return Gate::Backup(token.to_string()),
            Some(j) if j.failed => {
                let why = j.failure.as_ref().map(|(m, _)| m.as_str()).unwrap_or("no message");
                return Gate::Refused(
                    "UpgradeBackupFailed",
                    format!("the backup before the upgrade ({job}) failed: {why}; delete the Job to try again"),
                );
            }
            Some(j) if !j.succeeded => {
                return Gate::Wait("UpgradeBackup", format!("{job} takes a backup before the upgrade"));
            }
            Some(_) => {}
        }
    }
    if !healthy {
        return Gate::Wait("UpgradeWaitsForHealth", "every member must be healthy before the upgrade".into());
    }
    Gate::Open
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Task;

    fn v(s: &str) -> Version {
        parse(s).expect(s)
    }

    #[test]
    fn tags_parse_as_versions() {
        assert_eq!(parse("0.2.0"), Some(Version { major: 0, minor: 2, patch: 0 }));
        assert_eq!(parse("v1.10.3-rc.1"), Some(Version { major: 1, minor: 10, patch: 3 }));
        for bad in ["latest", "e2e-next", "1.2", "1.2.3.4", "", "v"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(image_version("ghcr.io/kvd-io/kvd:0.2.0"), Some(v("0.2.0")));
        assert_eq!(image_version("localhost:5000/kvd"), None);
        assert_eq!(image_version("localhost:5000/kvd:0.3.1"), Some(v("0.3.1")));
        assert_eq!(image_version("x/kvd@sha256:abc"), None);
    }

    #[test]
    fn one_minor_version_at_a_time_and_never_down() {
        assert_eq!(refusal(v("0.1.0"), v("0.2.0")), None);
        assert_eq!(refusal(v("0.1.5"), v("0.1.2")), None, "patch versions move freely");
        assert_eq!(refusal(v("0.2.0"), v("0.2.0")), None);
        let skip = refusal(v("0.1.0"), v("0.3.0")).expect("skip");
        assert!(skip.contains("skips 0.2"), "{skip}");
        assert!(refusal(v("0.2.0"), v("0.1.9")).expect("down").contains("downgrades"));
        assert!(refusal(v("1.0.0"), v("2.0.0")).expect("major").contains("major"));
    }

    fn job(name: &str, succeeded: bool, failed: bool) -> JobObs {
        JobObs {
            name: name.into(),
            task: Task::Backup,
            succeeded,
            failed,
            completed: None,
            message: None,
            failure: failed.then(|| ("SignatureDoesNotMatch".to_string(), None)),
        }
    }

    #[test]
    fn the_gate_checks_versions_then_takes_a_backup_then_waits_for_health() {
        let to = "r/kvd:0.2.0";
        // Nothing runs another image.
        assert_eq!(gate(to, &[to, to], None, &[], false), Gate::Open);
        // A skip is refused before anything else.
        let g = gate("r/kvd:0.3.0", &["r/kvd:0.1.0"], Some(("t", "j")), &[], true);
        assert!(matches!(g, Gate::Refused("UpgradeRefused", _)), "{g:?}");
        // A backup first: started, waited for, then the health gate.
        let b = Some(("upgrade to r/kvd:0.2.0", "demo-backup-now-1"));
        let running = ["r/kvd:0.1.0", "r/kvd:0.1.0", to];
        assert_eq!(gate(to, &running, b, &[], true), Gate::Backup("upgrade to r/kvd:0.2.0".into()));
        let running_job = [job("demo-backup-now-1", false, false)];
        assert!(matches!(gate(to, &running, b, &running_job, true), Gate::Wait("UpgradeBackup", _)));
        let failed = [job("demo-backup-now-1", false, true)];
        let g = gate(to, &running, b, &failed, true);
        assert!(matches!(&g, Gate::Refused("UpgradeBackupFailed", m) if m.contains("SignatureDoesNotMatch")), "{g:?}");
        let done = [job("other", false, true), job("demo-backup-now-1", true, false)];
        assert!(matches!(gate(to, &running, b, &done, false), Gate::Wait("UpgradeWaitsForHealth", _)));
        assert_eq!(gate(to, &running, b, &done, true), Gate::Open);
        // Without spec.backup, no backup; tags that are no versions are not checked.
        assert_eq!(gate("r/kvd:latest", &["r/kvd:e2e"], None, &[], true), Gate::Open);
    }
}

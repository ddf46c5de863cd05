//! Pure translation of a container spec into what the agent runs: which
//! local binary stands for the image and the argument vector, with
//! Kubernetes' `$(VAR)` expansion (the environment is `env.rs`).

use crate::error::{Error, Result};

/// The locally built binaries that stand in for images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Kvd,
    Kvctl,
    Operator,
}

impl Binary {
    /// The file name in the cargo target directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Binary::Kvd => "kvd",
            Binary::Kvctl => "kvctl",
            Binary::Operator => "kvd-operator",
        }
    }
}

/// The tag of an image reference, if it has one (not a digest).
pub fn image_tag(image: &str) -> Option<&str> {
    let image = image.split('@').next().unwrap_or(image);
    let repo = image_repository(image);
    image.strip_prefix(repo)?.strip_prefix(':').filter(|t| !t.is_empty())
}

/// The file that stands for `bin` in `image`: `<name>-<tag>` when the
/// directory has one for the image's tag (the e2e's second kvd build,
/// reporting another version), else `<name>`.
pub fn binary_file(bin: Binary, image: &str, exists: &dyn Fn(&str) -> bool) -> String {
    match image_tag(image).map(|t| format!("{}-{t}", bin.file_name())) {
        Some(tagged) if exists(&tagged) => tagged,
        _ => bin.file_name().to_string(),
    }
}

/// The repository part of an image reference: no `@digest`, no `:tag`.
pub fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match (image.rfind(':'), image.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &image[..colon],
        (Some(colon), None) => &image[..colon],
        _ => image,
    }
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// The binary and its arguments for `image` with the container's
/// `command`/`args`: images whose repository ends in `/kvd` run kvd (or
/// kvctl when `command[0]` is kvctl), `/kvd-operator` runs kvd-operator.
/// As in Kubernetes, `command` replaces the image's entrypoint and `args`
/// its default arguments.
pub fn resolve(image: &str, command: &[String], args: &[String]) -> Result<(Binary, Vec<String>)> {
    let repo = image_repository(image);
    let repo_base = basename(repo);
    let allowed: &[Binary] = match repo_base {
        "kvd" => &[Binary::Kvd, Binary::Kvctl],
        "kvd-operator" => &[Binary::Operator],
        _ => {
            return Err(Error::Spec {
                reason: "ErrImagePull",
                message: format!("no local binary stands for image {image:?} (only .../kvd and .../kvd-operator)"),
            });
        }
    };
    let (bin, mut argv) = match command.split_first() {
        None => (allowed[0], Vec::new()),
        Some((first, rest)) => {
            let b = allowed.iter().copied().find(|b| b.file_name() == basename(first)).ok_or_else(|| Error::Spec {
                reason: "RunContainerError",
                message: format!("image {image:?} has no {first:?}"),
            })?;
            (b, rest.to_vec())
        }
    };
    argv.extend(args.iter().cloned());
    Ok((bin, argv))
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value of NAME when
/// `lookup` knows it and stays as written otherwise; `$$` is a literal `$`.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::lookup;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn images_map_to_binaries() {
        assert_eq!(image_repository("ghcr.io/kvd-io/kvd:0.1.0"), "ghcr.io/kvd-io/kvd");
        assert_eq!(image_repository("localhost:5000/kvd"), "localhost:5000/kvd");
        assert_eq!(image_repository("x/kvd@sha256:abc"), "x/kvd");
        let (b, a) = resolve("ghcr.io/kvd-io/kvd:1", &s(&["kvd"]), &s(&["--name=a"])).expect("kvd");
        assert_eq!((b, a), (Binary::Kvd, s(&["--name=a"])));
        let (b, a) = resolve("ghcr.io/kvd-io/kvd:1", &s(&["kvctl", "x"]), &s(&["compact"])).expect("kvctl");
        assert_eq!((b, a), (Binary::Kvctl, s(&["x", "compact"])));
        let (b, a) = resolve("ghcr.io/kvd-io/kvd-operator:0.1.0", &[], &s(&["--port=8080"])).expect("op");
        assert_eq!((b, a), (Binary::Operator, s(&["--port=8080"])));
        assert!(matches!(resolve("registry.invalid/web", &[], &[]), Err(Error::Spec { reason: "ErrImagePull", .. })));
        assert!(resolve("ghcr.io/kvd-io/kvd:1", &s(&["sh"]), &[]).is_err());
    }

    #[test]
    fn a_tagged_binary_stands_for_its_tag() {
        assert_eq!(image_tag("ghcr.io/kvd-io/kvd:0.2.0"), Some("0.2.0"));
        assert_eq!(image_tag("localhost:5000/kvd"), None);
        assert_eq!(image_tag("x/kvd@sha256:abc"), None);
        let have = |f: &str| f == "kvd-0.2.0";
        assert_eq!(binary_file(Binary::Kvd, "ghcr.io/kvd-io/kvd:0.2.0", &have), "kvd-0.2.0");
        assert_eq!(binary_file(Binary::Kvd, "ghcr.io/kvd-io/kvd:0.1.0", &have), "kvd");
        assert_eq!(binary_file(Binary::Kvctl, "ghcr.io/kvd-io/kvd:0.2.0", &have), "kvctl");
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "1".to_string()), ("POD_NAME".to_string(), "demo-0".to_string())];
        let f = |n: &str| lookup(&env, n);
        assert_eq!(expand("--name=$(POD_NAME)", &f), "--name=demo-0");
        assert_eq!(expand("$(A)$(A)-$(B)", &f), "11-$(B)");
        assert_eq!(expand("$$(A) $ $(", &f), "$(A) $ $(");
        assert_eq!(expand("plain", &f), "plain");
    }
}

//! Turning a pod into what the runtime starts: its volumes, the config maps
//! and secrets its env reads, and per container the binary, expanded
//! arguments, environment and bind mounts (volumes, the cluster hosts file
//! at `/etc/hosts`, a resolv.conf without a reachable server at
//! `/etc/resolv.conf`, the termination message file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Client, ResourceExt};

use crate::env::{self, Sources};
use crate::error::Result;
use crate::netns;
use crate::pods::Config;
use crate::runtime::{Launch, Mount};
use crate::spec;
use crate::volumes;

/// Config maps (false) and secrets (true) the container's env reads.
fn env_sources(c: &Container) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for e in c.env_from.iter().flatten() {
        out.extend(e.config_map_ref.as_ref().map(|r| (r.name.clone(), false)));
        out.extend(e.secret_ref.as_ref().map(|r| (r.name.clone(), true)));
    }
    for e in c.env.iter().flatten() {
        let from = e.value_from.as_ref();
        out.extend(from.and_then(|f| f.config_map_key_ref.as_ref()).map(|r| (r.name.clone(), false)));
        out.extend(from.and_then(|f| f.secret_key_ref.as_ref()).map(|r| (r.name.clone(), true)));
    }
    out.sort();
    out.dedup();
    out
}

/// One launch (or the reason it cannot start) per container, in spec
/// order: the init containers', then the containers'.
pub struct Launches {
    pub init: Vec<Result<Launch>>,
    pub main: Vec<Result<Launch>>,
}

/// The volumes of `pod` (made now), then the launches of its containers.
pub async fn launches(cfg: &Config, client: &Client, pod: &Pod, slot: u8, dir: &Path) -> Result<Launches> {
    let ip = cfg.net.addr(slot).to_string();
    let vols = volumes::prepare(client, pod, dir, &ip).await?;
    let ns = pod.namespace().unwrap_or_default();
    let mut src = Sources::default();
    let init: Vec<Container> = pod.spec.iter().flat_map(|s| s.init_containers.clone().unwrap_or_default()).collect();
    let containers: Vec<Container> = pod.spec.iter().flat_map(|s| s.containers.clone()).collect();
    for c in init.iter().chain(&containers) {
        for (name, secret) in env_sources(c) {
            if let Some(d) = volumes::string_data(client, &ns, &name, secret).await? {
                if secret {
                    src.secrets.insert(name, d);
                } else {
                    src.config_maps.insert(name, d);
                }
            }
        }
    }
    let all = |cs: &[Container]| cs.iter().map(|c| launch(cfg, pod, c, slot, &vols, &src, dir)).collect();
    Ok(Launches { init: all(&init), main: all(&containers) })
}

fn launch(
    cfg: &Config,
    pod: &Pod,
    c: &Container,
    slot: u8,
    vols: &BTreeMap<String, PathBuf>,
    src: &Sources,
    dir: &Path,
) -> Result<Launch> {
    let ip = cfg.net.addr(slot).to_string();
    let (bin, argv) = spec::resolve(
        c.image.as_deref().unwrap_or_default(),
        c.command.as_deref().unwrap_or_default(),
        c.args.as_deref().unwrap_or_default(),
    )?;
    let mut env = env::environment(pod, c, &ip, (&cfg.api.0, cfg.api.1), src)?;
    let args = argv.iter().map(|a| spec::expand(a, &|n| env::lookup(&env, n))).collect();
    for (k, v) in [("HOSTNAME", pod.name_any()), ("HOME", "/".into()), ("PATH", "/usr/local/bin:/usr/bin:/bin".into())]
    {
        if env::lookup(&env, k).is_none() {
            env.push((k.into(), v));
        }
    }
    let mut mounts = volumes::mounts(c, vols)?;
    mounts.push(Mount { src: cfg.hosts.clone(), dst: "/etc/hosts".into(), read_only: false });
    mounts.push(Mount { src: cfg.resolv.clone(), dst: "/etc/resolv.conf".into(), read_only: true });
    let term_path = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    mounts.push(Mount {
        src: dir.join(format!("{}.termination-log", c.name)),
        dst: term_path.into(),
        read_only: false,
    });
    Ok(Launch {
        program: cfg
            .bin_dir
            .join(spec::binary_file(bin, c.image.as_deref().unwrap_or_default(), &|f| cfg.bin_dir.join(f).is_file())),
        args,
        env,
        cwd: c.working_dir.clone().map(PathBuf::from).unwrap_or_else(|| "/".into()),
        netns: netns::ns_path(slot),
        mounts,
        log: dir.join(format!("{}.log", c.name)),
    })
}

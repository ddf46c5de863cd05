//! `kvd-node-agent`: the e2e suite's only node. It stands in for kubelet, a
//! container runtime, kube-scheduler, a volume provisioner, CoreDNS and
//! kube-proxy, on a machine that has none of them: it registers a Node,
//! binds pending pods to it, provisions claims as directories, runs each
//! pod's containers as local processes (images mapped to the locally built
//! kvd, kvctl and kvd-operator) in the pod's own network and mount
//! namespaces, runs their probes, reports their status, and keeps one hosts
//! file as the cluster's DNS. One loop, polling the API server twice a
//! second; see e2e/README.md for what it does not do.

mod container;
mod env;
mod error;
mod hosts;
mod netns;
mod node;
mod pods;
mod probes;
mod provisioner;
mod runtime;
mod scheduler;
mod setup;
mod spec;
mod status;
mod volumes;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "kvd-node-agent", about = "The e2e suite's node: kubelet, runtime, scheduler and provisioner in one")]
struct Args {
    /// The Node's name.
    #[arg(long, default_value = "e2e-node")]
    node_name: String,
    /// Directory holding the kvd, kvctl and kvd-operator binaries (the cargo target dir).
    #[arg(long)]
    bin_dir: PathBuf,
    /// Work directory: pod directories, volumes, the hosts file.
    #[arg(long)]
    work_dir: PathBuf,
    /// The pod bridge (created beforehand, with the gateway address on it).
    #[arg(long, default_value = "kvde2e0")]
    bridge: String,
    /// The bridge's address: the pods' gateway, the node's IP, and where
    /// pods reach the API server.
    #[arg(long, default_value = node::HOST_IP)]
    gateway: Ipv4Addr,
    /// The API server's port on the gateway address.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Only the volume provisioner (and resizer), beside a real kubelet,
    /// scheduler, CoreDNS and kube-proxy: no Node, no pods, no hosts file.
    #[arg(long)]
    provisioner_only: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "node agent failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> error::Result<()> {
    if args.provisioner_only {
        return provision_only(&args).await;
    }
    let net = netns::Network { bridge: args.bridge.clone(), gateway: args.gateway };
    net.check()?;
    net.remove_all();
    let work = std::path::absolute(&args.work_dir).map_err(error::io("work dir"))?;
    std::fs::create_dir_all(work.join("pods")).map_err(error::io("creating the work dir"))?;
    std::fs::create_dir_all(work.join("volumes")).map_err(error::io("creating the work dir"))?;
    let hosts_path = work.join("hosts");
    hosts::write_in_place(&hosts_path, &hosts::render(&[], &Default::default()))?;
    // No DNS server: a name missing from the hosts file must fail at once
    // (as NXDOMAIN would), not wait for the machine's resolver, which pods
    // cannot reach (glibc would retry it for 10 s).
    let resolv_path = work.join("resolv.conf");
    let resolv = "# kvd-node-agent: no DNS server; names come from /etc/hosts\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n";
    std::fs::write(&resolv_path, resolv).map_err(error::io("writing resolv.conf"))?;
    let client = Client::try_default().await?;
    node::register(&client, &args.node_name).await?;
    provisioner::ensure_class(&client).await?;
    info!(node = args.node_name, bridge = args.bridge, "registered");
    let cfg = pods::Config {
        node: args.node_name.clone(),
        bin_dir: std::path::absolute(&args.bin_dir).map_err(error::io("bin dir"))?,
        work: work.clone(),
        hosts: hosts_path.clone(),
        resolv: resolv_path,
        api: (args.gateway.to_string(), args.api_port),
        net,
    };
    let mut sup = pods::Supervisor::new(cfg, client.clone());
    let mut term = signal(SignalKind::terminate()).map_err(error::io("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(error::io("SIGINT handler"))?;
    let mut last_heartbeat = Instant::now();
    let mut hosts_text = String::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if last_heartbeat.elapsed() >= Duration::from_secs(10) {
            match node::heartbeat(&client, &args.node_name).await {
                Ok(()) => last_heartbeat = Instant::now(),
                Err(e) => warn!(error = %e, "node heartbeat"),
            }
        }
        let pods = match Api::<Pod>::all(client.clone()).list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                warn!(error = %e, "listing pods");
                continue;
            }
        };
        scheduler::bind_pending(&client, &pods, &args.node_name).await;
        if let Err(e) = provisioner::sync(&client, &work.join("volumes")).await {
            warn!(error = %e, "provisioning");
        }
        sup.admit(&pods).await;
        match Api::<EndpointSlice>::all(client.clone()).list(&ListParams::default()).await {
            Ok(slices) => {
                let text = hosts::render(&sup.records(), &hosts::service_addresses(&slices.items));
                if text != hosts_text {
                    match hosts::write_in_place(&hosts_path, &text) {
                        Ok(()) => hosts_text = text,
                        Err(e) => warn!(error = %e, "writing the hosts file"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "listing endpoint slices"),
        }
        sup.sync(&pods).await;
    }
    info!("stopping: killing every pod's processes");
    sup.shutdown().await;
    Ok(())
}

/// The loop of `--provisioner-only`: provisioning passes twice a second
/// until SIGTERM or SIGINT.
async fn provision_only(args: &Args) -> error::Result<()> {
    let volumes = std::path::absolute(args.work_dir.join("volumes")).map_err(error::io("work dir"))?;
    std::fs::create_dir_all(&volumes).map_err(error::io("creating the work dir"))?;
    let client = Client::try_default().await?;
    provisioner::ensure_class(&client).await?;
    info!(dir = %volumes.display(), "provisioning volumes only");
    let mut term = signal(SignalKind::terminate()).map_err(error::io("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(error::io("SIGINT handler"))?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Err(e) = provisioner::sync(&client, &volumes).await {
            warn!(error = %e, "provisioning");
        }
    }
}

//! The `kvd` binary: parse flags, start the member, serve clients.

use std::process::ExitCode;

use clap::Parser;
use kvd::config::{Flags, listen_addrs};
use kvd::etcdserver::EtcdServer;
// Many requests in flight per connection: replies leave together.
use kvd::rpc::coalesce::CoalescingListener;
use tracing::{error, info};

/// mimalloc returns freed memory to the system and fragments less than the
/// system allocator under kvd's many small, short-lived allocations.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 2's `mimalloc.h` (the bindings have
/// no name for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_arena_eager_commit`, likewise.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// The purge delay once the server is up.
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// kvd's two mimalloc options, each unless its environment variable is set.
/// They are set by a constructor: the first allocation, before `main`,
/// reserves the arena, so a later setting would miss it; and nothing here
/// may allocate (`getenv`, not `std::env`).
/// - The arena is committed as it is used, not all at once. Committed
///   eagerly (mimalloc's default on Linux), the 1 GiB arena is advised for
///   huge pages, and a few bytes touched fault in 2 MiB: an idle kvd held
///   50 MB (28.7 MB without), and its peak over 10 s of puts at 100 clients
///   was 216 MB (191 MB without; medians of 6 alternating rounds,
///   throughput the same; BENCHMARKS.md, session 12).
/// - Freed memory goes back to the system after a second, not 10 ms, once
///   the server is up ([`purge_delay_from_now_on`]; at once before): redb
///   allocates and frees each commit's pages, and at 10 ms mimalloc
///   returned them between commits only to fault them in (and zero them)
///   again, 5x the page faults and ~3% of a put's CPU.
#[ctor::ctor(unsafe)]
fn tune_allocator() {
    set_unless_in_env(c"MIMALLOC_ARENA_EAGER_COMMIT", MI_OPTION_ARENA_EAGER_COMMIT, 0);
    set_unless_in_env(c"MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 0);
}

/// While the server starts, freed memory goes back to the system at once:
/// the WAL replay and the index rebuild free as they go, on the thread that
/// then only waits for the server, and with the delay that memory stayed
/// resident (mimalloc runs a delayed purge when the memory's thread next
/// works with it; a forced `mi_collect` on that thread did not return it
/// either). RSS after a restart: 1M keys 241 -> 177 MiB, 1M revisions of
/// 1 KiB 170 -> 106 MiB; the time to serve the same (3.71 s against 3.62,
/// medians of 3; BENCHMARKS.md, session 24). Once the server is up, the
/// delay above applies, unless the environment set one.
fn purge_delay_from_now_on() {
    // SAFETY: getenv with a NUL-terminated name (kvd never sets variables,
    // so none changes meanwhile); mi_option_set and mi_option_get set and
    // read an integer option.
    let delay = unsafe {
        if libc::getenv(c"MIMALLOC_PURGE_DELAY".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
    };
    info!(purge_delay_ms = delay, "serving: freed memory goes back to the system after the purge delay");
}

/// Sets mimalloc's `option` to `value` unless the variable `env` is set.
fn set_unless_in_env(env: &std::ffi::CStr, option: libmimalloc_sys::mi_option_t, value: std::ffi::c_long) {
    // SAFETY: getenv with a NUL-terminated name, before any thread exists;
    // mi_option_set sets one of mimalloc's integer options.
    unsafe {
        if libc::getenv(env.as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(option, value);
        }
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = kvd::failpoints::setup();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let _telemetry = match kvd::telemetry::init(&flags) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("kvd: telemetry: {e}");
                return ExitCode::FAILURE;
            }
        };
        match run(flags).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                eprintln!("kvd: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Serves `svc` on `l` (over TLS with `acceptor`) as a task of `tasks`.
fn serve<S>(
    tasks: &mut tokio::task::JoinSet<std::io::Result<()>>,
    l: tokio::net::TcpListener,
    acceptor: Option<std::sync::Arc<kvd::tls::Reloading>>,
    svc: S,
) -> Result<(), String>
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    use axum::ServiceExt;
    if let Some(acceptor) = acceptor {
        let l = CoalescingListener(kvd::tls::TlsListener::new(l, acceptor).map_err(|e| e.to_string())?);
        let svc = ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<kvd::tls::TlsAddr>(svc);
        tasks.spawn(async move { axum::serve(l, svc).await });
        return Ok(());
    }
    let l = axum::serve::ListenerExt::tap_io(l, |tcp| kvd::sockets::tune_accepted(tcp));
    let svc = ServiceExt::<axum::extract::Request>::into_make_service(svc);
    tasks.spawn(async move { axum::serve(CoalescingListener(l), svc).await });
    Ok(())
}

/// How long a stop waits for client connections to finish their calls.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Listener {
    Client,
    Metrics,
    Peer,
}

async fn run(flags: Flags) -> Result<(), String> {
    let cfg = flags.server_config().map_err(|e| e.to_string())?;
    let client_addrs = listen_addrs("listen-client-urls", &flags.listen_client_urls).map_err(|e| e.to_string())?;
    let metrics_addrs = listen_addrs("listen-metrics-urls", &flags.listen_metrics_urls).map_err(|e| e.to_string())?;
    let peer_addrs = listen_addrs("listen-peer-urls", &flags.listen_peer_urls).map_err(|e| e.to_string())?;
    // Bind first, so a port in use is reported before any data dir is touched.
    let mut listeners = Vec::new();
    let all = client_addrs
        .iter()
        .map(|a| (a, Listener::Client))
        .chain(metrics_addrs.iter().map(|a| (a, Listener::Metrics)))
        .chain(peer_addrs.iter().map(|a| (a, Listener::Peer)));
    for ((addr, tls), kind) in all {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        listeners.push((l, kind, *tls));
    }
    // Certificates are loaded (and checked) before anything else starts.
    let client_tls = flags.client_tls().map_err(|e| e.to_string())?;
    let peer_tls = flags.peer_tls().map_err(|e| e.to_string())?;
    let mut acceptors = std::collections::HashMap::new();
    for (_, kind, tls) in &listeners {
        if !tls {
            continue;
        }
        let (files, flag) = match kind {
            Listener::Peer => (&peer_tls, "--peer-cert-file/--peer-key-file"),
            _ => (&client_tls, "--cert-file/--key-file"),
        };
        let files = files.clone().ok_or_else(|| format!("an https {kind:?} URL needs {flag}"))?;
        if !acceptors.contains_key(&files) {
            let r = kvd::tls::Reloading::new(files.clone()).map_err(|e| e.to_string())?;
            acceptors.insert(files.clone(), r);
        }
    }
    info!(name = %cfg.name, data_dir = %cfg.data_dir.display(), version = kvd::VERSION, "starting kvd");
    let server = EtcdServer::start(cfg).await.map_err(|e| e.to_string())?;
    purge_delay_from_now_on();
    server.run_background();
    let mut tasks = tokio::task::JoinSet::new();
    // Client connections drain at a stop (rpc/conn/drain.rs); peer traffic
    // goes on meanwhile, so that the calls being finished can commit.
    let (clients, peers) = (kvd::rpc::conn::Drain::new(), kvd::rpc::conn::Drain::new());
    for (l, kind, tls) in listeners {
        info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), ?kind, "serving");
        let acceptor = if tls {
            let files = if matches!(kind, Listener::Peer) { &peer_tls } else { &client_tls };
            let Some(acceptor) = files.as_ref().and_then(|f| acceptors.get(f)).cloned() else { continue };
            Some(acceptor)
        } else {
            None
        };
        match kind {
            Listener::Client => {
                let svc = kvd::rpc::client_service(server.clone());
                tasks.spawn(kvd::rpc::conn::serve(l, acceptor, svc, clients.watch()));
            }
            Listener::Metrics => serve(&mut tasks, l, acceptor, kvd::rpc::metrics_router(server.clone()))?,
            Listener::Peer => {
                tasks.spawn(kvd::rpc::conn::serve(l, acceptor, kvd::rpc::peer_port(server.clone()), peers.watch()));
            }
        }
    }
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
    };
    tokio::select! {
        _ = stop => {
            info!("received signal, handing leadership over if leading, then draining client connections");
            server.transfer_leadership_on_stop().await;
            if !clients.drain(DRAIN_WITHIN).await {
                info!(within = ?DRAIN_WITHIN, "client connections still open (watches) are closed");
            }
        }
        r = tasks.join_next() => {
            if let Some(Ok(Err(e))) = r {
                error!(error = %e, "listener failed");
            }
        }
    }
    drop(peers);
    server.shutdown().await;
    info!("stopped");
    Ok(())
}

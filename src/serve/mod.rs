//! `hpcbinder serve`: a BinderHub-compatible build service, run as a JupyterHub service.
//!
//! It speaks BinderHub's wire contract (`reference/binderhub-hpc.md` §1): `GET
//! /build/<provider>/<spec>` streams Server-Sent Events ending in `ready` or `failed`,
//! `/v2/<provider>/<spec>` is the launch page, plus `/api/repoproviders`, `/versions`,
//! `/health`, `/metrics`, `/badge.svg` and `/logs/<key16>`. Builds are child processes
//! (`hpcbinder build --json`, see [`builds`]), so a crashing or hung build never takes
//! the service down, and a batch-system builder can run the same command in a job.
//! Nothing builds for an anonymous request ([`auth`]).

mod auth;
mod builds;
mod config;
mod content;
mod launch;
mod metrics;
mod page;
pub mod providers;
mod routes;

use std::sync::Arc;

/// `max-builds` by default with `builder = "slurm"`: jobs submitted and followed at once.
const SLURM_MAX_BUILDS: usize = 64;

pub use config::{ServeConfig, ServeConfigError, ServeTable, KEYS};

use crate::settings::Settings;

/// What the routes share.
pub struct App {
    config: Arc<ServeConfig>,
    auth: auth::Auth,
    builds: Arc<builds::Builds>,
    resolver: providers::Resolver,
    settings: Settings,
    health: tokio::sync::Mutex<Option<(std::time::Instant, serde_json::Value, bool)>>,
}

/// Run the service until SIGTERM or SIGINT; running builds get `shutdown-grace` to
/// finish.
pub fn run(
    settings: &Settings,
    ip: Option<&str>,
    port: Option<u16>,
    reporter: &dyn crate::events::Reporter,
) -> anyhow::Result<()> {
    use crate::events::ReporterExt as _;
    let mut config = ServeConfig::resolve(&settings.serve, ip, port)?;
    if settings.builder == crate::settings::Builder::Slurm {
        // Builds run on the batch system's nodes, not this host's cores.
        config.slurm = true;
        if settings.serve.max_builds.is_none() {
            config.max_builds = SLURM_MAX_BUILDS;
        }
    }
    let config = Arc::new(config);
    let executable = std::env::current_exe()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let app = Arc::new(App {
            auth: auth::Auth::new(config.clone()),
            builds: Arc::new(builds::Builds::new(
                config.clone(),
                executable,
                settings.store.clone(),
                (config.launch != config::Launch::None)
                    .then(|| crate::collab::kernels_dir(settings)),
            )),
            resolver: providers::Resolver::new(
                crate::source::Policy {
                    hosts: settings.source_hosts.clone(),
                    allow_local: settings.local_sources,
                },
                settings.clone(),
            ),
            settings: settings.clone(),
            health: tokio::sync::Mutex::new(None),
            config: config.clone(),
        });
        if settings.local_sources {
            reporter.warning(
                "local-sources is true: anyone allowed to use this service can build paths and file:// repositories on this machine; a site's service config sets local-sources = false",
            );
        }
        reporter.phase(
            crate::events::Phase::Waiting,
            format!(
                "hpcbinder serve listening on http://{}{} (max-builds {}, store {})",
                config.listen,
                config.prefix,
                config.max_builds,
                settings.store.display()
            ),
        );
        let router = routes::router(app.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let builds = app.builds.clone();
        let grace = config.shutdown_grace;
        tokio::spawn(async move {
            shutdown_signal().await;
            builds.stop_accepting();
            let _ = stop_tx.send(true);
            // Running builds finish (their clients get the result), up to the grace.
            let deadline = tokio::time::Instant::now() + grace;
            while builds.running() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            // SIGTERM first, so Slurm builds cancel their jobs; what is left is killed.
            builds.terminate_all();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while builds.running() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            builds.kill_all();
        });
        let mut stop_for_server = stop_rx.clone();
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop_for_server.wait_for(|stop| *stop).await;
        });
        let mut stop_rx = stop_rx;
        let hard_stop = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace + std::time::Duration::from_secs(15)).await;
        };
        tokio::select! {
            result = server => result.map_err(anyhow::Error::from),
            () = hard_stop => Ok(()),
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = interrupt.recv() => {},
    }
}

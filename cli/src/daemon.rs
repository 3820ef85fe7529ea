//! The daemons: turn command-line flags into the libraries' configs, bind listeners, and run
//! until Ctrl-C or SIGTERM.

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::args::{ChunkserverArgs, ControllerArgs, Global};

/// `redcloud chunkserver`.
pub async fn run_chunkserver(a: ChunkserverArgs, global: &Global) -> Result<()> {
    let listener = TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let local = listener.local_addr()?;
    let mut config = redcloud_chunk::ChunkserverConfig::new(&a.data);
    config.listen = local;
    config.advertise = a.advertise;
    config.controllers = global.controllers.clone();
    config.zone = a.zone;
    config.capacity = a.capacity;
    config.scrub_rate = a.scrub_rate;
    config.secret = global.secret()?;
    config.tls = global.tls_files(&a.tls);
    config.insecure = global.insecure;
    tracing::info!(listen = %local, data = %a.data.display(), "chunkserver starting");
    redcloud_chunk::run(config, listener, shutdown_signal()).await
}

/// `redcloud controller`.
pub async fn run_controller(a: ControllerArgs, global: &Global) -> Result<()> {
    let tls = global.tls_files(&a.tls);
    let listener = TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let config = redcloud_meta::node::ControllerConfig {
        data_dir: a.data,
        cluster: a.cluster,
        p2p_listen: a.p2p_listen,
        bootstrap: a.bootstrap,
        mdns: !a.no_mdns,
        metrics_listen: (!a.metrics_listen.is_empty()).then_some(a.metrics_listen),
        advertise: a.advertise,
        heartbeat_timeout_ms: a.heartbeat_timeout_ms,
        write_quorum: a.write_quorum,
        replication: a.replication,
        shards: a.shards,
        trash_retention_ms: a.trash_retention_ms,
        gc_grace_ms: a.gc_grace_ms,
        max_clock_skew_ms: a.max_clock_skew_ms,
        token_ttl_ms: a.token_ttl_ms,
        clock_offset_ms: a.clock_offset_ms,
        secret: global.secret()?,
        tls,
        insecure: global.insecure,
        ..redcloud_meta::node::ControllerConfig::default()
    };
    redcloud_meta::node::run(config, listener, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

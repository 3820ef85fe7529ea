//! redcloud's command-line front end.
//!
//! One binary plays every role: `redcloud controller` and `redcloud chunkserver` run the
//! daemons (their logic lives in the `redcloud-meta` and `redcloud-chunk` crates), `redcloud
//! dev` runs a local cluster of both, and every other subcommand is a client operation.
//!
//! Flow of a client command: `args` parses it; `commands` runs it against a controller found
//! by `client::connect` (with failover); uploads and downloads go through `client::upload` and
//! `client::download`, which chunk files (`client::chunking`) and move chunk data directly to
//! and from chunkservers. `session` keeps the login token; `shell` is the interactive loop.

pub mod args;
pub mod client;
pub mod commands;
pub mod daemon;
pub mod dev;
pub mod session;
pub mod shell;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};

/// Parses the command line and runs it, mapping failures to exit codes: usage errors exit 2
/// (clap's convention), failed operations print one line to stderr and exit 1.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.command.is_daemon());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Controller(a) => daemon::run_controller(a, &cli.global).await,
        Command::Chunkserver(a) => daemon::run_chunkserver(a, &cli.global).await,
        Command::Ca => {
            let Some(secret) = cli.global.secret()?.or_else(|| cli.global.admin_secret()) else {
                anyhow::bail!(
                    "`redcloud ca` derives the CA from the cluster secret: pass --secret-file \
                     (or set $REDCLOUD_SECRET_FILE)"
                );
            };
            print!(
                "{}",
                redcloud_proto::tls::ClusterCa::from_secret(&secret)?.cert_pem()
            );
            Ok(())
        }
        Command::Secret { output } => {
            let secret = redcloud_proto::trust::ClusterSecret::generate()?;
            match output {
                Some(path) => {
                    secret.write_new(&path)?;
                    eprintln!("wrote a new cluster secret to {}", path.display());
                }
                None => println!("{}", secret.to_text()),
            }
            Ok(())
        }
        Command::Dev(a) => dev::run(a).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "redcloud",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Shell => {
            let mut cx = context(&cli.global)?;
            shell::run(&mut cx).await
        }
        command => {
            let mut cx = context(&cli.global)?;
            commands::run(&mut cx, command).await
        }
    }
}

fn context(global: &args::Global) -> anyhow::Result<commands::ClientContext> {
    let transport = global.client_transport()?;
    let mut controllers = client::connect::Controllers::new(global.client_controllers(), transport);
    if let Some(secret) = global.admin_secret() {
        controllers = controllers.with_admin_secret(&secret);
    }
    Ok(commands::ClientContext {
        controllers,
        json: global.json,
    })
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Daemons log at info by default; client commands stay quiet unless `RUST_LOG` says otherwise.
fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

//! `cargo bench -p redcloud-bench [NAME...]`: runs the benchmarks of issue 8 (all, or those
//! whose name contains one of the NAMEs), printing each figure beside its reference and target
//! and writing them to `<target>/redcloud-bench/results.jsonl` for `scripts/report.py`.
//! `REDCLOUD_BENCH_QUICK=1` runs tiny sizes once each (CI smoke test). Criterion measures the
//! per-iteration micro references (`criterion` in the list).

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use redcloud_bench::results::Report;
use redcloud_bench::{Profile, chunk_path, commit, data_path, gossip, heal, repair, scale};

const ALL: &[&str] = &[
    "gossip_converge",
    "gossip_throughput",
    "heal",
    "metadata_commit",
    "metadata_scale",
    "chunk_path",
    "repair_fill",
    "data_path",
    "criterion",
];

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    // The metadata_scale load child.
    if let Some(dir) = std::env::var_os(scale::CHILD_ENV) {
        let loaded = scale::child_load(std::path::Path::new(&dir))?;
        println!("{}", serde_json::to_string(&loaded)?);
        return Ok(());
    }
    // The client library keeps its session under REDCLOUD_HOME: point it at a scratch
    // directory (by re-executing, since changing our own environment is unsafe) so a run
    // never touches the user's session.
    if std::env::var_os("REDCLOUD_HOME").is_none() {
        let home = tempfile::tempdir()?;
        let status = Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("REDCLOUD_HOME", home.path())
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }

    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected: Vec<&str> = ALL
        .iter()
        .copied()
        .filter(|name| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let profile = Profile::from_env();
    let run = serde_json::json!({
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "commit": git(&["rev-parse", "--short", "HEAD"]),
        "dirty": !git(&["status", "--porcelain"]).is_empty(),
        "profile": format!("{profile:?}"),
        "build": redcloud_bench::build(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "selected": selected,
    });
    let mut report = if filters.is_empty() {
        Report::create(run)?
    } else {
        Report::append(run)?
    };
    println!("results: {}", report.path().display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let all_start = Instant::now();
    for name in &selected {
        let start = Instant::now();
        println!("\n== {name} ({profile:?})");
        let result = runtime.block_on(run_one(name, &mut report, profile));
        let took = start.elapsed().as_secs_f64();
        if let Err(e) = result {
            println!("{name} FAILED: {e:#}");
            report.figure(name, "-", "error", 1.0, "", None, &format!("{e:#}"));
        }
        report.info(name, "-", "bench wall time", took, "s");
    }
    report.info(
        "all",
        "-",
        "total wall time",
        all_start.elapsed().as_secs_f64(),
        "s",
    );
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Runs the benchmark called `name`.
async fn run_one(name: &str, report: &mut Report, profile: Profile) -> anyhow::Result<()> {
    match name {
        "gossip_converge" => {
            for n in [3, 10, 32] {
                gossip::converge(report, profile, n).await?;
            }
        }
        "gossip_throughput" => gossip::throughput(report, profile, 3).await?,
        "heal" => heal::run(report, profile).await?,
        "metadata_commit" => commit::run(report, profile).await?,
        "metadata_scale" => scale::run(report, profile).await?,
        "chunk_path" => chunk_path::run(report, profile).await?,
        "repair_fill" => repair::run(report, profile).await?,
        "data_path" => data_path::run(report, profile).await?,
        "criterion" => micro(profile),
        _ => {}
    }
    Ok(())
}

/// Per-iteration references under criterion's statistics: one bare Automerge file commit and
/// BLAKE3 over 1 MiB.
fn micro(profile: Profile) {
    let mut c = Criterion::default()
        .sample_size(profile.pick(20, 10))
        .warm_up_time(Duration::from_millis(profile.pick(500, 50)))
        .measurement_time(Duration::from_millis(profile.pick(2000, 100)))
        .without_plots();
    c.bench_function("bare_automerge_commit_x100", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                std::hint::black_box(redcloud_bench::commit::bare_loop(100));
                took += start.elapsed();
            }
            took
        })
    });
    let mib = redcloud_bench::data(1 << 20, 5);
    c.bench_function("blake3_1mib", |b| {
        b.iter(|| blake3::hash(std::hint::black_box(&mib)))
    });
    c.final_summary();
}

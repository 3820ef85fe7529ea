//! Figures, latency statistics and the JSON-lines results file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A target a figure is held to.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Target {
    /// The figure must be at most this.
    AtMost(f64),
    /// The figure must be at least this.
    AtLeast(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(t) => value <= t,
            Target::AtLeast(t) => value >= t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {t}"),
            Target::AtLeast(t) => format!(">= {t}"),
        }
    }
}

/// One line of `results.jsonl`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    bench: &'a str,
    case: &'a str,
    metric: &'a str,
    value: f64,
    unit: &'a str,
    target: Option<String>,
    met: Option<bool>,
    note: &'a str,
}

/// Where results go: printed, and appended to the results file.
#[derive(Debug)]
pub struct Report {
    file: File,
    path: PathBuf,
}

/// The results file: `$REDCLOUD_BENCH_OUT`, else `<target dir>/redcloud-bench/results.jsonl`.
pub fn results_path() -> PathBuf {
    if let Some(p) = std::env::var_os("REDCLOUD_BENCH_OUT").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("redcloud-bench").join("results.jsonl")
}

impl Report {
    /// Starts a fresh results file with a header line describing the run.
    pub fn create(run: serde_json::Value) -> anyhow::Result<Report> {
        let path = results_path();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = File::create(&path)?;
        writeln!(file, "{}", serde_json::json!({ "run": run }))?;
        Ok(Report { file, path })
    }

    /// Appends to an existing results file (a benchmark run on its own), with its own header
    /// line so the report can say which figures came from which run.
    pub fn append(run: serde_json::Value) -> anyhow::Result<Report> {
        let path = results_path();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().append(true).create(true).open(&path)?;
        writeln!(file, "{}", serde_json::json!({ "run": run }))?;
        Ok(Report { file, path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Records one figure.
    #[allow(clippy::too_many_arguments)]
    pub fn figure(
        &mut self,
        bench: &str,
        case: &str,
        metric: &str,
        value: f64,
        unit: &str,
        target: Option<Target>,
        note: &str,
    ) {
        let met = target.map(|t| t.met(value));
        let verdict = match met {
            Some(true) => "  [met]",
            Some(false) => "  [MISSED]",
            None => "",
        };
        let target_text = target.map(Target::text);
        println!(
            "{bench:>18} {case:<14} {metric:<34} {value:>12.4} {unit:<6} {}{verdict}{}",
            target_text.clone().unwrap_or_default(),
            if note.is_empty() {
                String::new()
            } else {
                format!("  ({note})")
            }
        );
        let line = Line {
            bench,
            case,
            metric,
            value,
            unit,
            target: target_text,
            met,
            note,
        };
        if let Ok(text) = serde_json::to_string(&line) {
            let _ = writeln!(self.file, "{text}");
            let _ = self.file.flush();
        }
    }

    /// Shorthand for a figure with no target.
    pub fn info(&mut self, bench: &str, case: &str, metric: &str, value: f64, unit: &str) {
        self.figure(bench, case, metric, value, unit, None, "");
    }
}

/// Percentiles of a latency sample.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

impl Latency {
    /// Nearest-rank percentiles; `None` for an empty sample.
    pub fn of(samples: &[Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(Latency {
            p50: rank(0.50),
            p99: rank(0.99),
            max: s[s.len() - 1],
            count: s.len(),
        })
    }
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// MiB per second for `bytes` moved in `took`.
pub fn mib_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / took.as_secs_f64().max(1e-9)
}

//! redcloud's benchmarks: how close redcloud comes, on this machine, to what the hardware
//! allows. Every figure is measured beside a raw reference in the same run and reported as a
//! ratio, because absolute times on a shared 2-core machine drift.
//!
//! Data flow: `benches/redcloud.rs` (a `harness = false` criterion bench) picks the benchmarks
//! named on its command line, runs each module's `run` with a [`Profile`] (full or quick) and a
//! [`results::Report`], which prints every figure and appends it as a JSON line to
//! `<target>/redcloud-bench/results.jsonl`. `scripts/report.py` turns that file into the
//! results table of `bench/README.md`.
//!
//! - [`cluster`]: in-process controllers on 127.0.0.1 assembled from the controller's own
//!   parts (p2p, replication, metadata owner, RocksDB storage), with a [`probe`] in the
//!   storage that timestamps every change a node applies.
//! - [`gossip`], [`heal`], [`commit`], [`scale`], [`chunk_path`], [`repair`], [`data_path`]:
//!   one module per benchmark, each with its reference.
//! - [`wire`]: TCP byte counters of loopback sockets (from `ss`), for wire-level figures.

pub mod chunk_path;
pub mod cluster;
pub mod commit;
pub mod data_path;
pub mod echo;
pub mod gossip;
pub mod heal;
pub mod probe;
pub mod repair;
pub mod results;
pub mod scale;
pub mod wire;

/// How big and how long each benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The full run (`cargo bench -p redcloud-bench`): about 15 minutes on 2 cores.
    Full,
    /// `REDCLOUD_BENCH_QUICK=1`: tiny sizes, a few iterations, for CI smoke tests.
    Quick,
}

impl Profile {
    /// `Quick` when `REDCLOUD_BENCH_QUICK` is set to anything but `0` or empty.
    pub fn from_env() -> Self {
        match std::env::var("REDCLOUD_BENCH_QUICK") {
            Ok(v) if !v.is_empty() && v != "0" => Profile::Quick,
            _ => Profile::Full,
        }
    }

    /// `full` in the full profile, `quick` otherwise.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        match self {
            Profile::Full => full,
            Profile::Quick => quick,
        }
    }
}

/// The cargo profile this bench was built with: `dev` (what `scripts/dev.sh` and the tests
/// run) or `release`. Benchmarks whose figures differ between the two name it in their case.
pub fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    }
}

/// Deterministic pseudo-random bytes (xorshift), so runs are repeatable and incompressible.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

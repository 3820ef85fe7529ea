//! Measures the metadata core on this machine (numbers for the design notes, not assertions):
//! - local commits/s of "add a file version with 3 tags and 4 chunks", in memory and with
//!   RocksDB persistence (one synced write per commit);
//! - saved (compacted) document bytes per file;
//! - load time and resident memory for 100,000 files, measured in a child process so the
//!   build phase's heap does not blur the numbers.
//!
//! Run: `cargo run -p redcloud-meta --example meta_measure [-- FILES]`

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redcloud_meta::{Config, DocStorage, MemStorage, MetaStore, NewVersion, NodeId, RocksStorage};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn config() -> Config {
    Config::new(NodeId::new("measure-node").expect("valid node id"))
}

fn version(i: u64) -> NewVersion {
    let h = |k: u64| *blake3::hash(&(i * 4 + k).to_le_bytes()).as_bytes();
    NewVersion {
        size: 4 * 1_048_576,
        blake3: h(99),
        chunks: (0..4).map(|k| (h(k), 1_048_576)).collect(),
        tags: vec![
            "photos".into(),
            format!("year-{}", 2000 + i % 25),
            format!("t{}", i % 100),
        ],
    }
}

fn add_files(store: &mut MetaStore, n: u64, offset: u64) -> f64 {
    let start = Instant::now();
    for i in offset..offset + n {
        let owner = format!("user{}", i % 10);
        let name = format!("file-{i:08}.jpg");
        store
            .add_version(&owner, &name, version(i), wall_ms(), None)
            .expect("add_version");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        return load_child(&args[2]);
    }
    let files: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);

    // 1. Commit rate.
    let mut mem = MetaStore::open(Box::new(MemStorage::new()), config()).expect("open");
    let rate_mem = add_files(&mut mem, 5_000, 0);
    println!(
        "commits/s, in-memory storage:       {rate_mem:>9.0}  (5,000 new files, 3 tags, 4 chunks)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStorage::open(dir.path().join("rate")).expect("rocks");
    let mut rs = MetaStore::open(Box::new(rocks), config()).expect("open");
    let rate_rocks = add_files(&mut rs, 2_000, 0);
    println!("commits/s, RocksDB (synced/commit): {rate_rocks:>9.0}  (2,000 new files)");
    let start = Instant::now();
    for i in 0..2_000u64 {
        let owner = format!("user{}", i % 10);
        let name = format!("file-{i:08}.jpg");
        rs.add_version(&owner, &name, version(i + 7), wall_ms(), None)
            .expect("add");
    }
    println!(
        "commits/s, RocksDB, new version of an existing file: {:>6.0}",
        2_000.0 / start.elapsed().as_secs_f64()
    );
    drop(rs);

    // 2. Build `files` files in memory, compact, copy the snapshots into RocksDB.
    let mut big = MetaStore::open(Box::new(MemStorage::new()), config()).expect("open");
    let start = Instant::now();
    let rate = add_files(&mut big, files, 0);
    println!(
        "built {files} files in {:.1} s ({rate:.0} commits/s in memory, growing docs)",
        start.elapsed().as_secs_f64()
    );
    let docs = big.docs();
    let start = Instant::now();
    big.compact_all().expect("compact");
    println!(
        "compact_all (save of every document): {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut mem_storage = big.into_storage();
    let path = dir.path().join("big");
    let mut rocks = RocksStorage::open(&path).expect("rocks");
    let mut bytes = 0usize;
    for doc in &docs {
        let name = doc.to_string();
        let stored = mem_storage.load(&name).expect("load");
        let snap = stored.snapshot.expect("compacted");
        bytes += snap.len();
        rocks.compact(&name, &snap).expect("copy");
    }
    for key in ["node_id", "shards", "hlc"] {
        if let Some(v) = mem_storage.get_meta(key).expect("meta") {
            rocks.put_meta(key, &v).expect("meta");
        }
    }
    drop(rocks);
    drop(mem_storage);
    println!(
        "saved documents: {bytes} bytes for {files} files = {:.1} bytes/file ({} documents)",
        bytes as f64 / files as f64,
        docs.len()
    );

    // 3. Load in a fresh process.
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--load", path.to_str().expect("utf-8 path")])
        .output()
        .expect("run child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

fn load_child(path: &str) {
    let before = vm_rss_kib();
    let start = Instant::now();
    let rocks = RocksStorage::open(path).expect("rocks");
    let store = MetaStore::open(Box::new(rocks), config()).expect("open");
    let load = start.elapsed();
    let after = vm_rss_kib();
    let start = Instant::now();
    let n = store.file_count().expect("count");
    let count_time = start.elapsed();
    let start = Instant::now();
    let listed = store
        .list("user3", &["year-2003".into()])
        .expect("list")
        .len();
    let list_time = start.elapsed();
    println!(
        "load {n} files: {:.0} ms; VmRSS {} KiB -> {} KiB (+{:.1} MiB, {:.0} bytes/file)",
        load.as_secs_f64() * 1e3,
        before,
        after,
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / n as f64
    );
    println!(
        "file_count: {:.0} ms; list(user3, [year-2003]) -> {listed} files in {:.0} ms",
        count_time.as_secs_f64() * 1e3,
        list_time.as_secs_f64() * 1e3
    );
}

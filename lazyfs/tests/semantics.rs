//! lazyfs itself: what a power cut keeps and loses. Needs root and /dev/fuse; elsewhere it
//! prints SKIPPED (REDCLOUD_FUSE_REQUIRED=1, as in CI, makes that a failure).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};

fn mount() -> Option<(tempfile::TempDir, lazyfs::Mount)> {
    if !lazyfs::usable_for("lazyfs semantics") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = lazyfs::Mount::new(dir.path()).expect("mount lazyfs");
    Some((dir, m))
}

fn read(path: &std::path::Path) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).ok()?;
    Some(v)
}

fn sync_dir(path: &std::path::Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn a_power_cut_keeps_what_was_synced_and_loses_the_rest() {
    let Some((_dir, m)) = mount() else {
        return;
    };
    let root = m.path().to_owned();
    // Synced file under a synced name: kept.
    let mut f = File::create(root.join("kept")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    // Then appended without a sync: the append is lost.
    f.write_all(b" and lost").unwrap();
    drop(f);
    // Written and synced, but the directory entry never synced: the file is lost.
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut g = File::create(root.join("sub/orphan")).unwrap();
    g.write_all(b"no name").unwrap();
    g.sync_all().unwrap();
    // Never synced at all: lost.
    std::fs::write(root.join("never"), b"gone").unwrap();
    sync_dir(&root);
    // A rename not followed by a directory sync is undone.
    std::fs::write(root.join("tmp"), b"renamed").unwrap();
    File::open(root.join("tmp")).unwrap().sync_all().unwrap();
    sync_dir(&root);
    std::fs::rename(root.join("tmp"), root.join("final")).unwrap();

    // Before the cut everything reads back.
    assert_eq!(read(&root.join("kept")).unwrap(), b"durable and lost");
    assert_eq!(read(&root.join("never")).unwrap(), b"gone");

    let survived = m.power_cut();
    // The machine is off: nothing more reaches the disk.
    assert!(
        OpenOptions::new()
            .append(true)
            .open(root.join("kept"))
            .and_then(|mut f| f.write_all(b"x"))
            .is_err()
    );
    let m = m.remount(survived).expect("remount");
    let root = m.path().to_owned();
    assert_eq!(read(&root.join("kept")).unwrap(), b"durable");
    assert!(
        read(&root.join("sub/orphan")).is_none(),
        "unsynced name survived"
    );
    assert_eq!(
        read(&root.join("never")).unwrap(),
        b"",
        "the name was synced, the bytes not"
    );
    assert_eq!(
        read(&root.join("tmp")).unwrap(),
        b"renamed",
        "the rename was undone"
    );
    assert!(read(&root.join("final")).is_none());
}

#[test]
fn truncation_and_overwrite_follow_the_last_sync() {
    let Some((_dir, m)) = mount() else {
        return;
    };
    let root = m.path().to_owned();
    let mut f = File::create(root.join("f")).unwrap();
    f.write_all(&[1u8; 10_000]).unwrap();
    f.sync_all().unwrap();
    sync_dir(&root);
    f.set_len(100).unwrap();
    f.sync_data().unwrap();
    f.set_len(50).unwrap();
    drop(f);
    let survived = m.power_cut();
    let m = m.remount(survived).unwrap();
    assert_eq!(read(&m.path().join("f")).unwrap(), vec![1u8; 100]);
}

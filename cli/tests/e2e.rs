//! End-to-end: the real `redcloud` binary against a cluster of real controller and
//! chunkserver processes on loopback. Each test asserts what a user depends on: bytes equal
//! after download, only their own files visible, clear errors for bad input.

mod common;

use std::time::Duration;

use common::{Cluster, bytes, write_file};

#[test]
fn files_round_trip_with_tags_versions_and_isolation() {
    let c = Cluster::start(3, 3);
    let alice = c.client("alice");
    alice.register_and_login("alice");
    let work = tempfile::tempdir().expect("tempdir");
    let report = bytes(3 << 20, 1);
    let photo = bytes(700_000, 2);
    let empty: Vec<u8> = Vec::new();
    let r = write_file(work.path(), "report.pdf", &report);
    let p = write_file(work.path(), "photo.jpg", &photo);
    let e = write_file(work.path(), "empty.txt", &empty);
    alice.ok(&["add", r.to_str().unwrap(), "--tag", "work", "--tag", "2024"]);
    alice.ok(&["add", p.to_str().unwrap(), "-t", "2024", "-t", "holiday"]);
    alice.ok(&["add", e.to_str().unwrap(), "-t", "misc"]);

    // AND query.
    let both = alice.json(&["list", "2024"]);
    let names: Vec<&str> = both
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{both}");
    let only = alice.json(&["list", "2024", "work"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    let f = &only[0];
    assert_eq!(f["name"], "report.pdf");
    assert_eq!(f["size"], report.len() as u64);
    assert_eq!(f["blake3"], blake3::hash(&report).to_hex().as_str());
    for key in ["name", "size", "tags", "version", "blake3", "modified"] {
        assert!(f.get(key).is_some(), "list --json lacks {key}: {f}");
    }
    assert_eq!(alice.json(&["list"]).as_array().unwrap().len(), 3);

    // Downloads are byte-identical, including the empty file.
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (name, data) in [
        ("report.pdf", &report),
        ("photo.jpg", &photo),
        ("empty.txt", &empty),
    ] {
        let dest = out.join(name);
        alice.ok(&["download", name, "-o", dest.to_str().unwrap()]);
        assert_eq!(
            &std::fs::read(&dest).unwrap(),
            data,
            "{name} differs after download"
        );
    }
    // An existing output file is not overwritten without --force.
    let dest = out.join("photo.jpg");
    let err = alice.fails(&["download", "photo.jpg", "-o", dest.to_str().unwrap()], 1);
    assert!(err.contains("already exists"), "{err}");
    alice.ok(&[
        "download",
        "photo.jpg",
        "-o",
        dest.to_str().unwrap(),
        "--force",
    ]);

    // Tags.
    alice.ok(&["add-tags", "holiday", "--add", "best"]);
    assert_eq!(alice.json(&["list", "best"])[0]["name"], "photo.jpg");
    alice.ok(&["delete-tags", "holiday", "--remove", "best"]);
    assert!(alice.json(&["list", "best"]).as_array().unwrap().is_empty());

    // A new version, history and restore.
    let report2 = bytes(1 << 20, 3);
    std::fs::write(&r, &report2).unwrap();
    alice.ok(&["add", r.to_str().unwrap(), "-t", "work"]);
    let history = alice.json(&["history", "report.pdf"]);
    let versions = history.as_array().unwrap();
    assert_eq!(versions.len(), 2, "{history}");
    assert_eq!(versions[1]["head"], true);
    for key in ["version", "size", "created", "deleted", "origin", "head"] {
        assert!(versions[0].get(key).is_some(), "history --json lacks {key}");
    }
    let first = versions[0]["version"].as_str().unwrap().to_owned();
    alice.ok(&["restore", "report.pdf", &first]);
    let dest = out.join("restored.pdf");
    alice.ok(&["download", "report.pdf", "-o", dest.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        report,
        "restore brings back the first version"
    );

    // Delete by tag, then undelete by restore.
    let deleted = alice.json(&["delete", "holiday"]);
    assert_eq!(deleted["deleted"][0], "photo.jpg");
    assert!(
        alice
            .json(&["list", "holiday"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let h = alice.json(&["history", "photo.jpg"]);
    let before_delete = h[0]["version"].as_str().unwrap().to_owned();
    alice.ok(&["restore", "photo.jpg", &before_delete]);
    assert_eq!(
        alice.json(&["list", "holiday"]).as_array().unwrap().len(),
        1
    );

    // Another user sees none of it and cannot fetch it.
    let bob = c.client("bob");
    bob.register_and_login("bob");
    assert!(bob.json(&["list"]).as_array().unwrap().is_empty());
    let err = bob.fails(
        &[
            "download",
            "report.pdf",
            "-o",
            out.join("x").to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("not found"), "{err}");
    assert!(bob.json(&["conflicts"]).as_array().unwrap().is_empty());
}

#[test]
fn bad_input_gets_clear_errors() {
    let c = Cluster::start(1, 1);
    let u = c.client("u");
    // Not logged in yet.
    let err = u.fails(&["list"], 1);
    assert!(err.contains("login"), "{err}");
    u.register_and_login("carol");
    let err = u.fails(&["add", "/nonexistent/file.txt", "-t", "x"], 1);
    assert!(err.contains("/nonexistent/file.txt"), "{err}");
    let err = u.fails(&["download", "nope.txt"], 1);
    assert!(err.contains("not found"), "{err}");
    // Usage errors exit 2.
    u.fails(&["add", "file-without-tag"], 2);
    u.fails(&["frobnicate"], 2);
    // Registering twice and a wrong password.
    let out = u.run_with_stdin(&["register", "carol", "--password-stdin"], "x\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = u.run_with_stdin(&["login", "carol", "--password-stdin"], "wrong\n");
    assert_eq!(out.status.code(), Some(1));
    // A tampered token is refused.
    let session = u.home.join("session.json");
    let text = std::fs::read_to_string(&session).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let token = v["token"].as_str().unwrap().replace("carol", "admin");
    v["token"] = token.into();
    std::fs::write(&session, v.to_string()).unwrap();
    let err = u.fails(&["list"], 1);
    assert!(err.contains("log in again"), "{err}");
    // No controller reachable.
    let out = std::process::Command::new(common::BIN)
        .args(["--controller", "127.0.0.1:1", "status"])
        .env(
            "REDCLOUD_SECRET_FILE",
            c.dir.path().join(common::SECRET_FILE),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no controller reachable (tried 127.0.0.1:1)")
    );
}

#[test]
fn large_file_round_trips_and_an_edit_resends_only_changed_chunks() {
    let c = Cluster::start(1, 2);
    let u = c.client("dan");
    u.register_and_login("dan");
    let work = tempfile::tempdir().unwrap();
    let mut data = bytes(50_000_000, 9);
    let f = write_file(work.path(), "big.bin", &data);
    let added = u.json(&["add", f.to_str().unwrap(), "-t", "big"]);
    let chunks = added[0]["chunks"].as_u64().unwrap();
    assert!(chunks >= 20, "50 MB at ~1 MiB per chunk: {chunks}");
    assert_eq!(added[0]["chunks_sent"].as_u64().unwrap(), chunks);
    let dest = work.path().join("big.out");
    u.ok(&["download", "big.bin", "-o", dest.to_str().unwrap()]);
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "50 MB file differs after download"
    );

    // Edit a few bytes in the middle: only the chunks around the edit are sent again.
    for b in &mut data[25_000_000..25_000_010] {
        *b ^= 0x5a;
    }
    std::fs::write(&f, &data).unwrap();
    let again = u.json(&["add", f.to_str().unwrap(), "-t", "big"]);
    let sent = again[0]["chunks_sent"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&sent),
        "an edit re-sent {sent} of {chunks} chunks"
    );
    std::fs::remove_file(&dest).unwrap();
    u.ok(&["download", "big.bin", "-o", dest.to_str().unwrap()]);
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "edited file differs after download"
    );
}

#[test]
fn downloads_survive_a_dead_chunkserver_and_clients_fail_over_controllers() {
    let mut c = Cluster::start(3, 3);
    let u = c.client("eve");
    u.register_and_login("eve");
    let work = tempfile::tempdir().unwrap();
    let data = bytes(6 << 20, 4);
    let f = write_file(work.path(), "doc.bin", &data);
    u.ok(&["add", f.to_str().unwrap(), "-t", "t"]);
    // Policy `all`: wait until every chunkserver holds every chunk.
    c.wait_for(Duration::from_secs(60), "full replication", |c| {
        c.status(0)
            .map(|s| {
                s["chunks"]["under_replicated"] == 0 && s["chunks"]["total"].as_u64() > Some(0)
            })
            .unwrap_or(false)
    });
    c.chunkservers[0].kill9();
    let dest = work.path().join("a");
    u.ok(&["download", "doc.bin", "-o", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // The first controller in the client's list dies: the next one answers.
    c.controllers[0].kill9();
    let names = u.json(&["list", "t"]);
    assert_eq!(names[0]["name"], "doc.bin");
    let dest = work.path().join("b");
    u.ok(&["download", "doc.bin", "-o", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    // Uploads keep working with a chunkserver and a controller down.
    let more = bytes(2 << 20, 5);
    let g = write_file(work.path(), "more.bin", &more);
    u.ok(&["add", g.to_str().unwrap(), "-t", "t"]);
    let dest = work.path().join("c");
    u.ok(&["download", "more.bin", "-o", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dest).unwrap(), more);
}

#[test]
fn the_shell_runs_commands_and_completions_are_printed() {
    let c = Cluster::start(1, 1);
    let u = c.client("sam");
    u.register_and_login("sam");
    let work = tempfile::tempdir().unwrap();
    let f = write_file(work.path(), "song.mp3", &bytes(1000, 8));
    let script = format!(
        "add {} -t music\nlist music\nfrobnicate\nadd-tags music --add loud\nlist loud\nexit\n",
        f.display()
    );
    let out = u.run_with_stdin(&["shell"], &script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("added song.mp3"), "{stdout}");
    assert_eq!(
        stdout.matches("song.mp3").count(),
        4,
        "added, listed twice, tagged: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frobnicate"),
        "a bad command is reported and the shell goes on: {stderr}"
    );

    let out = u.run(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("redcloud") && script.contains("add-tags"),
        "bash completions"
    );
}

#[test]
fn one_add_of_many_files_stores_each_and_a_failure_stops_none_of_the_others() {
    let c = Cluster::start(1, 2);
    let u = c.client("fay");
    u.register_and_login("fay");
    let work = tempfile::tempdir().unwrap();
    // More files than go up at once, small and large, one repeated content (deduplicated).
    let mut files = Vec::new();
    for i in 0..40u64 {
        let len = match i % 4 {
            0 => 0,
            1 => 4096,
            2 => 300_000,
            _ => 2_500_000,
        };
        let data = bytes(len, 100 + i % 37);
        let name = format!("f{i:02}.bin");
        files.push((write_file(work.path(), &name, &data), name, data));
    }
    // A name the controller refuses (a control character), in the middle of the list.
    let bad = write_file(work.path(), "bad\u{1}.bin", b"refused");
    let mut args: Vec<String> = vec!["add".into()];
    for (i, (path, _, _)) in files.iter().enumerate() {
        if i == 20 {
            args.push(bad.to_str().unwrap().into());
        }
        args.push(path.to_str().unwrap().into());
    }
    args.extend(["-t".into(), "many".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = u.run(&argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("bad"), "the failed file is named: {stderr}");
    assert!(stderr.contains("1 of 41 files"), "{stderr}");
    // Each added file is reported, in the order given.
    let reported: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("added "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let expected: Vec<&str> = files.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(reported, expected, "{stdout}");

    let listed = u.json(&["list", "many"]);
    assert_eq!(listed.as_array().unwrap().len(), files.len(), "{listed}");
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for (_, name, data) in &files {
        let dest = out_dir.join(name);
        u.ok(&["download", name, "-o", dest.to_str().unwrap()]);
        assert!(
            &std::fs::read(&dest).unwrap() == data,
            "{name} differs after download"
        );
    }

    // Two files that would be stored under one name are refused before anything is sent.
    let other = work.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let a = write_file(work.path(), "same.bin", b"first");
    let b = write_file(&other, "same.bin", b"second");
    let err = u.fails(
        &["add", a.to_str().unwrap(), b.to_str().unwrap(), "-t", "dup"],
        1,
    );
    assert!(err.contains("same.bin"), "{err}");
    assert!(u.json(&["list", "dup"]).as_array().unwrap().is_empty());
}

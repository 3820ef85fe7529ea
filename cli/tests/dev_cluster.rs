//! `redcloud dev`: the README's main command starts a working cluster, stops cleanly on
//! SIGTERM, and comes back on the same data.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, bytes, free_base, write_file};

struct Dev {
    child: std::process::Child,
}

impl Dev {
    fn start(data: &std::path::Path, base: u16) -> Dev {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("dev.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args([
                "dev",
                "--data",
                data.to_str().unwrap(),
                "--base-port",
                &base.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redcloud dev");
        Dev { child }
    }

    /// SIGTERM, then wait (bounded) for the dev process and all its nodes to exit.
    fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn client(home: &std::path::Path, base: u16, args: &[&str], stdin: &str) -> std::process::Output {
    let controllers = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        base,
        base + 1,
        base + 2
    );
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("REDCLOUD_SECRET_FILE")
        .env_remove("REDCLOUD_CA")
        .env("REDCLOUD_HOME", home)
        .env("REDCLOUD_CONTROLLERS", controllers)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn dev_cluster_serves_stops_and_restarts_on_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    let base = free_base(3);
    let mut dev = Dev::start(&data, base);
    // The operator's view needs the secret; users get by with the CA certificate.
    let secret = data.join("cluster.secret");
    let secret = secret.to_str().unwrap();
    let ca_file = data.join("ca.pem");
    let ca = ca_file.to_str().unwrap();
    let ready = || {
        let out = client(
            &home,
            base,
            &["--secret-file", secret, "--json", "status"],
            "",
        );
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map(|s| s["chunkservers"].as_array().map(|a| a.len()) == Some(3))
                .unwrap_or(false)
    };
    wait_until(Duration::from_secs(60), "the dev cluster answers", ready);

    // `redcloud ca` derives from the secret the certificate the dev cluster wrote.
    let printed = client(&home, base, &["--secret-file", secret, "ca"], "");
    assert!(printed.status.success());
    assert_eq!(printed.stdout, std::fs::read(&ca_file).unwrap());
    // Without a CA (and not in the dev cluster's directory) the CLI refuses to talk
    // plaintext, and says what to do.
    let blind = client(
        &home,
        base,
        &["register", "zoe", "--password-stdin"],
        "password-1\n",
    );
    assert!(!blind.status.success());
    let err = String::from_utf8_lossy(&blind.stderr);
    assert!(
        err.contains("--ca-file") && err.contains("redcloud ca"),
        "{err}"
    );

    assert!(
        client(
            &home,
            base,
            &["--ca-file", ca, "register", "zoe", "--password-stdin"],
            "password-1\n"
        )
        .status
        .success()
    );
    assert!(
        client(
            &home,
            base,
            &["--ca-file", ca, "login", "zoe", "--password-stdin"],
            "password-1\n"
        )
        .status
        .success()
    );
    let content = bytes(2 << 20, 42);
    let f = write_file(dir.path(), "notes.txt", &content);
    let out = client(
        &home,
        base,
        &["--ca-file", ca, "add", f.to_str().unwrap(), "--tag", "docs"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(dev.stop(), "dev cluster stops on SIGTERM");
    // Every node is gone: its ports are free again.
    for port in [base, base + 1, base + 2, base + 100, base + 101, base + 102] {
        wait_until(Duration::from_secs(10), "ports are released", || {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
    }

    let _dev = Dev::start(&data, base);
    wait_until(
        Duration::from_secs(60),
        "the restarted cluster answers",
        ready,
    );
    let dest = dir.path().join("notes.out");
    wait_until(
        Duration::from_secs(30),
        "the file is readable after restart",
        || {
            client(
                &home,
                base,
                &[
                    "--ca-file",
                    ca,
                    "download",
                    "notes.txt",
                    "-o",
                    dest.to_str().unwrap(),
                    "--force",
                ],
                "",
            )
            .status
            .success()
        },
    );
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    // A user's status shows their own counts; logout revokes the session.
    let mine = client(&home, base, &["--ca-file", ca, "--json", "status"], "");
    assert!(
        mine.status.success(),
        "{}",
        String::from_utf8_lossy(&mine.stderr)
    );
    let mine: serde_json::Value = serde_json::from_slice(&mine.stdout).unwrap();
    assert_eq!(
        (mine["scope"].as_str(), mine["files"].as_u64()),
        (Some("user"), Some(1))
    );
    let token = std::fs::read_to_string(home.join("session.json")).unwrap();
    assert!(
        client(&home, base, &["--ca-file", ca, "logout"], "")
            .status
            .success()
    );
    let after = client(&home, base, &["--ca-file", ca, "list"], "");
    assert!(!after.status.success(), "listing works after logout");
    // The old token, put back by hand, is refused by the cluster.
    std::fs::write(home.join("session.json"), token).unwrap();
    let stolen = client(&home, base, &["--ca-file", ca, "list"], "");
    assert!(!stolen.status.success());
    assert!(
        String::from_utf8_lossy(&stolen.stderr).contains("logged out"),
        "{}",
        String::from_utf8_lossy(&stolen.stderr)
    );
}

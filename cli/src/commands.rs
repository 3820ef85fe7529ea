//! Client commands: each turns parsed arguments into controller calls and prints the result,
//! as text for people or JSON (`--json`) for scripts. The shell runs the same functions.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use redcloud_proto::controller as pb;
use serde_json::{Value, json};

use crate::args::Command;
use crate::client::connect::Controllers;
use crate::client::{authed, download, upload};
use crate::session::Session;

/// What a command needs from its surroundings.
#[derive(Debug)]
pub struct ClientContext {
    pub controllers: Controllers,
    pub json: bool,
}

/// Runs one client command.
pub async fn run(cx: &mut ClientContext, command: Command) -> Result<()> {
    match command {
        Command::Register(c) => {
            let password = read_password(&c.user, c.password_stdin, true)?;
            let req = pb::RegisterRequest {
                user: c.user.clone(),
                password,
            };
            cx.controllers
                .call(|mut cl| {
                    let r = req.clone();
                    async move { cl.register(r).await }
                })
                .await?;
            cx.print(json!({"registered": c.user}), || {
                format!("registered {}", c.user)
            });
            Ok(())
        }
        Command::Login(c) => {
            let password = read_password(&c.user, c.password_stdin, false)?;
            let req = pb::LoginRequest {
                user: c.user.clone(),
                password,
            };
            let resp = cx
                .controllers
                .call(|mut cl| {
                    let r = req.clone();
                    async move { cl.login(r).await.map(|r| r.into_inner()) }
                })
                .await?;
            let previous = Session::load().ok().filter(|s| s.user == c.user);
            let session = Session {
                user: c.user.clone(),
                token: resp.token,
                last_write_hlc: previous.map(|s| s.last_write_hlc).unwrap_or(0),
            };
            session.save()?;
            cx.print(json!({"logged_in": c.user}), || {
                format!("logged in as {}", c.user)
            });
            Ok(())
        }
        Command::Logout => {
            let session = Session::load()?;
            let revoked = cx
                .call_authed(&session, pb::LogoutRequest {}, |mut cl, r| async move {
                    cl.logout(r).await.map(|r| r.into_inner())
                })
                .await;
            // Forgotten here either way; an expired or already revoked token needs no revoking.
            Session::remove()?;
            match revoked {
                Ok(_) => {
                    cx.print(json!({"logged_out": session.user}), || {
                        format!(
                            "logged out {}; the session's token is revoked",
                            session.user
                        )
                    });
                    Ok(())
                }
                Err(e) if e.to_string().starts_with("not logged in") => {
                    cx.print(json!({"logged_out": session.user}), || {
                        format!("logged out {} (the token had expired)", session.user)
                    });
                    Ok(())
                }
                Err(e) => Err(e.context(
                    "the session is deleted here, but its token could not be revoked (it stays \
                     valid until it expires)",
                )),
            }
        }
        Command::Add { files, tags } => add(cx, &files, &tags).await,
        Command::List { tags } => {
            let files = list(cx, tags).await?;
            if cx.json {
                println!("{}", Value::Array(files.iter().map(file_json).collect()));
            } else if files.is_empty() {
                println!("no files");
            } else {
                for f in &files {
                    println!(
                        "{:<32} {:>12}  {}  [{}]",
                        f.name,
                        human_size(f.size),
                        short(&f.version),
                        f.tags.join(", ")
                    );
                }
            }
            Ok(())
        }
        Command::Download {
            name,
            output,
            force,
            version,
        } => {
            let session = Session::load()?;
            let output = output.unwrap_or_else(|| PathBuf::from(&name));
            let file = download::download(
                &mut cx.controllers,
                &session,
                &name,
                version.as_deref(),
                &output,
                force,
            )
            .await?;
            cx.print(
                json!({"name": file.name, "path": output, "size": file.size,
                       "version": file.version, "blake3": hex::encode(&file.blake3)}),
                || {
                    format!(
                        "downloaded {} ({}) to {}",
                        file.name,
                        human_size(file.size),
                        output.display()
                    )
                },
            );
            Ok(())
        }
        Command::Delete { tags } => {
            let mut session = Session::load()?;
            let req = pb::DeleteRequest {
                tags,
                after: session.last_write_hlc,
            };
            let resp = cx
                .call_authed(&session, req, |mut cl, r| async move {
                    cl.delete(r).await.map(|r| r.into_inner())
                })
                .await?;
            session.observe_write(resp.hlc)?;
            cx.print_names("deleted", &resp.names);
            Ok(())
        }
        Command::AddTags { query, add } => {
            let session = Session::load()?;
            let req = pb::TagsRequest { query, tags: add };
            let resp = cx
                .call_authed(&session, req, |mut cl, r| async move {
                    cl.add_tags(r).await.map(|r| r.into_inner())
                })
                .await?;
            cx.print_names("tagged", &resp.names);
            Ok(())
        }
        Command::DeleteTags { query, remove } => {
            let session = Session::load()?;
            let req = pb::TagsRequest {
                query,
                tags: remove,
            };
            let resp = cx
                .call_authed(&session, req, |mut cl, r| async move {
                    cl.delete_tags(r).await.map(|r| r.into_inner())
                })
                .await?;
            cx.print_names("untagged", &resp.names);
            Ok(())
        }
        Command::History { name } => {
            let session = Session::load()?;
            let req = pb::HistoryRequest { name };
            let resp = cx
                .call_authed(&session, req, |mut cl, r| async move {
                    cl.history(r).await.map(|r| r.into_inner())
                })
                .await?;
            if cx.json {
                println!(
                    "{}",
                    Value::Array(resp.versions.iter().map(version_json).collect())
                );
            } else {
                for v in &resp.versions {
                    println!(
                        "{} {:>12}  {}  {}{}{}",
                        v.version,
                        if v.deleted {
                            "deleted".to_owned()
                        } else {
                            human_size(v.size)
                        },
                        format_ms(v.created_ms),
                        short(&v.origin),
                        if v.head { "  (current)" } else { "" },
                        if v.restored_from.is_empty() {
                            String::new()
                        } else {
                            format!("  restored from {}", v.restored_from)
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Restore { name, version } => {
            let mut session = Session::load()?;
            let req = pb::RestoreRequest {
                name,
                version,
                after: session.last_write_hlc,
            };
            let file = cx
                .call_authed(&session, req, |mut cl, r| async move {
                    cl.restore(r).await.map(|r| r.into_inner())
                })
                .await?
                .file
                .ok_or_else(|| anyhow!("controller restored without file details"))?;
            session.observe_write(file.hlc)?;
            cx.print(file_json(&file), || {
                format!(
                    "restored {} (new version {})",
                    file.name,
                    short(&file.version)
                )
            });
            Ok(())
        }
        Command::Conflicts => {
            let session = Session::load()?;
            let resp = cx
                .call_authed(&session, pb::ConflictsRequest {}, |mut cl, r| async move {
                    cl.conflicts(r).await.map(|r| r.into_inner())
                })
                .await?;
            if cx.json {
                let v: Vec<Value> = resp
                    .conflicts
                    .iter()
                    .map(|c| {
                        json!({"name": c.name, "winner": c.winner,
                               "versions": c.versions.iter().map(version_json).collect::<Vec<_>>()})
                    })
                    .collect();
                println!("{}", Value::Array(v));
            } else if resp.conflicts.is_empty() {
                println!("no conflicts");
            } else {
                for c in &resp.conflicts {
                    let others: Vec<&str> = c
                        .versions
                        .iter()
                        .map(|v| v.version.as_str())
                        .filter(|v| *v != c.winner)
                        .collect();
                    println!(
                        "{}: current {}, also {}",
                        c.name,
                        c.winner,
                        others.join(", ")
                    );
                }
            }
            Ok(())
        }
        Command::Status => {
            // The cluster's view with the secret; the user's own counts with a login.
            let token = Session::load().map(|s| s.token).unwrap_or_default();
            let admin = cx.controllers.admin_metadata().clone();
            let resp = cx
                .controllers
                .call(|mut cl| {
                    let mut req = authed(pb::StatusRequest {}, &token);
                    for kv in admin.iter() {
                        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                            req.metadata_mut().insert(k.clone(), v.clone());
                        }
                    }
                    async move { cl.status(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            if cx.json {
                println!("{}", status_json(&resp));
            } else {
                print_status(&resp);
            }
            Ok(())
        }
        Command::Drain { chunkserver } => {
            let req = pb::DrainRequest {
                chunkserver_id: chunkserver.clone(),
            };
            cx.controllers
                .admin(|mut cl| {
                    let r = req.clone();
                    async move { cl.drain(r).await }
                })
                .await?;
            cx.print(json!({"draining": chunkserver}), || {
                format!(
                    "draining {chunkserver}: its chunks move elsewhere; it is removed once \
                     every chunk is confirmed on other active servers"
                )
            });
            Ok(())
        }
        Command::Undrain { chunkserver } => {
            let req = pb::UndrainRequest {
                chunkserver_id: chunkserver.clone(),
            };
            cx.controllers
                .admin(|mut cl| {
                    let r = req.clone();
                    async move { cl.undrain(r).await }
                })
                .await?;
            cx.print(json!({"active": chunkserver}), || {
                format!("{chunkserver} is active again")
            });
            Ok(())
        }
        Command::ForgetController { controller } => {
            let req = pb::ForgetControllerRequest {
                controller_id: controller.clone(),
            };
            cx.controllers
                .admin(|mut cl| {
                    let r = req.clone();
                    async move { cl.forget_controller(r).await }
                })
                .await?;
            cx.print(json!({"forgotten": controller}), || {
                format!("forgot controller {controller}")
            });
            Ok(())
        }
        Command::SetReplication { policy } => {
            let req = pb::SetReplicationRequest {
                policy: policy.clone(),
            };
            cx.controllers
                .admin(|mut cl| {
                    let r = req.clone();
                    async move { cl.set_replication(r).await }
                })
                .await?;
            cx.print(json!({"replication": policy}), || {
                format!("replication policy is now {policy}")
            });
            Ok(())
        }
        Command::Shell
        | Command::Completions { .. }
        | Command::Dev(_)
        | Command::Secret { .. }
        | Command::Ca
        | Command::Chunkserver(_)
        | Command::Controller(_) => bail!("not a client command"),
    }
}

impl ClientContext {
    async fn call_authed<Req, T, F, Fut>(&mut self, session: &Session, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(
            pb::controller_service_client::ControllerServiceClient<tonic::transport::Channel>,
            tonic::Request<Req>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let token = session.token.clone();
        self.controllers
            .call(|cl| f(cl, authed(req.clone(), &token)))
            .await
    }

    fn print(&self, value: Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text());
        }
    }

    fn print_names(&self, verb: &str, names: &[String]) {
        if self.json {
            println!("{}", json!({ verb: names }));
        } else if names.is_empty() {
            println!("no file matched");
        } else {
            println!("{verb} {}", names.join(", "));
        }
    }
}

/// Files carrying all `tags`.
pub async fn list(cx: &mut ClientContext, tags: Vec<String>) -> Result<Vec<pb::FileInfo>> {
    let session = Session::load()?;
    let req = pb::ListRequest { tags };
    Ok(cx
        .call_authed(&session, req, |mut cl, r| async move {
            cl.list(r).await.map(|r| r.into_inner())
        })
        .await?
        .files)
}

async fn add(cx: &mut ClientContext, files: &[PathBuf], tags: &[String]) -> Result<()> {
    let mut session = Session::load()?;
    // Every argument is checked before anything is uploaded.
    let named = files
        .iter()
        .map(|path| {
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path.clone(), file_name(path)?))
        })
        .collect::<Result<Vec<_>>>()?;
    if let [(path, name)] = &named[..] {
        let up = upload::upload(&mut cx.controllers, &mut session, path, name, tags).await?;
        report_added(cx.json, &up);
        if cx.json {
            println!("{}", Value::Array(vec![added_json(&up)]));
        }
        return Ok(());
    }
    let bar = crate::client::progress::count_bar("adding files", named.len() as u64);
    let options = upload::UploadOptions {
        quiet: true,
        ..Default::default()
    };
    let json = cx.json;
    let results = upload::upload_many(
        &mut cx.controllers,
        &mut session,
        &named,
        tags,
        &options,
        |i, result| {
            bar.suspend(|| match result {
                Ok(up) => report_added(json, up),
                Err(e) => eprintln!("error: {}: {e:#}", named[i].0.display()),
            });
            bar.inc(1);
        },
    )
    .await?;
    bar.finish_and_clear();
    if json {
        let added = results.iter().filter_map(|r| r.as_ref().ok());
        println!("{}", Value::Array(added.map(added_json).collect()));
    }
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} files were not added (the others were)",
            results.len()
        );
    }
    Ok(())
}

/// One line per added file (none with `--json`), and a warning when it is stored degraded.
fn report_added(json: bool, up: &upload::Uploaded) {
    if !json {
        println!(
            "added {} ({}, version {}, {} of {} chunks sent)",
            up.file.name,
            human_size(up.file.size),
            short(&up.file.version),
            up.chunks_sent,
            up.chunks
        );
    }
    if up.degraded {
        eprintln!(
            "warning: {} is stored with {} copies, fewer than the write quorum of {}, because \
             fewer chunkservers are active; repair adds the missing copies when they return",
            up.file.name, up.copies, up.quorum
        );
    }
}

fn added_json(up: &upload::Uploaded) -> Value {
    let mut v = file_json(&up.file);
    v["chunks"] = json!(up.chunks);
    v["chunks_sent"] = json!(up.chunks_sent);
    v["bytes_sent"] = json!(up.bytes_sent);
    v["degraded"] = json!(up.degraded);
    v["copies"] = json!(up.copies);
    v
}

fn file_name(path: &Path) -> Result<String> {
    if path.is_dir() {
        bail!("{} is a directory; add files", path.display());
    }
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))
}

fn read_password(user: &str, stdin: bool, confirm: bool) -> Result<String> {
    let password = if stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let p = rpassword::prompt_password(format!("password for {user}: "))?;
        if confirm && rpassword::prompt_password("repeat password: ")? != p {
            bail!("passwords do not match");
        }
        p
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

pub fn file_json(f: &pb::FileInfo) -> Value {
    json!({
        "name": f.name,
        "size": f.size,
        "tags": f.tags,
        "version": f.version,
        "blake3": hex::encode(&f.blake3),
        "modified": f.modified_ms,
        "hlc": f.hlc,
    })
}

fn version_json(v: &pb::VersionInfo) -> Value {
    json!({
        "version": v.version,
        "size": v.size,
        "created": v.created_ms,
        "deleted": v.deleted,
        "origin": v.origin,
        "head": v.head,
        "blake3": hex::encode(&v.blake3),
        "restored_from": v.restored_from,
        "hlc": v.hlc,
    })
}

pub fn status_json(s: &pb::StatusResponse) -> Value {
    let c = s.controller.clone().unwrap_or_default();
    let chunks = s.chunks.unwrap_or_default();
    let repair = s.repair.unwrap_or_default();
    let clock = s.clock.clone().unwrap_or_default();
    let gc = s.gc.clone().unwrap_or_default();
    json!({
        "scope": s.scope,
        "insecure": s.insecure,
        "controller": {"id": c.id, "address": c.address, "peers": c.peers,
                       "metadata_digest": c.metadata_digest},
        "controllers": s.controllers.iter().map(|c| json!({
            "id": c.id, "address": c.address, "forgotten": c.forgotten,
            "connected": c.connected, "last_equal_ms_ago": c.last_equal_ms_ago,
        })).collect::<Vec<_>>(),
        "chunkservers": s.chunkservers.iter().map(|cs| json!({
            "id": cs.id, "address": cs.address, "zone": cs.zone, "state": cs.state,
            "chunks": cs.chunks, "used_bytes": cs.used_bytes, "capacity_bytes": cs.capacity_bytes,
            "last_heartbeat_ms": cs.last_heartbeat_ms,
        })).collect::<Vec<_>>(),
        "chunks": {"total": chunks.total, "under_replicated": chunks.under_replicated, "lost": chunks.lost},
        "files": s.files,
        "conflicts": s.conflicts,
        "repair": {"queued": repair.queued, "in_flight": repair.in_flight, "done": repair.done, "failed": repair.failed},
        "clock": {"state": clock.state, "median_offset_ms": clock.median_offset_ms,
                  "correction_ms": clock.correction_ms, "witnesses": clock.witnesses,
                  "max_skew_ms": clock.max_skew_ms},
        "gc": {"allowed": gc.allowed, "blocked_by": gc.blocked_by,
               "purge_allowed": gc.purge_allowed, "purge_blocked_by": gc.purge_blocked_by,
               "orphans": gc.orphans, "deleted": gc.deleted},
        "workers": s.workers.iter().map(|w| json!({
            "name": w.name, "state": w.state, "restarts": w.restarts, "last_error": w.last_error,
        })).collect::<Vec<_>>(),
        "degraded_writes": s.degraded_writes,
        "replication": s.replication,
        "shards": s.shards,
        "lineage": s.lineage,
    })
}

fn print_status(s: &pb::StatusResponse) {
    if s.insecure {
        println!(
            "WARNING: this cluster runs --insecure: no secret, no TLS, anyone may do anything"
        );
    }
    if s.scope == "user" {
        println!("{} files, {} with conflicts", s.files, s.conflicts);
        println!("(cluster-wide status needs the cluster secret: --secret-file)");
        return;
    }
    let c = s.controller.clone().unwrap_or_default();
    let chunks = s.chunks.unwrap_or_default();
    let repair = s.repair.unwrap_or_default();
    println!(
        "controller {} at {} ({} peers connected)",
        short(&c.id),
        c.address,
        c.peers.len()
    );
    println!("metadata digest {}", short(&c.metadata_digest));
    println!(
        "replication {}, {} shards, {} degraded writes",
        s.replication, s.shards, s.degraded_writes
    );
    println!("controllers: {}", s.controllers.len());
    for ctl in &s.controllers {
        let sync = match ctl.last_equal_ms_ago {
            -1 => "never in sync".to_owned(),
            ms => format!("in sync {:.1}s ago", ms as f64 / 1000.0),
        };
        println!(
            "  {} {}{}{}  {sync}",
            short(&ctl.id),
            ctl.address,
            if ctl.connected {
                ""
            } else {
                "  (not connected)"
            },
            if ctl.forgotten { "  (forgotten)" } else { "" },
        );
    }
    if let Some(clock) = &s.clock {
        println!(
            "clock: {} (witnesses {}, median offset {} ms, correction {} ms)",
            clock.state, clock.witnesses, clock.median_offset_ms, clock.correction_ms
        );
    }
    if let Some(gc) = &s.gc {
        let state = |ok: bool, why: &str| {
            if ok {
                "allowed".to_owned()
            } else {
                format!("blocked: {why}")
            }
        };
        println!(
            "gc: deletes {}; trash purge {}; {} orphans tracked, {} copies deleted",
            state(gc.allowed, &gc.blocked_by),
            state(gc.purge_allowed, &gc.purge_blocked_by),
            gc.orphans,
            gc.deleted
        );
    }
    for w in s
        .workers
        .iter()
        .filter(|w| w.restarts > 0 || w.state != "running")
    {
        println!(
            "worker {}: {} ({} restarts, last error: {})",
            w.name, w.state, w.restarts, w.last_error
        );
    }
    println!("chunkservers: {}", s.chunkservers.len());
    for cs in &s.chunkservers {
        println!(
            "  {:<24} {:<21} {:<9} {:>6} chunks {:>10} used of {:>10}  zone {}",
            cs.id,
            cs.address,
            cs.state,
            cs.chunks,
            human_size(cs.used_bytes),
            human_size(cs.capacity_bytes),
            cs.zone
        );
    }
    println!(
        "chunks: {} total, {} under-replicated, {} lost",
        chunks.total, chunks.under_replicated, chunks.lost
    );
    println!("files: {}, conflicts: {}", s.files, s.conflicts);
    println!(
        "repair: {} queued, {} in flight, {} done, {} failed",
        repair.queued, repair.in_flight, repair.done, repair.failed
    );
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, rem) = (secs / 86_400, secs % 86_400);
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = d as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(50 << 20), "50.0 MiB");
    }
}

//! In-process clusters of real controllers and chunkservers on 127.0.0.1: the client API end
//! to end, chunkserver failure and fill, partition healing to complete replication, GC
//! safety, and every auth failure and bad request answering the right status.

mod common;
mod inproc;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use redcloud::client::authed;
use redcloud_proto::controller as pb;
use tonic::Code;

use common::bytes as data;
use inproc::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_commit_resolve_download_through_the_api() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let mut servers = vec![
        Chunkserver::start(&addrs).await,
        Chunkserver::start(&addrs).await,
    ];
    wait_active(&c.addr, 2).await;
    let token = login(&c.addr, "alice").await;
    let bytes = data(5 << 20, 7);
    let info = put(&addrs, &token, work.path(), "a.bin", &bytes).await;
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(&info.blake3[..], blake3::hash(&bytes).as_bytes());
    assert_eq!(get(&addrs, &token, work.path(), "a.bin").await, bytes);

    // Resolve names every chunk with at least one location, in order, adding up to the size.
    let r = resolve(&c.addr, &token, "a.bin").await;
    assert_eq!(
        r.chunks.iter().map(|c| c.size).sum::<u64>(),
        bytes.len() as u64
    );
    assert!(r.chunks.iter().all(|c| !c.addresses.is_empty()));
    for s in &mut servers {
        s.stop().await;
    }
    c.node.stop().await;
}

/// CommitFiles judges each file on its own: in one batch a good file commits, a malformed one
/// is refused with its reason, one whose chunk no server holds is answered `missing` (and not
/// committed), and none of them holds back the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_files_answers_each_file_on_its_own() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let mut server = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    let token = login(&c.addr, "alice").await;
    let bytes = data(300_000, 5);
    let info = put(&addrs, &token, work.path(), "a.bin", &bytes).await;
    let mut client = api(&c.addr).await;
    let resolved = resolve(&c.addr, &token, "a.bin").await;
    let stored: Vec<pb::ChunkRef> = resolved
        .chunks
        .iter()
        .map(|c| pb::ChunkRef {
            id: c.id.clone(),
            size: c.size,
        })
        .collect();
    let file = |name: &str, chunks: Vec<pb::ChunkRef>, size: u64| pb::CommitFileRequest {
        name: name.into(),
        tags: vec!["batch".into()],
        size,
        blake3: info.blake3.clone(),
        chunks,
        after: 0,
    };
    let size = bytes.len() as u64;
    let mut untagged = file("untagged", stored.clone(), size);
    untagged.tags.clear();
    let ghost = pb::ChunkRef {
        id: Bytes::copy_from_slice(&[7; 32]),
        size: 10,
    };
    let request = pb::CommitFilesRequest {
        files: vec![
            file("one", stored.clone(), size),
            untagged,
            file("ghost", vec![ghost.clone()], 10),
            file("short", stored.clone(), size + 1),
            file("two", stored.clone(), size),
        ],
    };
    let answers = client
        .commit_files(authed(request, &token))
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(answers.len(), 5);
    for (i, name) in [(0, "one"), (4, "two")] {
        let r = answers[i].response.as_ref().expect("committed");
        assert_eq!(answers[i].code, 0);
        assert!(r.missing.is_empty(), "{r:?}");
        assert_eq!(r.file.as_ref().map(|f| f.name.as_str()), Some(name));
    }
    assert_eq!(answers[1].code, Code::InvalidArgument as i32);
    assert!(answers[1].error.contains("tag"), "{}", answers[1].error);
    assert!(answers[1].response.is_none());
    let missing = answers[2].response.as_ref().expect("answered");
    assert!(missing.file.is_none());
    assert_eq!(missing.missing, vec![ghost.id.clone()]);
    assert_eq!(answers[3].code, Code::InvalidArgument as i32);
    assert!(answers[3].error.contains("size"), "{}", answers[3].error);

    // Exactly the two good files were committed, and they download as the bytes stored.
    let listed = client
        .list(authed(
            pb::ListRequest {
                tags: vec!["batch".into()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .files;
    let names: HashSet<_> = listed.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, HashSet::from(["one", "two"]));
    assert_eq!(get(&addrs, &token, work.path(), "two").await, bytes);

    // A batch over the limit is refused whole, and nobody commits without a token.
    let too_many = pb::CommitFilesRequest {
        files: (0..=redcloud_meta::service::commit::MAX_FILES_PER_COMMIT)
            .map(|i| file(&format!("f{i}"), stored.clone(), size))
            .collect(),
    };
    let err = client
        .commit_files(authed(too_many, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .commit_files(pb::CommitFilesRequest {
            files: vec![file("three", stored.clone(), size)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    server.stop().await;
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_chunkserver_fails_reads_fall_back_and_a_new_one_is_filled() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |_| {}).await;
    let addrs = vec![c.addr.clone()];
    let mut a = Chunkserver::start(&addrs).await;
    let mut b = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 2).await;
    let token = login(&c.addr, "bob").await;
    let mut files = Vec::new();
    for i in 0..4 {
        let bytes = data((1 << 20) | (i * 1000), i as u64 + 1);
        put(&addrs, &token, work.path(), &format!("f{i}"), &bytes).await;
        files.push(bytes);
    }
    wait_until("both servers hold every chunk", || async {
        let s = status(&c.addr).await;
        let total = s.chunks.unwrap().total;
        total > 0 && s.chunkservers.iter().all(|cs| cs.chunks == total)
    })
    .await;

    a.stop().await;
    let took = wait_until("the stopped server is failed", || async {
        status(&c.addr)
            .await
            .chunkservers
            .iter()
            .any(|cs| cs.address == a.addr && cs.state == "failed")
    })
    .await;
    eprintln!("chunkserver marked failed {took:?} after it stopped (timeout 1.5 s)");
    for (i, bytes) in files.iter().enumerate() {
        assert_eq!(
            &get(&addrs, &token, work.path(), &format!("f{i}")).await,
            bytes
        );
    }

    // A new chunkserver receives every chunk.
    let mut fresh = Chunkserver::start(&addrs).await;
    let took = wait_until("the new server holds every chunk", || async {
        let s = status(&c.addr).await;
        let total = s.chunks.unwrap().total;
        s.chunkservers
            .iter()
            .any(|cs| cs.address == fresh.addr && cs.chunks == total && total > 0)
    })
    .await;
    eprintln!("new chunkserver filled in {took:?}");
    b.stop().await;
    fresh.stop().await;
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_controllers_heal_to_complete_replication() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c0 = controller(Vec::new(), |_| {}).await;
    let c1 = controller(vec![c0.p2p.clone()], |_| {}).await;
    let all = vec![c0.addr.clone(), c1.addr.clone()];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Chunkserver::start(&all).await);
    }
    wait_active(&c0.addr, 3).await;
    wait_active(&c1.addr, 3).await;
    let token = login(&c0.addr, "carol").await;
    wait_until("the user reached c1", || async {
        let mut c = api(&c1.addr).await;
        c.list(authed(pb::ListRequest { tags: vec![] }, &token))
            .await
            .is_ok()
    })
    .await;

    let (p0, p1) = (c0.node.net.local_peer_id(), c1.node.net.local_peer_id());
    c0.node.net.block(p1).await.unwrap();
    c1.node.net.block(p0).await.unwrap();
    let left = data(3 << 20, 11);
    let right = data(2 << 20, 12);
    put(
        std::slice::from_ref(&c0.addr),
        &token,
        work.path(),
        "left",
        &left,
    )
    .await;
    put(
        std::slice::from_ref(&c1.addr),
        &token,
        work.path(),
        "right",
        &right,
    )
    .await;
    put(
        std::slice::from_ref(&c0.addr),
        &token,
        work.path(),
        "same",
        &left[..1000],
    )
    .await;
    put(
        std::slice::from_ref(&c1.addr),
        &token,
        work.path(),
        "same",
        &right[..2000],
    )
    .await;
    c0.node.net.unblock(p1).await.unwrap();
    c1.node.net.unblock(p0).await.unwrap();

    let took = wait_until(
        "metadata converged and every server holds every chunk",
        || async {
            let (s0, s1) = (status(&c0.addr).await, status(&c1.addr).await);
            let d0 = s0.controller.clone().unwrap().metadata_digest;
            let d1 = s1.controller.clone().unwrap().metadata_digest;
            let total = s0.chunks.unwrap().total;
            d0 == d1 && total > 0 && s0.chunkservers.iter().all(|cs| cs.chunks == total)
        },
    )
    .await;
    eprintln!("partition healed to full replication in {took:?}");
    for addr in &all {
        let one = vec![addr.clone()];
        assert_eq!(get(&one, &token, work.path(), "left").await, left);
        assert_eq!(get(&one, &token, work.path(), "right").await, right);
    }
    let mut client = api(&c1.addr).await;
    let conflicts = client
        .conflicts(authed(pb::ConflictsRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .conflicts;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].versions.len(), 2);

    // The user keeps the losing version: it becomes the head on both sides, conflict gone.
    let loser = conflicts[0]
        .versions
        .iter()
        .find(|v| v.version != conflicts[0].winner)
        .unwrap()
        .clone();
    let kept = client
        .resolve_conflict(authed(
            pb::ResolveConflictRequest {
                name: "same".into(),
                version: loser.version.clone(),
                after: 0,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!(kept.blake3, loser.blake3);
    wait_until("the resolution reached both controllers", || async {
        let (s0, s1) = (status(&c0.addr).await, status(&c1.addr).await);
        s0.controller.unwrap().metadata_digest == s1.controller.unwrap().metadata_digest
            && s0.conflicts == 0
    })
    .await;
    let expected = if loser.size == 1000 {
        &left[..1000]
    } else {
        &right[..2000]
    };
    assert_eq!(
        get(std::slice::from_ref(&c0.addr), &token, work.path(), "same").await,
        expected
    );
    for s in &mut servers {
        s.stop().await;
    }
    c0.node.stop().await;
    c1.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_deletes_orphans_but_never_a_chunk_of_a_retained_version() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| {
        cfg.gc_grace_ms = 300;
        cfg.gc_interval = Duration::from_millis(200);
    })
    .await;
    let addrs = vec![c.addr.clone()];
    let mut cs = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 1).await;
    c.node
        .parts
        .meta
        .mutate(|s| Ok(((), vec![s.set_trash_retention(0, 1)?])))
        .await
        .unwrap();
    let token = login(&c.addr, "dan").await;
    // `keep` shares its first chunk-sized prefix with `doomed`: deduplicated chunks.
    let shared_part = data(2 << 20, 21);
    let mut doomed = shared_part.clone();
    doomed.extend(data(2 << 20, 22));
    let mut keep = shared_part.clone();
    keep.extend(data(1 << 20, 23));
    put_tagged(&addrs, &token, work.path(), "doomed", &doomed, "gone").await;
    put_tagged(&addrs, &token, work.path(), "keep", &keep, "stay").await;
    let mut client = api(&c.addr).await;
    let chunks_of = |name: &'static str| {
        let (addr, token) = (c.addr.clone(), token.clone());
        async move {
            resolve(&addr, &token, name)
                .await
                .chunks
                .into_iter()
                .map(|c| c.id)
                .collect::<HashSet<Bytes>>()
        }
    };
    let doomed_chunks = chunks_of("doomed").await;
    let keep_chunks = chunks_of("keep").await;
    let only_doomed: Vec<Bytes> = doomed_chunks.difference(&keep_chunks).cloned().collect();
    assert!(!only_doomed.is_empty(), "doomed has chunks of its own");
    assert!(
        doomed_chunks.intersection(&keep_chunks).count() > 0,
        "and chunks shared with keep"
    );

    let del = client
        .delete(authed(
            pb::DeleteRequest {
                tags: vec!["gone".into()],
                after: 0,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.names, ["doomed"]);
    let mut chunk_client = chunk_client(&cs.addr).await;
    let mut uploads = Vec::new();
    let gone = wait_until("doomed's own chunks are collected", || {
        let ids = only_doomed.clone();
        let mut cc = chunk_client.clone();
        let n = uploads.len() as u64;
        let bytes = data(300_000 + n as usize, 100 + n);
        uploads.push(bytes.clone());
        let addrs = addrs.clone();
        let token = token.clone();
        let dir = work.path().to_path_buf();
        async move {
            put(&addrs, &token, &dir, &format!("during-{n}"), &bytes).await;
            let present = cc
                .has_chunks(node_request(redcloud_proto::chunk::HasChunksRequest {
                    ids,
                    touch: false,
                }))
                .await
                .unwrap()
                .into_inner()
                .present;
            present.iter().all(|p| !p)
        }
    })
    .await;
    eprintln!("orphans collected {gone:?} after the delete");
    let present = chunk_client
        .has_chunks(node_request(redcloud_proto::chunk::HasChunksRequest {
            ids: keep_chunks.iter().cloned().collect(),
            touch: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .present;
    assert!(
        present.iter().all(|p| *p),
        "a chunk of a retained version was deleted"
    );
    assert_eq!(get(&addrs, &token, work.path(), "keep").await, keep);
    for (n, bytes) in uploads.iter().enumerate() {
        assert_eq!(
            &get(&addrs, &token, work.path(), &format!("during-{n}")).await,
            bytes
        );
    }
    cs.stop().await;
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_failures_and_bad_requests_get_the_right_status() {
    let c = controller(Vec::new(), |_| {}).await;
    let mut cl = api(&c.addr).await;
    let alice = login(&c.addr, "alice").await;
    let bob = login(&c.addr, "bob").await;

    let code = |r: Result<tonic::Response<pb::ListResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(cl.list(pb::ListRequest { tags: vec![] }).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            cl.list(authed(pb::ListRequest { tags: vec![] }, "rc1:x:1:k:00"))
                .await
        ),
        Code::Unauthenticated
    );
    let forged = alice.replacen("alice", "bob", 1);
    assert_eq!(
        code(
            cl.list(authed(pb::ListRequest { tags: vec![] }, &forged))
                .await
        ),
        Code::Unauthenticated
    );

    let err = cl
        .login(pb::LoginRequest {
            user: "alice".into(),
            password: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = cl
        .register(pb::RegisterRequest {
            user: "alice".into(),
            password: "pw".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = cl
        .register(pb::RegisterRequest {
            user: "Bad/Name".into(),
            password: "pw".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("user"), "{}", err.message());

    let bad_chunk = pb::PlanUploadRequest {
        chunks: vec![pb::ChunkRef {
            id: Bytes::from_static(&[1, 2, 3]),
            size: 3,
        }],
        force: false,
    };
    let err = cl.plan_upload(authed(bad_chunk, &alice)).await.unwrap_err();
    // No chunkserver yet is UNAVAILABLE; with one it is the bad id. Either names the problem.
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::Unavailable),
        "{err:?}"
    );

    let commit = |name: &str, chunk: [u8; 32], size: u64| pb::CommitFileRequest {
        name: name.into(),
        tags: vec!["t".into()],
        size,
        blake3: Bytes::copy_from_slice(&[0; 32]),
        chunks: vec![pb::ChunkRef {
            id: Bytes::copy_from_slice(&chunk),
            size: 10,
        }],
        after: 0,
    };
    let err = cl
        .commit_file(authed(commit("f", [9; 32], 11), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("size"), "{}", err.message());
    // No chunkserver to confirm a copy: nothing can be committed.
    let err = cl
        .commit_file(authed(commit("f", [9; 32], 10), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // No tag: the file model is the controller's to enforce, not only the CLI's.
    let mut untagged = commit("f", [9; 32], 10);
    untagged.tags.clear();
    let err = cl.commit_file(authed(untagged, &alice)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("tag"), "{}", err.message());
    let err = cl
        .commit_file(authed(commit("a/b", [9; 32], 10), &alice))
        .await
        .unwrap_err();
    assert!(matches!(
        err.code(),
        Code::InvalidArgument | Code::FailedPrecondition
    ));

    // Another user's names are invisible.
    let err = cl
        .history(authed(pb::HistoryRequest { name: "f".into() }, &bob))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = cl
        .delete(authed(
            pb::DeleteRequest {
                tags: vec![],
                after: 0,
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("tags"));
    c.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_chunkserver_moves_its_chunks_then_removes_it() {
    let work = tempfile::tempdir().unwrap();
    set_home(work.path());
    let c = controller(Vec::new(), |cfg| {
        cfg.replication = Some("1".into());
        cfg.write_quorum = 1;
    })
    .await;
    let addrs = vec![c.addr.clone()];
    let mut a = Chunkserver::start(&addrs).await;
    let mut b = Chunkserver::start(&addrs).await;
    wait_active(&c.addr, 2).await;
    let token = login(&c.addr, "erin").await;
    let mut files = Vec::new();
    for i in 0..3u64 {
        let bytes = data(1_500_000 + i as usize, 50 + i);
        put(&addrs, &token, work.path(), &format!("d{i}"), &bytes).await;
        files.push(bytes);
    }
    // One copy per chunk: find a server that holds some.
    let s = status(&c.addr).await;
    let total = s.chunks.unwrap().total;
    let victim = s
        .chunkservers
        .iter()
        .find(|cs| cs.chunks > 0)
        .expect("some server holds chunks")
        .clone();
    let mut admin = admin(&c.addr).await;
    let err = admin
        .drain(pb::DrainRequest {
            chunkserver_id: "no-such-server".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    admin
        .drain(pb::DrainRequest {
            chunkserver_id: victim.id.clone(),
        })
        .await
        .unwrap();
    let took = wait_until(
        "the drained server is removed and the other holds everything",
        || async {
            let s = status(&c.addr).await;
            let removed = s
                .chunkservers
                .iter()
                .any(|cs| cs.id == victim.id && cs.state == "removed");
            let full = s
                .chunkservers
                .iter()
                .any(|cs| cs.id != victim.id && cs.chunks == total);
            removed && full
        },
    )
    .await;
    eprintln!("drain of {} chunks finished in {took:?}", victim.chunks);
    for (i, bytes) in files.iter().enumerate() {
        assert_eq!(
            &get(&addrs, &token, work.path(), &format!("d{i}")).await,
            bytes
        );
    }
    // New uploads never go to the removed server.
    let plan = api(&c.addr)
        .await
        .plan_upload(authed(
            pb::PlanUploadRequest {
                chunks: vec![pb::ChunkRef {
                    id: Bytes::copy_from_slice(&[7; 32]),
                    size: 1,
                }],
                force: false,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!plan.chunks[0].targets.contains(&victim.address));
    a.stop().await;
    b.stop().await;
    c.node.stop().await;
}

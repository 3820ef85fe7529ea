//! Controller-to-controller replication: eager push by gossip, convergence by anti-entropy.
//!
//! - **Push**: every local commit is published on the cluster topic at once. A commit too large
//!   for one gossip message is announced by its heads instead; receivers that miss those heads
//!   pull the document from the announcer by sync. Nothing is dropped for size.
//! - **Receive**: gossip is validated by applying it; changes that do not parse are rejected
//!   (and not forwarded by gossipsub), the rest are accepted.
//! - **Anti-entropy**: when a peer connects and then every `interval`, a session per peer
//!   exchanges per-document heads digests (one small round trip when nothing differs) and runs
//!   the Automerge sync protocol on the documents that differ, until neither side has anything
//!   to send. Gossip is best effort; these sessions are what guarantee convergence after drops,
//!   restarts and partitions.
//!
//! The task owns no document: it talks to the metadata owner through [`MetaHandle`] and to the
//! network through the p2p [`Handle`]. `select!` arms only produce events; `handle_*` methods
//! do the work.

pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redcloud_p2p::{Event, Handle, PeerId, Validation};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::document::DocId;
use crate::handle::MetaHandle;
use crate::metrics::Metrics;
use crate::store::Commit;
use wire::{DocDigest, Gossip, PeerRequest, PeerResponse, Request, Response, SyncStep};

/// Rounds of the sync protocol per document per session before giving up until next time.
const MAX_SYNC_ROUNDS: usize = 64;
/// Room for framing around a gossip payload.
const GOSSIP_OVERHEAD: usize = 1024;
/// Gossip messages taken off the event queue and applied together (one durable write per
/// document instead of one per message).
const MAX_GOSSIP_BATCH: usize = 256;

/// Tunables.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Period of anti-entropy with each connected peer.
    pub interval: Duration,
    /// Largest gossip payload (the p2p layer's limit).
    pub max_gossip_size: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_gossip_size: 64 << 10,
        }
    }
}

/// What the rest of the controller may ask about replication.
#[derive(Debug, Default)]
pub struct PeerView {
    /// Connected controllers.
    pub connected: HashSet<PeerId>,
    /// When each peer was last found to hold exactly our documents.
    pub last_equal: HashMap<PeerId, Instant>,
}

/// Shared, read-mostly replication state (a short lock, never held across an await).
pub type SharedPeers = Arc<Mutex<PeerView>>;

/// The replication task.
pub struct Replication {
    net: Handle,
    meta: MetaHandle,
    config: ReplicationConfig,
    peers: SharedPeers,
    metrics: Arc<Metrics>,
    sessions: JoinSet<(PeerId, bool)>,
    in_session: HashSet<PeerId>,
}

impl Replication {
    pub fn new(
        net: Handle,
        meta: MetaHandle,
        config: ReplicationConfig,
        peers: SharedPeers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            net,
            meta,
            config,
            peers,
            metrics,
            sessions: JoinSet::new(),
            in_session: HashSet::new(),
        }
    }

    /// Runs until `shutdown` fires or the network stops.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut commits: mpsc::Receiver<Commit>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(c) = commits.recv() => self.handle_commit(c).await,
                ev = events.recv() => match ev {
                    Some(ev) => self.handle_events(ev, &mut events).await,
                    None => break,
                },
                _ = tick.tick() => self.handle_tick(),
                Some(done) = self.sessions.join_next(), if !self.sessions.is_empty() => {
                    self.handle_session_done(done);
                }
            }
        }
        self.sessions.abort_all();
    }

    async fn handle_commit(&mut self, commit: Commit) {
        let heads = commit.heads.iter().map(|h| h.0.to_vec()).collect();
        let mut msg = Gossip {
            doc: commit.doc.to_string(),
            changes: commit.changes,
            heads,
        };
        if msg.changes.len() + GOSSIP_OVERHEAD > self.config.max_gossip_size {
            // Too big for gossip: announce the heads; peers pull the rest by sync.
            msg.changes.clear();
            self.metrics.gossip_announcements.inc();
        }
        let bytes = wire::encode(&msg);
        let len = bytes.len();
        match self.net.publish(bytes).await {
            Ok(_) => {
                self.metrics.gossip_sent.inc();
                self.metrics.gossip_bytes_sent.add(len as u64);
            }
            // No peer yet, or the mesh is forming: anti-entropy delivers it.
            Err(e) => tracing::debug!(error = %e, "gossip not published"),
        }
    }

    /// Handles `first` and, when it is gossip, every gossip message already queued behind it
    /// (up to a bound) as one batch.
    async fn handle_events(&mut self, first: Event, events: &mut mpsc::Receiver<Event>) {
        let Event::Gossip { .. } = first else {
            return self.handle_event(first).await;
        };
        let mut batch = vec![first];
        let mut after = None;
        while batch.len() < MAX_GOSSIP_BATCH {
            match events.try_recv() {
                Ok(ev @ Event::Gossip { .. }) => batch.push(ev),
                Ok(other) => {
                    after = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.handle_gossip_batch(batch).await;
        if let Some(ev) = after {
            self.handle_event(ev).await;
        }
    }

    async fn handle_event(&mut self, event: Event) {
        match event {
            Event::PeerConnected(peer) => {
                self.peers.lock().connected.insert(peer);
                if self.initiates(peer) {
                    self.start_session(peer, None);
                }
            }
            Event::PeerDisconnected(peer) => {
                {
                    let mut view = self.peers.lock();
                    view.connected.remove(&peer);
                    view.last_equal.remove(&peer);
                }
                let name = peer.to_string();
                let _ = self.meta.call(move |s| s.reset_peer(&name)).await;
            }
            gossip @ Event::Gossip { .. } => self.handle_gossip_batch(vec![gossip]).await,
            Event::Request { peer, data, reply } => {
                // Requests may wait on the metadata owner: answer off the event loop.
                let meta = self.meta.clone();
                let net = self.net.clone();
                let metrics = self.metrics.clone();
                let peers = self.peers.clone();
                tokio::spawn(async move {
                    let response = answer(&meta, &metrics, &peers, peer, &data).await;
                    let _ = net.respond(reply, wire::encode(&response)).await;
                });
            }
        }
    }

    /// Validates a batch of gossip by applying it: messages are grouped by document and each
    /// group is applied in one call (one durable write); if a group fails, its messages are
    /// applied one by one so only the malformed ones are rejected.
    async fn handle_gossip_batch(&mut self, batch: Vec<Event>) {
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut groups: HashMap<DocId, Vec<(usize, Vec<u8>)>> = HashMap::new();
        let mut announcements = Vec::new();
        // Who sent news of each document: where to pull a missing dependency from.
        let mut senders: HashMap<DocId, PeerId> = HashMap::new();
        for (i, ev) in batch.into_iter().enumerate() {
            let Event::Gossip {
                source,
                origin,
                message_id,
                data,
            } = ev
            else {
                continue;
            };
            let from = origin.unwrap_or(source);
            self.metrics.gossip_received.inc();
            self.metrics.gossip_bytes_received.add(data.len() as u64);
            verdicts.push((message_id, source, Validation::Accept));
            let decoded = wire::decode::<Gossip>(&data)
                .ok()
                .and_then(|m| m.doc.parse::<DocId>().ok().map(|d| (d, m)));
            match decoded {
                None => {
                    self.metrics.rejected_messages.inc();
                    tracing::warn!(peer = %from, "malformed gossip");
                    verdicts[i].2 = Validation::Reject;
                }
                Some((doc, msg)) if msg.changes.is_empty() => {
                    announcements.push((from, doc, msg.heads));
                }
                Some((doc, msg)) => {
                    senders.insert(doc, from);
                    groups.entry(doc).or_default().push((i, msg.changes));
                }
            }
        }
        let applied = self
            .meta
            .call(move |s| {
                let now = crate::clock::wall_ms();
                let mut failed = Vec::new();
                let mut incomplete = Vec::new();
                for (doc, msgs) in groups {
                    let joined: Vec<u8> =
                        msgs.iter().flat_map(|(_, b)| b.iter().copied()).collect();
                    match s.apply_changes(doc, &joined, now) {
                        Ok(outcome) => {
                            if outcome.pending > 0 {
                                incomplete.push(doc);
                            }
                        }
                        Err(_) => {
                            for (i, bytes) in &msgs {
                                match s.apply_changes(doc, bytes, now) {
                                    Ok(o) if o.pending > 0 => incomplete.push(doc),
                                    Ok(_) => {}
                                    Err(e) => failed.push((*i, e.to_string())),
                                }
                            }
                        }
                    }
                }
                (failed, incomplete)
            })
            .await;
        match applied {
            Ok((failed, incomplete)) => {
                for (i, e) in failed {
                    self.metrics.rejected_messages.inc();
                    tracing::warn!(error = %e, "gossip rejected");
                    verdicts[i].2 = Validation::Reject;
                }
                // Some dependency never arrived by gossip: fetch it by sync.
                for doc in incomplete {
                    if let Some(peer) = senders.get(&doc) {
                        self.start_session(*peer, Some(doc));
                    }
                }
            }
            Err(_) => {
                for v in &mut verdicts {
                    v.2 = Validation::Ignore;
                }
            }
        }
        for (from, doc, heads) in announcements {
            // An announcement: pull the document if we miss any of its heads.
            let missing = self
                .meta
                .call(move |s| {
                    let ours = s.heads(doc).unwrap_or_default();
                    heads.iter().any(|h| !ours.iter().any(|o| o.0[..] == h[..]))
                })
                .await
                .unwrap_or(false);
            if missing {
                self.start_session(from, Some(doc));
            }
        }
        for (id, source, verdict) in verdicts {
            let _ = self.net.report_validation(id, source, verdict).await;
        }
    }

    fn handle_tick(&mut self) {
        let peers: Vec<PeerId> = self.peers.lock().connected.iter().copied().collect();
        for p in peers {
            if self.initiates(p) {
                self.start_session(p, None);
            }
        }
    }

    /// Of each pair of controllers, the one with the smaller peer id runs the periodic
    /// anti-entropy session (the sync protocol moves changes both ways), so a pair costs one
    /// exchange per period, not two.
    fn initiates(&self, peer: PeerId) -> bool {
        self.net.local_peer_id() < peer
    }

    fn handle_session_done(&mut self, done: Result<(PeerId, bool), tokio::task::JoinError>) {
        if let Ok((peer, equal)) = done {
            self.in_session.remove(&peer);
            if equal {
                self.peers.lock().last_equal.insert(peer, Instant::now());
            }
        }
    }

    /// Starts an anti-entropy session with `peer` unless one is running (one per peer bounds
    /// the concurrency to the number of peers).
    fn start_session(&mut self, peer: PeerId, only: Option<DocId>) {
        if !self.in_session.insert(peer) {
            return;
        }
        let net = self.net.clone();
        let meta = self.meta.clone();
        let metrics = self.metrics.clone();
        self.sessions.spawn(async move {
            let equal = match session(&net, &meta, &metrics, peer, only).await {
                Ok(equal) => equal,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "anti-entropy session failed");
                    false
                }
            };
            (peer, equal)
        });
    }
}

/// Our total digest and per-document digests of our heads.
async fn digests(meta: &MetaHandle) -> Result<(Vec<u8>, Vec<DocDigest>), String> {
    meta.call(|s| {
        let docs = s
            .docs()
            .into_iter()
            .map(|doc| DocDigest {
                doc: doc.to_string(),
                digest: heads_digest(&s.heads(doc).unwrap_or_default()),
            })
            .collect();
        (s.digest().to_vec(), docs)
    })
    .await
    .map_err(|e| e.to_string())
}

fn heads_digest(heads: &[automerge::ChangeHash]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for head in heads {
        h.update(&head.0);
    }
    h.finalize().as_bytes().to_vec()
}

/// One anti-entropy session. Returns true when the peer's documents equal ours at the start
/// (nothing had to be synced).
async fn session(
    net: &Handle,
    meta: &MetaHandle,
    metrics: &Metrics,
    peer: PeerId,
    only: Option<DocId>,
) -> Result<bool, String> {
    metrics.sync_sessions.inc();
    let differing: Vec<DocId> = match only {
        Some(doc) => vec![doc],
        None => {
            let (total, ours) = digests(meta).await?;
            let req = PeerRequest {
                request: Some(Request::Digests(wire::Digests {
                    docs: Vec::new(),
                    total: total.clone(),
                })),
            };
            let theirs = match call(net, metrics, peer, &req).await? {
                Response::Digests(d) if d.total == total => return Ok(true),
                Response::Digests(d) => d.docs,
                other => return Err(format!("unexpected answer to digests: {other:?}")),
            };
            let theirs: HashMap<String, Vec<u8>> =
                theirs.into_iter().map(|d| (d.doc, d.digest)).collect();
            ours.into_iter()
                .filter(|d| theirs.get(&d.doc) != Some(&d.digest))
                .filter_map(|d| d.doc.parse().ok())
                .collect()
        }
    };
    if differing.is_empty() {
        return Ok(true);
    }
    let name = peer.to_string();
    for doc in differing {
        for round in 0..MAX_SYNC_ROUNDS {
            metrics.sync_rounds.inc();
            let who = name.clone();
            let ours = meta
                .call(move |s| s.generate_sync_message(doc, &who))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let sent_nothing = ours.is_none();
            if sent_nothing && round > 0 {
                break;
            }
            let req = PeerRequest {
                request: Some(Request::Sync(SyncStep {
                    doc: doc.to_string(),
                    message: ours.unwrap_or_default(),
                })),
            };
            let theirs = match call(net, metrics, peer, &req).await? {
                Response::Sync(step) => step.message,
                other => return Err(format!("unexpected answer to sync: {other:?}")),
            };
            if theirs.is_empty() {
                // The peer has nothing to add: either both sides are done, or it has just
                // taken what we sent.
                break;
            }
            let who = name.clone();
            meta.call(move |s| s.receive_sync_message(doc, &who, &theirs, crate::clock::wall_ms()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(false)
}

async fn call(
    net: &Handle,
    metrics: &Metrics,
    peer: PeerId,
    req: &PeerRequest,
) -> Result<Response, String> {
    let bytes = wire::encode(req);
    metrics.requests_sent.inc();
    metrics.request_bytes_sent.add(bytes.len() as u64);
    let answer = net.request(peer, bytes).await.map_err(|e| e.to_string())?;
    metrics.response_bytes_received.add(answer.len() as u64);
    let resp: PeerResponse = wire::decode(&answer)?;
    match resp.response {
        Some(Response::Error(e)) => Err(format!("peer refused: {e}")),
        Some(r) => Ok(r),
        None => Err("empty answer".into()),
    }
}

/// Answers a peer's request. An exchange that finds the documents equal counts as this
/// side's proof of being in sync with the peer, as it does for the side that asked.
async fn answer(
    meta: &MetaHandle,
    metrics: &Metrics,
    peers: &SharedPeers,
    peer: PeerId,
    data: &[u8],
) -> PeerResponse {
    metrics.requests_received.inc();
    metrics.request_bytes_received.add(data.len() as u64);
    let response = match wire::decode::<PeerRequest>(data) {
        Err(e) => {
            metrics.rejected_messages.inc();
            Response::Error(format!("malformed request: {e}"))
        }
        Ok(PeerRequest { request: None }) => Response::Error("empty request".into()),
        Ok(PeerRequest {
            request: Some(Request::Digests(theirs)),
        }) => match digests(meta).await {
            Ok((total, _)) if total == theirs.total => {
                peers.lock().last_equal.insert(peer, Instant::now());
                Response::Digests(wire::Digests {
                    docs: Vec::new(),
                    total,
                })
            }
            Ok((total, docs)) => Response::Digests(wire::Digests { docs, total }),
            Err(e) => Response::Error(e),
        },
        Ok(PeerRequest {
            request: Some(Request::Sync(step)),
        }) => match step.doc.parse::<DocId>() {
            Err(_) => {
                metrics.rejected_messages.inc();
                Response::Error(format!("unknown document {:?}", step.doc))
            }
            Ok(doc) => {
                let who = peer.to_string();
                let result = meta
                    .call(move |s| {
                        if !step.message.is_empty() {
                            s.receive_sync_message(
                                doc,
                                &who,
                                &step.message,
                                crate::clock::wall_ms(),
                            )?;
                        }
                        s.generate_sync_message(doc, &who)
                    })
                    .await;
                match result {
                    Ok(Ok(reply)) => Response::Sync(SyncStep {
                        doc: doc.to_string(),
                        message: reply.unwrap_or_default(),
                    }),
                    Ok(Err(e)) => {
                        metrics.rejected_messages.inc();
                        Response::Error(e.to_string())
                    }
                    Err(e) => Response::Error(e.to_string()),
                }
            }
        },
    };
    PeerResponse {
        response: Some(response),
    }
}

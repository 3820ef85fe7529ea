//! Controller-to-controller replication: eager push by gossip, convergence by anti-entropy.
//!
//! - **Push**: every local commit is published on the cluster topic at once; the commits that
//!   wait together (one group commit's) leave in as few messages as fit ([`outbox`]). A commit
//!   too large for one gossip message is announced by its heads instead; receivers that miss
//!   those heads pull the document from the announcer by sync. Nothing is dropped for size.
//! - **Receive**: gossip is validated by applying it; changes that do not parse are rejected
//!   (and not forwarded by gossipsub), the rest are accepted.
//! - **Anti-entropy**: when a peer connects, and then on every `interval` with the next peers
//!   of a rotation that visits each at least once per `revisit` ([`rotation`]), a session runs
//!   the protocol of [`session`] (digests, then Automerge sync of the documents that differ,
//!   with bounded bulk transfer for large differences). Gossip is best effort; these sessions
//!   are what guarantee convergence after drops, restarts and partitions. The protocol core has
//!   no IO: this task only carries its messages, each step one job on the metadata owner.
//!
//! The task owns no document: it talks to the metadata owner through [`MetaHandle`] and to the
//! network through the p2p [`Handle`]. `select!` arms only produce events; `handle_*` methods
//! do the work. Every exchange also samples the peer's wall clock for skew detection.

pub mod outbox;
pub mod rotation;
pub mod session;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redcloud_p2p::{Event, Handle, PeerId, Validation};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::clock::NodeClock;
use crate::document::DocId;
use crate::handle::MetaHandle;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::store::Commit;
use session::{Session, Step};
use wire::{Gossip, PeerRequest, PeerResponse};

/// Local commits taken off the outbox and packed together for one round of publishing.
const MAX_PUBLISH_BATCH: usize = 1024;
/// Gossip messages taken off the event queue and applied together (one durable write per
/// document instead of one per message).
const MAX_GOSSIP_BATCH: usize = 256;

/// Tunables.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Period of the anti-entropy tick.
    pub interval: Duration,
    /// Longest time between two anti-entropy sessions with one peer (see [`rotation`]).
    pub revisit: Duration,
    /// Largest gossip payload (the p2p layer's limit).
    pub max_gossip_size: usize,
    /// Largest request or response (the p2p layer's limit).
    pub max_message_size: usize,
    /// Deadline of one whole anti-entropy session.
    pub session_timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            revisit: Duration::from_secs(5),
            max_gossip_size: 64 << 10,
            max_message_size: redcloud_p2p::config::DEFAULT_MAX_REQUEST_SIZE,
            session_timeout: Duration::from_secs(300),
        }
    }
}

/// What the replication task works with.
#[derive(Debug, Clone)]
pub struct ReplicationParts {
    pub net: Handle,
    pub meta: MetaHandle,
    pub peers: Arc<Peers>,
    pub clock: Arc<NodeClock>,
    pub metrics: Arc<Metrics>,
}

/// The replication task.
pub struct Replication {
    parts: ReplicationParts,
    config: ReplicationConfig,
    sessions: JoinSet<(PeerId, bool)>,
    in_session: HashSet<PeerId>,
    rotation: rotation::Rotation<PeerId>,
}

impl Replication {
    pub fn new(parts: ReplicationParts, config: ReplicationConfig) -> Self {
        Self {
            parts,
            config,
            sessions: JoinSet::new(),
            in_session: HashSet::new(),
            rotation: rotation::Rotation::default(),
        }
    }

    /// Runs until `shutdown` fires or the network stops.
    pub async fn run(
        mut self,
        events: &mut mpsc::Receiver<Event>,
        commits: &mut mpsc::Receiver<Commit>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(c) = commits.recv() => self.handle_commits(c, commits).await,
                ev = events.recv() => match ev {
                    Some(ev) => self.handle_events(ev, events).await,
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

    /// Publishes `first` and every commit already waiting behind it (up to a bound), packed.
    async fn handle_commits(&mut self, first: Commit, commits: &mut mpsc::Receiver<Commit>) {
        let mut batch = vec![first];
        while batch.len() < MAX_PUBLISH_BATCH {
            match commits.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let metrics = &self.parts.metrics;
        let packed = outbox::pack(batch, self.config.max_gossip_size);
        metrics
            .gossip_announcements
            .add(packed.announcements as u64);
        for msg in packed.messages {
            let bytes = wire::encode(&msg);
            let len = bytes.len();
            match self.parts.net.publish(bytes).await {
                Ok(_) => {
                    metrics.gossip_sent.inc();
                    metrics.gossip_bytes_sent.add(len as u64);
                }
                // No peer yet, or the mesh is forming: anti-entropy delivers it.
                Err(e) => tracing::debug!(error = %e, "gossip not published"),
            }
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
                self.parts.peers.connected(&peer.to_string());
                if self.initiates(peer) {
                    self.start_session(peer, None);
                }
            }
            Event::PeerDisconnected(peer) => {
                let name = peer.to_string();
                self.parts.peers.disconnected(&name);
                let _ = self.parts.meta.call(move |s| s.reset_peer(&name)).await;
            }
            gossip @ Event::Gossip { .. } => self.handle_gossip_batch(vec![gossip]).await,
            Event::Request { peer, data, reply } => {
                // Requests may wait on the metadata owner: answer off the event loop.
                let parts = self.parts.clone();
                let limit = self.config.max_message_size;
                tokio::spawn(async move {
                    let response = answer(&parts, peer, &data, limit).await;
                    let _ = parts.net.respond(reply, wire::encode(&response)).await;
                });
            }
        }
    }

    /// Validates a batch of gossip by applying it: messages are grouped by document and each
    /// group is applied in one call (one durable write); if a group fails, its messages are
    /// applied one by one so only the malformed ones are rejected.
    async fn handle_gossip_batch(&mut self, batch: Vec<Event>) {
        let metrics = self.parts.metrics.clone();
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut groups: HashMap<DocId, Vec<(usize, Vec<u8>)>> = HashMap::new();
        // Heads announced without changes, per document and announcer: one lookup for the
        // whole batch, however many parts announce.
        let mut announced: HashMap<(DocId, PeerId), Vec<Vec<u8>>> = HashMap::new();
        // Who sent news of each document: where to pull a missing dependency from.
        let mut senders: HashMap<DocId, PeerId> = HashMap::new();
        for ev in batch {
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
            metrics.gossip_received.inc();
            metrics.gossip_bytes_received.add(data.len() as u64);
            let i = verdicts.len();
            verdicts.push((message_id, source, Validation::Accept));
            let parts = match wire::decode::<Gossip>(&data).and_then(outbox::unpack) {
                Ok(parts) => parts,
                Err(e) => {
                    metrics.rejected_messages.inc();
                    tracing::warn!(peer = %from, error = %e, "malformed gossip");
                    verdicts[i].2 = Validation::Reject;
                    continue;
                }
            };
            for (doc, part) in parts {
                if part.changes.is_empty() {
                    announced.entry((doc, from)).or_default().extend(part.heads);
                } else {
                    senders.insert(doc, from);
                    groups.entry(doc).or_default().push((i, part.changes));
                }
            }
        }
        let clock = self.parts.clock.clone();
        let applied = self
            .parts
            .meta
            .call(move |s| {
                let now = clock.now_ms();
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
                    metrics.rejected_messages.inc();
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
        if !announced.is_empty() {
            // An announcement: pull the document from its announcer if we miss any of its heads.
            let missing = self
                .parts
                .meta
                .call(move |s| {
                    announced
                        .into_iter()
                        .filter(|((doc, _), heads)| {
                            outbox::lacks_any(&s.heads(*doc).unwrap_or_default(), heads)
                        })
                        .map(|(key, _)| key)
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
            for (doc, from) in missing {
                self.start_session(from, Some(doc));
            }
        }
        for (id, source, verdict) in verdicts {
            let _ = self.parts.net.report_validation(id, source, verdict).await;
        }
    }

    fn handle_tick(&mut self) {
        let mut peers: Vec<PeerId> = self
            .parts
            .peers
            .connected_ids()
            .iter()
            .filter_map(|p| p.parse().ok())
            .filter(|p| self.initiates(*p))
            .collect();
        peers.sort_unstable();
        peers.dedup();
        let n = rotation::per_tick(peers.len(), self.config.interval, self.config.revisit);
        for p in self.rotation.next(&peers, n) {
            self.start_session(p, None);
        }
    }

    /// Of each pair of controllers, the one with the smaller peer id runs the periodic
    /// anti-entropy session (the sync protocol moves changes both ways), so a pair costs one
    /// exchange per period, not two.
    fn initiates(&self, peer: PeerId) -> bool {
        self.parts.net.local_peer_id() < peer
    }

    fn handle_session_done(&mut self, done: Result<(PeerId, bool), tokio::task::JoinError>) {
        if let Ok((peer, equal)) = done {
            self.in_session.remove(&peer);
            if equal {
                self.parts.peers.found_equal(&peer.to_string());
            }
        }
    }

    /// Starts an anti-entropy session with `peer` unless one is running (one per peer bounds
    /// the concurrency to the number of peers).
    fn start_session(&mut self, peer: PeerId, only: Option<DocId>) {
        if !self.in_session.insert(peer) {
            return;
        }
        let parts = self.parts.clone();
        let limit = self.config.max_message_size;
        let deadline = self.config.session_timeout;
        self.sessions.spawn(async move {
            let run = run_session(&parts, peer, only, limit);
            let equal = match tokio::time::timeout(deadline, run).await {
                Ok(equal) => equal,
                Err(_) => {
                    tracing::debug!(%peer, "anti-entropy session timed out");
                    false
                }
            };
            (peer, equal)
        });
    }
}

/// Runs one session with `peer` to its end. Returns true when the peer's metadata equalled
/// ours at the start. On any failure the session is aborted (its sync state reset).
async fn run_session(
    parts: &ReplicationParts,
    peer: PeerId,
    only: Option<DocId>,
    limit: usize,
) -> bool {
    parts.metrics.sync_sessions.inc();
    let name = peer.to_string();
    let clock = parts.clock.clone();
    let started = parts
        .meta
        .call({
            let name = name.clone();
            move |s| Session::start(s, &name, only, clock.now_ms(), limit)
        })
        .await;
    let Ok((mut session, mut step)) = started else {
        return false;
    };
    loop {
        let request = match step {
            Step::Done { equal } => return equal,
            Step::Send(r) => r,
        };
        parts.metrics.sync_rounds.inc();
        let sent_raw = parts.clock.raw_ms();
        let outcome = call(parts, peer, &request).await;
        let clock = parts.clock.clone();
        let result = parts
            .meta
            .call(move |s| {
                let r = match outcome {
                    Ok(resp) => session.on_response(s, resp, clock.now_ms()),
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    session.abort(s);
                }
                (session, r)
            })
            .await;
        let Ok((back, r)) = result else {
            return false;
        };
        session = back;
        if let Some(theirs) = session
            .peer_wall_ms()
            .filter(|_| matches!(request.request, Some(wire::Request::Digests(_))))
        {
            let received = parts.clock.raw_ms();
            parts
                .clock
                .witness(&name, theirs, sent_raw / 2 + received / 2);
        }
        match r {
            Ok(next) => step = next,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "anti-entropy session failed");
                return false;
            }
        }
    }
}

async fn call(
    parts: &ReplicationParts,
    peer: PeerId,
    req: &PeerRequest,
) -> Result<PeerResponse, String> {
    let bytes = wire::encode(req);
    let metrics = &parts.metrics;
    metrics.requests_sent.inc();
    metrics.request_bytes_sent.add(bytes.len() as u64);
    let answer = parts
        .net
        .request(peer, bytes)
        .await
        .map_err(|e| e.to_string())?;
    metrics.response_bytes_received.add(answer.len() as u64);
    wire::decode(&answer)
}

/// Answers a peer's request (see [`session::answer`]). An exchange that finds the documents
/// equal counts as this side's proof of being in sync with the peer, as it does for the side
/// that asked.
async fn answer(parts: &ReplicationParts, peer: PeerId, data: &[u8], limit: usize) -> PeerResponse {
    let metrics = &parts.metrics;
    metrics.requests_received.inc();
    metrics.request_bytes_received.add(data.len() as u64);
    let request = match wire::decode::<PeerRequest>(data) {
        Ok(r) => r.request,
        Err(e) => {
            metrics.rejected_messages.inc();
            return PeerResponse {
                response: Some(wire::Response::Error(format!("malformed request: {e}"))),
            };
        }
    };
    let name = peer.to_string();
    let clock = parts.clock.clone();
    let received_raw = clock.raw_ms();
    let result = parts
        .meta
        .call({
            let name = name.clone();
            move |s| session::answer(s, &name, request, clock.now_ms(), limit)
        })
        .await;
    match result {
        Ok((response, info)) => {
            if info.rejected {
                metrics.rejected_messages.inc();
            }
            if info.equal {
                parts.peers.found_equal(&name);
            }
            if let Some(theirs) = info.peer_wall_ms {
                parts.clock.witness(&name, theirs, received_raw);
            }
            response
        }
        Err(e) => PeerResponse {
            response: Some(wire::Response::Error(e.to_string())),
        },
    }
}

//! The anti-entropy protocol, without IO: [`Session`] is the initiating side of one session
//! with one peer, [`answer`] the responding side. Both act on a [`MetaStore`] and exchange
//! [`PeerRequest`]s and [`PeerResponse`]s; the replication task moves those over the network,
//! and the property tests move them through a lossy in-memory link. The same code runs in
//! both.
//!
//! A session:
//! 1. **Digests** (skipped when the session targets one document): the initiator sends its
//!    total digest and wall clock; equal totals end the session (the peers are in sync), else
//!    the answer lists per-document digests and the documents that differ are synced.
//! 2. **Sync**, per differing document: Automerge sync messages until neither side has
//!    anything to send (at most [`MAX_SYNC_ROUNDS`] rounds). The first step of each document
//!    tells the responder to reset its sync state for us, and the initiator resets its own, so
//!    a message lost in an earlier session cannot leave either side waiting.
//! 3. **Bulk transfer**, when a sync message would exceed the message limit (a late joiner,
//!    a long partition): the side with the changes sends them in causal order in batches under
//!    the limit ([`Request::Changes`] to push, [`Request::Pull`] to fetch), then sync resumes
//!    and finds the small remainder. Every message stays bounded whatever the difference.
//!
//! Any failure (an error answer, a lost or late message) ends the session through
//! [`Session::abort`], which resets the sync state of the document in progress.

use std::collections::{HashMap, VecDeque};

use automerge::ChangeHash;

use super::wire::{
    Applied, ChangeBatch, Digests, DocDigest, PeerRequest, PeerResponse, Pull, Request, Response,
    SyncStep,
};
use crate::document::DocId;
use crate::store::MetaStore;

/// Rounds of the sync protocol per document per session before giving up until next time.
pub const MAX_SYNC_ROUNDS: usize = 64;
/// Room left in a message for framing around a batch of changes.
const FRAMING: usize = 64 << 10;

/// What the initiator does next.
#[derive(Debug)]
pub enum Step {
    Send(PeerRequest),
    /// The session is over. `equal`: the peer's metadata equalled ours at the start.
    Done {
        equal: bool,
    },
}

#[derive(Debug)]
enum Phase {
    Digests,
    Sync {
        round: usize,
    },
    Push {
        their: Vec<ChangeHash>,
        skip: u64,
        round: usize,
    },
    Pull {
        have: Vec<Vec<u8>>,
        skip: u64,
        round: usize,
    },
}

/// The initiating side of one anti-entropy session.
#[derive(Debug)]
pub struct Session {
    peer: String,
    /// Documents still to sync after the current one.
    docs: VecDeque<DocId>,
    doc: Option<DocId>,
    phase: Phase,
    limit: usize,
    /// The peer's wall clock as it reported it in the digest exchange.
    peer_wall_ms: Option<u64>,
    /// Our sync state for the current document was just reset: tell the peer to reset too.
    reset_next: bool,
}

/// Our total digest and per-document digests of our heads.
fn digests(store: &MetaStore, wall_ms: u64, with_docs: bool) -> Digests {
    let docs = if with_docs {
        store
            .docs()
            .into_iter()
            .map(|doc| DocDigest {
                doc: doc.to_string(),
                digest: heads_digest(&store.heads(doc).unwrap_or_default()),
            })
            .collect()
    } else {
        Vec::new()
    };
    Digests {
        docs,
        total: store.digest().to_vec(),
        wall_ms,
    }
}

fn heads_digest(heads: &[ChangeHash]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for head in heads {
        h.update(&head.0);
    }
    h.finalize().as_bytes().to_vec()
}

fn hashes_from(bytes: &[Vec<u8>]) -> Vec<ChangeHash> {
    bytes
        .iter()
        .filter_map(|b| <[u8; 32]>::try_from(b.as_slice()).ok().map(ChangeHash))
        .collect()
}

fn request(r: Request) -> Step {
    Step::Send(PeerRequest { request: Some(r) })
}

impl Session {
    /// Starts a session with `peer`: all documents (digest exchange first) or only `only`.
    /// `limit` is the largest message either side may send.
    pub fn start(
        store: &mut MetaStore,
        peer: &str,
        only: Option<DocId>,
        wall_ms: u64,
        limit: usize,
    ) -> (Session, Step) {
        let mut s = Session {
            peer: peer.to_owned(),
            docs: VecDeque::new(),
            doc: None,
            phase: Phase::Digests,
            limit,
            peer_wall_ms: None,
            reset_next: false,
        };
        let step = match only {
            Some(doc) => {
                s.docs.push_back(doc);
                s.next_doc(store)
            }
            None => request(Request::Digests(digests(store, wall_ms, false))),
        };
        (s, step)
    }

    /// The peer's wall clock from the digest exchange, if it happened.
    pub fn peer_wall_ms(&self) -> Option<u64> {
        self.peer_wall_ms
    }

    /// Takes the peer's answer; errors end the session (call [`Session::abort`]).
    pub fn on_response(
        &mut self,
        store: &mut MetaStore,
        response: PeerResponse,
        wall_ms: u64,
    ) -> Result<Step, String> {
        let response = match response.response {
            Some(Response::Error(e)) => return Err(format!("peer refused: {e}")),
            Some(r) => r,
            None => return Err("empty answer".into()),
        };
        let phase = std::mem::replace(&mut self.phase, Phase::Digests);
        match (phase, response) {
            (Phase::Digests, Response::Digests(theirs)) => {
                self.peer_wall_ms = Some(theirs.wall_ms);
                if theirs.total == store.digest() {
                    return Ok(Step::Done { equal: true });
                }
                let theirs: HashMap<String, Vec<u8>> =
                    theirs.docs.into_iter().map(|d| (d.doc, d.digest)).collect();
                self.docs = digests(store, wall_ms, true)
                    .docs
                    .into_iter()
                    .filter(|d| theirs.get(&d.doc) != Some(&d.digest))
                    .filter_map(|d| d.doc.parse().ok())
                    .collect();
                Ok(self.next_doc(store))
            }
            (Phase::Sync { round }, Response::Sync(step)) => {
                let doc = self.current()?;
                check_doc(&step.doc, doc)?;
                if step.too_large {
                    // The peer's answer would not fit: fetch its changes in batches.
                    let have = store
                        .heads(doc)
                        .map_err(|e| e.to_string())?
                        .iter()
                        .map(|h| h.0.to_vec())
                        .collect();
                    self.reset(store, doc);
                    return Ok(self.pull(doc, have, 0, round));
                }
                if step.message.is_empty() {
                    // The peer has nothing to add: both sides are done, or it has just taken
                    // what we sent.
                    return Ok(self.next_doc(store));
                }
                store
                    .receive_sync_message(doc, &self.peer, &step.message, wall_ms)
                    .map_err(|e| e.to_string())?;
                self.sync_step(store, doc, round + 1)
            }
            (Phase::Push { their, skip, round }, Response::Applied(Applied { .. })) => {
                let doc = self.current()?;
                self.push(store, doc, their, skip, round)
            }
            (Phase::Pull { have, skip, round }, Response::Changes(batch)) => {
                let doc = self.current()?;
                check_doc(&batch.doc, doc)?;
                if batch.count == 0 && batch.more {
                    return Err("peer sent an empty batch with more to come".into());
                }
                store
                    .apply_changes(doc, &batch.changes, wall_ms)
                    .map_err(|e| e.to_string())?;
                if batch.more {
                    Ok(self.pull(doc, have, skip + batch.count, round))
                } else {
                    self.reset(store, doc);
                    self.sync_step(store, doc, round + 1)
                }
            }
            (_, other) => Err(format!("unexpected answer: {other:?}")),
        }
    }

    /// Ends a session that failed: the document in progress forgets anything in flight.
    pub fn abort(&mut self, store: &mut MetaStore) {
        if let Some(doc) = self.doc.take() {
            store.reset_sync(doc, &self.peer);
        }
        self.docs.clear();
    }

    fn reset(&mut self, store: &mut MetaStore, doc: DocId) {
        store.reset_sync(doc, &self.peer);
        self.reset_next = true;
    }

    fn current(&self) -> Result<DocId, String> {
        self.doc.ok_or_else(|| "no document in progress".to_owned())
    }

    /// Moves to the next document to sync, or ends the session.
    fn next_doc(&mut self, store: &mut MetaStore) -> Step {
        loop {
            let Some(doc) = self.docs.pop_front() else {
                self.doc = None;
                return Step::Done { equal: false };
            };
            self.doc = Some(doc);
            self.reset(store, doc);
            match self.sync_step(store, doc, 0) {
                Ok(step) => return step,
                Err(e) => {
                    tracing::debug!(%doc, peer = %self.peer, error = %e, "skipping document");
                    store.reset_sync(doc, &self.peer);
                }
            }
        }
    }

    /// Our next sync message for `doc` (round `round`), or a push when it would be too large.
    fn sync_step(
        &mut self,
        store: &mut MetaStore,
        doc: DocId,
        round: usize,
    ) -> Result<Step, String> {
        if round >= MAX_SYNC_ROUNDS {
            tracing::debug!(%doc, peer = %self.peer, "sync round limit reached; next session");
            return Ok(self.next_doc(store));
        }
        let ours = store
            .generate_sync_message(doc, &self.peer)
            .map_err(|e| e.to_string())?;
        let Some(message) = ours else {
            if round > 0 {
                return Ok(self.next_doc(store));
            }
            // Round 0 always speaks, so the peer learns our heads.
            return Ok(self.send_sync(doc, Vec::new(), round));
        };
        if message.len() + FRAMING > self.limit {
            // Too large to send: push what the peer lacks in batches instead.
            let their = store.their_heads(doc, &self.peer).unwrap_or_default();
            self.reset(store, doc);
            return self.push(store, doc, their, 0, round);
        }
        Ok(self.send_sync(doc, message, round))
    }

    fn send_sync(&mut self, doc: DocId, message: Vec<u8>, round: usize) -> Step {
        self.phase = Phase::Sync { round };
        let reset = std::mem::take(&mut self.reset_next);
        request(Request::Sync(SyncStep {
            doc: doc.to_string(),
            message,
            reset,
            too_large: false,
        }))
    }

    /// Sends the next batch of changes beyond `their` heads, or, when all are across, resumes
    /// the sync protocol from a clean state.
    fn push(
        &mut self,
        store: &mut MetaStore,
        doc: DocId,
        their: Vec<ChangeHash>,
        skip: u64,
        round: usize,
    ) -> Result<Step, String> {
        let (changes, count, _) = store
            .changes_beyond(doc, &their, skip, self.limit - FRAMING)
            .map_err(|e| e.to_string())?;
        if count == 0 {
            self.reset(store, doc);
            return self.sync_step(store, doc, round + 1);
        }
        self.phase = Phase::Push {
            their,
            skip: skip + count,
            round,
        };
        Ok(request(Request::Changes(ChangeBatch {
            doc: doc.to_string(),
            changes,
            more: false,
            count,
        })))
    }

    fn pull(&mut self, doc: DocId, have: Vec<Vec<u8>>, skip: u64, round: usize) -> Step {
        self.phase = Phase::Pull {
            have: have.clone(),
            skip,
            round,
        };
        request(Request::Pull(Pull {
            doc: doc.to_string(),
            have,
            skip,
        }))
    }
}

fn check_doc(named: &str, expected: DocId) -> Result<(), String> {
    if named == expected.to_string() {
        Ok(())
    } else {
        Err(format!("answer about {named:?}, expected {expected}"))
    }
}

/// What [`answer`] learned besides the response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The request found both sides' metadata equal.
    pub equal: bool,
    /// The peer's wall clock, when the request carried it.
    pub peer_wall_ms: Option<u64>,
    /// The request was malformed or refused.
    pub rejected: bool,
}

/// Answers a peer's request. `limit` bounds the answer's size.
pub fn answer(
    store: &mut MetaStore,
    peer: &str,
    request: Option<Request>,
    wall_ms: u64,
    limit: usize,
) -> (PeerResponse, Answered) {
    let mut info = Answered::default();
    let response = match request {
        None => {
            info.rejected = true;
            Response::Error("empty request".into())
        }
        Some(Request::Digests(theirs)) => {
            info.peer_wall_ms = Some(theirs.wall_ms);
            let equal = theirs.total == store.digest();
            info.equal = equal;
            Response::Digests(digests(store, wall_ms, !equal))
        }
        Some(Request::Sync(step)) => match step.doc.parse::<DocId>() {
            Err(_) => {
                info.rejected = true;
                Response::Error(format!("unknown document {:?}", step.doc))
            }
            Ok(doc) => {
                if step.reset {
                    store.reset_sync(doc, peer);
                }
                let result = (|| {
                    if !step.message.is_empty() {
                        store.receive_sync_message(doc, peer, &step.message, wall_ms)?;
                    }
                    store.generate_sync_message(doc, peer)
                })();
                match result {
                    Ok(reply) => {
                        let message = reply.unwrap_or_default();
                        let too_large = message.len() + FRAMING > limit;
                        if too_large {
                            // Not sent: forget that it was, so the next round starts clean.
                            store.reset_sync(doc, peer);
                        }
                        Response::Sync(SyncStep {
                            doc: doc.to_string(),
                            message: if too_large { Vec::new() } else { message },
                            reset: false,
                            too_large,
                        })
                    }
                    Err(e) => {
                        info.rejected = true;
                        store.reset_sync(doc, peer);
                        Response::Error(e.to_string())
                    }
                }
            }
        },
        Some(Request::Changes(batch)) => match batch.doc.parse::<DocId>() {
            Err(_) => {
                info.rejected = true;
                Response::Error(format!("unknown document {:?}", batch.doc))
            }
            Ok(doc) => match store.apply_changes(doc, &batch.changes, wall_ms) {
                Ok(outcome) => Response::Applied(Applied {
                    pending: outcome.pending as u64,
                }),
                Err(e) => {
                    info.rejected = true;
                    Response::Error(e.to_string())
                }
            },
        },
        Some(Request::Pull(pull)) => match pull.doc.parse::<DocId>() {
            Err(_) => {
                info.rejected = true;
                Response::Error(format!("unknown document {:?}", pull.doc))
            }
            Ok(doc) => {
                let have = hashes_from(&pull.have);
                match store.changes_beyond(doc, &have, pull.skip, limit.saturating_sub(FRAMING)) {
                    Ok((changes, count, more)) => Response::Changes(ChangeBatch {
                        doc: doc.to_string(),
                        changes,
                        more,
                        count,
                    }),
                    Err(e) => {
                        info.rejected = true;
                        Response::Error(e.to_string())
                    }
                }
            }
        },
    };
    (
        PeerResponse {
            response: Some(response),
        },
        info,
    )
}

//! Replication hooks, independent of the transport.
//!
//! - Eager push: every mutation returns a [`crate::store::Commit`]; peers feed its bytes to
//!   [`MetaStore::apply_changes`], in any order, with duplicates and losses. Changes whose
//!   dependencies are missing wait in a bounded per-document queue.
//! - Anti-entropy: [`MetaStore::digest`] tells two replicas whether they differ at all;
//!   [`MetaStore::generate_sync_message`] / [`MetaStore::receive_sync_message`] run the
//!   Automerge sync protocol per (peer, document) over a reliable stream until neither side
//!   has anything to send.
//!
//! Whatever arrives is persisted before the call returns, and its HLC timestamps (the commit
//! time of each change) are observed by our clock, so our next write orders after it. A
//! timestamp too far in the future is counted and not merged into the clock, but the change
//! is still applied: every replica must converge on the same data.

use automerge::ChangeHash;
use automerge::sync::{self, SyncDoc};

use crate::document::{DocId, PendingLimits, parse_changes};
use crate::error::MetaError;
use crate::hlc::Timestamp;
use crate::store::MetaStore;

/// What `apply_changes` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes newly applied (this batch and queued ones it unblocked).
    pub applied: usize,
    /// Changes of this document still waiting for dependencies.
    pub pending: usize,
    /// Changes Automerge refused (counted in `Stats::changes_rejected`).
    pub rejected: usize,
}

impl MetaStore {
    /// Every document of this store: `cluster`, then `files/0..S`.
    pub fn docs(&self) -> Vec<DocId> {
        self.docs.iter().map(|d| d.id).collect()
    }

    /// The document's current heads, sorted.
    pub fn heads(&self, doc: DocId) -> Result<Vec<ChangeHash>, MetaError> {
        let mut heads = self.doc(doc)?.am.get_heads();
        heads.sort();
        Ok(heads)
    }

    /// A hash over every document's name and sorted heads. Two replicas with the same shard
    /// count have equal digests exactly when they hold the same changes (up to hash
    /// collisions), which is when their metadata is identical.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for d in &self.docs {
            h.update(d.id.to_string().as_bytes());
            h.update(&[0]);
            let mut heads = d.am.get_heads();
            heads.sort();
            for head in heads {
                h.update(&head.0);
            }
            h.update(&[0xff]);
        }
        *h.finalize().as_bytes()
    }

    fn check_size(&self, what: &'static str, size: usize) -> Result<(), MetaError> {
        let limit = self.config.limits.max_message_bytes;
        if size > limit {
            return Err(MetaError::TooLarge { what, size, limit });
        }
        Ok(())
    }

    /// Observe the commit times of changes that just arrived. Too-far-ahead ones are counted
    /// by the clock (see `Stats::clock_rejections`) and otherwise ignored.
    fn observe_times(&mut self, times: impl IntoIterator<Item = i64>, wall_ms: u64) {
        let max = times.into_iter().filter(|&t| t > 0).max();
        if let Some(t) = max
            && let Err(e) = self.clock.observe(Timestamp(t as u64), wall_ms)
        {
            tracing::warn!(error = %e, "replicated change from the future");
        }
    }

    /// Apply replicated changes (a [`crate::store::Commit`]'s bytes, or any concatenation of
    /// raw changes) to `doc`. Malformed bytes are an error and change nothing; changes with
    /// missing dependencies are queued (bounded: the oldest are dropped and counted when it is
    /// full; anti-entropy recovers them). What was applied is durable on return.
    pub fn apply_changes(
        &mut self,
        doc: DocId,
        bytes: &[u8],
        wall_ms: u64,
    ) -> Result<ApplyOutcome, MetaError> {
        self.check_size("change batch", bytes.len())?;
        let changes = parse_changes(bytes).map_err(|reason| MetaError::MalformedChanges {
            doc: doc.to_string(),
            reason,
        })?;
        let limits = PendingLimits {
            changes: self.config.limits.max_pending_changes,
            bytes: self.config.limits.max_pending_bytes,
        };
        let d = self.doc_mut(doc)?;
        let applied = d.apply(changes, limits);
        let pending = d.pending();
        self.pending_dropped += applied.dropped as u64;
        self.changes_rejected += applied.rejected as u64;
        if let Some(reason) = &applied.first_rejection {
            tracing::warn!(%doc, rejected = applied.rejected, %reason, "changes refused");
        }
        let n = applied.timestamps.len();
        self.observe_times(applied.timestamps, wall_ms);
        self.persist(doc)?;
        Ok(ApplyOutcome {
            applied: n,
            pending,
            rejected: applied.rejected,
        })
    }

    /// The next Automerge sync message for `peer` about `doc`, or `None` when there is nothing
    /// to send (in sync, or waiting for the peer's answer).
    pub fn generate_sync_message(
        &mut self,
        doc: DocId,
        peer: &str,
    ) -> Result<Option<Vec<u8>>, MetaError> {
        let slot = self.slot(doc)?;
        let state = self.sync_states.entry((peer.to_owned(), doc)).or_default();
        Ok(self.docs[slot]
            .am
            .generate_sync_message(state)
            .map(sync::Message::encode))
    }

    /// Take a sync message from `peer` about `doc`. Malformed messages are an error and leave
    /// the document as it was; changes it carried are persisted on return.
    pub fn receive_sync_message(
        &mut self,
        doc: DocId,
        peer: &str,
        bytes: &[u8],
        wall_ms: u64,
    ) -> Result<(), MetaError> {
        self.check_size("sync message", bytes.len())?;
        let malformed = |reason: String| MetaError::MalformedSyncMessage {
            doc: doc.to_string(),
            reason,
        };
        let msg = sync::Message::decode(bytes).map_err(|e| malformed(e.to_string()))?;
        let slot = self.slot(doc)?;
        let state = self.sync_states.entry((peer.to_owned(), doc)).or_default();
        let am = &mut self.docs[slot].am;
        let before = am.get_heads();
        am.receive_sync_message(state, msg)
            .map_err(|e| malformed(e.to_string()))?;
        let mut times: Vec<i64> = if am.get_heads() == before {
            Vec::new()
        } else {
            am.get_changes(&before)
                .iter()
                .map(|c| c.timestamp())
                .collect()
        };
        // The sync may have brought the dependencies of queued changes (or the changes
        // themselves): apply what is ready now and let the queue forget what we have.
        if self.docs[slot].pending() > 0 {
            let limits = PendingLimits {
                changes: self.config.limits.max_pending_changes,
                bytes: self.config.limits.max_pending_bytes,
            };
            let applied = self.docs[slot].apply(Vec::new(), limits);
            self.pending_dropped += applied.dropped as u64;
            self.changes_rejected += applied.rejected as u64;
            times.extend(applied.timestamps);
        }
        self.observe_times(times, wall_ms);
        self.persist(doc)?;
        Ok(())
    }

    /// Reset the sync states kept for `peer` when its connection closes. What both sides are
    /// known to share (the shared heads) is kept, as the Automerge docs recommend for a
    /// reconnect: the next session then costs about the size of the difference instead of a
    /// bloom filter over the whole history.
    pub fn reset_peer(&mut self, peer: &str) {
        for ((p, _), state) in self.sync_states.iter_mut() {
            if p == peer {
                *state = fresh_state(state);
            }
        }
    }

    /// Reset the sync state for (`peer`, `doc`) the same way, dropping anything in flight: at
    /// the start of every session, and whenever an exchange failed or timed out, so one lost
    /// message can never leave the protocol waiting for an answer that will not come.
    pub fn reset_sync(&mut self, doc: DocId, peer: &str) {
        if let Some(state) = self.sync_states.get_mut(&(peer.to_owned(), doc)) {
            *state = fresh_state(state);
        }
    }

    /// The heads `peer` last told us it has for `doc` (from the sync protocol).
    pub fn their_heads(&self, doc: DocId, peer: &str) -> Option<Vec<ChangeHash>> {
        self.sync_states
            .get(&(peer.to_owned(), doc))
            .and_then(|s| s.their_heads.clone())
    }

    /// Changes of `doc` beyond `have` (hashes we do not know are ignored), in causal order,
    /// skipping the first `skip`, packed up to `budget` bytes (at least one change). Returns
    /// the concatenated raw changes, how many, and whether more follow.
    pub fn changes_beyond(
        &self,
        doc: DocId,
        have: &[ChangeHash],
        skip: u64,
        budget: usize,
    ) -> Result<(Vec<u8>, u64, bool), MetaError> {
        let am = &self.doc(doc)?.am;
        let known: Vec<ChangeHash> = have
            .iter()
            .filter(|h| am.get_change_meta_by_hash(h).is_some())
            .copied()
            .collect();
        let changes = am.get_changes(&known);
        let mut out = Vec::new();
        let mut count = 0u64;
        let mut rest = changes
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX));
        for c in rest.by_ref() {
            let raw = c.raw_bytes();
            if count > 0 && out.len() + raw.len() > budget {
                // Put it back: it starts the next batch.
                return Ok((out, count, true));
            }
            out.extend_from_slice(raw);
            count += 1;
        }
        Ok((out, count, false))
    }
}

/// A sync state that keeps only what survives a reconnect (the shared heads).
fn fresh_state(state: &sync::State) -> sync::State {
    sync::State::decode(&state.encode()).unwrap_or_else(|_| sync::State::new())
}

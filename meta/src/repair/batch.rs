//! Gathering repair orders into batches: one ReplicateChunks call carries many orders with the
//! same target and source, so a fill moves many chunks per call (one kept connection, reads
//! pipelined, small chunks stored together) instead of one call per chunk. Pure.

use std::collections::{HashSet, VecDeque};

use super::plan::{ChunkHash, Order};

/// Most chunks in one batch (the chunkserver takes up to 1,024 per call).
pub const MAX_BATCH_CHUNKS: usize = 256;
/// Most bytes of chunks in one batch, so one call ends well within its deadline.
pub const MAX_BATCH_BYTES: u64 = 64 << 20;
/// Orders looked at past the first when gathering a batch.
pub const LOOKAHEAD: usize = 4_096;

/// Takes the next batch off `queue`: the first order `ready` accepts (the orders before it are
/// dropped, as the next planning pass orders them again if they are still wanted), then, in
/// queue order among the next [`LOOKAHEAD`] orders, those `ready` accepts with the same
/// target and source and a chunk not in the batch yet, up to [`MAX_BATCH_CHUNKS`] and
/// [`MAX_BATCH_BYTES`] (a first order larger than that goes alone). The rest of the queue keeps
/// its order. Empty when no order is ready.
pub fn next_batch(queue: &mut VecDeque<Order>, ready: impl Fn(&Order) -> bool) -> Vec<Order> {
    let first = loop {
        match queue.pop_front() {
            Some(o) if ready(&o) => break o,
            Some(_) => continue,
            None => return Vec::new(),
        }
    };
    let mut bytes = first.size;
    let mut chunks: HashSet<ChunkHash> = HashSet::from([first.chunk]);
    let mut batch = vec![first];
    let (mut i, mut looked) = (0, 0);
    while i < queue.len() && looked < LOOKAHEAD && batch.len() < MAX_BATCH_CHUNKS {
        looked += 1;
        let o = &queue[i];
        let fits = bytes.saturating_add(o.size) <= MAX_BATCH_BYTES;
        if fits
            && o.target == batch[0].target
            && o.source == batch[0].source
            && !chunks.contains(&o.chunk)
            && ready(o)
        {
            bytes += o.size;
            chunks.insert(o.chunk);
            batch.extend(queue.remove(i));
        } else {
            i += 1;
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn order(chunk: u8, size: u64, source: &str, target: &str) -> Order {
        Order {
            chunk: [chunk; 32],
            size,
            source: source.into(),
            target: target.into(),
            replicas: 1,
        }
    }

    #[test]
    fn orders_of_one_pair_go_together_and_the_rest_keep_their_order() {
        let mut queue = VecDeque::from(vec![
            order(1, 10, "a", "new"),
            order(2, 10, "b", "new"),
            order(3, 10, "a", "new"),
            order(4, 10, "a", "other"),
            order(5, 10, "a", "new"),
        ]);
        let batch = next_batch(&mut queue, |_| true);
        let chunks: Vec<u8> = batch.iter().map(|o| o.chunk[0]).collect();
        assert_eq!(chunks, [1, 3, 5]);
        let rest: Vec<u8> = queue.iter().map(|o| o.chunk[0]).collect();
        assert_eq!(rest, [2, 4]);
    }

    #[test]
    fn orders_not_ready_are_skipped_and_a_large_first_order_goes_alone() {
        let mut queue = VecDeque::from(vec![
            order(1, 10, "a", "new"),
            order(2, MAX_BATCH_BYTES + 1, "a", "new"),
            order(3, 10, "a", "new"),
        ]);
        let batch = next_batch(&mut queue, |o| o.chunk[0] != 1);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].chunk[0], 2);
        // The first, not ready, was dropped; the third waits for the next batch.
        assert_eq!(queue.len(), 1);
        assert!(next_batch(&mut VecDeque::new(), |_| true).is_empty());
    }

    proptest! {
        /// Every order taken was in the queue and leaves it, a batch shares one target and
        /// source, holds no chunk twice and keeps the limits, and what stays keeps its order.
        #[test]
        fn batches_keep_the_limits_and_lose_no_ready_order(
            orders in prop::collection::vec(
                (0u8..40, 0u64..(MAX_BATCH_BYTES / 4), 0u8..3, 0u8..3),
                0..600,
            ),
        ) {
            let queue: Vec<Order> = orders
                .iter()
                .map(|&(c, size, s, t)| order(c, size, &format!("s{s}"), &format!("t{t}")))
                .collect();
            let mut left = VecDeque::from(queue.clone());
            let mut taken = Vec::new();
            for _ in 0..queue.len() + 1 {
                let batch = next_batch(&mut left, |_| true);
                if batch.is_empty() {
                    break;
                }
                prop_assert!(batch.len() <= MAX_BATCH_CHUNKS);
                let bytes: u64 = batch.iter().map(|o| o.size).sum();
                prop_assert!(batch.len() == 1 || bytes <= MAX_BATCH_BYTES);
                let distinct: HashSet<ChunkHash> = batch.iter().map(|o| o.chunk).collect();
                prop_assert_eq!(distinct.len(), batch.len());
                for o in &batch {
                    prop_assert_eq!((&o.source, &o.target), (&batch[0].source, &batch[0].target));
                }
                taken.extend(batch);
            }
            prop_assert!(left.is_empty());
            // With every order ready, each is taken exactly once.
            let mut a: Vec<_> = taken.iter().map(|o| (o.chunk, o.size, o.source.clone(), o.target.clone())).collect();
            let mut b: Vec<_> = queue.iter().map(|o| (o.chunk, o.size, o.source.clone(), o.target.clone())).collect();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }
    }
}

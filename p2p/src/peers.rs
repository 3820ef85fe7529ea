//! The peer book: every peer we have seen, its addresses, and when to dial it next.
//!
//! Pure state: every method takes `now` and returns decisions; the event loop does the dialing.
//! Rules:
//! - A known peer that is neither connected, being dialled, nor blocked is dialled again after a
//!   delay that starts at `min` and doubles on each failure up to `max`; a successful connection
//!   resets it. So a healed partition reconnects within about `max`, without mDNS.
//! - Bootstrap addresses without a peer id ("seeds") are dialled the same way until a connection
//!   reveals who listens there; that peer then takes over (the address joins its entry).
//! - A blocked peer is never dialled; unblocking schedules an immediate dial.
//! - Everything is bounded: peers, addresses per peer, seeds. Peers and seeds that fail
//!   continuously for [`FORGET_AFTER`] are dropped unless pinned (named in the configuration).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// Most peers remembered.
pub const MAX_PEERS: usize = 1024;
/// Most addresses remembered per peer (newest kept).
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Most seed addresses remembered.
pub const MAX_SEEDS: usize = 256;
/// Unpinned peers and seeds failing for this long are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// A dial with no outcome after this long is treated as failed (defensive: the swarm always
/// reports an outcome, within the dial timeout).
const DIAL_STUCK_AFTER: Duration = Duration::from_secs(120);

/// A dial the event loop should start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// Dial a known peer at any of these addresses (the swarm may add more from Kademlia).
    Peer { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Dial an address whose peer we do not know yet.
    Seed { addr: Multiaddr },
}

/// Exponential redial schedule of one peer or seed.
#[derive(Debug, Clone)]
struct Retry {
    delay: Duration,
    /// When to dial next; `None` while connected, dialling or blocked.
    next: Option<Instant>,
    dialing_since: Option<Instant>,
    failing_since: Option<Instant>,
}

impl Retry {
    fn new(min: Duration, now: Instant) -> Self {
        Retry {
            delay: min,
            next: Some(now),
            dialing_since: None,
            failing_since: None,
        }
    }

    fn succeeded(&mut self, min: Duration) {
        *self = Retry {
            delay: min,
            next: None,
            dialing_since: None,
            failing_since: None,
        };
    }

    fn failed(&mut self, now: Instant, max: Duration) {
        self.dialing_since = None;
        self.next = Some(now + self.delay);
        self.delay = (self.delay * 2).min(max);
        self.failing_since.get_or_insert(now);
    }

    fn due(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|t| t <= now) {
            self.next = None;
            self.dialing_since = Some(now);
            return true;
        }
        false
    }

    fn stuck(&self, now: Instant) -> bool {
        self.dialing_since
            .is_some_and(|t| now.duration_since(t) >= DIAL_STUCK_AFTER)
    }

    fn forgettable(&self, now: Instant) -> bool {
        self.failing_since
            .is_some_and(|t| now.duration_since(t) >= FORGET_AFTER)
    }
}

#[derive(Debug)]
struct Known {
    addrs: VecDeque<Multiaddr>,
    connected: bool,
    blocked: bool,
    pinned: bool,
    retry: Retry,
}

#[derive(Debug)]
struct Seed {
    addr: Multiaddr,
    pinned: bool,
    /// The peer found listening here; it owns redialling from then on.
    learned: Option<PeerId>,
    retry: Retry,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PeerBook {
    min: Duration,
    max: Duration,
    peers: HashMap<PeerId, Known>,
    seeds: Vec<Seed>,
    /// Seed addresses that turned out to be this node (a DNS alias includes ourselves).
    own: HashSet<Multiaddr>,
}

impl PeerBook {
    pub fn new(min: Duration, max: Duration) -> Self {
        PeerBook {
            min,
            max,
            peers: HashMap::new(),
            seeds: Vec::new(),
            own: HashSet::new(),
        }
    }

    /// Remembers an address with no known peer id; `pinned` ones are never forgotten.
    pub fn add_seed(&mut self, addr: Multiaddr, pinned: bool, now: Instant) {
        if self.own.contains(&addr) {
            return;
        }
        if let Some(seed) = self.seeds.iter_mut().find(|s| s.addr == addr) {
            seed.pinned |= pinned;
            return;
        }
        if self.seeds.len() >= MAX_SEEDS {
            return;
        }
        self.seeds.push(Seed {
            addr,
            pinned,
            learned: None,
            retry: Retry::new(self.min, now),
        });
    }

    /// A seed dial reached `peer`: it takes over the address.
    pub fn seed_connected(&mut self, addr: &Multiaddr, peer: PeerId, now: Instant) {
        if let Some(seed) = self.seeds.iter_mut().find(|s| &s.addr == addr) {
            seed.learned = Some(peer);
            seed.retry.succeeded(self.min);
        }
        self.add_address(peer, addr.clone(), now);
    }

    /// A seed dial reached this very node: never dial that address again.
    pub fn seed_is_self(&mut self, addr: &Multiaddr) {
        self.seeds.retain(|s| &s.addr != addr);
        if self.own.len() < MAX_SEEDS {
            self.own.insert(addr.clone());
        }
    }

    pub fn seed_failed(&mut self, addr: &Multiaddr, now: Instant) {
        if let Some(seed) = self.seeds.iter_mut().find(|s| &s.addr == addr) {
            seed.retry.failed(now, self.max);
        }
    }

    /// Remembers `addr` for `peer`; a peer not yet connected is scheduled for a dial.
    /// Returns false when the book is full.
    pub fn add_address(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) -> bool {
        if !self.peers.contains_key(&peer) && !self.make_room() {
            return false;
        }
        let min = self.min;
        let known = self.peers.entry(peer).or_insert_with(|| Known {
            addrs: VecDeque::new(),
            connected: false,
            blocked: false,
            pinned: false,
            retry: Retry::new(min, now),
        });
        if let Some(pos) = known.addrs.iter().position(|a| *a == addr) {
            known.addrs.remove(pos);
        }
        known.addrs.push_front(addr);
        known.addrs.truncate(MAX_ADDRS_PER_PEER);
        true
    }

    /// Marks a peer named in the configuration: never forgotten.
    pub fn pin(&mut self, peer: &PeerId) {
        if let Some(known) = self.peers.get_mut(peer) {
            known.pinned = true;
        }
    }

    /// Evicts the longest-failing unpinned, disconnected peer if the book is full.
    fn make_room(&mut self) -> bool {
        if self.peers.len() < MAX_PEERS {
            return true;
        }
        let victim = self
            .peers
            .iter()
            .filter(|(_, k)| !k.pinned && !k.connected && !k.blocked)
            .min_by_key(|(_, k)| k.retry.failing_since)
            .map(|(p, _)| *p);
        victim.is_some_and(|p| self.peers.remove(&p).is_some())
    }

    /// The first connection to `peer` is up (it may have dialled us before we knew it).
    pub fn connected(&mut self, peer: PeerId, now: Instant) {
        if !self.peers.contains_key(&peer) {
            self.add_address_less(peer, now);
        }
        if let Some(known) = self.peers.get_mut(&peer) {
            known.connected = true;
            known.retry.succeeded(self.min);
        }
    }

    /// The last connection to `peer` closed: redial after the minimum delay unless blocked.
    pub fn disconnected(&mut self, peer: PeerId, now: Instant) {
        if let Some(known) = self.peers.get_mut(&peer) {
            known.connected = false;
            if !known.blocked {
                known.retry.next = Some(now + self.min);
                known.retry.dialing_since = None;
            }
        }
    }

    /// A dial to `peer` failed: back off.
    pub fn dial_failed(&mut self, peer: PeerId, now: Instant) {
        if let Some(known) = self.peers.get_mut(&peer)
            && !known.connected
            && !known.blocked
        {
            known.retry.failed(now, self.max);
        }
    }

    /// Blocks `peer`: it is never dialled until [`PeerBook::unblock`].
    pub fn block(&mut self, peer: PeerId, now: Instant) {
        if !self.peers.contains_key(&peer) {
            self.add_address_less(peer, now);
        }
        if let Some(known) = self.peers.get_mut(&peer) {
            known.blocked = true;
            known.retry.next = None;
            known.retry.dialing_since = None;
        }
    }

    fn add_address_less(&mut self, peer: PeerId, now: Instant) {
        if self.make_room() {
            let retry = Retry::new(self.min, now);
            let known = Known {
                addrs: VecDeque::new(),
                connected: false,
                blocked: false,
                pinned: false,
                retry,
            };
            self.peers.insert(peer, known);
        }
    }

    /// Unblocks `peer` and schedules an immediate dial.
    pub fn unblock(&mut self, peer: PeerId, now: Instant) {
        if let Some(known) = self.peers.get_mut(&peer) {
            known.blocked = false;
            if !known.connected {
                known.retry = Retry::new(self.min, now);
            }
        }
    }

    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|k| k.blocked)
    }

    pub fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|k| k.addrs.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Dials that are due now; they are marked as in progress.
    pub fn due(&mut self, now: Instant) -> Vec<Dial> {
        let (min, max) = (self.min, self.max);
        self.peers
            .retain(|_, k| k.pinned || k.connected || k.blocked || !k.retry.forgettable(now));
        self.seeds
            .retain(|s| s.pinned || s.learned.is_some() || !s.retry.forgettable(now));
        let mut dials = Vec::new();
        for (peer, known) in &mut self.peers {
            if known.connected || known.blocked {
                continue;
            }
            if known.retry.stuck(now) {
                known.retry.failed(now, max);
            }
            if known.retry.due(now) {
                dials.push(Dial::Peer {
                    peer: *peer,
                    addrs: known.addrs.iter().cloned().collect(),
                });
            }
        }
        for seed in &mut self.seeds {
            // A learned peer that was forgotten hands the address back to the seed.
            if seed.learned.is_some_and(|p| !self.peers.contains_key(&p)) {
                seed.learned = None;
                seed.retry = Retry::new(min, now);
            }
            if seed.learned.is_some() {
                continue;
            }
            if seed.retry.stuck(now) {
                seed.retry.failed(now, max);
            }
            if seed.retry.due(now) {
                dials.push(Dial::Seed {
                    addr: seed.addr.clone(),
                });
            }
        }
        dials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    fn peer_dials(dials: &[Dial]) -> Vec<PeerId> {
        dials
            .iter()
            .filter_map(|d| {
                if let Dial::Peer { peer, .. } = d {
                    Some(*peer)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn new_peer_is_dialled_once_then_backs_off_exponentially_to_the_cap() {
        let t0 = Instant::now();
        let mut book = PeerBook::new(MIN, MAX);
        let p = PeerId::random();
        book.add_address(p, addr(1), t0);
        assert_eq!(
            book.due(t0),
            vec![Dial::Peer {
                peer: p,
                addrs: vec![addr(1)]
            }]
        );
        assert!(book.due(t0).is_empty(), "in progress: not dialled twice");
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            book.dial_failed(p, now);
            let mut t = now;
            while book.due(t).is_empty() {
                t += Duration::from_millis(50);
            }
            delays.push(t - now);
            now = t;
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn disconnect_redials_quickly_and_success_resets_backoff() {
        let t0 = Instant::now();
        let mut book = PeerBook::new(MIN, MAX);
        let p = PeerId::random();
        book.add_address(p, addr(1), t0);
        book.due(t0);
        for _ in 0..5 {
            book.dial_failed(p, t0);
        }
        book.connected(p, t0);
        assert!(
            book.due(t0 + MAX * 2).is_empty(),
            "connected peers are not dialled"
        );
        book.disconnected(p, t0);
        assert!(book.due(t0).is_empty());
        assert_eq!(peer_dials(&book.due(t0 + MIN)), vec![p]);
    }

    #[test]
    fn blocked_peer_is_never_dialled_until_unblocked() {
        let t0 = Instant::now();
        let mut book = PeerBook::new(MIN, MAX);
        let p = PeerId::random();
        book.add_address(p, addr(1), t0);
        book.connected(p, t0);
        book.block(p, t0);
        book.disconnected(p, t0);
        assert!(book.due(t0 + Duration::from_secs(60)).is_empty());
        book.unblock(p, t0 + Duration::from_secs(60));
        assert_eq!(peer_dials(&book.due(t0 + Duration::from_secs(60))), vec![p]);
    }

    #[test]
    fn seed_hands_over_to_the_peer_found_there() {
        let t0 = Instant::now();
        let mut book = PeerBook::new(MIN, MAX);
        book.add_seed(addr(9), true, t0);
        book.add_seed(addr(9), true, t0);
        assert_eq!(book.due(t0), vec![Dial::Seed { addr: addr(9) }]);
        book.seed_failed(&addr(9), t0);
        assert_eq!(book.due(t0 + MIN), vec![Dial::Seed { addr: addr(9) }]);
        let p = PeerId::random();
        book.seed_connected(&addr(9), p, t0);
        book.connected(p, t0);
        book.disconnected(p, t0);
        // Only the peer is redialled, not the seed as well.
        assert_eq!(
            book.due(t0 + MIN),
            vec![Dial::Peer {
                peer: p,
                addrs: vec![addr(9)]
            }]
        );
    }

    #[test]
    fn unpinned_failing_peers_are_forgotten_and_addresses_bounded() {
        let t0 = Instant::now();
        let mut book = PeerBook::new(MIN, MAX);
        let (gone, pinned) = (PeerId::random(), PeerId::random());
        for port in 0..20 {
            book.add_address(gone, addr(port), t0);
        }
        assert_eq!(book.addresses(&gone).len(), MAX_ADDRS_PER_PEER);
        assert_eq!(book.addresses(&gone)[0], addr(19), "newest first");
        book.add_address(pinned, addr(100), t0);
        book.pin(&pinned);
        book.due(t0);
        book.dial_failed(gone, t0);
        book.dial_failed(pinned, t0);
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(peer_dials(&book.due(later)), vec![pinned]);
        assert!(book.addresses(&gone).is_empty());
    }
}

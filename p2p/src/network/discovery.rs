//! The discovery half of the event loop: bootstrap entries, DNS resolution, the redial tick,
//! and what identify, Kademlia, mDNS and ping teach us about peers.

use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, identify, kad, mdns, ping};
use tokio::time::Instant;

use super::{EventLoop, Name, RESOLVE_TIMEOUT, Resolved};
use crate::Event;
use crate::bootstrap::{self, Target};
use crate::metrics;
use crate::peers::Dial;

impl EventLoop {
    pub(super) fn add_bootstrap(&mut self, targets: Vec<Target>) {
        let now = Instant::now().into_std();
        for target in targets {
            match target {
                Target::Addr {
                    addr,
                    peer: Some(peer),
                } => {
                    self.book.add_address(peer, addr.clone(), now);
                    self.book.pin(&peer);
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
                Target::Addr { addr, peer: None } => self.book.add_seed(addr, true, now),
                Target::Name { host, port } => self.names.push(Name {
                    host,
                    port,
                    next: Some(Instant::now()),
                    retry_delay: self.redial_min,
                }),
            }
        }
    }

    pub(super) fn handle_tick(&mut self) {
        let now = Instant::now();
        for dial in self.book.due(now.into_std()) {
            let _ = self.start_dial(dial);
        }
        for index in 0..self.names.len() {
            let name = &mut self.names[index];
            if name.next.is_some_and(|t| t <= now) {
                name.next = None;
                let (host, port, tx) = (name.host.clone(), name.port, self.resolved_tx.clone());
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(
                        RESOLVE_TIMEOUT,
                        bootstrap::resolve(&host, port),
                    )
                    .await
                    {
                        Ok(Ok(addrs)) => Ok(addrs),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timed out".to_string()),
                    };
                    // At most one resolution per name is in flight, so this never waits long.
                    let _ = tx.send(Resolved { index, result }).await;
                });
            }
        }
    }

    pub(super) fn handle_resolved(&mut self, Resolved { index, result }: Resolved) {
        let now = Instant::now();
        let Some(name) = self.names.get_mut(index) else {
            return;
        };
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                tracing::debug!(host = %name.host, ?addrs, "bootstrap name resolved");
                name.next = Some(now + self.dns_refresh);
                name.retry_delay = self.redial_min;
                for addr in addrs {
                    self.book.add_seed(addr, false, now.into_std());
                }
            }
            other => {
                tracing::debug!(host = %name.host, result = ?other, "bootstrap name did not resolve");
                name.next = Some(now + name.retry_delay);
                name.retry_delay = (name.retry_delay * 2).min(self.redial_max);
            }
        }
    }

    pub(super) fn start_dial(&mut self, dial: Dial) -> Result<(), DialError> {
        let opts = match &dial {
            Dial::Peer { peer, addrs } => DialOpts::peer_id(*peer)
                .addresses(addrs.clone())
                .extend_addresses_through_behaviour()
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
            Dial::Seed { addr } => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let connection_id = opts.connection_id();
        metrics::inc(&self.metrics.dials);
        let now = Instant::now().into_std();
        match self.swarm.dial(opts) {
            Ok(()) => {
                if let Dial::Seed { addr } = dial {
                    self.seed_dials.insert(connection_id, addr);
                }
                Ok(())
            }
            // Already connected, or someone else (Kademlia, a request) is dialling: that dial's
            // outcome will reach the book through the swarm events.
            Err(error @ DialError::DialPeerConditionFalse(_)) => {
                if let Dial::Peer { peer, .. } = dial
                    && self.swarm.is_connected(&peer)
                {
                    self.book.connected(peer, now);
                }
                Err(error)
            }
            Err(error) => {
                tracing::debug!(?dial, %error, "dial not started");
                metrics::inc(&self.metrics.dial_failures);
                match dial {
                    Dial::Peer { peer, .. } => self.book.dial_failed(peer, now),
                    Dial::Seed { addr } => self.book.seed_failed(&addr, now),
                }
                Err(error)
            }
        }
    }

    pub(super) fn handle_identify(&mut self, event: identify::Event) {
        let identify::Event::Received {
            peer_id,
            info,
            connection_id,
        } = event
        else {
            return;
        };
        let now = Instant::now().into_std();
        if info.protocol_version != self.identify_version {
            // Another cluster (or not redcloud): never talk to it again.
            metrics::inc(&self.metrics.foreign_peers);
            tracing::info!(peer = %peer_id, version = %info.protocol_version, "disconnecting foreign peer");
            self.book.block(peer_id, now);
            self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        let via_loopback = self
            .connections
            .get(&connection_id)
            .is_some_and(is_loopback);
        let supports_kad = info.protocols.contains(&self.kad_protocol);
        for addr in info.listen_addrs {
            // A remote's loopback address would reach ourselves; unspecified ones reach nobody.
            if is_unspecified(&addr) || (is_loopback(&addr) && !via_loopback) {
                continue;
            }
            self.book.add_address(peer_id, addr.clone(), now);
            if supports_kad {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        if self.swarm.is_connected(&peer_id) && self.confirmed.insert(peer_id) {
            tracing::info!(peer = %peer_id, agent = %info.agent_version, "peer connected");
            self.emit(Event::PeerConnected(peer_id));
        }
    }

    pub(super) fn handle_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                let now = Instant::now().into_std();
                for addr in addresses.iter() {
                    self.book.add_address(peer, addr.clone(), now);
                }
            }
            other => tracing::trace!(event = ?other, "kad"),
        }
    }

    pub(super) fn handle_ping(&mut self, event: ping::Event) {
        if let Err(error) = event.result {
            // A silent connection (e.g. a partition) is closed so the redial loop takes over.
            tracing::debug!(peer = %event.peer, %error, "ping failed; closing connection");
            self.swarm.close_connection(event.connection);
        }
    }

    pub(super) fn handle_mdns(&mut self, event: mdns::Event) {
        if let mdns::Event::Discovered(found) = event {
            let now = Instant::now().into_std();
            for (peer, addr) in found {
                self.book.add_address(peer, addr, now);
            }
        }
    }
}

/// `addr` without a trailing `/p2p/<id>` (the book keys addresses by peer already).
pub(super) fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

fn first_ip(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    first_ip(addr).is_some_and(|ip| ip.is_loopback())
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    first_ip(addr).is_some_and(|ip| ip.is_unspecified())
}

//! The combined libp2p behaviour: which protocols a redcloud controller speaks, and how each is
//! tuned for a small cluster.

use std::sync::Arc;
use std::time::Duration;

use libp2p::allow_block_list::{self, BlockedPeers};
use libp2p::gossipsub::{self, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, identify, kad, mdns, ping};

use crate::codec::BytesCodec;
use crate::metrics::Metrics;
use crate::{Config, Error};

/// Room for the gossipsub envelope (signature, sender, sequence number, topic) on top of the
/// payload: the wire limit is `max_gossip_size` plus this, and the payload limit is checked
/// before publishing, so a payload at the limit still fits on the wire.
pub const GOSSIP_ENVELOPE_OVERHEAD: usize = 4096;
/// Wall-clock span of the gossip message cache. Gossipsub counts it in heartbeats; with a fast
/// heartbeat the default (5 heartbeats) would drop messages before the application validated
/// them, so the count is derived from this span.
const GOSSIP_HISTORY: Duration = Duration::from_secs(5);
/// Concurrent request-response streams per connection.
const MAX_CONCURRENT_STREAMS: usize = 64;
/// mDNS re-query period (the default is 5 minutes).
const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(30);
/// Deadline of one Kademlia query.
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so blocked peers are refused before any other protocol sees them.
    pub blocked: allow_block_list::Behaviour<BlockedPeers>,
    pub gossipsub: gossipsub::Behaviour,
    pub sync: request_response::Behaviour<BytesCodec>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub fn new(key: &Keypair, config: &Config, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let peer_id = key.public().to_peer_id();
        let protocol = |name: String| {
            StreamProtocol::try_from_owned(name.clone())
                .map_err(|e| Error::Config(format!("cluster: protocol name {name:?}: {e}")))
        };

        let mut gossipsub = gossipsub::Behaviour::new(
            MessageAuthenticity::Signed(key.clone()),
            gossip_config(config)?,
        )
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(config.topic()))
            .map_err(|e| Error::Config(format!("gossipsub subscribe: {e}")))?;

        let sync = request_response::Behaviour::with_codec(
            BytesCodec::new(config.max_request_size, metrics),
            [(protocol(config.sync_protocol())?, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
        );

        let mut kad_config = kad::Config::new(protocol(config.kad_protocol())?);
        kad_config
            .set_periodic_bootstrap_interval(Some(config.kad_bootstrap_interval))
            .set_query_timeout(KAD_QUERY_TIMEOUT)
            // We store no records; never let peers fill our store.
            .set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Without a confirmed external address kad would stay a client and never be queried.
        kad.set_mode(Some(kad::Mode::Server));

        let identify = identify::Behaviour::new(
            identify::Config::new(config.identify_version(), key.public())
                .with_agent_version(format!("redcloud/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_timeout),
        );

        let mdns = if config.mdns {
            let mdns_config = mdns::Config {
                query_interval: MDNS_QUERY_INTERVAL,
                ..Default::default()
            };
            match mdns::tokio::Behaviour::new(mdns_config, peer_id) {
                Ok(mdns) => Some(mdns),
                Err(e) => {
                    // Discovery still works through bootstrap entries and Kademlia.
                    tracing::warn!(error = %e, "mDNS unavailable; continuing without it");
                    None
                }
            }
        } else {
            None
        };

        Ok(Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            gossipsub,
            sync,
            kad,
            identify,
            ping,
            mdns: Toggle::from(mdns),
        })
    }
}

/// Gossipsub tuned for a cluster: strict signatures, application validation before forwarding,
/// content-hash message ids, fast heartbeats, flood publishing.
fn gossip_config(config: &Config) -> Result<gossipsub::Config, Error> {
    let heartbeat_ms = config.gossip_heartbeat.as_millis().max(1);
    let history_length = usize::try_from(GOSSIP_HISTORY.as_millis().div_ceil(heartbeat_ms))
        .unwrap_or(usize::MAX)
        .max(5);
    gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(config.gossip_protocol_prefix())
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(config.max_gossip_size + GOSSIP_ENVELOPE_OVERHEAD)
        // Identical bytes are one message, whoever publishes them.
        .message_id_fn(|message: &gossipsub::Message| {
            MessageId::from(blake3::hash(&message.data).as_bytes().to_vec())
        })
        .heartbeat_interval(config.gossip_heartbeat)
        .heartbeat_initial_delay(config.gossip_initial_delay)
        .history_length(history_length)
        // Small clusters: send our own messages to every subscribed peer, not just the mesh.
        .flood_publish(true)
        .build()
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))
}

//! The event loop: the one task that owns the [`Swarm`]. Handles talk to it through a bounded
//! command channel; it talks back through oneshot replies and one bounded event channel.
//!
//! Each turn of the loop `select!`s one step (a swarm event, a command, a DNS answer, a redial
//! tick, or room in the event channel) and hands it to a `handle_*` method that does the work.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, MessageAcceptance, PublishError, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

mod discovery;

/// TCP, then (with a key) the private-network handshake, then noise and yamux. Without the
/// network's key a peer's connection fails before noise: it learns nothing, sends nothing.
fn private_tcp(
    key: &libp2p::identity::Keypair,
    psk: Option<libp2p::pnet::PreSharedKey>,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    noise::Error,
> {
    use futures::future::Either;
    use libp2p::Transport;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let guarded = tcp.and_then(move |socket, _| async move {
        match psk {
            Some(psk) => libp2p::pnet::PnetConfig::new(psk)
                .handshake(socket)
                .await
                .map(Either::Left)
                .map_err(std::io::Error::other),
            None => Ok(Either::Right(socket)),
        }
    });
    Ok(guarded
        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed())
}

use discovery::without_peer_id;

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::bootstrap::{self};
use crate::codec::is_too_large;
use crate::handle::{
    COMMAND_CAPACITY, Command, EVENT_CAPACITY, Event, Handle, ReplyToken, Validation,
};
use crate::metrics::{self, Metrics};
use crate::peers::{Dial, PeerBook};
use crate::{Config, Error};

/// Events held inside the loop while the application's channel is full. Gossip and requests
/// beyond this are dropped (counted); connection events get twice the room.
const OUTBOX_CAPACITY: usize = EVENT_CAPACITY;
/// How often due redials and DNS resolutions are checked.
const TICK: Duration = Duration::from_millis(100);
/// Deadline for one DNS resolution of a bootstrap name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the listeners to report their addresses at start.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the network: builds the swarm, binds every listen address, starts the event loop and
/// dials the bootstrap entries. Returns the handle and the event stream (capacity
/// [`EVENT_CAPACITY`]).
pub async fn spawn(config: Config) -> Result<(Handle, mpsc::Receiver<Event>), Error> {
    // The swarm lives in this future until the loop task takes it: box it so callers' futures
    // stay small.
    Box::pin(start(config)).await
}

async fn start(config: Config) -> Result<(Handle, mpsc::Receiver<Event>), Error> {
    config.validate()?;
    let targets = config
        .bootstrap
        .iter()
        .map(|e| bootstrap::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let transport = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let metrics = Arc::new(Metrics::default());
    let behaviour = Behaviour::new(&config.keypair, &config, metrics.clone())?;
    let psk = config.private_key.map(libp2p::pnet::PreSharedKey::new);
    let mut swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| {
            private_tcp(key, psk)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| transport(&e))?
        .with_dns()
        .map_err(|e| transport(&e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .with_connection_timeout(config.dial_timeout)
        .build();
    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| transport(&format!("listen on {addr}: {e}")))?;
        listeners.insert(id);
    }

    let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CAPACITY);
    let (resolved_tx, resolved_rx) = mpsc::channel(targets.len().max(1));
    let local_peer_id = *swarm.local_peer_id();
    let mut event_loop = EventLoop {
        swarm,
        commands: command_rx,
        events: event_tx,
        outbox: VecDeque::new(),
        metrics: metrics.clone(),
        book: PeerBook::new(config.redial_min, config.redial_max),
        topic: gossipsub::IdentTopic::new(config.topic()).hash(),
        identify_version: config.identify_version(),
        kad_protocol: StreamProtocol::try_from_owned(config.kad_protocol())
            .map_err(|e| Error::Config(format!("cluster: {e}")))?,
        pending_requests: HashMap::new(),
        seed_dials: HashMap::new(),
        connections: HashMap::new(),
        confirmed: HashSet::new(),
        names: Vec::new(),
        resolved_tx,
        resolved_rx,
        request_timeout: config.request_timeout,
        dns_refresh: config.dns_refresh,
        redial_min: config.redial_min,
        redial_max: config.redial_max,
    };
    event_loop.wait_for_listeners(listeners).await?;
    event_loop.add_bootstrap(targets);
    event_loop.handle_tick();
    tokio::spawn(event_loop.run());

    let handle = Handle {
        commands: command_tx,
        local_peer_id,
        metrics,
        max_gossip_size: config.max_gossip_size,
        max_request_size: config.max_request_size,
        request_timeout: config.request_timeout,
    };
    Ok((handle, event_rx))
}

/// A bootstrap DNS name and when to resolve it next (`None` while a resolution is running).
#[derive(Debug)]
struct Name {
    host: String,
    port: u16,
    next: Option<Instant>,
    retry_delay: Duration,
}

#[derive(Debug)]
struct Resolved {
    index: usize,
    result: Result<Vec<Multiaddr>, String>,
}

/// One turn of the loop: what happened, before anything is done about it.
// Lives for one turn on the stack; boxing the large swarm event would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Step {
    Swarm(SwarmEvent<BehaviourEvent>),
    Command(Command),
    Resolved(Resolved),
    Tick,
    /// The event channel has room again (false: the application dropped it).
    Deliver(bool),
    Stop(Option<oneshot::Sender<()>>),
}

/// Where the outcome of one of our requests goes.
type ResponseReply = oneshot::Sender<Result<Vec<u8>, Error>>;

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// Events waiting for room in `events`.
    outbox: VecDeque<Event>,
    metrics: Arc<Metrics>,
    book: PeerBook,
    topic: TopicHash,
    identify_version: String,
    kad_protocol: StreamProtocol,
    pending_requests: HashMap<OutboundRequestId, ResponseReply>,
    /// Dials to seed addresses, to learn which peer answers there.
    seed_dials: HashMap<ConnectionId, Multiaddr>,
    /// Remote address of each open connection.
    connections: HashMap<ConnectionId, Multiaddr>,
    /// Connected peers confirmed (by identify) to belong to this cluster.
    confirmed: HashSet<PeerId>,
    names: Vec<Name>,
    resolved_tx: mpsc::Sender<Resolved>,
    resolved_rx: mpsc::Receiver<Resolved>,
    request_timeout: Duration,
    dns_refresh: Duration,
    redial_min: Duration,
    redial_max: Duration,
}

impl EventLoop {
    #[tracing::instrument(name = "p2p", skip_all, fields(peer = %self.swarm.local_peer_id()))]
    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stopped = loop {
            let step = tokio::select! {
                event = self.swarm.select_next_some() => Step::Swarm(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => Step::Stop(Some(reply)),
                    Some(command) => Step::Command(command),
                    None => Step::Stop(None),
                },
                Some(resolved) = self.resolved_rx.recv() => Step::Resolved(resolved),
                _ = tick.tick() => Step::Tick,
                // The permit is released at once; `handle_deliver` refills the freed room.
                room = self.events.reserve(), if !self.outbox.is_empty() => Step::Deliver(room.is_ok()),
            };
            match step {
                Step::Swarm(event) => self.handle_swarm_event(event),
                Step::Command(command) => self.handle_command(command),
                Step::Resolved(resolved) => self.handle_resolved(resolved),
                Step::Tick => self.handle_tick(),
                Step::Deliver(open) => self.handle_deliver(open),
                Step::Stop(reply) => break reply,
            }
        };
        tracing::info!("p2p event loop stopping");
        for (_, reply) in self.pending_requests.drain() {
            let _ = reply.send(Err(Error::Shutdown));
        }
        drop(self.swarm);
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    /// Drives the swarm until every listener has an address, so `listen_addrs` is meaningful
    /// as soon as `spawn` returns.
    async fn wait_for_listeners(
        &mut self,
        mut pending: HashSet<libp2p::core::transport::ListenerId>,
    ) -> Result<(), Error> {
        let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
        tokio::pin!(deadline);
        while !pending.is_empty() {
            tokio::select! {
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { listener_id, address } => {
                        tracing::info!(%address, "listening");
                        pending.remove(&listener_id);
                    }
                    SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                        return Err(Error::Transport(format!("listener {addresses:?} closed: {reason:?}")));
                    }
                    SwarmEvent::ListenerError { error, .. } => {
                        return Err(Error::Transport(format!("listener failed: {error}")));
                    }
                    other => self.handle_swarm_event(other),
                },
                _ = &mut deadline => {
                    return Err(Error::Transport("listeners reported no address in time".into()));
                }
            }
        }
        Ok(())
    }

    /// Moves queued events into the application's channel while it has room.
    fn handle_deliver(&mut self, open: bool) {
        if !open {
            self.outbox.clear();
            return;
        }
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    /// Queues an event for the application without ever blocking the loop.
    fn emit(&mut self, event: Event) {
        let event = if self.outbox.is_empty() {
            match self.events.try_send(event) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(event)) => event,
                // Nobody listens any more: nothing to deliver.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        } else {
            event
        };
        let limit = match event {
            Event::Gossip { .. } | Event::Request { .. } => OUTBOX_CAPACITY,
            Event::PeerConnected(_) | Event::PeerDisconnected(_) => 2 * OUTBOX_CAPACITY,
        };
        if self.outbox.len() < limit {
            self.outbox.push_back(event);
            return;
        }
        match event {
            Event::Gossip {
                source, message_id, ..
            } => {
                metrics::inc(&self.metrics.dropped_gossip);
                // Free gossipsub's cache; the message is not forwarded. Sync catches up.
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(
                        &message_id,
                        &source,
                        MessageAcceptance::Ignore,
                    );
            }
            // Dropping the reply token makes the request fail at the requester at once.
            Event::Request { .. } => metrics::inc(&self.metrics.dropped_requests),
            other => tracing::warn!(event = ?other, "event queue full; dropping connection event"),
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now().into_std();
        match command {
            Command::Publish { data, reply } => {
                let len = data.len() as u64;
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), data);
                if result.is_ok() {
                    metrics::inc(&self.metrics.gossip_published);
                    metrics::add(&self.metrics.gossip_published_bytes, len);
                }
                let _ = reply.send(result.map_err(publish_error));
            }
            Command::Request { peer, data, reply } => {
                metrics::inc(&self.metrics.requests_sent);
                metrics::add(&self.metrics.request_bytes_sent, data.len() as u64);
                let addrs = self.book.addresses(&peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request_with_addresses(&peer, data, addrs);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond {
                token: ReplyToken { channel, .. },
                data,
                reply,
            } => {
                let result = self.swarm.behaviour_mut().sync.send_response(channel, data);
                let _ = reply.send(result.map_err(|_| Error::ReplyClosed));
            }
            Command::Validate {
                message_id,
                source,
                validation,
                reply,
            } => {
                let acceptance = match validation {
                    Validation::Accept => MessageAcceptance::Accept,
                    Validation::Reject => {
                        metrics::inc(&self.metrics.gossip_rejected);
                        MessageAcceptance::Reject
                    }
                    Validation::Ignore => MessageAcceptance::Ignore,
                };
                let found = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &source, acceptance);
                let _ = reply.send(found);
            }
            Command::Block { peer, reply } => {
                // Closes every connection to `peer` and refuses new ones, both directions.
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.book.block(peer, now);
                let _ = reply.send(());
            }
            Command::Unblock { peer, reply } => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                self.book.unblock(peer, now);
                let _ = reply.send(());
            }
            Command::Dial { mut addr, reply } => {
                let dial = match addr.iter().last() {
                    Some(Protocol::P2p(peer)) => {
                        addr.pop();
                        self.book.add_address(peer, addr.clone(), now);
                        self.book.pin(&peer);
                        Dial::Peer {
                            peer,
                            addrs: vec![addr.clone()],
                        }
                    }
                    _ => {
                        self.book.add_seed(addr.clone(), true, now);
                        Dial::Seed { addr: addr.clone() }
                    }
                };
                let result = self.start_dial(dial).map_err(|e| Error::Dial {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                });
                let _ = reply.send(result);
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.confirmed.iter().copied().collect());
            }
            Command::GossipPeers { reply } => {
                let gossipsub = &self.swarm.behaviour().gossipsub;
                let _ = reply.send(gossipsub.mesh_peers(&self.topic).copied().collect());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            // Handled by `run` before dispatch.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = Instant::now().into_std();
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.handle_gossip(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.handle_sync(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.handle_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.handle_identify(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => self.handle_ping(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.handle_mdns(event),
            SwarmEvent::Behaviour(BehaviourEvent::Blocked(never)) => match never {},
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                metrics::inc(&self.metrics.connections_opened);
                tracing::debug!(peer = %peer_id, ?endpoint, "connection established");
                self.connections
                    .insert(connection_id, endpoint.get_remote_address().clone());
                if let Some(addr) = self.seed_dials.remove(&connection_id) {
                    self.book.seed_connected(&addr, peer_id, now);
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.book
                        .add_address(peer_id, without_peer_id(address), now);
                }
                if num_established.get() == 1 {
                    self.book.connected(peer_id, now);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                metrics::inc(&self.metrics.connections_closed);
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                self.connections.remove(&connection_id);
                if num_established == 0 {
                    self.book.disconnected(peer_id, now);
                    if self.confirmed.remove(&peer_id) {
                        self.emit(Event::PeerDisconnected(peer_id));
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                metrics::inc(&self.metrics.dial_failures);
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                let seed = self.seed_dials.remove(&connection_id);
                match (&error, seed) {
                    (DialError::LocalPeerId { .. }, Some(addr)) => self.book.seed_is_self(&addr),
                    (_, Some(addr)) => self.book.seed_failed(&addr, now),
                    (_, None) => {}
                }
                if let DialError::WrongPeerId { obtained, address } = &error {
                    self.book
                        .add_address(*obtained, without_peer_id(address), now);
                }
                if let Some(peer) = peer_id {
                    self.book.dial_failed(peer, now);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                metrics::inc(&self.metrics.rejected_malformed);
                tracing::debug!(from = %send_back_addr, %error, "inbound connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            _ => {}
        }
    }

    fn handle_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                metrics::inc(&self.metrics.gossip_received);
                metrics::add(
                    &self.metrics.gossip_received_bytes,
                    message.data.len() as u64,
                );
                self.emit(Event::Gossip {
                    source: propagation_source,
                    origin: message.source,
                    message_id,
                    data: message.data,
                });
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                tracing::warn!(peer = %peer_id, ?failed_messages, "slow gossip peer");
            }
            other => tracing::trace!(event = ?other, "gossipsub"),
        }
    }

    fn handle_sync(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    metrics::inc(&self.metrics.requests_received);
                    metrics::add(&self.metrics.request_bytes_received, request.len() as u64);
                    self.emit(Event::Request {
                        peer,
                        data: request,
                        reply: ReplyToken { peer, channel },
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    metrics::inc(&self.metrics.responses_received);
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                metrics::inc(&self.metrics.requests_failed);
                if matches!(&error, OutboundFailure::Io(e) if is_too_large(e)) {
                    metrics::inc(&self.metrics.rejected_oversize);
                }
                tracing::debug!(%peer, %error, "request failed");
                let error = match error {
                    OutboundFailure::Timeout => Error::Timeout {
                        peer,
                        after: self.request_timeout,
                    },
                    other => Error::RequestFailed {
                        peer,
                        reason: other.to_string(),
                    },
                };
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(error));
                }
            }
            // Unreadable requests (oversize, truncated) never get this far: the codec counts
            // oversize ones and the stream is dropped.
            request_response::Event::InboundFailure { peer, error, .. } => {
                metrics::inc(&self.metrics.inbound_failures);
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

fn publish_error(error: PublishError) -> Error {
    match error {
        PublishError::Duplicate => Error::Duplicate,
        PublishError::NoPeersSubscribedToTopic => Error::NoPeers,
        PublishError::AllQueuesFull(peers) => Error::InsufficientPeers(peers),
        other => Error::Publish(other.to_string()),
    }
}

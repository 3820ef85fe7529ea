//! The public face of the network: [`Handle`] (cloneable, sends commands to the event loop and
//! awaits oneshot replies) and the [`Event`]s the loop delivers.

use std::sync::Arc;
use std::time::Duration;

use libp2p::gossipsub::MessageId;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::metrics::{self, Metrics, MetricsSnapshot};

/// Capacity of the event channel returned by [`crate::spawn`]. When it is full the loop keeps
/// up to the same number again internally, then drops gossip (counted; sync catches up) and
/// refuses inbound requests (counted; the requester gets an error), never blocking the swarm.
pub const EVENT_CAPACITY: usize = 1024;
/// Capacity of the command channel from handles to the event loop.
pub(crate) const COMMAND_CAPACITY: usize = 256;
/// Slack on top of the request timeout before [`Handle::request`] gives up by itself.
const REQUEST_DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// What the network tells the application.
#[derive(Debug)]
pub enum Event {
    /// A peer of this cluster is connected (its identify exchange confirmed the cluster name).
    /// A good moment to start anti-entropy sync with it.
    PeerConnected(PeerId),
    /// The last connection to a peer announced by [`Event::PeerConnected`] closed.
    PeerDisconnected(PeerId),
    /// A gossip message. It is not forwarded to other peers until the application reports
    /// [`Validation::Accept`] through [`Handle::report_validation`] with `message_id` and
    /// `source`.
    Gossip {
        /// The peer that forwarded it to us (pass it back to `report_validation`).
        source: PeerId,
        /// The peer that published it (signature verified).
        origin: Option<PeerId>,
        message_id: MessageId,
        data: Vec<u8>,
    },
    /// A request from `peer`; answer with [`Handle::respond`]. Dropping `reply` without
    /// responding makes the request fail on the requester's side.
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: ReplyToken,
    },
}

/// The application's verdict on a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Valid: deliver it and forward it to the mesh.
    Accept,
    /// Invalid: drop it and do not forward it.
    Reject,
    /// Not interesting (for example already known): drop it without blaming the sender.
    Ignore,
}

/// The right to answer one inbound request. Consumed by [`Handle::respond`].
#[derive(Debug)]
pub struct ReplyToken {
    pub(crate) peer: PeerId,
    pub(crate) channel: ResponseChannel<Vec<u8>>,
}

impl ReplyToken {
    /// The peer waiting for the answer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

pub(crate) enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<MessageId, Error>>,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
    Respond {
        token: ReplyToken,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Validate {
        message_id: MessageId,
        source: PeerId,
        validation: Validation,
        reply: oneshot::Sender<bool>,
    },
    Block {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Unblock {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    GossipPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cloneable handle to the event loop. Every method fails with [`Error::Shutdown`] once the
/// loop has stopped.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) local_peer_id: PeerId,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_gossip_size: usize,
    pub(crate) max_request_size: usize,
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Publishes `data` on the cluster topic. Fails with [`Error::TooLarge`] over
    /// `max_gossip_size` (send it by sync instead), [`Error::NoPeers`] when no peer is subscribed
    /// (harmless: sync catches up), [`Error::Duplicate`] if these exact bytes went out recently.
    pub async fn publish(&self, data: Vec<u8>) -> Result<MessageId, Error> {
        if data.len() > self.max_gossip_size {
            metrics::inc(&self.metrics.rejected_oversize);
            return Err(Error::TooLarge {
                size: data.len(),
                limit: self.max_gossip_size,
            });
        }
        self.call(|reply| Command::Publish { data, reply }).await?
    }

    /// Sends a request to `peer` (dialling it if needed) and waits for its response, at most
    /// the configured request timeout.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        if data.len() > self.max_request_size {
            metrics::inc(&self.metrics.rejected_oversize);
            return Err(Error::TooLarge {
                size: data.len(),
                limit: self.max_request_size,
            });
        }
        // The loop answers within the request timeout; this bound only guards against a bug.
        let deadline = self.request_timeout + REQUEST_DEADLINE_SLACK;
        let call = self.call(|reply| Command::Request { peer, data, reply });
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                peer,
                after: deadline,
            }),
        }
    }

    /// Answers an inbound request. A response over `max_request_size` is refused (and the
    /// requester sees a failure); [`Error::ReplyClosed`] if the requester gave up already.
    pub async fn respond(&self, reply: ReplyToken, data: Vec<u8>) -> Result<(), Error> {
        if data.len() > self.max_request_size {
            metrics::inc(&self.metrics.rejected_oversize);
            return Err(Error::TooLarge {
                size: data.len(),
                limit: self.max_request_size,
            });
        }
        self.call(|tx| Command::Respond {
            token: reply,
            data,
            reply: tx,
        })
        .await?
    }

    /// Reports the verdict on a gossip message; only accepted messages are forwarded. Returns
    /// false if gossipsub no longer holds the message (validated too late: not forwarded).
    pub async fn report_validation(
        &self,
        message_id: MessageId,
        source: PeerId,
        validation: Validation,
    ) -> Result<bool, Error> {
        self.call(|reply| Command::Validate {
            message_id,
            source,
            validation,
            reply,
        })
        .await
    }

    /// Blocks `peer`: closes its connections and refuses new ones until [`Handle::unblock`].
    pub async fn block(&self, peer: PeerId) -> Result<(), Error> {
        self.call(|reply| Command::Block { peer, reply }).await
    }

    /// Unblocks `peer`; the redial loop reconnects to it if its address is known.
    pub async fn unblock(&self, peer: PeerId) -> Result<(), Error> {
        self.call(|reply| Command::Unblock { peer, reply }).await
    }

    /// Dials `addr` now (with or without `/p2p/<id>`) and keeps redialling it like a bootstrap
    /// entry.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Connected peers of this cluster (those announced by [`Event::PeerConnected`]).
    pub async fn peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Peers in our gossip mesh for the cluster topic (those we forward messages to).
    pub async fn gossip_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.call(|reply| Command::GossipPeers { reply }).await
    }

    /// The addresses this node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Stops the event loop and closes every connection; returns once it has stopped.
    /// Dropping every handle stops the loop too.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}

//! Reaching a controller: try each configured address in order, each within a bounded time,
//! and stick with the first that answers. Calls that fail because the controller went away
//! (UNAVAILABLE, a broken connection, a deadline) are retried on the next controller.

use std::time::Duration;

use anyhow::{Result, anyhow};
use redcloud_proto::controller::admin_service_client::AdminServiceClient;
use redcloud_proto::controller::controller_service_client::ControllerServiceClient;
use redcloud_proto::transport::{CONNECT_TIMEOUT, Transport};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Upper bound on one metadata call (metadata calls are small; data moves elsewhere).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for the controller API with failover across controllers.
#[derive(Debug, Clone)]
pub struct Controllers {
    addresses: Vec<String>,
    /// Index of the controller that answered last.
    current: usize,
    channel: Option<Channel>,
    /// Sent with every operator call (see `redcloud_proto::trust`).
    admin: tonic::metadata::MetadataMap,
    /// How controllers and chunkservers are dialed (TLS, unless `--insecure`).
    transport: Transport,
}

/// The operator API's client type.
pub type AdminClient = AdminServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, redcloud_proto::trust::Credential>,
>;

impl Controllers {
    pub fn new(addresses: Vec<String>, transport: Transport) -> Self {
        Self {
            addresses,
            current: 0,
            channel: None,
            admin: tonic::metadata::MetadataMap::new(),
            transport,
        }
    }

    /// The admin credential sent with operator calls (empty without the secret).
    pub fn admin_metadata(&self) -> &tonic::metadata::MetadataMap {
        &self.admin
    }

    /// How this client dials nodes; uploads and downloads reach chunkservers the same way.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Operator calls carry the admin credential derived from `secret`.
    pub fn with_admin_secret(mut self, secret: &redcloud_proto::trust::ClusterSecret) -> Self {
        self.admin = redcloud_proto::trust::admin_metadata(secret);
        self
    }

    /// The configured controller addresses, in order.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Runs `call` against a controller, failing over to the next one when a controller is
    /// unreachable. Application errors (bad input, not found, ...) are returned at once.
    pub async fn call<T, F, Fut>(&mut self, call: F) -> Result<T>
    where
        F: FnMut(ControllerServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.call_with(api_client, call).await
    }

    /// [`Controllers::call`] for the operator API.
    pub async fn admin<T, F, Fut>(&mut self, call: F) -> Result<T>
    where
        F: FnMut(AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let credential = redcloud_proto::trust::Credential(self.admin.clone());
        self.call_with(
            move |ch| AdminServiceClient::with_interceptor(ch, credential.clone()),
            call,
        )
        .await
    }

    /// Connects to the first reachable controller unless connected already, so clones made
    /// afterwards share one connection.
    pub async fn ready(&mut self) -> Result<()> {
        if self.channel.is_some() {
            return Ok(());
        }
        let mut tried = Vec::new();
        for attempt in 0..self.addresses.len() {
            let idx = (self.current + attempt) % self.addresses.len();
            let addr = &self.addresses[idx];
            match connect(addr, &self.transport).await {
                Ok(channel) => {
                    self.current = idx;
                    self.channel = Some(channel);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "controller unreachable");
                    tried.push(addr.clone());
                }
            }
        }
        if tried.is_empty() {
            return Err(anyhow!(
                "no controller configured (use --controller HOST:PORT)"
            ));
        }
        Err(anyhow!(
            "no controller reachable (tried {})",
            tried.join(", ")
        ))
    }

    async fn call_with<C, T, F, Fut>(
        &mut self,
        make: impl Fn(Channel) -> C,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(C) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        if self.addresses.is_empty() {
            return Err(anyhow!(
                "no controller configured (use --controller HOST:PORT)"
            ));
        }
        let mut tried = Vec::new();
        for attempt in 0..self.addresses.len() {
            let idx = (self.current + attempt) % self.addresses.len();
            let addr = self.addresses[idx].clone();
            let channel = match self.channel.clone().filter(|_| idx == self.current) {
                Some(c) => c,
                None => match connect(&addr, &self.transport).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "controller unreachable");
                        tried.push(addr);
                        continue;
                    }
                },
            };
            match tokio::time::timeout(CALL_TIMEOUT, call(make(channel.clone()))).await {
                Ok(Ok(v)) => {
                    self.current = idx;
                    self.channel = Some(channel);
                    return Ok(v);
                }
                Ok(Err(status)) if is_transport_failure(&status) => {
                    tracing::debug!(%addr, %status, "controller failed; trying the next");
                    self.channel = None;
                    tried.push(addr);
                }
                Ok(Err(status)) => return Err(status_error(status)),
                Err(_) => {
                    self.channel = None;
                    tried.push(addr);
                }
            }
        }
        Err(anyhow!(
            "no controller reachable (tried {})",
            tried.join(", ")
        ))
    }
}

async fn connect(addr: &str, transport: &Transport) -> Result<Channel> {
    let endpoint = transport.endpoint(addr)?.timeout(CALL_TIMEOUT);
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    Ok(channel)
}

fn api_client(channel: Channel) -> ControllerServiceClient<Channel> {
    ControllerServiceClient::new(channel)
        .max_decoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(redcloud_proto::MAX_MESSAGE_SIZE)
}

/// Statuses that mean "this controller is not answering", not "your request is wrong".
fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Turns a controller's answer into the one-line error the user sees.
pub fn status_error(status: Status) -> anyhow::Error {
    let what = match status.code() {
        // Operator and node calls say themselves which credential they lack.
        Code::Unauthenticated if status.message().contains("secret") => "not authorized",
        Code::Unauthenticated => "not logged in or session expired",
        Code::PermissionDenied => "permission denied",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::InvalidArgument => "invalid request",
        Code::FailedPrecondition => "cannot do that now",
        Code::ResourceExhausted => "out of space or over a limit",
        Code::DataLoss => "data loss",
        _ => "controller error",
    };
    anyhow!("{what}: {}", status.message())
}

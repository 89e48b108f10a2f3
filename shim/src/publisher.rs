//! Delivers the runtime's events to containerd's event service over ttrpc, one at a time and in
//! order, across containerd restarts.
//!
//! Why not the `containerd-shim` crate's `RemotePublisher` (0.11): when a forward fails because
//! containerd restarted (the connection it holds was closed by the old containerd), it
//! reconnects, but puts the failed event back from a separate task after sleeping `count`
//! seconds (1 s the first time) while its queue goes on with the next events over the new
//! connection. The first event after a restart thus reaches containerd about a second late,
//! after the ones that followed it (an exec's `exec-added` after its `exec-started` and `exit`).
//! It also reconnects only on `RemoteClosed`/`LocalClosed` and drops an event after 5 tries.
//!
//! Here a single task owns the connection: each event is retried, on a fresh connection, until
//! containerd took it, before the next one is sent. If containerd stays unreachable longer than
//! [`OUTAGE_BUDGET`], events are tried once each (and dropped with a warning) until one gets
//! through, so a containerd that is gone for good does not hold the shim's memory hostage.

use std::time::{Duration, Instant, SystemTime};

use bazaar_runtime::events::EventReceiver;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::r#async::transport::Socket;
use slog::{debug, info, warn, Logger};

use crate::convert::timestamp;

/// One Forward call's deadline: containerd answers at once unless it is stuck.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between two tries of the same event.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one outage of containerd may hold back events. A restart takes a few seconds; a
/// minute covers a slow one (systemd's restart delay, a big metadata database).
pub const OUTAGE_BUDGET: Duration = Duration::from_secs(60);

/// An event ready to send: containerd's envelope, stamped when the runtime emitted it.
struct Item {
    topic: &'static str,
    envelope: Envelope,
}

/// containerd's event service, reconnected whenever a call fails.
pub struct Publisher {
    address: String,
    namespace: String,
    client: Option<EventsClient>,
    /// Since when containerd has not taken an event (None: the last one got through).
    unreachable_since: Option<Instant>,
    outage_budget: Duration,
    logger: Logger,
}

impl Publisher {
    /// `address` is containerd's ttrpc socket (`TTRPC_ADDRESS`, a path or `unix://path`). No
    /// connection is made until the first event.
    pub fn new(address: &str, namespace: &str, logger: Logger) -> Publisher {
        Publisher {
            address: address.trim_start_matches("unix://").to_string(),
            namespace: namespace.to_string(),
            client: None,
            unreachable_since: None,
            outage_budget: OUTAGE_BUDGET,
            logger,
        }
    }

    #[cfg(test)]
    fn with_outage_budget(mut self, budget: Duration) -> Publisher {
        self.outage_budget = budget;
        self
    }

    /// Publishes every event from `events`, in order, until the runtime drops its sender.
    pub async fn forward(mut self, mut events: EventReceiver) {
        while let Some(event) = events.recv().await {
            let (topic, message) = crate::events::to_containerd(event);
            match self.envelope(topic, message) {
                Ok(envelope) => self.deliver(Item { topic, envelope }).await,
                Err(err) => {
                    warn!(self.logger, "cannot encode an event"; "topic" => topic, "error" => %err)
                }
            }
        }
        debug!(self.logger, "event forwarding ended");
    }

    fn envelope(
        &self,
        topic: &str,
        message: Box<dyn MessageDyn>,
    ) -> Result<Envelope, containerd_shim::protos::protobuf::Error> {
        let mut event = Any::new();
        // containerd's typeurl registry knows its events by their full protobuf names.
        event.type_url = message.descriptor_dyn().full_name().to_string();
        event.value = message.write_to_bytes_dyn()?;
        let mut envelope = Envelope::new();
        envelope.timestamp = Some(timestamp(SystemTime::now())).into();
        envelope.namespace = self.namespace.clone();
        envelope.topic = topic.to_string();
        envelope.event = Some(event).into();
        Ok(envelope)
    }

    /// Sends one event, retrying it until containerd took it or the outage budget is spent.
    async fn deliver(&mut self, item: Item) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let err = match self.try_once(&item.envelope).await {
                Ok(()) => {
                    if let Some(since) = self.unreachable_since.take() {
                        info!(self.logger, "containerd takes events again";
                            "after_ms" => since.elapsed().as_millis() as u64);
                    }
                    return;
                }
                Err(err) => err,
            };
            if let ttrpc::Error::RpcStatus(status) = &err {
                // containerd answered and refused this event: the same bytes would be refused
                // again. The connection is fine; go on with the next event.
                warn!(self.logger, "containerd refused an event"; "topic" => item.topic,
                    "code" => ?status.code(), "message" => status.message());
                return;
            }
            // The connection is dead or containerd is gone: reconnect for the next try.
            self.client = None;
            let since = *self.unreachable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.outage_budget {
                warn!(self.logger, "containerd unreachable; event dropped"; "topic" => item.topic,
                    "unreachable_ms" => since.elapsed().as_millis() as u64, "error" => %err);
                return;
            }
            debug!(self.logger, "publishing an event failed; retrying it"; "topic" => item.topic,
                "error" => %err);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_once(&mut self, envelope: &Envelope) -> ttrpc::Result<()> {
        let client = match &self.client {
            Some(client) => client,
            None => self.client.insert(self.connect().await?),
        };
        let mut request = ForwardRequest::new();
        request.envelope = Some(envelope.clone()).into();
        let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
        client.forward(ctx, &request).await.map(|_| ())
    }

    async fn connect(&self) -> ttrpc::Result<EventsClient> {
        let stream = tokio::net::UnixStream::connect(&self.address).await.map_err(|err| {
            ttrpc::Error::Others(format!("connecting to containerd at {}: {err}", self.address))
        })?;
        Ok(EventsClient::new(Client::new(Socket::new(stream))))
    }
}

#[cfg(test)]
mod tests;

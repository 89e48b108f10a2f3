//! The publisher against a fake containerd event service on a Unix socket, stopped and started
//! again as a containerd restart does (the old connection is closed by the server).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bazaar_runtime::events::{Event, EventSender};
use containerd_shim::protos::api::Empty;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{create_events, Events};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::r#async::{Server, TtrpcContext};

use super::Publisher;

/// What the fake containerd received: `topic exec_id`, in arrival order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `n` events arrived (fails the test after 10 s).
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        while self.list().len() < n {
            assert!(start.elapsed() < Duration::from_secs(10), "only got {:?}", self.list());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.list()
    }
}

struct FakeContainerd {
    received: Received,
}

#[async_trait]
impl Events for FakeContainerd {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let envelope = req.envelope.unwrap_or_default();
        let event = envelope.event.unwrap_or_default();
        let exec_id = match event.type_url.as_str() {
            "containerd.events.TaskExecAdded" => {
                TaskExecAdded::parse_from_bytes(&event.value).map(|e| e.exec_id)
            }
            "containerd.events.TaskExecStarted" => {
                TaskExecStarted::parse_from_bytes(&event.value).map(|e| e.exec_id)
            }
            "containerd.events.TaskExit" => TaskExit::parse_from_bytes(&event.value).map(|e| e.id),
            other => Ok(format!("unexpected type {other}")),
        }
        .unwrap_or_else(|err| format!("undecodable: {err}"));
        self.received.0.lock().unwrap().push(format!("{} {exec_id}", envelope.topic));
        Ok(Empty::new())
    }
}

/// A fake containerd serving the event service at `path`.
async fn serve(path: &Path) -> (Server, Received) {
    let _ = std::fs::remove_file(path);
    let received = Received::default();
    let service = create_events(Arc::new(FakeContainerd { received: received.clone() }));
    let mut server = Server::new()
        .bind(&format!("unix://{}", path.display()))
        .expect("bind the fake containerd")
        .register_service(service);
    server.start().await.expect("start the fake containerd");
    (server, received)
}

fn exec_events(tx: &EventSender, exec_id: &str) {
    let container_id = "c".to_string();
    let exec_id = exec_id.to_string();
    let events = [
        Event::ExecAdded { container_id: container_id.clone(), exec_id: exec_id.clone() },
        Event::ExecStarted { container_id: container_id.clone(), exec_id: exec_id.clone(), pid: 7 },
        Event::Exited {
            container_id,
            exec_id,
            pid: 7,
            status: 4,
            at: std::time::SystemTime::now(),
        },
    ];
    for event in events {
        tx.send(event).expect("the publisher is running");
    }
}

fn expected(exec_id: &str) -> Vec<String> {
    ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
        .iter()
        .map(|topic| format!("{topic} {exec_id}"))
        .collect()
}

fn start_publisher(socket: &Path, budget: Duration) -> EventSender {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let publisher =
        Publisher::new(&socket.display().to_string(), "ns", logger).with_outage_budget(budget);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(publisher.forward(rx));
    tx
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("containerd.sock.ttrpc")
}

/// The issue-4 scenario: the publisher holds a connection to a containerd that restarts; the
/// events that follow arrive complete and in order (the crate's publisher delivered the first
/// one about 1 s after the others).
#[tokio::test]
async fn events_after_a_restart_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let (mut first, received) = serve(&socket).await;
    let tx = start_publisher(&socket, super::OUTAGE_BUDGET);
    exec_events(&tx, "before");
    assert_eq!(received.wait_for(3).await, expected("before"));

    first.shutdown().await.unwrap();
    let (mut second, received) = serve(&socket).await;
    let start = Instant::now();
    exec_events(&tx, "after");
    assert_eq!(received.wait_for(3).await, expected("after"));
    assert!(start.elapsed() < Duration::from_secs(1), "slow: {:?}", start.elapsed());
    second.shutdown().await.unwrap();
}

/// Events emitted while containerd is down are held and delivered, in order, once it is back.
#[tokio::test]
async fn events_during_an_outage_wait_for_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let (mut first, received) = serve(&socket).await;
    let tx = start_publisher(&socket, super::OUTAGE_BUDGET);
    exec_events(&tx, "before");
    received.wait_for(3).await;
    first.shutdown().await.unwrap();
    std::fs::remove_file(&socket).unwrap();

    exec_events(&tx, "down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut second, received) = serve(&socket).await;
    exec_events(&tx, "after");
    let mut all = expected("down");
    all.extend(expected("after"));
    assert_eq!(received.wait_for(6).await, all);
    second.shutdown().await.unwrap();
}

/// A containerd gone for longer than the budget costs the events of the outage, not the ones
/// after it, and does not wedge the publisher.
#[tokio::test]
async fn a_long_outage_drops_events_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let tx = start_publisher(&socket, Duration::from_millis(200));
    exec_events(&tx, "lost");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (mut server, received) = serve(&socket).await;
    exec_events(&tx, "after");
    assert_eq!(received.wait_for(3).await, expected("after"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(received.list(), expected("after"), "events of the outage were not dropped");
    server.shutdown().await.unwrap();
}

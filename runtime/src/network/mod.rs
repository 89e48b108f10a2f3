//! The pod network, carried into the VM. CNI configures a network namespace on the host (for a
//! Kubernetes pod: a veth into the node's bridge, the pod's address on it, routes). The
//! runtime, before the VM boots, enters that namespace and puts a tap device beside each of its
//! Ethernet interfaces, joined to it by tc redirect filters (`redirect`); the VMM gets the tap
//! as a virtio-net device with the interface's MAC, and the agent gives the guest's interface
//! the same name, addresses, MTU, routes and neighbours (`CreateSandboxRequest`). The pod's IP
//! then answers from the guest exactly as it would from a runc pod's namespace.

mod discover;
mod forward;
mod netns;
mod redirect;
mod tap;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bazaar_protocols::agent::{Interface, Neighbour, Route};
use rtnetlink::{Handle, LinkUnspec};

/// Names of the runtime's taps: `tap<N>_bazaar`, one per pod interface.
const TAP_PREFIX: &str = "tap";
const TAP_SUFFIX: &str = "_bazaar";

/// One pod interface with the tap that carries it to the VM.
pub struct AttachedInterface {
    pub spec: Interface,
    /// Index of the CNI interface in the pod's namespace (for `detach`).
    cni_index: u32,
    /// The tap's descriptor: the VMM inherits a copy; the device lives while one is open.
    pub tap: Arc<OwnedFd>,
}

/// The pod network as attached to a VM that is about to boot.
pub struct PodNetwork {
    pub netns: PathBuf,
    pub interfaces: Vec<AttachedInterface>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    /// The loopback listener for CRI's PortForward (see `forward`), or why there is none.
    forward_listener: Result<std::net::TcpListener, String>,
}

impl PodNetwork {
    /// Reads the network namespace at `netns` and puts a tap next to each of its interfaces.
    /// A namespace without Ethernet interfaces gives an empty network (loopback only in the
    /// guest, as in a runc container's fresh namespace).
    pub async fn attach(netns: &Path) -> Result<PodNetwork> {
        if netns::is_own(netns)? {
            bail!(
                "network namespace {} is the host's: a VM cannot share the host's network \
                 stack (host-network pods are not supported)",
                netns.display()
            );
        }
        let path = netns.to_path_buf();
        let (spec, taps, forward_listener) = netns::run_in(netns, || async move {
            let handle = connect()?;
            let spec = discover::read(&handle, TAP_PREFIX).await?;
            let mut taps = Vec::new();
            for (n, interface) in spec.interfaces.iter().enumerate() {
                taps.push(attach_one(&handle, n, interface).await?);
            }
            // Without it the pod runs; only PortForward fails (with this reason in the log).
            let forward = forward::prepare().map_err(|err| format!("{err:#}"));
            Ok((spec, taps, forward))
        })
        .await
        .with_context(|| format!("connecting the pod network {} to the VM", path.display()))?;
        let interfaces = spec
            .interfaces
            .into_iter()
            .zip(taps)
            .map(|(i, tap)| AttachedInterface { spec: i.spec, cni_index: i.index, tap })
            .collect();
        Ok(PodNetwork {
            netns: path,
            interfaces,
            routes: spec.routes,
            neighbours: spec.neighbours,
            forward_listener,
        })
    }

    /// Starts serving CRI's PortForward into the guest whose hybrid-vsock socket is
    /// `vsock_socket`. Once only; `None` (after a warning) when the namespace could not get
    /// its redirect.
    pub fn start_port_forward(
        &mut self,
        vsock_socket: PathBuf,
        logger: &slog::Logger,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let listener = std::mem::replace(
            &mut self.forward_listener,
            Err("port forwarding already started".to_string()),
        );
        let started = listener
            .map_err(anyhow::Error::msg)
            .and_then(|listener| forward::spawn(listener, vsock_socket, logger.clone()));
        match started {
            Ok(task) => Some(task),
            Err(err) => {
                slog::warn!(logger, "no port forwarding into this pod"; "error" => format!("{err:#}"));
                None
            }
        }
    }

    /// Drops the runtime's copies of the taps and removes the filters on the CNI side, if the
    /// namespace is still there (CNI DEL may have removed it, and the filters with it).
    pub async fn detach(self) -> Result<()> {
        let cni_indexes: Vec<u32> = self.interfaces.iter().map(|i| i.cni_index).collect();
        drop(self.interfaces);
        drop(self.forward_listener);
        if !self.netns.exists() {
            return Ok(());
        }
        netns::run_in(&self.netns, || async move {
            let handle = connect()?;
            for index in cni_indexes {
                // The interface may be gone already (CNI DEL); nothing to undo then.
                let _ = redirect::disconnect(&handle, index).await;
            }
            // Fails only where the redirect never existed (iptables missing): nothing to undo.
            let _ = forward::undo();
            Ok(())
        })
        .await
    }
}

/// A netlink connection in the calling thread's namespace, served on its runtime.
fn connect() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Creates tap number `n` for `interface`, with its MTU, up, and joined to it.
async fn attach_one(
    handle: &Handle,
    n: usize,
    interface: &discover::PodInterface,
) -> Result<Arc<OwnedFd>> {
    let name = format!("{TAP_PREFIX}{n}{TAP_SUFFIX}");
    let tap = tap::open(&name)?;
    let index = link_index(&name)?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(interface.spec.mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up with MTU {}", interface.spec.mtu))?;
    redirect::connect(handle, interface.index, index)
        .await
        .with_context(|| format!("joining {} and {name}", interface.spec.name))?;
    Ok(Arc::new(tap))
}

/// The index of interface `name` in the calling thread's network namespace.
fn link_index(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("looking up interface {name}"))
}

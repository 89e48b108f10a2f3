//! Joining a CNI interface and a tap with tc, as Kata's "tcfilter" model does: an ingress qdisc
//! on each, with a u32 match-all filter whose action is a mirred redirect to the other's egress.
//! Every frame the CNI bridge sends to the pod goes to the VM, and every frame the VM sends goes
//! out of the pod's veth; no bridge, iptables rule or sysctl of the host is involved.

use anyhow::{Context, Result};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::Handle;

/// `tc filter ... protocol all`: ETH_P_ALL in network byte order, as the kernel compares it.
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Redirects everything arriving on `from` out of `to`, and back.
pub async fn connect(handle: &Handle, first: u32, second: u32) -> Result<()> {
    redirect_ingress(handle, first, second).await?;
    redirect_ingress(handle, second, first).await
}

async fn redirect_ingress(handle: &Handle, from: u32, to: u32) -> Result<()> {
    handle
        .qdisc()
        .add(index(from)?)
        .ingress()
        .execute()
        .await
        .with_context(|| format!("adding an ingress qdisc to interface {from}"))?;
    handle
        .traffic_filter(index(from)?)
        .add()
        .ingress()
        .protocol(PROTOCOL_ALL)
        .redirect(to)
        .context("building the redirect filter")?
        .execute()
        .await
        .with_context(|| format!("redirecting interface {from}'s ingress to interface {to}"))
}

/// Removes the ingress qdisc (and with it the filter) from `interface`. Used on the CNI side at
/// shutdown; the tap side goes away with the tap.
pub async fn disconnect(handle: &Handle, interface: u32) -> Result<()> {
    let mut request = handle.qdisc().del(index(interface)?);
    request.message_mut().header.parent = TcHandle::INGRESS;
    request.message_mut().header.handle = TcHandle::from(0xffff_0000);
    request
        .execute()
        .await
        .with_context(|| format!("removing the ingress qdisc of interface {interface}"))
}

fn index(interface: u32) -> Result<i32> {
    i32::try_from(interface).with_context(|| format!("interface index {interface} out of range"))
}

//! What CNI set up in the pod's network namespace: its Ethernet interfaces with their MAC,
//! MTU and addresses, the routes through them and static neighbour entries, read over netlink
//! and expressed as the agent API's messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use bazaar_protocols::agent::{Interface, IpAddress, Neighbour, Route};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// An interface to mirror into the guest, with its index in the pod's namespace.
#[derive(Debug, Clone)]
pub struct PodInterface {
    pub index: u32,
    pub spec: Interface,
}

#[derive(Debug, Clone, Default)]
pub struct PodNetworkSpec {
    pub interfaces: Vec<PodInterface>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
}

/// Reads the namespace's configuration. Interfaces whose name starts with `skip_prefix` (the
/// runtime's own taps, left by an earlier attempt) are not part of it.
pub async fn read(handle: &Handle, skip_prefix: &str) -> Result<PodNetworkSpec> {
    let links: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.context("listing links")?;
    let mut interfaces: Vec<PodInterface> = links
        .iter()
        .filter_map(ethernet_interface)
        .filter(|i| !i.spec.name.starts_with(skip_prefix))
        .collect();
    interfaces.sort_by_key(|i| i.index);

    let addresses: Vec<_> =
        handle.address().get().execute().try_collect().await.context("listing addresses")?;
    for message in addresses {
        let Some(interface) = interfaces.iter_mut().find(|i| i.index == message.header.index)
        else {
            continue;
        };
        let address = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        // The guest derives its own IPv6 link-local address from the same MAC.
        if let Some(ip) = address.filter(|ip| !is_ipv6_link_local(ip)) {
            let mut spec = IpAddress::new();
            spec.address = ip.to_string();
            spec.prefix_len = u32::from(message.header.prefix_len);
            interface.spec.addresses.push(spec);
        }
    }

    let mut routes = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> =
            handle.route().get(query).execute().try_collect().await.context("listing routes")?;
        routes.extend(messages.iter().filter_map(|m| route(m, &interfaces)));
    }

    let neighbours: Vec<_> =
        handle.neighbours().get().execute().try_collect().await.context("listing neighbours")?;
    let neighbours = neighbours
        .iter()
        .filter(|m| m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let interface = interfaces.iter().find(|i| i.index == m.header.ifindex)?;
            let mut spec = Neighbour::new();
            for attribute in &m.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        spec.address = ip.to_string()
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        spec.address = ip.to_string()
                    }
                    NeighbourAttribute::LinkLayerAddress(mac) => spec.mac = format_mac(mac),
                    _ => {}
                }
            }
            spec.device = interface.spec.name.clone();
            (!spec.address.is_empty() && !spec.mac.is_empty()).then_some(spec)
        })
        .collect();

    Ok(PodNetworkSpec { interfaces, routes, neighbours })
}

/// An Ethernet interface other than loopback, with a MAC (a veth from CNI, typically).
fn ethernet_interface(link: &LinkMessage) -> Option<PodInterface> {
    if link.header.flags.contains(LinkFlags::Loopback)
        || link.header.link_layer_type != LinkLayerType::Ether
    {
        return None;
    }
    let mut spec = Interface::new();
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => spec.name = name.clone(),
            LinkAttribute::Address(mac) => spec.mac = format_mac(mac),
            LinkAttribute::Mtu(mtu) => spec.mtu = *mtu,
            _ => {}
        }
    }
    (!spec.name.is_empty() && !spec.mac.is_empty())
        .then_some(PodInterface { index: link.header.index, spec })
}

/// A route of the main table through one of `interfaces`, unless the kernel made it itself
/// (the prefix route of an address, which the guest's kernel makes the same way).
fn route(message: &RouteMessage, interfaces: &[PodInterface]) -> Option<Route> {
    let header: &RouteHeader = &message.header;
    if header.protocol == RouteProtocol::Kernel
        || header.kind != RouteType::Unicast
        || header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut spec = Route::new();
    spec.destination_prefix_len = u32::from(header.destination_prefix_length);
    spec.scope = u32::from(u8::from(header.scope));
    let mut device = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => spec.destination = route_address(address)?,
            RouteAttribute::Gateway(address) => spec.gateway = route_address(address)?,
            RouteAttribute::PrefSource(address) => spec.source = route_address(address)?,
            RouteAttribute::Oif(index) => device = interfaces.iter().find(|i| i.index == *index),
            RouteAttribute::Table(table) if *table != u32::from(RouteHeader::RT_TABLE_MAIN) => {
                return None
            }
            _ => {}
        }
    }
    spec.device = device?.spec.name.clone();
    Some(spec)
}

fn route_address(address: &RouteAddress) -> Option<String> {
    match address {
        RouteAddress::Inet(ip) => Some(ip.to_string()),
        RouteAddress::Inet6(ip) => Some(ip.to_string()),
        _ => None,
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

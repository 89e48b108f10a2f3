//! The pod network inside the guest: the runtime attached a virtio-net device for each pod
//! interface, with that interface's MAC, and sends what CNI configured for it. Here the device
//! with that MAC gets the interface's name, MTU and addresses, then the routes and static
//! neighbours are added, all in the VM's network namespace, which every container of the pod
//! shares (as the pod's namespace on the host is shared under runc).

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use bazaar_protocols::agent::{Interface, Neighbour, Route};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use slog::{info, Logger};

/// Applies the pod network. Nothing to do without interfaces.
pub async fn configure(
    interfaces: &[Interface],
    routes: &[Route],
    neighbours: &[Neighbour],
    log: &Logger,
) -> Result<()> {
    if interfaces.is_empty() {
        return Ok(());
    }
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    let connection = tokio::spawn(connection);
    let result = apply(&handle, interfaces, routes, neighbours, log).await;
    connection.abort();
    result
}

async fn apply(
    handle: &Handle,
    interfaces: &[Interface],
    routes: &[Route],
    neighbours: &[Neighbour],
    log: &Logger,
) -> Result<()> {
    let links: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.context("listing links")?;
    for interface in interfaces {
        let index = index_by_mac(&links, &interface.mac).with_context(|| {
            format!("no network device with MAC {} for {}", interface.mac, interface.name)
        })?;
        configure_interface(handle, index, interface)
            .await
            .with_context(|| format!("configuring {}", interface.name))?;
        info!(log, "interface configured"; "name" => &interface.name, "mac" => &interface.mac,
            "addresses" => interface.addresses.iter()
                .map(|a| format!("{}/{}", a.address, a.prefix_len)).collect::<Vec<_>>().join(" "));
    }
    // Directly connected routes first: a gateway must be reachable when its route is added.
    let (direct, via): (Vec<&Route>, Vec<&Route>) =
        routes.iter().partition(|r| r.gateway.is_empty());
    for route in direct.into_iter().chain(via) {
        add_route(handle, route)
            .await
            .with_context(|| format!("adding route {}", describe(route)))?;
    }
    for neighbour in neighbours {
        add_neighbour(handle, neighbour).await.with_context(|| {
            format!(
                "adding neighbour {} ({}) on {}",
                neighbour.address, neighbour.mac, neighbour.device
            )
        })?;
    }
    Ok(())
}

async fn configure_interface(handle: &Handle, index: u32, interface: &Interface) -> Result<()> {
    // A link is renamed only while down.
    handle.link().set(LinkUnspec::new_with_index(index).down().build()).execute().await?;
    let mut link = LinkUnspec::new_with_index(index).name(interface.name.clone());
    if interface.mtu > 0 {
        link = link.mtu(interface.mtu);
    }
    handle.link().set(link.build()).execute().await.context("setting name and MTU")?;
    for address in &interface.addresses {
        let ip: IpAddr = parse_ip(&address.address)?;
        let prefix = u8::try_from(address.prefix_len)
            .ok()
            .filter(|p| *p <= max_prefix(&ip))
            .ok_or_else(|| anyhow!("invalid prefix length {} for {ip}", address.prefix_len))?;
        handle
            .address()
            .add(index, ip, prefix)
            .execute()
            .await
            .with_context(|| format!("adding address {ip}/{prefix}"))?;
    }
    handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await?;
    Ok(())
}

async fn add_route(handle: &Handle, route: &Route) -> Result<()> {
    let device = link_index(&route.device)?;
    let mut builder = RouteMessageBuilder::<IpAddr>::new().output_interface(device);
    if !route.destination.is_empty() {
        let destination = parse_ip(&route.destination)?;
        let prefix = u8::try_from(route.destination_prefix_len)
            .map_err(|_| anyhow!("invalid prefix length {}", route.destination_prefix_len))?;
        builder = builder.destination_prefix(destination, prefix)?;
    }
    if !route.gateway.is_empty() {
        builder = builder.gateway(parse_ip(&route.gateway)?)?;
    }
    if !route.source.is_empty() {
        builder = builder.pref_source(parse_ip(&route.source)?)?;
    }
    let scope = u8::try_from(route.scope).map_err(|_| anyhow!("invalid scope {}", route.scope))?;
    builder = builder.scope(RouteScope::from(scope));
    let mut message = builder.build();
    if route.destination.is_empty() && route.gateway.is_empty() {
        bail!("a route needs a destination or a gateway");
    }
    if route.destination.is_empty() {
        // The default route: the family comes from the gateway.
        message.header.address_family = match parse_ip(&route.gateway)? {
            IpAddr::V4(_) => rtnetlink::packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => rtnetlink::packet_route::AddressFamily::Inet6,
        };
    }
    handle.route().add(message).execute().await?;
    Ok(())
}

async fn add_neighbour(handle: &Handle, neighbour: &Neighbour) -> Result<()> {
    let device = link_index(&neighbour.device)?;
    let mac = parse_mac(&neighbour.mac)?;
    handle
        .neighbours()
        .add(device, parse_ip(&neighbour.address)?)
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .execute()
        .await?;
    Ok(())
}

fn index_by_mac(links: &[LinkMessage], mac: &str) -> Result<u32> {
    let wanted = parse_mac(mac)?;
    links
        .iter()
        .find(|link| {
            link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(m) if *m == wanted))
        })
        .map(|link| link.header.index)
        .ok_or_else(|| anyhow!("not found"))
}

/// The index of interface `name` in the agent's (the VM's) network namespace.
fn link_index(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface {name}"))
}

fn parse_ip(text: &str) -> Result<IpAddr> {
    text.parse().with_context(|| format!("invalid IP address {text:?}"))
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_mac(text: &str) -> Result<Vec<u8>> {
    let octets = text
        .split(':')
        .map(|o| u8::from_str_radix(o, 16).ok().filter(|_| o.len() == 2))
        .collect::<Option<Vec<u8>>>()
        .filter(|o| o.len() == 6);
    octets.ok_or_else(|| anyhow!("invalid MAC address {text:?}"))
}

fn describe(route: &Route) -> String {
    let destination = if route.destination.is_empty() {
        "default".to_string()
    } else {
        format!("{}/{}", route.destination, route.destination_prefix_len)
    };
    let via =
        if route.gateway.is_empty() { String::new() } else { format!(" via {}", route.gateway) };
    format!("{destination}{via} dev {}", route.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("0a:58:0A:fb:00:05").unwrap(), [0x0a, 0x58, 0x0a, 0xfb, 0, 5]);
        for bad in
            ["", "0a:58:0a:fb:00", "0a:58:0a:fb:00:5", "0a:58:0a:fb:00:zz", "0a-58-0a-fb-00-05"]
        {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_are_described_for_errors() {
        let mut route = Route::new();
        route.gateway = "10.0.0.1".to_string();
        route.device = "eth0".to_string();
        assert_eq!(describe(&route), "default via 10.0.0.1 dev eth0");
        route.destination = "10.1.0.0".to_string();
        route.destination_prefix_len = 16;
        assert_eq!(describe(&route), "10.1.0.0/16 via 10.0.0.1 dev eth0");
    }
}

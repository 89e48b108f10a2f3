//! The host side of pod networking against a real network namespace, set up as CNI's bridge
//! plugin would (a veth with an address, a route, a static neighbour): `PodNetwork::attach`
//! reads it, puts a tap beside the veth joined by tc redirect filters; dropping the tap's last
//! descriptor removes the tap, and `detach` the filters. Needs root (netns, veth, tap).

use std::path::Path;
use std::process::Command;

use bazaar_runtime::network::PodNetwork;
use bazaar_tests::process::is_root;
use bazaar_tests::skip::skip;

/// A network namespace with a veth pair (one end inside), held by a `sleep` of its own (not
/// `ip netns add`, which bind-mounts /run/netns on the host and leaves the mount behind);
/// the process is ended by its PID on drop, and the namespace goes with it.
struct TestNetns {
    holder: std::process::Child,
    host_end: String,
}

impl TestNetns {
    fn create() -> TestNetns {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .spawn()
            .expect("starting unshare --net");
        let host_end = format!("bzv{}", std::process::id() % 100_000);
        let netns = TestNetns { holder, host_end };
        // The namespace exists once the holder has exec'd sleep.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(netns.path()).ok() == std::fs::read_link("/proc/self/ns/net").ok()
        {
            assert!(std::time::Instant::now() < deadline, "unshare --net did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pid = netns.holder.id().to_string();
        ip(&[
            "link",
            "add",
            &netns.host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pid,
        ]);
        netns
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// `nsenter --net=<netns> PROGRAM ARGS`.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg(program)
            .args(args)
            .output()
            .expect("running nsenter");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip(&self, args: &[&str]) -> String {
        self.run("ip", args)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "delete", &self.host_end]).status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[track_caller]
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tc(netns: &TestNetns, args: &[&str]) -> String {
    netns.run("tc", args)
}

fn nat_rules(netns: &TestNetns) -> String {
    netns.run("iptables", &["-t", "nat", "-S"])
}

#[tokio::test]
async fn attach_mirrors_the_cni_interface_onto_a_tap() {
    if !is_root() {
        skip("pod_network::attach_mirrors_the_cni_interface_onto_a_tap", "needs root");
        return;
    }
    let netns = TestNetns::create();
    // containerd's CRI brings the pod's loopback up (CNI's loopback plugin).
    netns.ip(&["link", "set", "lo", "up"]);
    netns.ip(&["link", "set", "eth0", "mtu", "1400", "up"]);
    netns.ip(&["addr", "add", "10.252.3.7/24", "dev", "eth0"]);
    netns.ip(&["route", "add", "default", "via", "10.252.3.1", "dev", "eth0"]);
    netns.ip(&[
        "neigh",
        "add",
        "10.252.3.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let mac = netns.ip(&["-o", "link", "show", "eth0"]);
    let mac = mac.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().to_string();

    let network = PodNetwork::attach(Path::new(&netns.path())).await.expect("attach");
    assert_eq!(network.interfaces.len(), 1);
    let eth0 = &network.interfaces[0].spec;
    assert_eq!((eth0.name.as_str(), eth0.mac.as_str(), eth0.mtu), ("eth0", mac.as_str(), 1400));
    let addresses: Vec<_> =
        eth0.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect();
    assert_eq!(addresses, ["10.252.3.7/24"], "the link-local IPv6 address is left to the guest");
    // The kernel's own prefix route is not copied: the guest's kernel makes it.
    let routes: Vec<_> = network
        .routes
        .iter()
        .map(|r| {
            format!(
                "{}/{} via {} dev {}",
                r.destination, r.destination_prefix_len, r.gateway, r.device
            )
        })
        .collect();
    assert_eq!(routes, ["/0 via 10.252.3.1 dev eth0"]);
    let neighbours: Vec<_> = network
        .neighbours
        .iter()
        .map(|n| format!("{} {} {}", n.address, n.mac, n.device))
        .collect();
    assert_eq!(neighbours, ["10.252.3.9 02:00:00:00:00:09 eth0"]);

    // The tap is up with the veth's MTU, and each side's ingress goes out of the other.
    let tap = netns.ip(&["-o", "link", "show", "tap0_bazaar"]);
    assert!(tap.contains("mtu 1400") && tap.contains("UP"), "{tap}");
    for (from, to) in [("eth0", "tap0_bazaar"), ("tap0_bazaar", "eth0")] {
        let filters = tc(&netns, &["filter", "show", "dev", from, "ingress"]);
        assert!(
            filters.contains("mirred (Egress Redirect to device") && filters.contains(to),
            "ingress of {from} is not redirected to {to}:\n{filters}"
        );
    }

    // Loopback TCP in the namespace goes to the runtime's port-forward listener.
    let nat = nat_rules(&netns);
    assert!(nat.contains("-A OUTPUT -j BAZAAR-PORT-FORWARD"), "{nat}");
    assert!(nat.contains("-d 127.0.0.1/32 -p tcp -j REDIRECT --to-ports"), "{nat}");

    network.detach().await.expect("detach");
    assert!(!nat_rules(&netns).contains("REDIRECT"), "the redirect outlived the sandbox");
    let links = netns.ip(&["-o", "link", "show"]);
    assert!(!links.contains("tap0_bazaar"), "the tap outlived its descriptors:\n{links}");
    let qdiscs = tc(&netns, &["qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "the ingress qdisc is left on eth0:\n{qdiscs}");
}

#[tokio::test]
async fn the_host_namespace_is_refused() {
    let err = PodNetwork::attach(Path::new("/proc/self/ns/net")).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("the host's"), "{message}");
}

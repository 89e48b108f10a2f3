//! Pod networking through containerd's CRI plugin, under the handlers `runc` (the reference)
//! and `bazaar` (the pod's CNI interface carried into its VM): each container sees the address
//! CNI gave its pod on `eth0`, with the interface's MAC and MTU; a server in one pod answers a
//! client in another pod and a client on the host, at the pod IP PodSandboxStatus reports.
//! Teardown is the harness's leak check (no netns, veth, tap, VM or shim left).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use bazaar_tests::both_runtimes;
use bazaar_tests::cri::pods::Pods;
use bazaar_tests::cri::setup::handler;
use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::process;

both_runtimes!(pods_reach_each_other_and_the_host);

const PORT: u16 = 8080;

fn pod_ip(pods: &Pods<'_>, pod: &str) -> Ipv4Addr {
    let status = pods.pod_status(pod);
    let ip = status.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    ip.parse().unwrap_or_else(|_| panic!("pod {pod} has no IPv4 address: {status:?}"))
}

/// An HTTP GET from the host; the body of the reply.
fn http_get_from_host(ip: Ipv4Addr) -> std::io::Result<String> {
    let address = SocketAddrV4::new(ip, PORT).into();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(http_body(&reply))
}

fn http_body(reply: &str) -> String {
    reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

fn pods_reach_each_other_and_the_host(rt: Runtime) {
    let name = format!("e2e_cri_network-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::builder(&name, rt).cri().start() else { return };
    let pods = env.cri();
    let server_pod = pods.run_pod("server", handler(rt));
    let client_pod = pods.run_pod("client", handler(rt));
    let serve = format!(
        "mkdir -p /www && echo pong-from-server > /www/index.html && \
         exec busybox httpd -f -p {PORT} -h /www"
    );
    let server = pods.create_container(&server_pod, "httpd", &["sh", "-c", &serve]);
    let client = pods.create_container(&client_pod, "client", &["sleep", "1000"]);
    pods.start_container(&server);
    pods.start_container(&client);
    let (server_ip, client_ip) = (pod_ip(&pods, &server_pod.id), pod_ip(&pods, &client_pod.id));

    // The pod's address, as CRI reports it, is on the container's eth0, with the bridge's MTU.
    let prefix_len = pods.network().subnet.rsplit('/').next().unwrap_or("24").to_string();
    for (id, ip) in [(&server, server_ip), (&client, client_ip)] {
        let addresses = pods.exec_ok(id, &["busybox", "ip", "-4", "-o", "addr", "show"]);
        // `ip -o` prints one line an address: "2: eth0    inet 10.251.7.2/24 brd ...".
        let expected = ["eth0", "inet", &format!("{ip}/{prefix_len}")];
        assert!(
            addresses.lines().any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.windows(3).any(|w| w == expected)
            }),
            "container {id} does not have {ip}/{prefix_len} on eth0:\n{addresses}"
        );
        let mtu = pods.exec_ok(id, &["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(mtu.trim(), "1500", "MTU of eth0 in {id}");
    }

    // Pod to pod, across the CNI bridge.
    // busybox's nc with a hand-written request: its wget segfaults in these containers (static
    // glibc, under runc too).
    let request = format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 10 {server_ip} {PORT}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let reply = pods.exec_sync(&client, &["sh", "-c", &request], 60);
        match reply {
            Ok(reply) if reply.exit_code == 0 && !reply.stdout.is_empty() => {
                break http_body(&String::from_utf8_lossy(&reply.stdout))
            }
            other if Instant::now() > deadline => panic!(
                "pod {client_ip} cannot reach {server_ip}:{PORT}: {other:?}\n{}",
                env.log_tail()
            ),
            // The server may still be starting.
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert_eq!(body, "pong-from-server\n");

    // Host to pod: the host joins the bridge's subnet with an address of its own.
    let host_address = host_address_on(&pods.network().subnet);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["addr", "add", &host_address, "dev", &pods.network().bridge]);
    let out = process::run(cmd, None, Duration::from_secs(10)).expect("running ip addr add");
    assert!(out.success(), "ip addr add {host_address}: {}", out.describe());
    let body = http_get_from_host(server_ip).unwrap_or_else(|err| {
        panic!("host cannot reach {server_ip}:{PORT}: {err}\n{}", env.log_tail())
    });
    assert_eq!(body, "pong-from-server\n");

    for pod in [&server_pod.id, &client_pod.id] {
        pods.stop_pod(pod);
        pods.remove_pod(pod);
    }
    env.finish();
}

/// `.254` of a `/24` subnet like "10.251.7.0/24", with its prefix: "10.251.7.254/24".
fn host_address_on(subnet: &str) -> String {
    let (network, prefix) = subnet.split_once('/').expect("subnet in CIDR form");
    let network: Ipv4Addr = network.parse().expect("IPv4 subnet");
    let [a, b, c, _] = network.octets();
    format!("{a}.{b}.{c}.254/{prefix}")
}

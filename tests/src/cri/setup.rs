//! The CRI side of a private containerd: the plugin's configuration (runtime handlers `runc` and
//! `bazaar`, the locally built pause image, no AppArmor, no OOM score changes) and a CNI network
//! of the test's own (its config dir, a bridge and a subnet named after the test's token, IPAM
//! state in the test's temp dir), so that nothing collides with the host's or another test's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::process;

/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CRI runtime handler of Bazaar (a Kubernetes RuntimeClass's `handler`).
pub const BAZAAR_HANDLER: &str = "bazaar";
/// The CRI runtime handler of runc.
pub const RUNC_HANDLER: &str = "runc";

/// The CRI runtime handler a test of `rt` runs its pods with.
pub fn handler(rt: crate::fixture::Runtime) -> &'static str {
    match rt {
        crate::fixture::Runtime::Runc => RUNC_HANDLER,
        crate::fixture::Runtime::Bazaar => BAZAAR_HANDLER,
    }
}

/// The containerd snippet shipped for users (`deploy/containerd-cri.toml`), which declares the
/// `bazaar` handler: every CRI test runs Bazaar pods through exactly that configuration.
const SHIPPED_RUNTIME_TOML: &str = include_str!("../../../deploy/containerd-cri.toml");

/// How the CRI plugin of one private containerd is set up.
#[derive(Debug, Clone)]
pub struct CriSettings {
    pub sandbox_image: String,
    pub network: CniNetwork,
}

impl CriSettings {
    /// Settings for the containerd living in `dir` whose token is `token`.
    pub fn for_test(dir: &Path, token: &str) -> CriSettings {
        CriSettings {
            sandbox_image: crate::image::PAUSE_IMAGE.to_string(),
            network: CniNetwork::for_test(dir, token),
        }
    }

    /// The `[plugins."io.containerd.grpc.v1.cri"]` part of containerd's config.toml.
    pub fn containerd_toml(&self) -> String {
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        format!(
            r#"
[{cri}]
  sandbox_image = "{image}"
  # The test machine lacks CAP_SYS_RESOURCE: never lower a container's OOM score below ours.
  restrict_oom_score_adj = true
  # Loading containerd's AppArmor profile would change the host; tests must not.
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "{runc}"
[{cri}.containerd.runtimes.{runc}]
  runtime_type = "io.containerd.runc.v2"
{shipped_bazaar}
[{cri}.cni]
  bin_dir = "{bin}"
  conf_dir = "{conf}"
  max_conf_num = 1
"#,
            image = self.sandbox_image,
            runc = RUNC_HANDLER,
            shipped_bazaar = SHIPPED_RUNTIME_TOML,
            bin = CNI_BIN_DIR,
            conf = self.network.conf_dir.display(),
        )
    }
}

/// A bridge network for one test. The bridge is no gateway and masquerades nothing, so the
/// plugin neither assigns host addresses nor touches the host's forwarding or iptables.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    pub name: String,
    /// At most 15 bytes (IFNAMSIZ); carries the token, so the leak check can attribute it.
    pub bridge: String,
    /// A /24 in 10.251.0.0/16, picked from the token.
    pub subnet: String,
    pub conf_dir: PathBuf,
    /// host-local's lease files (its default, /var/lib/cni/networks, is the host's).
    pub ipam_dir: PathBuf,
}

impl CniNetwork {
    pub fn for_test(dir: &Path, token: &str) -> CniNetwork {
        let third = Sha256::digest(token.as_bytes())[0];
        let short: String =
            token.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
        CniNetwork {
            name: format!("{token}-net"),
            bridge: format!("bzbr-{short}"),
            subnet: format!("10.251.{third}.0/24"),
            conf_dir: dir.join("cni/net.d"),
            ipam_dir: dir.join("cni/ipam"),
        }
    }

    /// The conflist the CRI plugin loads (it must exist before containerd starts, or the
    /// plugin reports the network as not ready).
    pub fn conflist(&self) -> serde_json::Value {
        json!({
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet }]],
                    "dataDir": self.ipam_dir,
                },
            }],
        })
    }

    pub fn write(&self) -> Result<()> {
        std::fs::create_dir_all(&self.conf_dir)
            .with_context(|| format!("creating {}", self.conf_dir.display()))?;
        let path = self.conf_dir.join("10-bazaar-test.conflist");
        let text =
            serde_json::to_vec_pretty(&self.conflist()).context("serialising the conflist")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Deletes the bridge the plugin created (CNI DEL leaves bridges in place). Returns
    /// whether it existed.
    pub fn remove_bridge(&self) -> bool {
        if !Path::new("/sys/class/net").join(&self.bridge).exists() {
            return false;
        }
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["link", "delete", &self.bridge]);
        match process::run(cmd, None, std::time::Duration::from_secs(10)) {
            Ok(out) if out.success() => {}
            Ok(out) => {
                eprintln!("bazaar-tests: deleting bridge {}: {}", self.bridge, out.describe())
            }
            Err(err) => eprintln!("bazaar-tests: deleting bridge {}: {err:#}", self.bridge),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_is_private_to_the_test() {
        let net = CniNetwork::for_test(Path::new("/tmp/bzt-abc123"), "bzt-abc123");
        assert!(net.bridge.len() <= 15, "{}", net.bridge);
        assert!(net.bridge.contains("abc123"));
        assert!(net.subnet.starts_with("10.251."));
        let list = net.conflist();
        assert_eq!(list["plugins"][0]["isGateway"], false);
        assert_eq!(list["plugins"][0]["ipMasq"], false);
        assert_eq!(list["plugins"][0]["ipam"]["dataDir"], "/tmp/bzt-abc123/cni/ipam");
    }

    #[test]
    fn both_handlers_are_configured() {
        let toml = CriSettings::for_test(Path::new("/tmp/bzt-x"), "bzt-x").containerd_toml();
        assert!(toml.contains("runtimes.bazaar]\n  runtime_type = \"io.containerd.bazaar.v2\""));
        assert!(toml.contains("runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\""));
        assert!(toml.contains("conf_dir = \"/tmp/bzt-x/cni/net.d\""));
        assert!(toml.contains("restrict_oom_score_adj = true"));
    }

    /// The shipped RuntimeClass names the handler the shipped containerd snippet declares.
    #[test]
    fn shipped_runtime_class_matches_the_containerd_snippet() {
        let class = include_str!("../../../deploy/runtimeclass.yaml");
        let handler = class.lines().find_map(|l| l.strip_prefix("handler: "));
        assert_eq!(handler, Some(BAZAAR_HANDLER));
        let name = format!("containerd.runtimes.{BAZAAR_HANDLER}]");
        assert!(SHIPPED_RUNTIME_TOML.contains(&name), "{SHIPPED_RUNTIME_TOML}");
    }
}

//! The runtime configuration file (`/etc/bazaar/configuration.toml`).
//!
//! Every key is optional and has a documented default (see `config/configuration.toml`). Unknown
//! keys are rejected so that a misspelt setting is reported instead of silently ignored.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bazaar_hypervisor::Acceleration;
use serde::Deserialize;

/// Where the configuration is read from unless `BAZAAR_CONFIG` names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bazaar/configuration.toml";
/// Environment variable naming an alternative configuration file.
pub const CONFIG_ENV: &str = "BAZAAR_CONFIG";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
}

/// Which VMM runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    Auto,
    Qemu,
    Builtin,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub name: HypervisorKind,
    pub acceleration: Acceleration,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// QEMU TCG's translation cache (tb-size) in MiB; 0 = QEMU's default (1 GiB, touched as
    /// the guest runs new code). Only used without hardware virtualization.
    pub tcg_cache_mib: u32,
    pub qemu_path: PathBuf,
    pub virtiofsd_path: PathBuf,
    pub vhost_vsock_path: PathBuf,
    /// The built-in VMM (`hypervisor = "builtin"`).
    pub vmm_path: PathBuf,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            name: HypervisorKind::Auto,
            acceleration: Acceleration::Auto,
            kernel: PathBuf::from("/usr/share/bazaar/vmlinuz"),
            initrd: PathBuf::from("/usr/share/bazaar/initrd.img"),
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            tcg_cache_mib: 0,
            qemu_path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            virtiofsd_path: PathBuf::from("/usr/local/libexec/bazaar/virtiofsd"),
            vhost_vsock_path: PathBuf::from("/usr/local/libexec/bazaar/vhost-device-vsock"),
            vmm_path: PathBuf::from("/usr/local/bin/bazaar-vmm"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub run_dir: PathBuf,
    pub agent_timeout_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { run_dir: PathBuf::from("/run/bazaar"), agent_timeout_secs: 30 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string() }
    }
}

impl Config {
    /// The configuration file path: `$BAZAAR_CONFIG` or the default.
    pub fn path_from_env() -> PathBuf {
        std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// Reads and validates the configuration. A missing default file means "all defaults"; a
    /// missing file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot read configuration file {}", path.display()))
            }
        };
        let config = Config::parse(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))?;
        Ok(config)
    }

    /// Loads the configuration the environment points at.
    pub fn load_from_env() -> Result<Config> {
        let explicit = std::env::var_os(CONFIG_ENV).is_some();
        Config::load(&Config::path_from_env(), explicit)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config> {
        // toml's error text names the unknown key, the bad value and the line.
        let config: Config = toml::from_str(text).map_err(|err| anyhow::anyhow!("{err}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let hv = &self.hypervisor;
        if hv.vcpus == 0 || hv.vcpus > 255 {
            bail!("hypervisor.vcpus must be between 1 and 255, got {}", hv.vcpus);
        }
        if hv.memory_mib < 64 {
            bail!("hypervisor.memory_mib must be at least 64, got {}", hv.memory_mib);
        }
        if self.runtime.agent_timeout_secs == 0 {
            bail!("runtime.agent_timeout_secs must be positive");
        }
        crate::logging::parse_level(&self.log.level)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn shipped_file_matches_defaults() {
        let text = include_str!("../../config/configuration.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[hypervisor]\nkernal = \"/x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("kernal"), "{err:#}");
    }

    #[test]
    fn unknown_section_is_named() {
        let err = Config::parse("[hypervizor]\n").unwrap_err();
        assert!(format!("{err:#}").contains("hypervizor"), "{err:#}");
    }

    #[test]
    fn unknown_hypervisor_is_named() {
        let err = Config::parse("[hypervisor]\nname = \"xen\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("xen"), "{text}");
    }

    #[test]
    fn values_are_read() {
        let config = Config::parse(
            "[hypervisor]\nname = \"qemu\"\nacceleration = \"tcg\"\nvcpus = 2\nmemory_mib = 512\n",
        )
        .unwrap();
        assert_eq!(config.hypervisor.name, HypervisorKind::Qemu);
        assert_eq!(config.hypervisor.acceleration, Acceleration::Tcg);
        assert_eq!(config.hypervisor.vcpus, 2);
        assert_eq!(config.hypervisor.memory_mib, 512);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::parse("[hypervisor]\nvcpus = 0\n").is_err());
        assert!(Config::parse("[hypervisor]\nmemory_mib = 1\n").is_err());
        assert!(Config::parse("[log]\nlevel = \"loud\"\n").is_err());
    }

    #[test]
    fn missing_default_file_is_fine_but_explicit_is_not() {
        let missing = Path::new("/nonexistent/bazaar.toml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        let err = Config::load(missing, true).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/bazaar.toml"));
    }
}

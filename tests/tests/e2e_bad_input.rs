//! Bad input: ctr must show, within seconds, an error that names the problem, and nothing may
//! be left behind (each test ends with the leak check).
//!
//! Every test starts its own containerd with `BAZAAR_CONFIG` naming the configuration under test
//! (containerd passes its environment to the shims it starts).

use std::time::Duration;

use bazaar_tests::bazaar_config::BazaarConfig;
use bazaar_tests::fixture::{ConfigSource, Runtime, TestEnv};

/// A configuration error needs no VM: ctr must fail within this.
const FAST_FAIL: Duration = Duration::from_secs(10);

const MISSING_KERNEL: &str = "/nonexistent/bazaar-tests/bzImage";
const MISSING_INITRD: &str = "/nonexistent/bazaar-tests/initrd.cpio";
const MISSING_QEMU: &str = "/nonexistent/bazaar-tests/qemu-system-x86_64";

/// Runs `echo` and checks that ctr fails fast with stderr naming what `needle` returns.
/// `needs_guest`: the test relies on the real guest kernel/initrd (to get past their checks).
fn expect_error(
    test: &str,
    config: ConfigSource,
    needs_guest: bool,
    needle: impl Fn(&TestEnv) -> String,
) {
    let limit = FAST_FAIL;
    let name = format!("e2e_bad_input-{test}");
    let builder = TestEnv::builder(&name, Runtime::Bazaar).config(config);
    let Some(env) = builder.needs_guest(needs_guest).start() else { return };
    let needle = needle(&env);
    let out = env.run("bad").args(["echo", "must not run"]).timeout(limit * 3).run();
    let context = format!("{}\nend of containerd's log:\n{}", out.describe(), env.log_tail());
    assert!(!out.success(), "ctr run succeeded despite bad input: {context}");
    assert!(!out.timed_out, "hung instead of failing: {context}");
    assert!(out.elapsed < limit, "took {:?} to fail (limit {limit:?}): {context}", out.elapsed);
    assert!(!out.stdout.contains("must not run"), "the process ran: {context}");
    assert!(out.stderr.contains(&needle), "the error must name {needle:?}: {context}");
    env.finish();
}

/// The test configuration as TOML, changed by `edit`.
fn edited(edit: impl Fn(String) -> String) -> ConfigSource {
    ConfigSource::Text(edit(BazaarConfig::for_tests().to_toml()))
}

/// Adds `line` to the `[hypervisor]` table.
fn with_hypervisor_line(line: &str) -> ConfigSource {
    edited(|t| t.replacen("[hypervisor]\n", &format!("[hypervisor]\n{line}\n"), 1))
}

#[test]
fn missing_kernel() {
    let cfg = BazaarConfig { kernel: MISSING_KERNEL.into(), ..BazaarConfig::for_tests() };
    expect_error("missing_kernel", ConfigSource::Config(cfg), false, |_| MISSING_KERNEL.into());
}

#[test]
fn missing_initrd() {
    let cfg = BazaarConfig { initrd: MISSING_INITRD.into(), ..BazaarConfig::for_tests() };
    expect_error("missing_initrd", ConfigSource::Config(cfg), true, |_| MISSING_INITRD.into());
}

/// `BAZAAR_CONFIG` set to a file that does not exist is an error (not a silent fallback).
#[test]
fn config_file_missing() {
    expect_error("config_file_missing", ConfigSource::Missing, false, config_path);
}

/// An unreadable configuration (a directory: root can read any plain file).
#[test]
fn config_unreadable() {
    expect_error("config_unreadable", ConfigSource::Directory, false, config_path);
}

#[test]
fn config_invalid_toml() {
    let text = "[hypervisor\nname = \"qemu\"\n".to_string();
    expect_error("config_invalid_toml", ConfigSource::Text(text), false, config_path);
}

#[test]
fn unknown_hypervisor() {
    let cfg = BazaarConfig { hypervisor: "warpdrive".into(), ..BazaarConfig::for_tests() };
    expect_error("unknown_hypervisor", ConfigSource::Config(cfg), false, |_| "warpdrive".into());
}

#[test]
fn unknown_key() {
    let cfg = with_hypervisor_line("kernal = \"/typo\"");
    expect_error("unknown_key", cfg, false, |_| "kernal".into());
}

#[test]
fn wrong_value_type() {
    let cfg = edited(|t| t.replace("vcpus = 1\n", "vcpus = \"two\"\n"));
    expect_error("wrong_value_type", cfg, false, |_| "vcpus".into());
}

#[test]
fn unknown_acceleration() {
    let cfg = BazaarConfig { acceleration: "warp9".into(), ..BazaarConfig::for_tests() };
    expect_error("unknown_acceleration", ConfigSource::Config(cfg), false, |_| "warp9".into());
}

/// The VMM binary is missing: the helpers started before it (virtiofsd, vhost-device-vsock)
/// must be stopped again; the leak check at the end sees to that.
#[test]
fn missing_qemu_binary() {
    let cfg = with_hypervisor_line(&format!("qemu_path = \"{MISSING_QEMU}\""));
    expect_error("missing_qemu_binary", cfg, true, |_| MISSING_QEMU.into());
}

fn config_path(env: &TestEnv) -> String {
    env.config_path().expect("Bazaar tests have a config path").to_string_lossy().into_owned()
}

//! Start, stop and failure paths of the backend with stand-in programs (no kernel needed).

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::Acceleration;

/// A run dir, guest files and fake programs in a temp dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for name in ["bzImage", "initrd"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A stand-in for vhost-device-vsock that creates both sockets as plain files and runs
    /// until signalled.
    fn fake_vhost_vsock(&self) -> PathBuf {
        self.script(
            "fake-vhost-vsock",
            "touch \"$4\" \"$6\"; echo \"$$\" > \"$4.owner\"; exec sleep 30",
        )
    }

    fn qemu(&self, paths: QemuPaths) -> Qemu {
        let config = VmConfig {
            sandbox_id: "t".into(),
            vcpus: 1,
            memory_mib: 64,
            kernel: self.path("bzImage"),
            initrd: self.path("initrd"),
            extra_kernel_params: String::new(),
            run_dir: self.path("run"),
            acceleration: Acceleration::Tcg,
            tcg_cache_mib: 0,
        };
        Qemu::new(config, paths, Logger::root(slog::Discard, slog::o!())).unwrap()
    }
}

fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test]
async fn missing_programs_and_files_are_named() {
    let fx = Fixture::new();
    let paths = QemuPaths {
        qemu: "/bin/true".into(),
        virtiofsd: fx.path("no-virtiofsd"),
        vhost_vsock: "/bin/true".into(),
    };
    let mut qemu = fx.qemu(paths);
    qemu.add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: fx.path("shared") })
        .unwrap();
    let err = qemu.start().await.unwrap_err();
    assert!(
        format!("{err:#}").contains("virtiofsd binary")
            && format!("{err:#}").contains("no-virtiofsd"),
        "{err:#}"
    );

    let mut qemu = fx.qemu(QemuPaths { qemu: fx.path("no-qemu"), ..QemuPaths::default() });
    let err = qemu.start().await.unwrap_err();
    assert!(format!("{err:#}").contains("no-qemu"), "{err:#}");
}

#[tokio::test]
async fn devices_only_before_start_and_one_share() {
    let fx = Fixture::new();
    let mut qemu = fx.qemu(QemuPaths::default());
    let share = || Device::SharedFs { tag: "bazaarfs".into(), host_dir: "/tmp".into() };
    qemu.add_device(share()).unwrap();
    assert!(qemu.add_device(share()).is_err());
    qemu.stop().await.unwrap();
    assert!(qemu.add_device(share()).is_err());
    assert_eq!(qemu.wait().await, VmExit::Stopped);
}

#[tokio::test]
async fn a_helper_dying_at_start_is_reported_with_its_output() {
    let fx = Fixture::new();
    let vsock = fx.script("bad-vsock", "echo 'error: invalid value for --guest-cid' >&2; exit 2");
    let mut qemu = fx.qemu(QemuPaths {
        qemu: "/bin/true".into(),
        virtiofsd: "/bin/true".into(),
        vhost_vsock: vsock,
    });
    let err = format!("{:#}", qemu.start().await.unwrap_err());
    assert!(err.contains("vhost-device-vsock exited (exit code 2)"), "{err}");
    assert!(err.contains("invalid value for --guest-cid"), "{err}");
    assert!(qemu.processes().is_empty());
    assert_eq!(qemu.wait().await, VmExit::Stopped);
    qemu.stop().await.unwrap();
}

#[tokio::test]
async fn qemu_failing_at_start_ends_the_helpers_and_removes_sockets() {
    let fx = Fixture::new();
    let vsock = fx.fake_vhost_vsock();
    let qemu_bin =
        fx.script("bad-qemu", "echo 'qemu-system-x86_64: -device foo: not found' >&2; exit 1");
    let mut qemu =
        fx.qemu(QemuPaths { qemu: qemu_bin, virtiofsd: "/bin/true".into(), vhost_vsock: vsock });
    let err = format!("{:#}", qemu.start().await.unwrap_err());
    assert!(err.contains("QEMU exited (exit code 1) while starting"), "{err}");
    assert!(err.contains("-device foo: not found"), "{err}");

    let owner = fx.path("run").join(format!("{VHOST_VSOCK_SOCKET}.owner"));
    let pid: u32 = std::fs::read_to_string(owner).unwrap().trim().parse().unwrap();
    assert!(pid_gone(pid), "fake vhost-device-vsock (pid {pid}) still runs");
    for name in [VHOST_VSOCK_SOCKET, VSOCK_SOCKET, QMP_SOCKET] {
        assert!(!fx.path("run").join(name).exists(), "{name} left behind");
    }
}

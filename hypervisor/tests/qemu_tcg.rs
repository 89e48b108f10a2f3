//! Boots real VMs with the QEMU backend (TCG on hosts without usable KVM). Needs the guest kernel
//! (make guest-image) and the helper binaries (scripts/install-deps.sh); skipped loudly without.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bazaar_hypervisor::hybrid_vsock;
use bazaar_hypervisor::{Device, Hypervisor, VmExit};
use common::{build_vsock_echo, is_gone, pss_by_mapping, pss_kib, test_vm, test_vm_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOOT_LIMIT: Duration = Duration::from_secs(120);
const SOCKETS: [&str; 5] =
    ["vhost-vsock.sock", "vsock.sock", "virtiofsd.sock", "virtiofsd.sock.pid", "qmp.sock"];

fn assert_sockets_removed(run_dir: &Path) {
    for name in SOCKETS {
        assert!(!run_dir.join(name).exists(), "{name} left in {}", run_dir.display());
    }
}

/// The guest mounts the share, reads a host file, writes one back, prints a marker and ends
/// itself; the backend notices, ends the helpers and removes its sockets. The guest kernel has no
/// ACPI, so `poweroff -f` only halts the CPU ("reboot: System halted") and QEMU runs on; a reboot
/// (a triple fault, `reboot=t`) ends QEMU through `-no-reboot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_shares_a_directory_and_exits_by_itself() {
    let script = "\
/bin/busybox mount -t virtiofs bazaarfs /mnt
/bin/busybox echo \"FROM-HOST: $(/bin/busybox cat /mnt/hello.txt)\"
/bin/busybox echo from-guest > /mnt/out.txt
/bin/busybox sync
/bin/busybox echo BAZAAR-INIT-MARKER
/bin/busybox reboot -f";
    let Some(mut vm) = test_vm(script, 256) else {
        return;
    };
    std::fs::write(vm.shared_dir.join("hello.txt"), "hello-guest").unwrap();
    vm.qemu
        .add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: vm.shared_dir.clone() })
        .unwrap();

    let started = Instant::now();
    vm.qemu.start().await.expect("start");
    let running = started.elapsed();
    vm.guard.records = vm.qemu.processes();
    let names: Vec<_> = vm.guard.records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["vhost-device-vsock", "virtiofsd", "qemu"]);
    assert!(vm.qemu.agent_socket().exists());

    let console = vm.wait_for_console("BAZAAR-INIT-MARKER", BOOT_LIMIT).await;
    let to_marker = started.elapsed();
    eprintln!("TIMING: start() returned after {running:?}; init marker after {to_marker:?} (from start())");
    assert!(
        console.iter().any(|l| l.contains("FROM-HOST: hello-guest")),
        "console:\n{}",
        console.join("\n")
    );

    let exit = tokio::time::timeout(Duration::from_secs(60), vm.qemu.wait())
        .await
        .expect("VM did not exit");
    assert!(matches!(exit, VmExit::Exited { .. }), "{exit:?}");
    assert_eq!(std::fs::read_to_string(vm.shared_dir.join("out.txt")).unwrap(), "from-guest\n");
    for record in &vm.guard.records {
        assert!(
            is_gone(record),
            "{} (pid {}) still runs after the VM exit",
            record.name,
            record.pid
        );
    }
    assert!(vm.qemu.processes().is_empty());
    assert_sockets_removed(&vm.run_dir);
    // Stopping an exited VM is fine and keeps the reported exit.
    vm.qemu.stop().await.unwrap();
    assert_eq!(vm.qemu.wait().await, exit);
}

/// `stop` on a running guest ends all three processes; a hybrid-vsock connect to a port with
/// no listener fails within its timeout, naming the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_running_vm_and_unanswered_vsock_ports_time_out() {
    let script = "/bin/busybox echo BAZAAR-SLEEPING\nexec /bin/busybox sleep 600";
    let Some(mut vm) = test_vm(script, 256) else {
        return;
    };
    vm.qemu
        .add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: vm.shared_dir.clone() })
        .unwrap();
    vm.qemu.start().await.expect("start");
    vm.guard.records = vm.qemu.processes();
    assert_eq!(vm.guard.records.len(), 3);
    vm.wait_for_console("BAZAAR-SLEEPING", BOOT_LIMIT).await;

    let limit = Duration::from_secs(2);
    let tried = Instant::now();
    let err = hybrid_vsock::connect(&vm.qemu.agent_socket(), 4242, limit).await.unwrap_err();
    let took = tried.elapsed();
    let message = err.to_string();
    eprintln!("VSOCK: unanswered port failed after {took:?}: {message}");
    assert!(took < limit + Duration::from_secs(4), "took {took:?}");
    assert!(message.contains("vsock.sock") && message.contains("4242"), "{message}");

    let mut exit = vm.qemu.exit_receiver();
    assert!(exit.borrow().is_none());
    let stopped = Instant::now();
    vm.qemu.stop().await.expect("stop");
    eprintln!("TIMING: stop() took {:?}", stopped.elapsed());
    for record in &vm.guard.records {
        assert!(is_gone(record), "{} (pid {}) still runs after stop", record.name, record.pid);
    }
    assert_sockets_removed(&vm.run_dir);
    assert_eq!(vm.qemu.wait().await, VmExit::Stopped);
    assert_eq!(*exit.wait_for(Option::is_some).await.unwrap(), Some(VmExit::Stopped));
    vm.qemu.stop().await.expect("second stop");
}

/// Dropping a running backend without `stop` still ends its processes (best effort, by PID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_vm_ends_its_processes() {
    let script = "/bin/busybox echo BAZAAR-SLEEPING\nexec /bin/busybox sleep 600";
    let Some(mut vm) = test_vm(script, 128) else {
        return;
    };
    vm.qemu.start().await.expect("start");
    vm.guard.records = vm.qemu.processes();
    assert_eq!(vm.guard.records.len(), 2, "no share, so no virtiofsd");
    vm.wait_for_console("BAZAAR-SLEEPING", BOOT_LIMIT).await;
    let common::TestVm { qemu, guard, run_dir, .. } = vm;
    drop(qemu);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !guard.records.iter().all(is_gone) {
        assert!(Instant::now() < deadline, "processes still run 10 s after the drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_sockets_removed(&run_dir);
}

/// A guest program listening on vsock is reached through the hybrid-vsock socket, and data
/// flows both ways; connecting before it listens is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_vsock_reaches_a_guest_listener() {
    let script = "/bin/busybox sleep 1\nexec /bin/vsock_echo 1024";
    let Some(mut vm) =
        test_vm_with(script, 256, |dir| Some(vec![("bin/vsock_echo", build_vsock_echo(dir)?)]))
    else {
        return;
    };
    vm.qemu.start().await.expect("start");
    vm.guard.records = vm.qemu.processes();
    // Connect at once: the guest is still booting, so the first attempts fail and are retried.
    let started = Instant::now();
    let mut stream =
        hybrid_vsock::connect(&vm.qemu.agent_socket(), 1024, BOOT_LIMIT).await.expect("connect");
    eprintln!("TIMING: hybrid vsock connected {:?} after start()", started.elapsed());
    let mut rtts = Vec::new();
    for i in 0..5 {
        let message = format!("ping {i}\n");
        let sent = Instant::now();
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut reply = vec![0u8; message.len()];
        stream.read_exact(&mut reply).await.unwrap();
        rtts.push(sent.elapsed());
        assert_eq!(reply, message.as_bytes());
    }
    eprintln!("TIMING: vsock echo round trips {rtts:?}");
    drop(stream);
    vm.qemu.stop().await.expect("stop");
    for record in &vm.guard.records {
        assert!(is_gone(record), "{} (pid {}) still runs after stop", record.name, record.pid);
    }
}

/// Memory of an idle 256 MiB sandbox VM. Run with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn measure_idle_footprint() {
    let script = "/bin/busybox echo BAZAAR-SLEEPING\nexec /bin/busybox sleep 600";
    let Some(mut vm) = test_vm(script, 256) else {
        return;
    };
    vm.qemu
        .add_device(Device::SharedFs { tag: "bazaarfs".into(), host_dir: vm.shared_dir.clone() })
        .unwrap();
    let started = Instant::now();
    vm.qemu.start().await.expect("start");
    vm.guard.records = vm.qemu.processes();
    vm.wait_for_console("BAZAAR-SLEEPING", BOOT_LIMIT).await;
    eprintln!("TIMING: init marker after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    for record in &vm.guard.records {
        eprintln!("PSS: {} {} KiB", record.name, pss_kib(record.pid).unwrap_or(0));
        let top: Vec<_> = pss_by_mapping(record.pid).into_iter().take(4).collect();
        eprintln!("PSS:   largest mappings {top:?}");
    }
    vm.qemu.stop().await.expect("stop");
}

//! Differential OCI fidelity checks: the same container (same image, same `ctr run` flags) under
//! runc and under Bazaar, in the same private containerd, comparing what its process sees.
//!
//! A probe script ([`PROBE`]) prints a report in sections (`=== name`): the capability, no-new-
//! privileges, seccomp and signal lines of `/proc/self/status`, `id`, umask, rlimits, the mount
//! table, the `/dev` listing, whether the rootfs and `/proc/sys` are writable, `/dev/shm` and
//! tmpfs sizes, the cgroup limits, the device cgroup, namespaced sysctls and network interfaces.
//! [`differences`] compares two reports section by section after [`reconcile`], which removes
//! exactly the deliberate exceptions listed in [`EXCEPTIONS`] (each with its reason, also in
//! `docs/oci-fidelity.md`). Anything else that differs is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::fixture::TestEnv;
use crate::process::{self, Output};

/// The probe: POSIX sh for busybox, one section per fact.
pub const PROBE: &str = r#"
sec() { echo "=== $1"; }
sec status; grep -E '^(Cap|NoNewPrivs|Seccomp|Sig(Blk|Ign|Cgt))' /proc/self/status
sec id; id
sec umask; umask
sec limits; cat /proc/self/limits
sec mountinfo; cat /proc/self/mountinfo
sec dev; find /dev -exec stat -c '%n %F %a %u:%g %t:%T' {} \; | sort
sec root-writable; touch /.oci-probe 2>/dev/null && echo yes || echo no
sec proc-sys-writable; echo -n "$(hostname)" 2>/dev/null > /proc/sys/kernel/hostname && echo yes || echo no
sec pid; echo $$
sec tmpfs-sizes; df -k /dev/shm /dev /run | tail -n +2 | awk '{print $6, $2}'
sec cgroup-limits
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  echo v1 $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
    /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/pids/pids.max)
elif [ -f /sys/fs/cgroup/memory.max ]; then
  echo v2 $(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu.weight /sys/fs/cgroup/pids.max)
else
  echo none
fi
sec device-cgroup; mknod /tmp/.kmsg c 1 11 2>/dev/null && echo mknod-ok || echo mknod-denied
head -c 1 /tmp/.kmsg >/dev/null 2>&1 && echo open-ok || echo open-denied
sec sysctl; cat /proc/sys/kernel/shmmax /proc/sys/kernel/msgmnb /proc/sys/net/ipv4/ip_unprivileged_port_start
sec net; sed -n 's/^ *\([^:]*\):.*/\1/p' /proc/net/dev | sort
"#;

/// A deliberate difference between runc and Bazaar, hidden by [`reconcile`].
#[derive(Debug, Clone, Copy)]
pub struct Exception {
    pub id: &'static str,
    pub section: &'static str,
    pub why: &'static str,
}

pub const EXCEPTIONS: &[Exception] = &[
    Exception {
        id: "runc-ignores-signal-32",
        section: "status",
        why: "runc's container process starts with signal 32 ignored (SigIgn bit 31, left by \
              runc's Go runtime); Bazaar's starts with no signal ignored, as exec(2) promises",
    },
    Exception {
        id: "vsock-guard",
        section: "status",
        why: "every Bazaar container process carries a seccomp filter refusing AF_VSOCK sockets \
              (vsock is not namespaced and the agent listens on it): without a seccomp profile \
              Bazaar shows Seccomp 2 with 1 filter where runc shows 0",
    },
    Exception {
        id: "inherited-rlimits",
        section: "limits",
        why: "RLIMIT_NPROC and RLIMIT_SIGPENDING not set by the spec are inherited from the \
              runtime: the host's (sized by the host's memory) under runc, the guest's (sized by \
              the VM's memory) under Bazaar",
    },
    Exception {
        id: "rootfs-filesystem",
        section: "mountinfo",
        why: "the root is overlayfs on the host under runc and virtio-fs in the guest under \
              Bazaar: only the mount flags of / are compared",
    },
    Exception {
        id: "bind-source",
        section: "mountinfo",
        why: "a bind mount's source is a host path under runc and the virtio-fs share in the \
              guest: only the mount point and its flags are compared",
    },
    Exception {
        id: "no-acpi-in-guest",
        section: "mountinfo",
        why: "the masked path /proc/acpi does not exist in the guest kernel (no ACPI), so there \
              is nothing to mask",
    },
    Exception {
        id: "sysfs-superblock",
        section: "mountinfo",
        why: "the container shares the VM's network namespace, so its sysfs mount is the guest's \
              sysfs superblock (rw) mounted read-only; runc mounts a new superblock (ro) for a \
              new network namespace. The mount itself is read-only in both",
    },
    Exception {
        id: "cgroup-v1-v2",
        section: "mountinfo",
        why: "the host has cgroup v1, the guest cgroup v2: the cgroup mounts differ in shape and \
              the limits are compared semantically (section cgroup-limits)",
    },
    Exception {
        id: "runc-rootfs-propagation-shared",
        section: "mountinfo",
        why: "runc 1.1 (Debian 12's) does not apply a shared or unbindable rootfsPropagation to \
              the container's mounts (runc#1755, fixed in runc 1.3 and 1.2.x): its container \
              shows them private. Bazaar applies it after the root switch, as the spec says and \
              as fixed runc does; the propagation fields are not compared for such a spec",
    },
    Exception {
        id: "vm-network",
        section: "net",
        why: "the VM is the pod's network namespace (the agent never creates one): the guest \
              kernel's sit0 tunnel device shows next to lo",
    },
];

/// A parsed report: section name to its lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub sections: BTreeMap<String, Vec<String>>,
}

impl Report {
    pub fn parse(stdout: &str) -> Report {
        let mut sections = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in stdout.lines() {
            if let Some(name) = line.strip_prefix("=== ") {
                current = Some(name.trim().to_string());
                sections.entry(name.trim().to_string()).or_insert_with(Vec::new);
            } else if let Some(name) = &current {
                sections.get_mut(name).expect("section exists").push(line.to_string());
            }
        }
        Report { sections }
    }

    pub fn section(&self, name: &str) -> &[String] {
        self.sections.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The value of `Key:\tvalue` in a section.
    pub fn field(&self, section: &str, key: &str) -> Option<String> {
        self.section(section).iter().find_map(|line| {
            line.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string())
        })
    }
}

/// What a case tells the comparison.
#[derive(Debug, Clone, Default)]
pub struct CaseInfo {
    /// Mount points that are bind mounts from the host.
    pub binds: Vec<String>,
    /// The spec asks for a shared rootfs propagation (runc-rootfs-propagation-shared).
    pub shared_propagation: bool,
}

/// One mountinfo line in comparable form.
fn mount_line(line: &str, case: &CaseInfo) -> Option<String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    let (root, point, options) = (*fields.get(3)?, *fields.get(4)?, *fields.get(5)?);
    // Peer group numbers differ from run to run: keep the kind (shared, master, ...).
    let optional: Vec<String> = if case.shared_propagation {
        Vec::new()
    } else {
        fields[6..sep].iter().map(|f| f.split(':').next().unwrap_or_default().to_string()).collect()
    };
    let fstype = *fields.get(sep + 1)?;
    let super_options = fields.get(sep + 3).copied().unwrap_or_default();
    if point.starts_with("/sys/fs/cgroup") || point == "/proc/acpi" {
        return None; // cgroup-v1-v2, no-acpi-in-guest
    }
    if point == "/" || case.binds.iter().any(|b| b == point) {
        // rootfs-filesystem, bind-source
        return Some(format!("{point} {options} {}", optional.join(",")));
    }
    let super_options = if fstype == "sysfs" { "-" } else { super_options }; // sysfs-superblock
    Some(format!("{point} root={root} {options} {} {fstype} {super_options}", optional.join(",")))
}

/// The cgroup limits as one canonical line: memory bytes, cpu quota/period, cpu weight (v1
/// shares converted as runc converts them), pids.
fn cgroup_limits(lines: &[String]) -> Vec<String> {
    let Some(line) = lines.first() else { return Vec::new() };
    let words: Vec<&str> = line.split_whitespace().collect();
    let canonical = match words.as_slice() {
        ["v1", memory, quota, period, shares, pids] => {
            // 9223372036854771712 (page-rounded i64::MAX) is v1's "no limit".
            let memory = if memory.len() >= 19 { "max" } else { memory };
            let quota = if *quota == "-1" { "max" } else { quota };
            let weight =
                shares.parse::<u64>().map(|s| 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142);
            format!(
                "memory={memory} cpu={quota}/{period} weight={} pids={pids}",
                weight.unwrap_or(0)
            )
        }
        ["v2", memory, quota, period, weight, pids] => {
            format!("memory={memory} cpu={quota}/{period} weight={weight} pids={pids}")
        }
        _ => line.clone(),
    };
    vec![canonical]
}

/// Applies the deliberate exceptions to both reports of one case.
pub fn reconcile(runc: &Report, bazaar: &Report, case: &CaseInfo) -> (Report, Report) {
    let mut runc = runc.clone();
    let mut bazaar = bazaar.clone();
    for report in [&mut runc, &mut bazaar] {
        if let Some(status) = report.sections.get_mut("status") {
            for line in status.iter_mut() {
                if let Some(mask) = line.strip_prefix("SigIgn:") {
                    // runc-ignores-signal-32
                    if let Ok(mask) = u64::from_str_radix(mask.trim(), 16) {
                        *line = format!("SigIgn:\t{:016x}", mask & !(1u64 << 31));
                    }
                }
            }
        }
        if let Some(limits) = report.sections.get_mut("limits") {
            // inherited-rlimits
            limits.retain(|l| {
                !l.starts_with("Max processes") && !l.starts_with("Max pending signals")
            });
        }
        if let Some(mounts) = report.sections.get_mut("mountinfo") {
            let mut lines: Vec<String> =
                mounts.iter().filter_map(|l| mount_line(l, case)).collect();
            lines.sort();
            *mounts = lines;
        }
        if let Some(limits) = report.sections.get_mut("cgroup-limits") {
            *limits = cgroup_limits(limits);
        }
    }
    // vsock-guard: Bazaar's own filter when the spec has none.
    let no_profile = runc.field("status", "Seccomp").as_deref() == Some("0");
    if no_profile && bazaar.field("status", "Seccomp").as_deref() == Some("2") {
        if let Some(status) = bazaar.sections.get_mut("status") {
            for line in status.iter_mut() {
                if line.starts_with("Seccomp:") {
                    *line = "Seccomp:\t0".to_string();
                } else if line.starts_with("Seccomp_filters:") && line.trim_end().ends_with("\t1") {
                    *line = "Seccomp_filters:\t0".to_string();
                }
            }
        }
    }
    if let Some(net) = bazaar.sections.get_mut("net") {
        net.retain(|iface| iface != "sit0"); // vm-network
    }
    (runc, bazaar)
}

/// The sections that differ after [`reconcile`], described for a failure message.
pub fn differences(runc: &Report, bazaar: &Report, case: &CaseInfo) -> Vec<String> {
    let (runc, bazaar) = reconcile(runc, bazaar, case);
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        runc.sections.keys().chain(bazaar.sections.keys()).collect();
    for name in names {
        let (r, b) = (runc.section(name), bazaar.section(name));
        if r == b {
            continue;
        }
        let mut text = format!("[{name}]");
        for line in r.iter().filter(|l| !b.contains(l)) {
            text.push_str(&format!("\n  runc only:   {line}"));
        }
        for line in b.iter().filter(|l| !r.contains(l)) {
            text.push_str(&format!("\n  bazaar only: {line}"));
        }
        if r.iter().all(|l| b.contains(l)) && b.iter().all(|l| r.contains(l)) {
            text.push_str(&format!("\n  same lines, other order:\n  runc {r:?}\n  bazaar {b:?}"));
        }
        out.push(text);
    }
    out
}

/// Both outputs of one case.
pub struct Pair {
    pub runc: Output,
    pub bazaar: Output,
}

/// Runs `args` with `flags` and `image` under runc, then under Bazaar, in `env` (a Bazaar test
/// environment: runc is its reference runtime).
pub fn run_pair(env: &TestEnv, name: &str, image: &str, flags: &[String], args: &[&str]) -> Pair {
    let build = |run: crate::ctr::CtrRun<'_>| {
        with_flags(run.image(image).args(args.iter().copied()), flags).run()
    };
    let runc = build(env.run_runc(&format!("{name}-runc")));
    let bazaar = build(env.run(&format!("{name}-bz")));
    Pair { runc, bazaar }
}

/// Adds `flags` to a `ctr run`.
pub fn with_flags<'a>(mut run: crate::ctr::CtrRun<'a>, flags: &[String]) -> crate::ctr::CtrRun<'a> {
    for flag in flags {
        run = run.flag(flag);
    }
    run
}

/// Source of a tiny static program that tries to reach vsock ports: `vsock-probe PORT CID...`
/// prints, per CID, `cid N: socket: ERR`, `cid N: connect: ERR` or `cid N: connected`.
const VSOCK_PROBE_SOURCE: &str = r#"
use std::os::raw::{c_int, c_uchar, c_uint, c_ushort};
#[repr(C)]
struct SockaddrVm { family: c_ushort, reserved: c_ushort, port: c_uint, cid: c_uint, flags: c_uchar, zero: [c_uchar; 3] }
extern "C" {
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const SockaddrVm, len: c_uint) -> c_int;
    fn close(fd: c_int) -> c_int;
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u32 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(1024);
    for cid in args.iter().skip(2).filter_map(|c| c.parse::<u32>().ok()) {
        // AF_VSOCK = 40, SOCK_STREAM | SOCK_CLOEXEC
        let fd = unsafe { socket(40, 1 | 0o2000000, 0) };
        if fd < 0 {
            println!("cid {cid}: socket: {}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            continue;
        }
        let addr = SockaddrVm { family: 40, reserved: 0, port, cid, flags: 0, zero: [0; 3] };
        let rc = unsafe { connect(fd, &addr, std::mem::size_of::<SockaddrVm>() as c_uint) };
        if rc == 0 {
            println!("cid {cid}: connected");
        } else {
            println!("cid {cid}: connect: {}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        unsafe { close(fd) };
    }
}
"#;

/// Builds the vsock probe as a static binary in `dir` with `rustc` (the toolchain that builds
/// the tests), for containers whose image has no libc.
pub fn build_vsock_probe(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("vsock-probe.rs");
    let binary = dir.join("vsock-probe");
    std::fs::write(&source, VSOCK_PROBE_SOURCE)?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(&binary)
        .arg(&source);
    let out = process::run(cmd, None, Duration::from_secs(180))?;
    if !out.success() {
        bail!("building the vsock probe failed: {}", out.describe());
    }
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_split_into_sections() {
        let report = Report::parse("noise\n=== a\n1\n2\n=== b\n=== c\nx\n");
        assert_eq!(report.section("a"), ["1", "2"]);
        assert!(report.section("b").is_empty());
        assert_eq!(report.section("c"), ["x"]);
        assert!(report.section("zz").is_empty());
    }

    #[test]
    fn exceptions_are_removed_and_nothing_else() {
        let runc = Report::parse(
            "=== status\nSigIgn:\t0000000080000000\nSeccomp:\t0\nSeccomp_filters:\t0\n\
             === mountinfo\n69 46 0:39 / / rw,relatime - overlay overlay rw,lowerdir=/x\n\
             75 69 0:46 / /sys ro,nosuid - sysfs sysfs ro\n\
             51 70 0:48 / /proc/acpi ro,relatime - tmpfs tmpfs ro\n\
             77 69 254:0 /tmp/src /mnt ro,relatime shared:5 - ext4 /dev/vda rw\n\
             === cgroup-limits\nv1 268435456 50000 100000 512 max\n=== net\nlo\n",
        );
        let bazaar = Report::parse(
            "=== status\nSigIgn:\t0000000000000000\nSeccomp:\t2\nSeccomp_filters:\t1\n\
             === mountinfo\n43 34 0:27 /c/mounts/1 /mnt ro,relatime shared:9 - virtiofs bazaarfs rw\n\
             34 22 0:21 / / rw,relatime - virtiofs none rw\n\
             40 34 0:13 / /sys ro,nosuid - sysfs sysfs rw\n\
             === cgroup-limits\nv2 268435456 50000 100000 20 max\n=== net\nlo\nsit0\n",
        );
        let case = CaseInfo { binds: vec!["/mnt".to_string()], ..CaseInfo::default() };
        assert_eq!(differences(&runc, &bazaar, &case), Vec::<String>::new());

        // A real difference still shows.
        let ro_root =
            Report::parse("=== mountinfo\n34 22 0:21 / / ro,relatime - virtiofs none rw\n");
        let rw_root =
            Report::parse("=== mountinfo\n69 46 0:39 / / rw,relatime - overlay overlay rw\n");
        assert_eq!(differences(&rw_root, &ro_root, &CaseInfo::default()).len(), 1);
        // Seccomp 2 under runc too means a profile: then both must agree.
        let with_profile = Report::parse("=== status\nSeccomp:\t2\nSeccomp_filters:\t1\n");
        let without = Report::parse("=== status\nSeccomp:\t0\nSeccomp_filters:\t0\n");
        assert_eq!(differences(&with_profile, &without, &CaseInfo::default()).len(), 1);
    }

    #[test]
    fn cgroup_limits_compare_semantically() {
        let v1 = cgroup_limits(&["v1 9223372036854771712 -1 100000 1024 max".to_string()]);
        let v2 = cgroup_limits(&["v2 max max 100000 39 max".to_string()]);
        assert_eq!(v1, v2);
    }
}

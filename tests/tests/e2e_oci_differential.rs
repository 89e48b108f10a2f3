//! OCI fidelity, differentially: each case runs the probe of [`bazaar_tests::oci`] with the same
//! image and `ctr run` flags under runc and under Bazaar (same containerd) and compares the two
//! reports section by section. Only the deliberate exceptions of [`oci::EXCEPTIONS`] are
//! allowed to differ. A few literal expectations on runc's report keep the cases honest (the
//! flag did what the case says).
//!
//! ctr 1.6 has no flags for rlimits, umask, sysctls, ambient capabilities or oomScoreAdj: the
//! agent's component tests compare those with runc on the same spec (`agent/tests/oci_diff.rs`).

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::image::{IMAGE, TESTER_IMAGE};
use bazaar_tests::oci::{self, CaseInfo, Report};

struct Case {
    name: &'static str,
    image: &'static str,
    flags: Vec<String>,
    binds: Vec<String>,
    /// (section, line) that runc's report must contain.
    runc_expect: Vec<(&'static str, &'static str)>,
    /// (section, text) that some line of Bazaar's raw report must contain.
    bazaar_expect: Vec<(&'static str, &'static str)>,
    shared_propagation: bool,
}

impl Case {
    fn new(name: &'static str, image: &'static str, flags: &[&str]) -> Case {
        Case {
            name,
            image,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            binds: Vec::new(),
            runc_expect: Vec::new(),
            bazaar_expect: Vec::new(),
            shared_propagation: false,
        }
    }

    /// A shared rootfs propagation, which runc 1.1 does not apply (see the exception).
    fn shared_propagation(mut self, bazaar_root_line: &'static str) -> Case {
        self.shared_propagation = true;
        self.bazaar_expect.push(("mountinfo", bazaar_root_line));
        self
    }

    fn expect(mut self, section: &'static str, line: &'static str) -> Case {
        self.runc_expect.push((section, line));
        self
    }

    fn bind(mut self, destination: &str) -> Case {
        self.binds.push(destination.to_string());
        self
    }
}

/// Runs every case and fails with all the differences found.
fn check(test: &str, cases: impl FnOnce(&TestEnv) -> Vec<Case>) {
    let Some(env) = TestEnv::start(&format!("e2e_oci_differential-{test}"), Runtime::Bazaar) else {
        return;
    };
    let cases = cases(&env);
    let mut failures = Vec::new();
    for case in &cases {
        let pair =
            oci::run_pair(&env, case.name, case.image, &case.flags, &["sh", "-c", oci::PROBE]);
        env.assert_success(&pair.runc);
        env.assert_success(&pair.bazaar);
        let (runc, bazaar) = (Report::parse(&pair.runc.stdout), Report::parse(&pair.bazaar.stdout));
        for (section, line) in &case.runc_expect {
            if !runc.section(section).iter().any(|l| l == line) {
                failures.push(format!(
                    "{}: runc's [{section}] lacks {line:?}: {:?}",
                    case.name,
                    runc.section(section)
                ));
            }
        }
        for (section, text) in &case.bazaar_expect {
            if !bazaar.section(section).iter().any(|l| l.contains(text)) {
                failures
                    .push(format!("{}: Bazaar's [{section}] has no line with {text:?}", case.name));
            }
        }
        let info =
            CaseInfo { binds: case.binds.clone(), shared_propagation: case.shared_propagation };
        for difference in oci::differences(&runc, &bazaar, &info) {
            failures.push(format!("{} ({}): {difference}", case.name, case.flags.join(" ")));
        }
    }
    assert!(failures.is_empty(), "runc and Bazaar differ:\n{}", failures.join("\n"));
    env.finish();
}

/// Capabilities (all five sets), no_new_privs, users and groups from the image.
#[test]
fn users_and_capabilities() {
    check("users", |_| {
        vec![
            Case::new("default", IMAGE, &[])
                .expect("status", "CapEff:\t00000000a80425fb")
                .expect("status", "NoNewPrivs:\t1")
                .expect("id", "uid=0(root) gid=0(root) groups=0(root),10(wheel)"),
            Case::new("tester", TESTER_IMAGE, &[])
                .expect("status", "CapEff:\t0000000000000000")
                .expect("status", "CapBnd:\t00000000a80425fb"),
            Case::new(
                "cap-add-drop",
                IMAGE,
                &["--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_CHOWN"],
            )
            .expect("status", "CapEff:\t00000000a82425fa"),
            Case::new("tester-cap-add", TESTER_IMAGE, &["--cap-add", "CAP_NET_ADMIN"])
                .expect("status", "CapBnd:\t00000000a80435fb")
                .expect("status", "CapEff:\t0000000000000000"),
            Case::new("allow-new-privs", TESTER_IMAGE, &["--allow-new-privs"])
                .expect("status", "NoNewPrivs:\t0"),
            Case::new("privileged", IMAGE, &["--privileged"])
                .expect("status", "CapEff:\t000001fffeffffff")
                .expect("proc-sys-writable", "yes")
                .expect("device-cgroup", "open-ok"),
            // runc enters the working directory as root first: /root (0700) works for uid 1000.
            Case::new("tester-cwd-root", TESTER_IMAGE, &["--cwd", "/root"]),
        ]
    });
}

/// `ctr run --seccomp`: containerd's default profile, compiled in the guest.
#[test]
fn seccomp_status() {
    check("seccomp", |_| {
        vec![
            Case::new("seccomp", IMAGE, &["--seccomp"])
                .expect("status", "Seccomp:\t2")
                .expect("status", "Seccomp_filters:\t1"),
            Case::new("seccomp-tester", TESTER_IMAGE, &["--seccomp"])
                .expect("status", "Seccomp:\t2"),
            Case::new("seccomp-privileged", IMAGE, &["--seccomp", "--privileged"]),
        ]
    });
}

/// Read-only rootfs, bind mounts with their options, propagation, the no-pivot root switch.
#[test]
fn filesystem_and_mounts() {
    check("fs", |env| {
        let dir = env.containerd().dir().join("bind-source");
        std::fs::create_dir_all(&dir).expect("create the bind source");
        std::fs::write(dir.join("file"), "bind source\n").expect("write into the bind source");
        let ro = format!("type=bind,src={},dst=/mnt/ro,options=rbind:ro", dir.display());
        let rw =
            format!("type=bind,src={},dst=/mnt/rw,options=rbind:rw:nosuid:nodev", dir.display());
        vec![
            Case::new("read-only", IMAGE, &["--read-only"]).expect("root-writable", "no"),
            Case::new("binds", IMAGE, &["--mount", &ro, "--mount", &rw])
                .bind("/mnt/ro")
                .bind("/mnt/rw"),
            Case::new("rslave", IMAGE, &["--rootfs-propagation", "rslave"]),
            Case::new("rshared", IMAGE, &["--rootfs-propagation", "rshared"])
                .shared_propagation(" / / rw,relatime shared:"),
            Case::new("no-pivot", IMAGE, &["--no-pivot"]),
        ]
    });
}

/// cgroup limits from ctr's flags, read inside the container through a cgroup mount (v1 files
/// under runc on this host, v2 in the guest), compared semantically.
#[test]
fn cgroup_limits() {
    let cgroup = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec";
    check("cgroups", |_| {
        vec![
            Case::new("no-limits", IMAGE, &["--mount", cgroup]),
            Case::new(
                "memory-cpus-shares",
                IMAGE,
                &[
                    "--mount",
                    cgroup,
                    "--memory-limit",
                    "268435456",
                    "--cpus",
                    "0.5",
                    "--cpu-shares",
                    "512",
                ],
            )
            .expect("cgroup-limits", "v1 268435456 50000 100000 512 max"),
            Case::new(
                "quota-period",
                IMAGE,
                &["--mount", cgroup, "--cpu-quota", "20000", "--cpu-period", "50000"],
            )
            .expect("cgroup-limits", "v1 9223372036854771712 20000 50000 1024 max"),
        ]
    });
}

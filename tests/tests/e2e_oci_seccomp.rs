//! Seccomp, differentially: what a process can and cannot do under containerd's default profile
//! (`ctr run --seccomp`) and under custom profiles (`--seccomp-profile`), runc against Bazaar
//! (which compiles the profile into BPF in the guest). Each case's output must be equal, and
//! runc's must be what the case says (so that the case tests what it claims).

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::image::{IMAGE, TESTER_IMAGE};
use bazaar_tests::oci;

/// A deny-list profile: every action kind, errno values, argument rules.
const CUSTOM_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
    {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
    {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]},
    {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
     "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]},
    {"names": ["sync"], "action": "SCMP_ACT_TRAP"},
    {"names": ["rmdir"], "action": "SCMP_ACT_KILL_PROCESS"},
    {"names": ["no_such_syscall_in_any_table"], "action": "SCMP_ACT_ERRNO"}
  ]
}"#;

/// Exercises the rules of [`CUSTOM_PROFILE`].
const CUSTOM_SCRIPT: &str = "trap '' USR1 USR2
mkdir /tmp/d 2>/dev/null; echo mkdir=$?
touch /tmp/f; chmod 755 /tmp/f; echo chmod755=$?
chmod 777 /tmp/f 2>/dev/null; echo chmod777=$?
kill -USR1 $$ 2>/dev/null; echo usr1=$?
kill -USR2 $$ 2>/dev/null; echo usr2=$?
sync; echo sync=$?
rmdir /tmp 2>/dev/null; echo rmdir=$?
grep -E '^(Seccomp|NoNewPrivs)' /proc/self/status";

const CUSTOM_EXPECT: &str =
    "mkdir=1\nchmod755=0\nchmod777=1\nusr1=1\nusr2=0\nsync=159\nrmdir=159\n";

/// What containerd's default profile forbids a container without CAP_SYS_ADMIN.
const DEFAULT_SCRIPT: &str = "busybox unshare -U true 2>/dev/null; echo unshare=$?
busybox unshare -m true 2>/dev/null; echo unshare-mount=$?
mkdir /tmp/d; echo mkdir=$?
grep -E '^(Seccomp|NoNewPrivs)' /proc/self/status";

struct Case {
    name: &'static str,
    image: &'static str,
    flags: Vec<String>,
    script: &'static str,
    /// What runc prints first (the status lines follow).
    expect_prefix: &'static str,
    expect_status: &'static str,
}

#[test]
fn seccomp_behaviour_matches_runc() {
    let Some(env) = TestEnv::start("e2e_oci_seccomp", Runtime::Bazaar) else { return };
    let profile = env.containerd().dir().join("custom-seccomp.json");
    std::fs::write(&profile, CUSTOM_PROFILE).expect("write the profile");
    let custom = |extra: &[&str]| {
        let mut flags = vec![
            "--seccomp".to_string(),
            "--seccomp-profile".to_string(),
            profile.display().to_string(),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        flags
    };
    let cases = vec![
        Case {
            name: "no-profile",
            image: IMAGE,
            flags: vec![],
            script: DEFAULT_SCRIPT,
            expect_prefix: "unshare=0\nunshare-mount=1\nmkdir=0\n",
            // Bazaar's vsock guard is the one difference (exception vsock-guard).
            expect_status: "NoNewPrivs:\t1\nSeccomp:\t0\nSeccomp_filters:\t0\n",
        },
        Case {
            name: "default-profile",
            image: IMAGE,
            flags: vec!["--seccomp".to_string()],
            script: DEFAULT_SCRIPT,
            expect_prefix: "unshare=1\nunshare-mount=1\nmkdir=0\n",
            expect_status: "NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        },
        Case {
            name: "default-profile-sys-admin",
            image: IMAGE,
            flags: vec![
                "--seccomp".to_string(),
                "--cap-add".to_string(),
                "CAP_SYS_ADMIN".to_string(),
            ],
            script: DEFAULT_SCRIPT,
            expect_prefix: "unshare=0\nunshare-mount=0\nmkdir=0\n",
            expect_status: "NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        },
        Case {
            name: "custom",
            image: IMAGE,
            flags: custom(&[]),
            script: CUSTOM_SCRIPT,
            expect_prefix: CUSTOM_EXPECT,
            expect_status: "NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        },
        Case {
            name: "custom-tester",
            image: TESTER_IMAGE,
            flags: custom(&[]),
            script: CUSTOM_SCRIPT,
            expect_prefix: CUSTOM_EXPECT,
            expect_status: "NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        },
        // Without no_new_privs the filter goes in before the user switch, while the process
        // still has CAP_SYS_ADMIN; the rest of the setup runs under it.
        Case {
            name: "custom-tester-new-privs",
            image: TESTER_IMAGE,
            flags: custom(&["--allow-new-privs"]),
            script: CUSTOM_SCRIPT,
            expect_prefix: CUSTOM_EXPECT,
            expect_status: "NoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let pair =
            oci::run_pair(&env, case.name, case.image, &case.flags, &["sh", "-c", case.script]);
        env.assert_success(&pair.runc);
        env.assert_success(&pair.bazaar);
        let expect = format!("{}{}", case.expect_prefix, case.expect_status);
        if pair.runc.stdout != expect {
            failures.push(format!(
                "{}: runc printed {:?}, the test expects {expect:?}",
                case.name, pair.runc.stdout
            ));
        }
        let bazaar = if case.name == "no-profile" {
            // exception vsock-guard
            pair.bazaar
                .stdout
                .replace("Seccomp:\t2\nSeccomp_filters:\t1\n", "Seccomp:\t0\nSeccomp_filters:\t0\n")
        } else {
            pair.bazaar.stdout.clone()
        };
        if bazaar != pair.runc.stdout {
            failures.push(format!(
                "{}: Bazaar printed {:?}, runc {:?}",
                case.name, pair.bazaar.stdout, pair.runc.stdout
            ));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
    env.finish();
}

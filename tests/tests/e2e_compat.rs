//! Environment, working directory and user as runc gives them.
//!
//! Each case runs under Bazaar and under runc in the same containerd with the same image and
//! flags; the outputs must be equal. The runc variant checks runc against the literal output
//! written here, which keeps the cases honest (and documents what runc gives).
//! ctr 1.6 has no `--user`: the user comes from the image config ([`image::TESTER_IMAGE`]).

use bazaar_tests::ctr::CtrRun;
use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::image::{IMAGE, TESTER_IMAGE};

struct Case {
    name: &'static str,
    image: &'static str,
    args: &'static [&'static str],
    env: &'static [&'static str],
    cwd: Option<&'static str>,
    /// What runc prints.
    expect: &'static str,
}

const ENV_CASES: &[Case] = &[
    Case {
        name: "env-default",
        image: IMAGE,
        args: &["env"],
        env: &[],
        cwd: None,
        expect: "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nHOME=/root\n",
    },
    Case {
        name: "env-flags",
        image: IMAGE,
        args: &["env"],
        env: &["FOO=bar", "EMPTY=", "SPACE=a b", "EQ=x=y"],
        cwd: None,
        expect: "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nFOO=bar\n\
                 EMPTY=\nSPACE=a b\nEQ=x=y\nHOME=/root\n",
    },
    Case {
        name: "env-tester",
        image: TESTER_IMAGE,
        args: &["env"],
        env: &["FOO=bar"],
        cwd: None,
        expect: "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nFOO=bar\n\
                 HOME=/home/tester\n",
    },
];

const CWD_CASES: &[Case] = &[
    Case { name: "cwd-default", image: IMAGE, args: &["pwd"], env: &[], cwd: None, expect: "/\n" },
    Case {
        name: "cwd-tmp",
        image: IMAGE,
        args: &["pwd"],
        env: &[],
        cwd: Some("/tmp"),
        expect: "/tmp\n",
    },
    Case {
        name: "cwd-etc-relative",
        image: IMAGE,
        args: &["cat", "bazaar-image-marker"],
        env: &[],
        cwd: Some("/etc"),
        expect: bazaar_tests::image::MARKER_CONTENTS,
    },
    // runc creates a working directory the image lacks.
    Case {
        name: "cwd-created",
        image: IMAGE,
        args: &["pwd"],
        env: &[],
        cwd: Some("/made/by/runtime"),
        expect: "/made/by/runtime\n",
    },
];

const USER_CASES: &[Case] = &[
    Case {
        name: "id-root",
        image: IMAGE,
        args: &["id"],
        env: &[],
        cwd: None,
        expect: "uid=0(root) gid=0(root) groups=0(root),10(wheel)\n",
    },
    Case {
        name: "id-tester",
        image: TESTER_IMAGE,
        args: &["id"],
        env: &[],
        cwd: None,
        expect: "uid=1000(tester) gid=1000(tester) groups=10(wheel),1000(tester)\n",
    },
    Case {
        name: "files-of-tester",
        image: TESTER_IMAGE,
        args: &["sh", "-c", "touch /tmp/f && stat -c %u:%g /tmp/f && echo $HOME && umask"],
        env: &[],
        cwd: None,
        expect: "1000:1000\n/home/tester\n0022\n",
    },
    Case {
        name: "tester-cannot-write-etc",
        image: TESTER_IMAGE,
        args: &["sh", "-c", "touch /etc/x 2>/dev/null && echo wrote || echo denied"],
        env: &[],
        cwd: None,
        expect: "denied\n",
    },
];

macro_rules! both_runtimes {
    ($($test:ident => $cases:expr),* $(,)?) => {$(
        mod $test {
            #[test]
            fn bazaar() {
                super::check(stringify!($test), bazaar_tests::fixture::Runtime::Bazaar, $cases)
            }
            #[test]
            fn runc() {
                super::check(stringify!($test), bazaar_tests::fixture::Runtime::Runc, $cases)
            }
        }
    )*};
}

both_runtimes!(
    environment => super::ENV_CASES,
    working_dir => super::CWD_CASES,
    user => super::USER_CASES,
);

fn check(test: &str, rt: Runtime, cases: &[Case]) {
    let name = format!("e2e_compat-{test}-{rt:?}").to_lowercase();
    let Some(env) = TestEnv::start(&name, rt) else { return };
    let mut failures = Vec::new();
    for case in cases {
        fn build<'a>(case: &Case, run: CtrRun<'a>) -> CtrRun<'a> {
            let mut run = run.image(case.image).args(case.args.iter().copied());
            for kv in case.env {
                run = run.env(kv);
            }
            if let Some(dir) = case.cwd {
                run = run.cwd(dir);
            }
            run
        }
        let reference = build(case, env.run_runc(case.name)).run();
        env.assert_success(&reference);
        if reference.stdout != case.expect {
            failures.push(format!(
                "{}: runc printed {:?}, the test expects {:?}",
                case.name, reference.stdout, case.expect
            ));
        }
        if rt == Runtime::Bazaar {
            let out = build(case, env.run(case.name)).run();
            env.assert_success(&out);
            if out.stdout != reference.stdout {
                failures.push(format!(
                    "{}: Bazaar printed {:?}, runc {:?}",
                    case.name, out.stdout, reference.stdout
                ));
            }
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
    env.finish();
}

/// A container whose spec names no hostname sees the host's under runc (its new UTS namespace
/// starts as a copy); under Bazaar the guest takes the host's name so the container sees the same.
#[test]
fn hostname_matches_runc() {
    let Some(env) = TestEnv::start("e2e_compat-hostname", Runtime::Bazaar) else { return };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("read host hostname");
    let reference = env.run_runc("hostname-runc").image(IMAGE).args(["hostname"]).run();
    env.assert_success(&reference);
    assert_eq!(reference.stdout, host, "runc");
    let out = env.run("hostname-bazaar").image(IMAGE).args(["hostname"]).run();
    env.assert_success(&out);
    assert_eq!(out.stdout, reference.stdout, "Bazaar differs from runc");
    env.finish();
}

//! The process side of OCI fidelity, differentially (runc against Bazaar, same flags): exit
//! statuses and signals seen inside the container (PID 1's immunity to its own unhandled
//! signals, default dispositions such as SIGPIPE, handlers), and the confinement of a process
//! exec'd into a running container (`ctr task exec`: capabilities, seccomp, user, rlimits).
//! Signals sent from outside (`ctr task kill`) are covered by `e2e_signals.rs`.

use bazaar_tests::fixture::{Runtime, TestEnv};
use bazaar_tests::image::{IMAGE, TESTER_IMAGE};
use bazaar_tests::oci;

/// (name, script, what runc prints, runc's exit status)
const SIGNAL_CASES: &[(&str, &str, &str, i32)] = &[
    ("exit-status", "echo bye; exit 42", "bye\n", 42),
    ("child-killed", "sleep 100 & kill -TERM $!; wait $!; echo status=$?", "status=143\n", 0),
    ("child-sigkill", "sleep 100 & kill -KILL $!; wait $!; echo status=$?", "status=137\n", 0),
    // PID 1 of a PID namespace gets no signal it has no handler for from inside, SIGKILL included.
    ("pid1-immune", "kill -TERM $$; kill -KILL $$; echo alive", "alive\n", 0),
    // ash handles SIGINT itself: it exits 130 as PID 1 too.
    ("pid1-sigint", "kill -INT $$; echo alive", "", 130),
    ("pid1-handler", "trap 'echo got-usr1' USR1; kill -USR1 $$; echo done", "got-usr1\ndone\n", 0),
    // SIGPIPE has its default action (the runtimes must not leak an ignored SIGPIPE).
    ("sigpipe", "(yes; echo yes=$? > /tmp/s) | head -n 1; cat /tmp/s", "y\nyes=141\n", 0),
    (
        "blocked-signals",
        "grep -E '^Sig(Blk|Cgt)' /proc/self/status",
        "SigBlk:\t0000000000000000\nSigCgt:\t0000000000000000\n",
        0,
    ),
    ("exit-by-signal-child", "sh -c 'kill -USR2 $$'; echo status=$?", "status=140\n", 0),
];

#[test]
fn signals_and_exit_status_match_runc() {
    let Some(env) = TestEnv::start("e2e_oci_process-signals", Runtime::Bazaar) else { return };
    let mut failures = Vec::new();
    for (name, script, expect, code) in SIGNAL_CASES {
        let pair = oci::run_pair(&env, name, IMAGE, &[], &["sh", "-c", script]);
        assert!(!pair.runc.timed_out && !pair.bazaar.timed_out, "{name} timed out");
        if (pair.runc.stdout.as_str(), pair.runc.code) != (*expect, Some(*code)) {
            failures.push(format!(
                "{name}: runc gave {:?} {:?}, the test expects {expect:?} {code}",
                pair.runc.stdout, pair.runc.code
            ));
        }
        if (&pair.bazaar.stdout, pair.bazaar.code) != (&pair.runc.stdout, pair.runc.code) {
            failures.push(format!(
                "{name}: Bazaar gave {:?} {:?}, runc {:?} {:?}\n{}",
                pair.bazaar.stdout,
                pair.bazaar.code,
                pair.runc.stdout,
                pair.runc.code,
                pair.bazaar.describe()
            ));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
    env.finish();
}

/// What an exec'd process reports about itself.
const EXEC_PROBE: &str = "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; id; umask; \
    grep 'open files' /proc/self/limits; busybox unshare -U true 2>/dev/null; echo unshare=$?";

#[test]
fn exec_processes_get_the_container_confinement() {
    let Some(env) = TestEnv::start("e2e_oci_process-exec", Runtime::Bazaar) else { return };
    let cases: &[(&str, &str, &[&str])] = &[
        ("exec-default", IMAGE, &[]),
        ("exec-seccomp", IMAGE, &["--seccomp"]),
        ("exec-tester-seccomp", TESTER_IMAGE, &["--seccomp"]),
        (
            "exec-caps",
            IMAGE,
            &["--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_KILL", "--seccomp"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, image, flags) in cases {
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let mut outputs = Vec::new();
        for runtime in ["runc", "bazaar"] {
            let run = if runtime == "runc" {
                env.run_runc(&format!("{name}-runc"))
            } else {
                env.run(&format!("{name}-bz"))
            };
            let run = oci::with_flags(run.image(image).args(["sleep", "600"]).detach(), &flags);
            let id = env.start_detached(run);
            let out = env.exec(&id, "probe").args(["sh", "-c", EXEC_PROBE]).run();
            env.assert_success(&out);
            env.remove_container(&id);
            outputs.push(out.stdout);
        }
        let (runc, mut bazaar) = (outputs[0].clone(), outputs[1].clone());
        if !flags.iter().any(|f| f == "--seccomp") {
            // exception vsock-guard
            bazaar = bazaar.replace(
                "Seccomp:\t2\nSeccomp_filters:\t1\n",
                "Seccomp:\t0\nSeccomp_filters:\t0\n",
            );
        }
        if bazaar != runc {
            failures
                .push(format!("{name}: Bazaar's exec printed {:?}, runc's {runc:?}", outputs[1]));
        }
    }
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
    env.finish();
}

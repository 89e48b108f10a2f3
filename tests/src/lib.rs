//! Harness for Bazaar's end-to-end tests.
//!
//! Every e2e test runs real `ctr` commands against a containerd of its own
//! ([`containerd::PrivateContainerd`]: own config, socket, root and state in a temp dir; a system
//! containerd is never touched), with a busybox image built locally ([`image`]), and checks that
//! nothing is left behind afterwards ([`leaks::LeakCheck`]). [`fixture::TestEnv`] ties these
//! together; tests use it and little else:
//!
//! ```no_run
//! use bazaar_tests::fixture::{Runtime, TestEnv};
//! let Some(env) = TestEnv::start("echo", Runtime::Bazaar) else { return };
//! let out = env.run("echo").args(["echo", "hello"]).run();
//! out.assert_success();
//! assert_eq!(out.stdout, "hello\n");
//! env.finish();
//! ```
//!
//! The e2e tests take a machine-wide file lock ([`lock::SuiteLock`]) so that only one of them runs
//! at a time, whatever `--test-threads` says: VMs under TCG are heavy on a 2-core machine, and the
//! leak check wants a quiet machine.

pub mod bazaar_config;
pub mod bench;
pub mod containerd;
pub mod cri;
pub mod ctr;
pub mod events;
pub mod fixture;
pub mod image;
pub mod kernel;
pub mod leaks;
pub mod lock;
pub mod nested_kvm;
pub mod oci;
pub mod paths;
pub mod process;
pub mod pty;
pub mod shim_ttrpc;
pub mod skip;
pub mod tempdir;
pub mod tiny_kernel;

/// One `#[test]` per runtime for each scenario `fn(Runtime)` named: `<scenario>::bazaar` and
/// `<scenario>::runc`, so every e2e scenario runs under Bazaar and its runc twin.
#[macro_export]
macro_rules! both_runtimes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn bazaar() {
                super::$scenario($crate::fixture::Runtime::Bazaar)
            }
            #[test]
            fn runc() {
                super::$scenario($crate::fixture::Runtime::Runc)
            }
        }
    )*};
}

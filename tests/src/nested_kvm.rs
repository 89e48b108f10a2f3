//! The nested-KVM lab: an L1 Linux VM under QEMU's TCG whose emulated CPU has AMD SVM, so that
//! the KVM inside it is real KVM on (emulated) hardware virtualization, where Linux guests run.
//!
//! Our build machines' own KVM is nested and emulation-based: it runs hand-made guests but a
//! Linux guest dies there with an emulation failure. TCG, though, emulates SVM with nested
//! paging, so Debian's generic kernel booted under it loads `kvm_amd`, and a test that needs
//! a KVM able to run Linux (the built-in VMM booting the guest image) can run inside it.
//!
//! [`L1Image`] collects what the test needs at the same absolute paths it has on the host
//! (the test binary itself, the programs it starts with their shared libraries, the guest
//! image), [`Lab::run`] boots it with a shell script as the L1 workload and returns the L1
//! console. Everything there runs under TCG: the lab verifies behaviour, never speed.
//!
//! The L1 kernel and its KVM modules come from Debian's `linux-image-amd64`, unpacked by
//! `scripts/install-deps.sh` (which `make test` runs) into [`lab_dir`].

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{self, Output};
use crate::tempdir::TempDir;

/// Where `scripts/install-deps.sh` puts the L1 kernel; `BAZAAR_NESTED_KVM` overrides it.
pub const DEFAULT_LAB_DIR: &str = "/usr/local/lib/bazaar/nested-kvm";
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const BUSYBOX: &str = "/bin/busybox";
/// The L1 init's heartbeat, followed by its uptime.
const HEARTBEAT: &str = "nested-kvm: L1 alive at ";
/// Printed by the L1 init after the workload, with the workload's exit status.
pub const EXIT_MARKER: &str = "nested-kvm: workload exit status";

/// The lab's directory: `$BAZAAR_NESTED_KVM` or [`DEFAULT_LAB_DIR`].
pub fn lab_dir() -> PathBuf {
    std::env::var_os("BAZAAR_NESTED_KVM").map(PathBuf::from).unwrap_or(DEFAULT_LAB_DIR.into())
}

/// The installed L1 kernel and the modules to load, in order.
pub struct Lab {
    kernel: PathBuf,
    modules: Vec<PathBuf>,
}

impl Lab {
    /// The lab, or why it cannot run here (a reason for a loud skip).
    pub fn find() -> std::result::Result<Lab, String> {
        let dir = lab_dir();
        let kernel = dir.join("vmlinuz");
        let order = dir.join("modules/order");
        let missing = |what: &Path| {
            format!(
                "the nested-KVM lab is not installed ({} is missing): run scripts/install-deps.sh",
                what.display()
            )
        };
        if !kernel.is_file() {
            return Err(missing(&kernel));
        }
        let order = std::fs::read_to_string(&order).map_err(|_| missing(&order))?;
        let modules: Vec<PathBuf> = order
            .split_whitespace()
            .map(|name| dir.join("modules").join(format!("{name}.ko")))
            .collect();
        if let Some(absent) = modules.iter().find(|m| !m.is_file()) {
            return Err(missing(absent));
        }
        for program in [QEMU, BUSYBOX] {
            if !Path::new(program).is_file() {
                return Err(format!("{program} is missing: run scripts/install-deps.sh"));
            }
        }
        Ok(Lab { kernel, modules })
    }

    /// Boots `image` in an L1 VM of `memory_mib` under TCG, runs `workload` (a shell script, with
    /// busybox's applets on PATH) there once KVM is loaded, and returns the L1 console once the VM
    /// has ended (the init resets it after the workload) or `timeout` has passed (then QEMU is
    /// killed by its PID). The console ends with [`EXIT_MARKER`] and the workload's status.
    pub fn run(
        &self,
        mut image: L1Image,
        workload: &str,
        memory_mib: u32,
        timeout: Duration,
    ) -> Result<Output> {
        image.add_as(Path::new(BUSYBOX), Path::new("/lab/busybox"))?;
        let mut names = Vec::new();
        for module in &self.modules {
            let name = module.file_name().context("module without a name")?;
            image.add_as(module, &Path::new("/lab/modules").join(name))?;
            names.push(name.to_string_lossy().into_owned());
        }
        image.write("/lab/workload", workload.as_bytes(), 0o755)?;
        image.write("/init", init_script(&names).as_bytes(), 0o755)?;
        let cpio = image.pack()?;
        let mut out = process::run(self.qemu(&cpio, memory_mib), None, timeout)?;
        if l1_froze(&out) {
            // Nothing inside can stop the L1 kernel's own clock: the emulation did. Said loudly,
            // and run once more; a second freeze is reported as the failure it is.
            eprintln!(
                "\n!!!!!! nested-kvm: the L1 VM froze (its heartbeat stopped {:.0} s before the \
                 deadline); running it once more !!!!!!\n",
                out.elapsed.as_secs_f64() - last_heartbeat(&out.stdout)
            );
            out = process::run(self.qemu(&cpio, memory_mib), None, timeout)?;
        }
        drop(image);
        Ok(out)
    }

    /// Runs the tests of the calling test binary that `filter` (libtest arguments; empty for
    /// all) selects, inside an L1 VM of 1 GiB: the binary, `programs` (with their libraries) and
    /// `files` are staged at their host paths. Its `*under_nested_kvm` tests are skipped there,
    /// so the lab's own tests do not recurse. Returns the L1 console.
    pub fn run_this_test_binary(
        &self,
        programs: &[&Path],
        files: &[&Path],
        filter: &str,
        timeout: Duration,
    ) -> Result<Output> {
        let this_test = std::env::current_exe().context("the running test binary")?;
        let mut image = L1Image::new()?;
        for program in std::iter::once(this_test.as_path()).chain(programs.iter().copied()) {
            image.add_program(program)?;
        }
        for file in files {
            image.add(file)?;
        }
        let workload = format!(
            "cd /tmp && {} {filter} --skip under_nested_kvm --nocapture --test-threads=1",
            shell_quote(&this_test)
        );
        self.run(image, &workload, 1024, timeout)
    }

    fn qemu(&self, cpio: &Path, memory_mib: u32) -> Command {
        let mut qemu = Command::new(QEMU);
        // Two L1 CPUs: with one, the whole L1 VM froze in about one guest boot out of five (its
        // heartbeat stopped while the emulated CPU stayed in guest mode); with two it is rarer.
        // Why is not known (TCG's SVM emulation, or something two CPUs only make rarer).
        qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
            .args(["-m", &format!("{memory_mib}M")])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(cpio)
            .args(["-append", "console=ttyS0 quiet panic=-1"]);
        // QEMU dies with the test: a killed test run must not leave a 1 GiB VM spinning.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
        unsafe {
            qemu.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        qemu
    }
}

/// The L1 uptime of the last heartbeat on `console` (0 when there was none).
fn last_heartbeat(console: &str) -> f64 {
    console
        .lines()
        // A heartbeat may land in the middle of a line the workload was printing.
        .filter_map(|line| line.trim_end().split_once(HEARTBEAT).map(|(_, rest)| rest))
        .filter_map(|rest| rest.trim_end_matches(" s").trim().parse::<f64>().ok())
        .next_back()
        .unwrap_or(0.0)
}

/// Whether a run that timed out did so because the L1 VM itself stopped: its heartbeat (every
/// 30 s) went quiet more than 90 s before QEMU was killed.
fn l1_froze(out: &Output) -> bool {
    out.timed_out && last_heartbeat(&out.stdout) + 90.0 < out.elapsed.as_secs_f64()
}

/// The L1 init: mounts, KVM's modules, the workload, then a reset (QEMU runs with -no-reboot,
/// so the reset ends it).
fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/lab/busybox sh
# /tmp and /run stay on the initramfs: files staged under them (a checkout in /tmp) must show.
/lab/busybox mkdir -p /lab/bin /proc /sys /dev /tmp /run
/lab/busybox --install -s /lab/bin
export PATH=/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do
    insmod /lab/modules/$m || echo "nested-kvm: insmod $m failed"
done
[ -c /dev/kvm ] && echo "nested-kvm: /dev/kvm ready" || echo "nested-kvm: no /dev/kvm"
# A heartbeat: when it stops, the L1 VM itself hung (not the workload).
(while sleep 30; do echo "{HEARTBEAT}$(cut -d' ' -f1 /proc/uptime) s"; done) &
/lab/workload
echo "{EXIT_MARKER} $?"
reboot -f
"#,
        modules = modules.join(" "),
    )
}

/// The L1 VM's initramfs, staged in a temp directory: files keep their host paths.
pub struct L1Image {
    root: TempDir,
    libraries: BTreeSet<PathBuf>,
}

impl L1Image {
    pub fn new() -> Result<L1Image> {
        Ok(L1Image { root: TempDir::new("bzt-l1")?, libraries: BTreeSet::new() })
    }

    fn staged(&self, path: &Path) -> Result<PathBuf> {
        let relative = path.strip_prefix("/").with_context(|| {
            format!("{} is not an absolute path for the L1 image", path.display())
        })?;
        Ok(self.root.path().join("root").join(relative))
    }

    /// Copies the host file `source` to `dest` in the image.
    pub fn add_as(&mut self, source: &Path, dest: &Path) -> Result<()> {
        let staged = self.staged(dest)?;
        std::fs::create_dir_all(staged.parent().context("no parent")?)?;
        std::fs::copy(source, &staged)
            .with_context(|| format!("copy {} into the L1 image", source.display()))?;
        Ok(())
    }

    /// Adds `path` at the same path, a file or (recursively) a directory.
    pub fn add(&mut self, path: &Path) -> Result<()> {
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                self.add(&entry?.path())?;
            }
            return Ok(());
        }
        self.add_as(path, path)
    }

    /// Adds the program at `path` (under its own name and, for a symlink, its target's) and the
    /// shared libraries it loads (as `ldd` lists them).
    pub fn add_program(&mut self, path: &Path) -> Result<()> {
        self.add(path)?;
        let path = path.canonicalize().with_context(|| format!("{}", path.display()))?;
        self.add(&path)?;
        for library in shared_libraries(&path)? {
            if self.libraries.insert(library.clone()) {
                self.add(&library)?;
            }
        }
        Ok(())
    }

    /// Writes `contents` to `path` in the image with permission bits `mode`.
    pub fn write(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<()> {
        let staged = self.staged(Path::new(path))?;
        std::fs::create_dir_all(staged.parent().context("no parent")?)?;
        std::fs::write(&staged, contents)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Packs the staged tree as a newc cpio archive and returns its path.
    fn pack(&self) -> Result<PathBuf> {
        let out = self.root.path().join("l1.cpio");
        let script = format!(
            "cd {root} && find . -mindepth 1 | cpio --quiet -o -H newc --owner 0:0 > {out}",
            root = shell_quote(&self.root.path().join("root")),
            out = shell_quote(&out),
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let packed = process::run(cmd, None, Duration::from_secs(120))?;
        if !packed.success() {
            bail!("cannot pack the L1 image: {}", packed.describe());
        }
        Ok(out)
    }
}

/// The shared libraries `ldd` says `program` loads (none for a static program).
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(program);
    let out = process::run(ldd, None, Duration::from_secs(30))?;
    if !out.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    parse_ldd(&out.stdout).with_context(|| format!("the libraries of {}", program.display()))
}

/// The library paths in `ldd` output: `name => /path (addr)` and `/path (addr)` lines; a
/// library `ldd` could not find is an error naming it.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("=> not found") {
            bail!("ldd found no {}", line.split_whitespace().next().unwrap_or(line));
        }
        let target = line.split("=>").last().and_then(|t| t.split_whitespace().next());
        if let Some(target) = target.filter(|t| t.starts_with('/')) {
            libraries.push(PathBuf::from(target));
        }
    }
    Ok(libraries)
}

/// `path` as one word for `sh`.
pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                "/lib64/ld-linux-x86-64.so.2".into()
            ]
        );
        let missing = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libfoo.so.1"), "{missing}");
    }

    #[test]
    fn a_timeout_after_the_heartbeat_stopped_is_a_frozen_l1() {
        let run = |stdout: &str, secs: u64, timed_out: bool| Output {
            command: String::new(),
            code: None,
            signal: None,
            stdout: stdout.into(),
            stderr: String::new(),
            elapsed: Duration::from_secs(secs),
            timed_out,
        };
        let beats = format!("{HEARTBEAT}31.2 s\r\ntest x ... {HEARTBEAT}61.3 s\r\n");
        assert_eq!(last_heartbeat(&beats), 61.3);
        assert!(l1_froze(&run(&beats, 300, true)));
        assert!(!l1_froze(&run(&beats, 120, true)), "the heartbeat was recent");
        assert!(!l1_froze(&run(&beats, 300, false)), "the run ended by itself");
        assert!(l1_froze(&run("", 300, true)));
    }

    #[test]
    fn init_loads_modules_in_order_and_reports_the_workload_status() {
        let init = init_script(&["kvm.ko".into(), "kvm-amd.ko".into()]);
        assert!(init.contains("for m in kvm.ko kvm-amd.ko; do"));
        assert!(init.contains(&format!("echo \"{EXIT_MARKER} $?\"")));
        assert!(init.trim_end().ends_with("reboot -f"));
    }
}

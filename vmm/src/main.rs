//! `bazaar-vmm`: boot a Linux kernel under KVM with the guest's serial console on stdout.
//! Exits 0 when the guest resets or powers off, 1 on a VMM error, 2 on a usage error.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;

use bazaar_vmm::seccomp::{self, ThreadKind};
use bazaar_vmm::vcpu::Exit;
use bazaar_vmm::vm::{Vm, VmConfig};
use bazaar_vmm::{boot, legacy};
use linux_loader::cmdline::Cmdline;

const USAGE: &str = "usage: bazaar-vmm --kernel PATH [--initrd PATH] [--cmdline STR] \
[--memory-mib N] [--vcpus N] [--seccomp MODE]

  --kernel PATH     bzImage or ELF vmlinux (64-bit boot protocol)
  --initrd PATH     initramfs
  --cmdline STR     appended to the VMM's own kernel parameters:
                    console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux
                    i8042.nopnp i8042.dumbkbd
  --memory-mib N    guest RAM (default 256)
  --vcpus N         vCPUs, 1 to 32 (default 1)
  --seccomp MODE    what a thread's seccomp filter does with a system call it does not
                    allow: kill (the process, default), log (allow and log), none (no filter)";

const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

#[derive(Debug)]
struct Args {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    memory_mib: u64,
    vcpus: u8,
    seccomp: seccomp::Mode,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut kernel, mut initrd, mut cmdline) = (None, None, None);
    let (mut memory_mib, mut vcpus) = (256u64, 1u8);
    let mut seccomp = seccomp::Mode::default();
    while let Some(flag) = argv.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value)),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--cmdline" => cmdline = Some(value),
            "--memory-mib" => {
                memory_mib = value
                    .parse()
                    .ok()
                    .filter(|&m| (16..=1 << 20).contains(&m))
                    .ok_or_else(|| format!("--memory-mib {value}: expected 16 to 1048576"))?
            }
            "--vcpus" => {
                vcpus = value
                    .parse()
                    .ok()
                    .filter(|&n| (1..=32).contains(&n))
                    .ok_or_else(|| format!("--vcpus {value}: expected 1 to 32"))?
            }
            "--seccomp" => seccomp = value.parse().map_err(|e| format!("--seccomp: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let kernel = kernel.ok_or("--kernel is required")?;
    Ok(Args { kernel, initrd, cmdline, memory_mib, vcpus, seccomp })
}

/// Guest console output: stdout, flushed on every write so prompts show at once.
struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// What a vCPU thread reports when it fails: a vCPU or seccomp error.
type ThreadError = Box<dyn std::error::Error + Send + Sync>;

fn run(args: &Args) -> Result<Exit, Box<dyn std::error::Error>> {
    let vm = Vm::new(&VmConfig { memory_mib: args.memory_mib, irqchip: true })?;
    legacy::attach(&vm, Console)?;
    let mut cmdline = Cmdline::new(boot::layout::CMDLINE_MAX)?;
    cmdline.insert_str(BASE_CMDLINE)?;
    if let Some(extra) = &args.cmdline {
        cmdline.insert_str(extra)?;
    }
    let kernel =
        boot::load_linux(vm.memory(), &args.kernel, args.initrd.as_deref(), &cmdline, args.vcpus)?;

    let (tx, rx) = mpsc::channel::<Result<Exit, ThreadError>>();
    for id in 0..args.vcpus {
        let mut vcpu = vm.create_vcpu(id)?;
        boot::setup_vcpu(vm.kvm(), vcpu.fd(), id, args.vcpus, kernel.entry.0, true)?;
        let tx = tx.clone();
        let mode = args.seccomp;
        thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
            let result = match seccomp::apply(ThreadKind::Vcpu, mode) {
                Ok(()) => vcpu.run().map_err(ThreadError::from),
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(result);
        })?;
    }
    drop(tx);
    // After spawning: a filter is inherited by threads spawned later.
    seccomp::apply(ThreadKind::Vmm, args.seccomp)?;
    // The first vCPU to stop decides; the others end with the process.
    match rx.recv() {
        Ok(result) => result.map_err(|e| e as Box<dyn std::error::Error>),
        Err(_) => Err("every vCPU thread ended without a result".into()),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("bazaar-vmm: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(exit) => {
            eprintln!("bazaar-vmm: guest stopped: {exit:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bazaar-vmm: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_every_flag() {
        let a = parse(&[
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "quiet",
            "--memory-mib",
            "512",
            "--vcpus",
            "2",
            "--seccomp",
            "log",
        ])
        .expect("valid");
        assert_eq!(a.kernel, PathBuf::from("k"));
        assert_eq!(a.initrd, Some(PathBuf::from("i")));
        assert_eq!(a.cmdline.as_deref(), Some("quiet"));
        assert_eq!((a.memory_mib, a.vcpus), (512, 2));
        assert_eq!(a.seccomp, seccomp::Mode::Log);
        let defaults = parse(&["--kernel", "k"]).expect("valid");
        assert_eq!(defaults.seccomp, seccomp::Mode::Kill);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--kernel"]).is_err());
        assert!(parse(&["--kernel", "k", "--vcpus", "0"]).is_err());
        assert!(parse(&["--kernel", "k", "--memory-mib", "lots"]).is_err());
        assert!(parse(&["--kernel", "k", "--bogus", "1"]).is_err());
        assert!(parse(&["--kernel", "k", "--seccomp", "off"]).is_err());
    }
}

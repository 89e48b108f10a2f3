//! `make bench` section 7: one built-in VMM sandbox in the nested-KVM lab
//! ([`crate::nested_kvm`]), since this project's build hosts' own KVM cannot run Linux.
//!
//! Inside the L1 VM, virtiofsd and `bazaar-vmm` are started with the arguments the `builtin`
//! backend gives them, the guest image boots to its agent, and after a settle time the PSS of
//! both processes is read (the guest RAM the guest touched is in their shared memfd). Memory is
//! what the same guest touches on any KVM host; the times are TCG times, printed only to show
//! where a boot spends them, never as a hardware figure.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::nested_kvm::{L1Image, Lab};

const VIRTIOFSD: &str = "/usr/local/libexec/bazaar/virtiofsd";
/// The L1 run: its boot, the guest's boot, the settle time.
const LAB_TIMEOUT: Duration = Duration::from_secs(420);
/// What the agent prints on the console once it serves.
const AGENT_SERVES: &str = "serving the agent API";

/// The figures one lab run printed.
#[derive(Debug, Default, PartialEq)]
struct LabFigures {
    /// VMM start to the agent serving, in seconds of L1 time.
    to_agent_s: f64,
    /// (process, PSS, anonymous, file, shmem), KiB.
    pss: Vec<(String, [u64; 4])>,
    /// The VMM's boot timeline lines and the guest kernel's "Run /init" line.
    timeline: Vec<String>,
}

/// The L1 workload: virtiofsd and the VMM as the backend starts them, then the measurements.
fn workload(vmm: &Path, kernel: &Path, initrd: &Path, settle: Duration) -> String {
    format!(
        r#"R=/tmp/lab-run; mkdir -p $R/share
{virtiofsd} --socket-path=$R/fs.sock --shared-dir=$R/share --sandbox=chroot \
    --announce-submounts --cache=auto --thread-pool-size=1 2>$R/virtiofsd.err &
FS=$!
i=0; while [ ! -S $R/fs.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
T0=$(cut -d' ' -f1 /proc/uptime)
'{vmm}' --kernel '{kernel}' --initrd '{initrd}' --memory-mib 256 --vcpus 1 \
    --cmdline 'rdinit=/init page_reporting.page_reporting_order=4' \
    --vsock cid=3,socket=$R/vsock.sock --fs tag=bazaarfs,socket=$R/fs.sock \
    --balloon free-page-reporting=on >$R/console 2>$R/vmm.err &
VMM=$!
i=0; while ! grep -q '{AGENT_SERVES}' $R/console && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
grep -q '{AGENT_SERVES}' $R/console || {{ echo "LAB-ERROR no agent"; cat $R/console $R/vmm.err; }}
echo "LAB-READY $T0 $(cut -d' ' -f1 /proc/uptime)"
sleep {settle}
for p in bazaar-vmm:$VMM virtiofsd:$FS; do
    echo "LAB-PSS ${{p%%:*}} $(awk '/^Pss(_Anon|_File|_Shmem)?:/ {{printf "%s ", $2}}' /proc/${{p#*:}}/smaps_rollup)"
done
grep -h 'bazaar-vmm: boot' $R/vmm.err | sed 's/^/LAB-TIMELINE /'
grep -m1 'Run /init' $R/console | sed 's/^/LAB-TIMELINE guest: /'
kill $VMM $FS; wait
"#,
        virtiofsd = VIRTIOFSD,
        vmm = vmm.display(),
        kernel = kernel.display(),
        initrd = initrd.display(),
        settle = settle.as_secs().max(1),
    )
}

/// Reads the `LAB-*` lines of the L1 console.
fn parse(console: &str) -> Result<LabFigures> {
    let mut figures = LabFigures::default();
    let mut ready = false;
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("LAB-ERROR") {
            bail!("{line}");
        } else if let Some(rest) = line.strip_prefix("LAB-READY ") {
            let times: Vec<f64> = rest.split_whitespace().filter_map(|t| t.parse().ok()).collect();
            if let [start, end] = times[..] {
                figures.to_agent_s = end - start;
                ready = true;
            }
        } else if let Some(rest) = line.strip_prefix("LAB-PSS ") {
            let mut words = rest.split_whitespace();
            let name = words.next().context("LAB-PSS line without a process")?.to_string();
            let kib: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            let kib: [u64; 4] = kib.try_into().ok().context("LAB-PSS wants four figures")?;
            figures.pss.push((name, kib));
        } else if let Some(rest) = line.strip_prefix("LAB-TIMELINE ") {
            figures.timeline.push(rest.to_string());
        }
    }
    if !ready || figures.pss.is_empty() {
        bail!("the lab run printed no figures");
    }
    Ok(figures)
}

fn measure(vmm: &Path, settle: Duration) -> Result<LabFigures> {
    let lab = Lab::find().map_err(anyhow::Error::msg)?;
    let (kernel, initrd) = (crate::paths::guest_kernel(), crate::paths::guest_initrd());
    let mut image = L1Image::new()?;
    image.add_program(vmm)?;
    image.add_program(Path::new(VIRTIOFSD))?;
    image.add(&kernel)?;
    image.add(&initrd)?;
    let script = workload(vmm, &kernel, &initrd, settle);
    let out = lab.run(image, &script, 1024, LAB_TIMEOUT)?;
    parse(&out.stdout).with_context(|| out.describe())
}

/// Prints section 7 (or why it could not run).
pub fn print_section(vmm: &Path, settle: Duration) {
    println!();
    println!("7. Built-in VMM sandbox in the nested-KVM lab (KVM on TCG-emulated AMD SVM), 256 MiB, 1 vCPU");
    println!(
        "   idle guest image with its agent, measured {} s after the agent serves",
        settle.as_secs()
    );
    let figures = match measure(vmm, settle) {
        Ok(figures) => figures,
        Err(err) => {
            println!("   NOT MEASURED: {err:#}");
            return;
        }
    };
    println!("   {:<28}{:>10}{:>9}{:>9}{:>9}", "process", "PSS MiB", "anon", "file", "shmem");
    let mut total = [0u64; 4];
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (name, kib) in &figures.pss {
        println!(
            "   {name:<28}{:>10.1}{:>9.1}{:>9.1}{:>9.1}",
            mib(kib[0]),
            mib(kib[1]),
            mib(kib[2]),
            mib(kib[3])
        );
        for (sum, v) in total.iter_mut().zip(kib) {
            *sum += v;
        }
    }
    println!(
        "   {:<28}{:>10.1}{:>9.1}{:>9.1}{:>9.1}",
        "VMM + virtiofsd",
        mib(total[0]),
        mib(total[1]),
        mib(total[2]),
        mib(total[3])
    );
    println!("   (plus the shim, as in section 2; shmem = guest RAM the guest touched)");
    println!(
        "   VMM start to agent serving: {:.1} s of TCG time (not a hardware figure)",
        figures.to_agent_s
    );
    for line in &figures.timeline {
        println!("   {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lab_lines() {
        let console = "noise\r\nLAB-READY 10.5 22.75\r\nLAB-PSS bazaar-vmm 30000 500 1200 28300 \n\
                       LAB-PSS virtiofsd 3000 400 2000 600 \nLAB-TIMELINE guest: [ 3.1] Run /init\n";
        let figures = parse(console).unwrap();
        assert_eq!(figures.to_agent_s, 12.25);
        assert_eq!(figures.pss[0], ("bazaar-vmm".to_string(), [30000, 500, 1200, 28300]));
        assert_eq!(figures.pss.len(), 2);
        assert_eq!(figures.timeline, ["guest: [ 3.1] Run /init"]);
    }

    #[test]
    fn a_run_without_figures_is_an_error() {
        assert!(parse("nested-kvm: workload exit status 1\n").is_err());
        assert!(parse("LAB-ERROR no agent\nLAB-READY 1 2\n").is_err());
    }
}

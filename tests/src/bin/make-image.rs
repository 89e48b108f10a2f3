//! Writes the busybox OCI image tarball the e2e tests use, for scripts (`make demo`).
//!
//! Usage: `bazaar-make-image OUT.tar` — then `ctr images import OUT.tar`. Prints the image
//! names the tarball holds, one per line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bazaar_tests::image;
use bazaar_tests::tempdir::TempDir;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        bail!("usage: bazaar-make-image OUT.tar");
    };
    // An option (`--help`) is not an output path: writing a file named `--help` surprises.
    if out.starts_with('-') {
        bail!("usage: bazaar-make-image OUT.tar (it takes no options; got {out:?})");
    }
    let out = PathBuf::from(out);
    let work = TempDir::new("bazaar-image")?;
    image::build_tarball(work.path(), &out)
        .with_context(|| format!("cannot build the image tarball {}", out.display()))?;
    println!("{}", image::IMAGE);
    println!("{}", image::TESTER_IMAGE);
    Ok(())
}

//! A busybox OCI image built locally (no registry is reachable) and imported with `ctr`.
//!
//! One layer: the static busybox binary with symlinks for common applets, `/etc/passwd` and
//! `/etc/group` (root, `tester` 1000, `nobody` 65534), a marker file with known contents and
//! `/tmp`. Two image names share the layer: [`IMAGE`] runs as root, [`TESTER_IMAGE`] as
//! `1000:1000` (ctr 1.6 has no `--user` flag; the image config's `User` is how a user is chosen).
//! The tarball is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) as
//! `ctr images import` reads it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::containerd::PrivateContainerd;
use crate::process;

/// The image tests run by default (user root, cwd `/`).
pub const IMAGE: &str = "docker.io/library/bazaar-busybox:test";
/// The same files, with `User` set to `1000:1000` in the image config.
pub const TESTER_IMAGE: &str = "docker.io/library/bazaar-busybox:tester";
/// The CRI plugin's sandbox ("pause") image: the same layer, whose entrypoint sleeps until it
/// is killed (CRI stops a pod's sandbox container with SIGKILL). There is no registry to pull
/// the real `registry.k8s.io/pause` from, and the layer is shared, so it costs one config blob.
pub const PAUSE_IMAGE: &str = "docker.io/library/bazaar-pause:test";
/// Every image the tarball holds.
pub const ALL_IMAGES: [&str; 3] = [IMAGE, TESTER_IMAGE, PAUSE_IMAGE];
/// A file only the image has, and what it holds.
pub const MARKER_PATH: &str = "/etc/bazaar-image-marker";
pub const MARKER_CONTENTS: &str = "bazaar-tests image marker: this rootfs came from the image\n";
/// The non-root user of [`TESTER_IMAGE`].
pub const TESTER_USER: &str = "1000:1000";
/// `PATH` of the image config.
pub const IMAGE_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "[",
    "awk",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "grep",
    "head",
    "hostname",
    "id",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mount",
    "mv",
    "nproc",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rm",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "whoami",
    "xargs",
    "yes",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
tester:x:1000:1000:tester:/home/tester:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
wheel:x:10:root,tester\n\
tester:x:1000:\n\
nogroup:x:65534:\n";

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A content-addressed blob written to the layout.
#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: u64,
}

/// Builds the image tarball at `out`, using `work` (an empty directory) for staging.
pub fn build_tarball(work: &Path, out: &Path) -> Result<()> {
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    populate_rootfs(&rootfs)?;

    let layer_tar = work.join("layer.tar");
    tar(&rootfs, &layer_tar)?;
    let layer = add_blob_file(&blobs, &layer_tar)?;

    let mut manifests = Vec::new();
    for (name, user) in [(IMAGE, ""), (TESTER_IMAGE, TESTER_USER), (PAUSE_IMAGE, "")] {
        let mut config = image_config(&layer.digest, user);
        if name == PAUSE_IMAGE {
            config["config"]["Entrypoint"] = json!(["/bin/sleep", "infinity"]);
            config["config"]["Cmd"] = Value::Null;
        }
        let config = add_blob(&blobs, &to_json_bytes(&config))?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": { "mediaType": MT_CONFIG, "digest": config.digest, "size": config.size },
            "layers": [ { "mediaType": MT_LAYER, "digest": layer.digest, "size": layer.size } ],
        });
        let manifest = add_blob(&blobs, &to_json_bytes(&manifest))?;
        let tag = name.rsplit(':').next().unwrap_or("latest");
        manifests.push(json!({
            "mediaType": MT_MANIFEST,
            "digest": manifest.digest,
            "size": manifest.size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
    }
    let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
    fs::write(layout.join("index.json"), to_json_bytes(&index))?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar(&layout, out)?;
    Ok(())
}

/// Imports the tarball into `containerd` (and unpacks it for the default snapshotter).
pub fn import(containerd: &PrivateContainerd, tarball: &Path) -> Result<()> {
    import_into(containerd, crate::containerd::NAMESPACE, tarball)
}

/// The same into containerd namespace `namespace` (the CRI plugin's is `k8s.io`).
pub fn import_into(containerd: &PrivateContainerd, namespace: &str, tarball: &Path) -> Result<()> {
    let tarball = tarball.to_string_lossy();
    let timeout = Duration::from_secs(120);
    let out = containerd.ctr_in(namespace, &["images", "import", &tarball], timeout)?;
    if !out.success() {
        bail!("ctr images import failed: {}", out.describe());
    }
    let listed = containerd.ctr_in(namespace, &["images", "ls", "-q"], Duration::from_secs(30))?;
    for name in ALL_IMAGES {
        if !listed.stdout.lines().any(|l| l == name) {
            bail!("image {name} missing after import; ctr images ls -q:\n{}", listed.stdout);
        }
    }
    Ok(())
}

/// Writes the image's files into `rootfs` (also a rootfs for `ctr run --config` specs).
pub fn populate_rootfs(rootfs: &Path) -> Result<()> {
    for dir in ["bin", "etc", "dev", "proc", "sys", "root", "home/tester", "tmp", "var/tmp", "run"]
    {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(rootfs.join("var/tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(rootfs.join("root"), fs::Permissions::from_mode(0o700))?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).with_context(|| {
        format!("cannot copy {BUSYBOX} (install busybox-static: apt-get install busybox-static)")
    })?;
    fs::set_permissions(rootfs.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    fs::write(rootfs.join("etc/passwd"), PASSWD)?;
    fs::write(rootfs.join("etc/group"), GROUP)?;
    fs::write(rootfs.join(MARKER_PATH.trim_start_matches('/')), MARKER_CONTENTS)?;
    Ok(())
}

fn image_config(layer_digest: &str, user: &str) -> Value {
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": user,
            "Env": [IMAGE_PATH_ENV],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [ { "created": "1970-01-01T00:00:00Z", "created_by": "bazaar-tests image builder" } ],
    })
}

/// Archives the contents of `dir` (sorted, owned by root, mtime 0) into `out`.
fn tar(dir: &Path, out: &Path) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    let mut cmd = Command::new("tar");
    cmd.args(["--create", "--format=gnu", "--sort=name", "--numeric-owner", "--owner=0"])
        .args(["--group=0", "--mtime=@0", "--file"])
        .arg(out)
        .arg("--directory")
        .arg(dir)
        .arg("--")
        .args(&names);
    let result = process::run(cmd, None, Duration::from_secs(120))?;
    if !result.success() {
        bail!("tar failed: {}", result.describe());
    }
    Ok(())
}

fn to_json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialising a JSON value cannot fail")
}

fn add_blob(blobs: &Path, bytes: &[u8]) -> Result<Blob> {
    let digest = hex(&Sha256::digest(bytes));
    fs::write(blobs.join(&digest), bytes)?;
    Ok(Blob { digest: format!("sha256:{digest}"), size: bytes.len() as u64 })
}

fn add_blob_file(blobs: &Path, path: &Path) -> Result<Blob> {
    let (digest, size) = sha256_file(path)?;
    fs::rename(path, blobs.join(&digest))?;
    Ok(Blob { digest: format!("sha256:{digest}"), size })
}

/// The hex SHA-256 and size of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the layout back: image name -> manifest digest (for tests of the builder).
pub fn index_names(layout_index_json: &[u8]) -> Result<BTreeMap<String, String>> {
    let index: Value = serde_json::from_slice(layout_index_json)?;
    let mut names = BTreeMap::new();
    for m in index["manifests"].as_array().context("index.json has no manifests")? {
        let name = m["annotations"]["io.containerd.image.name"].as_str().unwrap_or_default();
        names.insert(name.to_string(), m["digest"].as_str().unwrap_or_default().to_string());
    }
    Ok(names)
}

/// Builds the tarball in `dir` once and returns its path (`dir/busybox-oci.tar`).
pub fn tarball_in(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("busybox-oci.tar");
    if !out.exists() {
        let work = dir.join("image-build");
        fs::create_dir_all(&work)?;
        build_tarball(&work, &out)?;
        fs::remove_dir_all(&work)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tempdir::TempDir;

    #[test]
    fn builds_a_consistent_oci_layout() {
        if !Path::new(BUSYBOX).exists() {
            crate::skip::skip(
                "image::builds_a_consistent_oci_layout",
                &format!("{BUSYBOX} missing (busybox-static not installed)"),
            );
            return;
        }
        let dir = TempDir::new("bzt-unit-image").unwrap();
        let out = tarball_in(dir.path()).unwrap();
        let x = dir.path().join("x");
        fs::create_dir(&x).unwrap();
        let st = Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&x).status().unwrap();
        assert!(st.success());
        let names = index_names(&fs::read(x.join("index.json")).unwrap()).unwrap();
        let mut expected = ALL_IMAGES.to_vec();
        expected.sort();
        assert_eq!(names.keys().cloned().collect::<Vec<_>>(), expected);
        // Every blob's name is its digest.
        for entry in fs::read_dir(x.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let (digest, _) = sha256_file(&path).unwrap();
            assert_eq!(path.file_name().unwrap().to_string_lossy(), digest);
        }
        // The tester manifest's config sets the user.
        let digest = names[TESTER_IMAGE].trim_start_matches("sha256:");
        let manifest: Value =
            serde_json::from_slice(&fs::read(x.join("blobs/sha256").join(digest)).unwrap())
                .unwrap();
        let cfg_digest =
            manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let config: Value =
            serde_json::from_slice(&fs::read(x.join("blobs/sha256").join(cfg_digest)).unwrap())
                .unwrap();
        assert_eq!(config["config"]["User"], TESTER_USER);
        assert_eq!(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"]);
    }
}

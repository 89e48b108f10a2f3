//! Component test of safe path resolution: an image whose symlinks point out of the rootfs
//! (absolute, and relative with `..`), and a spec whose mount destinations and device paths go
//! through them and through `..`. Whatever the agent creates (mount points, files for bind
//! mounts, device nodes) must land inside the rootfs, where the container sees the path, and
//! nothing may appear in the directory the symlinks aim at. Root only.

mod common;

use std::os::unix::fs::symlink;
use std::time::Duration;

use common::{spec, Env};
use serde_json::json;

#[tokio::test]
async fn mounts_and_devices_cannot_escape_the_rootfs() {
    if !common::can_run("mounts_and_devices_cannot_escape_the_rootfs") {
        return;
    }
    tokio::time::timeout(Duration::from_secs(90), async {
        let env = Env::start("paths", &[]).await;
        let rootfs = env.shared.join("rootfs");
        // The target of the evil links: a directory next to the rootfs, on the host.
        let outside = env.dir.join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir outside");
        symlink(&outside, rootfs.join("evil-abs")).expect("absolute symlink");
        let climbs = "../".repeat(outside.components().count() + 3);
        symlink(format!("{climbs}{}", outside.display()), rootfs.join("evil-rel")).expect("relative symlink");
        symlink("/", rootfs.join("root-link")).expect("symlink to /");
        let data = env.shared.join("data");
        std::fs::create_dir_all(&data).expect("mkdir data");
        std::fs::write(data.join("file"), "bound\n").expect("write data");
        std::fs::write(env.shared.join("single-file"), "one file\n").expect("write single file");

        let outside_in_container = outside.display().to_string();
        let mut s = spec(&[
            "sh",
            "-c",
            &format!(
                "cat {o}/tmpfs-here/../bind-here/file; cat {o}/file-here; ls {o}/tmpfs-here; \
                 ls -l {o}/evil-null | cut -c1; ls /escaped-by-dotdot; echo done",
                o = outside_in_container
            ),
        ]);
        let mounts = s["mounts"].as_array_mut().expect("mounts");
        mounts.push(json!({"destination": "/evil-abs/tmpfs-here", "type": "tmpfs", "source": "tmpfs"}));
        mounts.push(json!({"destination": "/evil-rel/bind-here", "type": "bind",
                           "source": "/run/bazaar/shared/data", "options": ["rbind", "ro"]}));
        mounts.push(json!({"destination": "/root-link/../../evil-abs/file-here", "type": "bind",
                           "source": "/run/bazaar/shared/single-file", "options": ["bind"]}));
        mounts.push(json!({"destination": "/../../../escaped-by-dotdot", "type": "tmpfs", "source": "tmpfs"}));
        s["linux"]["devices"] = json!([
            {"path": "/dev/../evil-rel/evil-null", "type": "c", "major": 1, "minor": 3, "fileMode": 438}
        ]);

        let (status, stdout, stderr) = env.run(&env.id("paths"), &s).await;
        assert_eq!(status, 0, "stderr: {stderr}");
        assert_eq!(stdout, "bound\none file\nc\ndone\n", "stderr: {stderr}");

        // Inside the rootfs: the followed links became real directories there.
        assert!(rootfs.join(outside.strip_prefix("/").unwrap()).join("tmpfs-here").is_dir());
        assert!(rootfs.join("escaped-by-dotdot").is_dir());
        // Outside: nothing.
        let leaked: Vec<_> = std::fs::read_dir(&outside).expect("read outside").collect();
        assert!(leaked.is_empty(), "the agent wrote outside the rootfs: {leaked:?}");
        assert!(!env.dir.join("escaped-by-dotdot").exists() && !std::path::Path::new("/escaped-by-dotdot").exists());
    })
    .await
    .expect("test timed out");
}

//! The vhost-user virtio-fs frontend against the real backend (virtiofsd as `make deps`
//! installs it): the test plays the guest driver, puts FUSE requests on the request queue in
//! guest memory, and reads virtiofsd's replies from the used ring.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::InterruptLine;

const VIRTIOFSD: &str = "/usr/local/libexec/bazaar/virtiofsd";
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_INIT: u32 = 26;
const FUSE_ROOT_ID: u64 = 1;
/// Request buffers and reply buffers, away from the rings at the start of memory.
const REQUEST_ADDR: u64 = 0x10_0000;
const REPLY_ADDR: u64 = 0x20_0000;
const REPLY_LEN: u32 = 4096;

/// Counts interrupts and lets the test wait for the next one.
#[derive(Default)]
struct CountingLine {
    count: Mutex<u32>,
    raised: Condvar,
}

impl InterruptLine for CountingLine {
    fn raise(&self) -> std::io::Result<()> {
        *self.count.lock().expect("count lock") += 1;
        self.raised.notify_all();
        Ok(())
    }
}

impl CountingLine {
    fn wait_for(&self, count: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut current = self.count.lock().expect("count lock");
        while *current < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            current = self.raised.wait_timeout(current, left).expect("count lock").0;
        }
        true
    }
}

/// virtiofsd serving a temporary directory; ended by its PID on drop.
struct Backend {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Backend {
    fn start() -> Option<Backend> {
        if !Path::new(VIRTIOFSD).exists() {
            bazaar_tests::skip::skip(
                "vhost-user virtio-fs",
                &format!("{VIRTIOFSD} is missing (installed by `make deps`)"),
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("shared dir");
        let socket = dir.path().join("fs.sock");
        let child = Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--sandbox=none", "--cache=auto"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Backend { child, socket, _dir: dir })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fuse_in_header(opcode: u32, unique: u64, nodeid: u64, body_len: usize) -> Vec<u8> {
    let mut header = Vec::with_capacity(40);
    header.extend_from_slice(&((40 + body_len) as u32).to_le_bytes());
    header.extend_from_slice(&opcode.to_le_bytes());
    header.extend_from_slice(&unique.to_le_bytes());
    header.extend_from_slice(&nodeid.to_le_bytes());
    header.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen + padding
    header
}

/// Puts a request (readable) and a reply buffer (writable) in the request queue as chain
/// `index`, makes it available and kicks the device.
fn send(
    fs: &mut VhostUserFs,
    queue: &MockSplitQueue<GuestMemory>,
    mem: &GuestMemory,
    request: &[u8],
    slot: u16,
) {
    let req_addr = REQUEST_ADDR + u64::from(slot) * 0x1000;
    let reply_addr = REPLY_ADDR + u64::from(slot) * 0x1000;
    mem.write_slice(request, GuestAddress(req_addr)).expect("write request");
    let first = slot * 2;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(
            req_addr,
            request.len() as u32,
            VRING_DESC_F_NEXT,
            first + 1,
        )),
        RawDescriptor::from(SplitDescriptor::new(reply_addr, REPLY_LEN, VRING_DESC_F_WRITE, 0)),
    ];
    queue.add_desc_chains(&descs, first).expect("add chain");
    fs.queue_notify(1);
}

fn reply(mem: &GuestMemory, slot: u16) -> (u32, i32, Vec<u8>) {
    let mut out = vec![0u8; REPLY_LEN as usize];
    mem.read_slice(&mut out, GuestAddress(REPLY_ADDR + u64::from(slot) * 0x1000))
        .expect("read reply");
    let len = u32::from_le_bytes(out[0..4].try_into().expect("4 bytes"));
    let error = i32::from_le_bytes(out[4..8].try_into().expect("4 bytes"));
    (len, error, out)
}

#[test]
fn tag_must_fit_the_config_space() {
    let long = "x".repeat(TAG_MAX + 1);
    assert!(matches!(VhostUserFs::new(&long, Path::new("/nonexistent")), Err(Error::BadTag(_))));
    assert!(matches!(VhostUserFs::new("", Path::new("/nonexistent")), Err(Error::BadTag(_))));
}

#[test]
fn a_missing_backend_is_an_error_naming_the_socket() {
    let err = VhostUserFs::new("tag", Path::new("/nonexistent/fs.sock")).err().expect("error");
    assert!(err.to_string().contains("/nonexistent/fs.sock"), "{err}");
}

#[test]
fn fuse_requests_reach_virtiofsd_and_replies_raise_interrupts() {
    let Some(backend) = Backend::start() else { return };
    let mut fs = VhostUserFs::new("bazaar", &backend.socket).expect("connect to virtiofsd");
    assert_eq!(fs.device_type(), DEVICE_TYPE_FS);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    let mut config = [0u8; TAG_MAX + 4];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..7], b"bazaar\0");
    assert_eq!(&config[TAG_MAX..], &1u32.to_le_bytes());

    let mem = crate::memory::create(16 << 20).expect("guest memory");
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    let requests = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
    let queues: Vec<Queue> =
        vec![hiprio.create_queue().expect("queue 0"), requests.create_queue().expect("queue 1")];
    let line = Arc::new(CountingLine::default());
    let status = Arc::new(AtomicU32::new(0));
    let interrupt = VirtioInterrupt::new(status.clone(), line.clone());
    fs.ack_features(super::super::VIRTIO_F_VERSION_1);
    fs.activate(mem.clone(), queues, interrupt).expect("activate");

    let mut init = fuse_in_header(FUSE_INIT, 1, 0, 64);
    init.extend_from_slice(&7u32.to_le_bytes()); // major
    init.extend_from_slice(&31u32.to_le_bytes()); // minor
    init.extend_from_slice(&[0u8; 56]); // max_readahead, flags, flags2, unused
    send(&mut fs, &requests, &mem, &init, 0);
    assert!(line.wait_for(1), "no interrupt for FUSE_INIT");
    assert_ne!(status.load(Ordering::SeqCst) & crate::devices::virtio::INTERRUPT_USED_RING, 0);
    let (len, error, out) = reply(&mem, 0);
    assert_eq!(error, 0, "FUSE_INIT failed");
    assert!(len >= 24, "short FUSE_INIT reply: {len}");
    assert_eq!(u32::from_le_bytes(out[16..20].try_into().expect("major")), 7);

    let mut getattr = fuse_in_header(FUSE_GETATTR, 2, FUSE_ROOT_ID, 16);
    getattr.extend_from_slice(&[0u8; 16]); // getattr_flags, dummy, fh
    send(&mut fs, &requests, &mem, &getattr, 1);
    assert!(line.wait_for(2), "no interrupt for FUSE_GETATTR");
    let (_, error, out) = reply(&mem, 1);
    assert_eq!(error, 0, "FUSE_GETATTR of the root failed");
    // fuse_attr_out: attr_valid u64, attr_valid_nsec u32, dummy u32, then fuse_attr, whose
    // mode is at byte 60 of it (ino, size, blocks, atime, mtime, ctime u64 x6, 3 nsec u32).
    let mode = u32::from_le_bytes(out[16 + 16 + 60..16 + 16 + 64].try_into().expect("mode"));
    assert_eq!(mode & libc::S_IFMT, libc::S_IFDIR, "root is not a directory: {mode:o}");

    fs.reset();
    drop(fs);
    drop(backend);
}

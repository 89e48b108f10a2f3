//! A minimal ttrpc client for a shim's Task API (`containerd.task.v2.Task`), for the calls ctr
//! 1.6 cannot make (it has no `ctr task update`) and for reading the status codes a shim answers
//! itself (containerd answers unknown container ids from its metadata before reaching a shim).
//!
//! containerd's own Update is a pass-through to the shim's (same request), so a call here is
//! what `ctr task update` of later containerd versions makes the shim do. The shim's socket is
//! the `address` file in the task's bundle. Messages are encoded by hand (a few scalar and
//! string fields): ttrpc frames are a 10-byte header (length u32 BE, stream id u32 BE, type u8 -
//! 1 request, 2 response -, flags u8) and a protobuf `Request {service=1, method=2, payload=3,
//! timeout_nano=4, metadata=5}` / `Response {status=1 {code=1, message=2}, payload=2}`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::containerd::{PrivateContainerd, NAMESPACE};

pub const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// The type URL containerd gives OCI `LinuxResources` (JSON-encoded) in an `Any`.
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// gRPC status codes the tests look for.
pub mod code {
    pub const OK: i32 = 0;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// A call's error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

/// The socket of the shim serving container `id`: the `address` file in its bundle.
pub fn shim_socket(containerd: &PrivateContainerd, id: &str) -> Result<PathBuf> {
    let file = containerd
        .state()
        .join("io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
        .join("address");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(PathBuf::from(text.trim().trim_start_matches("unix://")))
}

pub struct ShimClient {
    stream: UnixStream,
    next_stream: u32,
}

impl ShimClient {
    pub fn connect(socket: &Path) -> Result<ShimClient> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(ShimClient { stream, next_stream: 1 })
    }

    /// Calls `containerd.task.v2.Task/<method>` with an encoded request; returns the encoded
    /// response, or the error status the shim answered.
    pub fn call(
        &mut self,
        method: &str,
        payload: &[u8],
    ) -> Result<std::result::Result<Vec<u8>, Status>> {
        let mut request = Vec::new();
        pb::string(&mut request, 1, TASK_SERVICE);
        pb::string(&mut request, 2, method);
        pb::bytes(&mut request, 3, payload);
        pb::varint(&mut request, 4, 30_000_000_000);
        let mut kv = Vec::new();
        pb::string(&mut kv, 1, "containerd-namespace-ttrpc");
        pb::string(&mut kv, 2, NAMESPACE);
        pb::bytes(&mut request, 5, &kv);

        let stream_id = self.next_stream;
        self.next_stream += 2; // client streams are odd
        let mut frame = Vec::with_capacity(10 + request.len());
        frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
        frame.extend_from_slice(&stream_id.to_be_bytes());
        frame.push(1);
        frame.push(0);
        frame.extend_from_slice(&request);
        self.stream.write_all(&frame)?;

        loop {
            let mut header = [0u8; 10];
            self.stream.read_exact(&mut header).context("reading a ttrpc response header")?;
            let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
            let sid = u32::from_be_bytes(header[4..8].try_into().unwrap());
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).context("reading a ttrpc response")?;
            if sid != stream_id || header[8] != 2 {
                continue;
            }
            let mut status = Status { code: 0, message: String::new() };
            let mut payload = Vec::new();
            for (field, value) in pb::fields(&body)? {
                match (field, value) {
                    (1, pb::Value::Bytes(s)) => {
                        for (f, v) in pb::fields(&s)? {
                            match (f, v) {
                                (1, pb::Value::Varint(c)) => status.code = c as i32,
                                (2, pb::Value::Bytes(m)) => {
                                    status.message = String::from_utf8_lossy(&m).into_owned()
                                }
                                _ => {}
                            }
                        }
                    }
                    (2, pb::Value::Bytes(p)) => payload = p,
                    _ => {}
                }
            }
            return Ok(if status.code == 0 { Ok(payload) } else { Err(status) });
        }
    }

    /// `Update {id, resources: Any(LinuxResources as JSON)}`.
    pub fn update(
        &mut self,
        id: &str,
        resources_json: &str,
    ) -> Result<std::result::Result<(), Status>> {
        let mut any = Vec::new();
        pb::string(&mut any, 1, LINUX_RESOURCES_TYPE_URL);
        pb::bytes(&mut any, 2, resources_json.as_bytes());
        let mut req = Vec::new();
        pb::string(&mut req, 1, id);
        pb::bytes(&mut req, 2, &any);
        Ok(self.call("Update", &req)?.map(|_| ()))
    }

    /// A call whose request is `{id = 1, exec_id = 2}` (State, Pids, Stats, Pause, ...; fields a
    /// request lacks are ignored by the shim's decoder only if unknown — pass "" then).
    pub fn call_id(
        &mut self,
        method: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<std::result::Result<Vec<u8>, Status>> {
        let mut req = Vec::new();
        pb::string(&mut req, 1, id);
        if !exec_id.is_empty() {
            pb::string(&mut req, 2, exec_id);
        }
        self.call(method, &req)
    }

    /// `Kill {id, exec_id, signal, all}`.
    pub fn kill(
        &mut self,
        id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<std::result::Result<(), Status>> {
        let mut req = Vec::new();
        pb::string(&mut req, 1, id);
        pb::string(&mut req, 2, exec_id);
        pb::varint(&mut req, 3, signal as u64);
        Ok(self.call("Kill", &req)?.map(|_| ()))
    }

    /// `ResizePty {id, exec_id, width, height}`.
    pub fn resize_pty(
        &mut self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<std::result::Result<(), Status>> {
        let mut req = Vec::new();
        pb::string(&mut req, 1, id);
        pb::string(&mut req, 2, exec_id);
        pb::varint(&mut req, 3, width as u64);
        pb::varint(&mut req, 4, height as u64);
        Ok(self.call("ResizePty", &req)?.map(|_| ()))
    }

    /// `CloseIO {id, exec_id, stdin: true}`.
    pub fn close_io(&mut self, id: &str, exec_id: &str) -> Result<std::result::Result<(), Status>> {
        let mut req = Vec::new();
        pb::string(&mut req, 1, id);
        pb::string(&mut req, 2, exec_id);
        pb::varint(&mut req, 3, 1);
        Ok(self.call("CloseIO", &req)?.map(|_| ()))
    }
}

/// Just enough protobuf.
pub mod pb {
    use super::*;

    pub enum Value {
        Varint(u64),
        Bytes(Vec<u8>),
        Other,
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn varint(out: &mut Vec<u8>, field: u32, v: u64) {
        put_varint(out, (field as u64) << 3);
        put_varint(out, v);
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        put_varint(out, ((field as u64) << 3) | 2);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn string(out: &mut Vec<u8>, field: u32, s: &str) {
        bytes(out, field, s.as_bytes());
    }

    fn get_varint(b: &[u8], i: &mut usize) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = b.get(*i) else { bail!("truncated varint") };
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint too long")
    }

    /// The top-level fields of a message.
    pub fn fields(b: &[u8]) -> Result<Vec<(u32, Value)>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let key = get_varint(b, &mut i)?;
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => out.push((field, Value::Varint(get_varint(b, &mut i)?))),
                2 => {
                    let len = get_varint(b, &mut i)? as usize;
                    let Some(v) = b.get(i..i + len) else { bail!("truncated field") };
                    i += len;
                    out.push((field, Value::Bytes(v.to_vec())));
                }
                1 => {
                    i += 8;
                    out.push((field, Value::Other));
                }
                5 => {
                    i += 4;
                    out.push((field, Value::Other));
                }
                t => bail!("unsupported wire type {t}"),
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_fields() {
            let mut m = Vec::new();
            string(&mut m, 1, "abc");
            varint(&mut m, 3, 300);
            let f = fields(&m).unwrap();
            assert!(matches!(&f[0], (1, Value::Bytes(b)) if b == b"abc"));
            assert!(matches!(&f[1], (3, Value::Varint(300))));
            assert_eq!(m, [0x0a, 3, b'a', b'b', b'c', 0x18, 0xac, 0x02]);
        }
    }
}

//! Devices as a VMM's command line names them, shared by both backends' argument builders.

use std::path::Path;

/// A virtio-fs share served by virtiofsd.
#[derive(Debug, Clone, Copy)]
pub struct SharedFsArg<'a> {
    pub tag: &'a str,
    /// virtiofsd's vhost-user socket.
    pub socket: &'a Path,
}

/// A virtio-net device on a tap the VMM inherits as descriptor `tap_fd`.
#[derive(Debug, Clone, Copy)]
pub struct NetworkArg<'a> {
    pub tap_fd: i32,
    pub mac: &'a str,
}

//! Address ranges mapped to device models.
//!
//! The VMM has two buses, one for port I/O and one for MMIO. A device is inserted for a range
//! `[base, base + len)` and is called with the offset of the access inside that range, so the
//! same model can sit at any address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device model reachable through a bus.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A range of length zero.
    #[error("a device range cannot be empty")]
    EmptyRange,
    /// The range wraps past the end of the address space.
    #[error("device range at {base:#x} with length {len:#x} overflows")]
    Overflow { base: u64, len: u64 },
    /// The new range overlaps a device already inserted.
    #[error("device range at {base:#x} with length {len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

/// A shared, lockable device, as the bus holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Address ranges, each mapped to one device. Shared by every vCPU thread; devices are
/// normally all inserted before the first vCPU runs.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::EmptyRange);
        }
        let end = base.checked_add(len).ok_or(Error::Overflow { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        let before = ranges.range(..end).next_back();
        if let Some((&b, e)) = before {
            if b + e.len > base {
                return Err(Error::Overlap { base, len });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in its range.
    fn find(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Dispatches a read; returns false (and leaves `data` as all ones) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(&device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it if a thread panicked while holding it: device state stays
/// usable and the panic was already reported by that thread.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).expect("insert");
        assert!(bus.write(0x3fb, &[7]));
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fd, &mut buf));
        assert_eq!(buf, [5]);
        assert_eq!(dev.lock().expect("lock").writes, vec![(3, vec![7])]);
    }

    #[test]
    fn misses_outside_ranges_and_across_ends() {
        let bus = Bus::new();
        bus.insert(0x100, 4, Arc::new(Mutex::new(Recorder::default()))).expect("insert");
        let mut buf = [0u8; 2];
        assert!(!bus.read(0xff, &mut buf));
        assert_eq!(buf, [0xff, 0xff]);
        assert!(!bus.read(0x103, &mut buf), "access crossing the end");
        assert!(!bus.write(0x104, &[1]));
    }

    #[test]
    fn refuses_overlaps() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, dev()).expect("insert");
        assert!(matches!(bus.insert(0x108, 0x10, dev()), Err(Error::Overlap { .. })));
        assert!(matches!(bus.insert(0xf8, 0x10, dev()), Err(Error::Overlap { .. })));
        assert!(matches!(bus.insert(0, 0, dev()), Err(Error::EmptyRange)));
        bus.insert(0x110, 0x10, dev()).expect("adjacent is fine");
        bus.insert(0xf0, 0x10, dev()).expect("adjacent below is fine");
    }
}

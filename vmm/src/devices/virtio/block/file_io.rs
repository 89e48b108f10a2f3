//! Positioned I/O straight between a file and guest memory: pread/pwrite on the guest pages,
//! no bounce buffer. `FileExt::read_at` would need a `&mut [u8]` over guest memory, which the
//! guest may change at any time; such a reference would break Rust's aliasing rules, so the
//! raw pointer of a [`VolatileSlice`] goes to the system call instead.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Fills `slice` from `file` at `offset`; a file that ends first is an error.
pub(super) fn read_exact_at<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    transfer_all(slice, offset, |part, at| pread(file, part, at))
}

/// Writes all of `slice` to `file` at `offset`.
pub(super) fn write_all_at<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    transfer_all(slice, offset, |part, at| pwrite(file, part, at))
}

/// Repeats `transfer` until all of `slice` is done: short transfers are legal, EINTR retried.
fn transfer_all<B: BitmapSlice>(
    slice: &VolatileSlice<'_, B>,
    offset: u64,
    mut transfer: impl FnMut(&VolatileSlice<'_, B>, libc::off64_t) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < slice.len() {
        let part = slice.offset(done).map_err(io::Error::other)?;
        let at = offset
            .checked_add(done as u64)
            .and_then(|at| libc::off64_t::try_from(at).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        match transfer(&part, at) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(count) => done += count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn pread<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: libc::off64_t,
) -> io::Result<usize> {
    let guard = slice.ptr_guard_mut();
    // SAFETY: the pointer and length describe `slice`, mapped guest memory that the guard keeps
    // valid for the call; the kernel writes at most `slice.len()` bytes there, and no Rust
    // reference to that memory exists.
    let read =
        unsafe { libc::pread64(file.as_raw_fd(), guard.as_ptr().cast(), slice.len(), offset) };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    slice.bitmap().mark_dirty(0, read);
    Ok(read)
}

fn pwrite<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: libc::off64_t,
) -> io::Result<usize> {
    let guard = slice.ptr_guard();
    // SAFETY: the pointer and length describe `slice`, mapped guest memory that the guard keeps
    // valid for the call; the kernel only reads it.
    let written =
        unsafe { libc::pwrite64(file.as_raw_fd(), guard.as_ptr().cast(), slice.len(), offset) };
    usize::try_from(written).map_err(|_| io::Error::last_os_error())
}

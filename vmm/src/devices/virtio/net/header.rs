//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes) that starts every frame on
//! both queues and, with IFF_VNET_HDR and a vnet header size of 12, every frame on the tap.
//! The tap reads and writes the first 10 bytes (flags to csum_offset) and leaves the last two,
//! `num_buffers`, to us. Fields are little-endian (virtio 1.x; the tap uses host order, and
//! this VMM only runs on little-endian x86).

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Length of the header on both sides.
pub const VNET_HDR_LEN: usize = 12;

const FLAGS: usize = 0;
const GSO_TYPE: usize = 1;
const NUM_BUFFERS: usize = 10;

/// Why a frame from the tap cannot go to this driver.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxHeaderError {
    /// Shorter than the header.
    #[error("frame of {0} bytes is shorter than the virtio-net header")]
    Short(usize),
    /// Segmentation or checksum offload the driver did not accept (a frame queued in the tap
    /// before a reset renegotiated fewer features).
    #[error("offload (flags {flags:#x}, gso type {gso_type:#x}) the driver did not accept")]
    Offload { flags: u8, gso_type: u8 },
}

/// Makes the header of a frame read from the tap right for a driver that accepted `features`
/// (flags only this driver may see), or says why the frame cannot be delivered to it.
pub fn fit_rx_header(frame: &mut [u8], features: u64) -> Result<(), RxHeaderError> {
    if frame.len() < VNET_HDR_LEN {
        return Err(RxHeaderError::Short(frame.len()));
    }
    let accepted = |bit: u32| features & (1 << bit) != 0;
    let (flags, gso_type) = (frame[FLAGS], frame[GSO_TYPE]);
    let gso_ok = match u32::from(gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => accepted(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => accepted(VIRTIO_NET_F_GUEST_TSO6),
        // UDP fragmentation offload, ECN, USO: never enabled on the tap.
        _ => false,
    };
    let needs_csum = u32::from(flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if !gso_ok || (needs_csum && !accepted(VIRTIO_NET_F_GUEST_CSUM)) {
        return Err(RxHeaderError::Offload { flags, gso_type });
    }
    // DATA_VALID is only for drivers that accepted GUEST_CSUM (the spec has the device send
    // zero flags otherwise); other flag bits are for features not offered.
    let allowed = if accepted(VIRTIO_NET_F_GUEST_CSUM) {
        VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID
    } else {
        0
    };
    frame[FLAGS] = flags & allowed as u8;
    Ok(())
}

/// Sets `num_buffers`, the count of rx buffers the frame spans.
pub fn set_num_buffers(frame: &mut [u8], count: u16) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS..NUM_BUFFERS + 2) {
        field.copy_from_slice(&count.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    const TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;

    fn frame(flags: u32, gso_type: u32) -> Vec<u8> {
        let mut frame = vec![0u8; 60];
        frame[FLAGS] = flags as u8;
        frame[GSO_TYPE] = gso_type as u8;
        frame
    }

    #[test]
    fn offloads_pass_only_when_accepted() {
        let mut tso = frame(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(fit_rx_header(&mut tso, CSUM | TSO4), Ok(()));
        assert_eq!(tso[FLAGS] as u32, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert!(fit_rx_header(&mut tso, CSUM).is_err(), "no GUEST_TSO4");
        let mut partial = frame(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE);
        assert!(fit_rx_header(&mut partial, 0).is_err(), "no GUEST_CSUM");
        let mut tso6 = frame(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6);
        assert!(fit_rx_header(&mut tso6, CSUM | TSO4).is_err(), "no GUEST_TSO6");
        let mut ecn = frame(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4 | 0x80);
        assert!(fit_rx_header(&mut ecn, CSUM | TSO4).is_err(), "ECN never accepted");
        assert_eq!(fit_rx_header(&mut [0u8; 11], CSUM), Err(RxHeaderError::Short(11)));
    }

    #[test]
    fn data_valid_is_cleared_without_guest_csum() {
        let mut valid = frame(VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(fit_rx_header(&mut valid, 0), Ok(()));
        assert_eq!(valid[FLAGS], 0);
        let mut valid = frame(VIRTIO_NET_HDR_F_DATA_VALID | 0x4, VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(fit_rx_header(&mut valid, CSUM), Ok(()));
        assert_eq!(valid[FLAGS] as u32, VIRTIO_NET_HDR_F_DATA_VALID);
    }

    #[test]
    fn num_buffers_is_little_endian_at_offset_10() {
        let mut frame = frame(0, 0);
        set_num_buffers(&mut frame, 0x0203);
        assert_eq!(&frame[10..12], &[3, 2]);
    }
}

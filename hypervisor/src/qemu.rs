//! QEMU backend (to be written).

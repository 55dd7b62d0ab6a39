//! leakwarden sidecar library.
pub mod policy;

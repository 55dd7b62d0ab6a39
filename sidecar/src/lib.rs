//! leakwarden sidecar library.
pub mod kill;
pub mod policy;

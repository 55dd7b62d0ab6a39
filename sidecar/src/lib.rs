//! leakwarden sidecar library.
pub mod enforce;
pub mod kill;
pub mod policy;

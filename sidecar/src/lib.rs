//! leakwarden sidecar library.
pub mod cleanup;
pub mod enforce;
pub mod kill;
pub mod policy;
pub mod reload;

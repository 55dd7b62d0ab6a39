//! leakwarden sidecar

//! leakwarden runner

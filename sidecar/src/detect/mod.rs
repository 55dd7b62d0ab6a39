//! Detectors: pure functions of snapshots and series.
pub mod leaks;
pub mod orphans;

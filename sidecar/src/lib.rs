//! leakwarden: finds orphaned and leaking process trees in /proc, exports what it sees as
//! Prometheus metrics, and kills by policy.
//!
//! The pipeline, one module per step: [`proc`] reads /proc → [`snapshot`] builds an immutable
//! snapshot (identity = pid + start time) → [`family`] groups family processes into trees with
//! owners → [`analysis`] judges orphans, zombies and leaks ([`detect::leaks`]) with the history it
//! keeps between scans → [`metrics`] / [`report`] show it → [`enforce`] evaluates the [`policy`]
//! and [`kill`] signals through pidfds (the one place that signals). [`watch`] is the daemon;
//! [`oneshot`] holds `scan` and `cleanup`.

pub mod analysis;
pub mod cleanup;
pub mod detect;
pub mod enforce;
pub mod family;
pub mod http;
pub mod kill;
pub mod metrics;
pub mod notify;
pub mod oneshot;
pub mod policy;
pub mod proc;
pub mod reload;
pub mod report;
pub mod snapshot;
pub mod stale;
pub mod status;
pub mod watch;

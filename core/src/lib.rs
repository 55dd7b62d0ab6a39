//! leakwarden-core: what the sidecar (`leakwarden`) and the runner (`leakwarden-runner`) share,
//! one copy with one set of tests:
//!
//! - [`proc`]: reading `/proc` — pure parsers over bytes ([`proc::parse`]) and a reader whose
//!   root is a parameter and whose errors are classified ([`proc::ProcFs`]); reads that can block
//!   behind a hung mount run with a deadline ([`proc::guarded`]).
//! - [`pidfd`] and [`kill`]: signalling a process named by its identity (pid + start time)
//!   through a pidfd — the only way either program signals — and the terminate-then-kill engine.
//! - [`http`]: the HTTP/1.1 front end both programs serve `/metrics` (and more) with, hardened
//!   against clients that connect and send nothing.
//! - [`limits`]: raising `RLIMIT_NOFILE` and sizing what depends on it.
//! - [`alloc`]: giving a rebuilt-every-interval working set back to the kernel when it is freed.
//!
//! Nothing here knows about policies, browsers or jobs: arrows point from the programs to here.

pub mod alloc;
pub mod http;
pub mod kill;
pub mod limits;
pub mod pidfd;
pub mod proc;

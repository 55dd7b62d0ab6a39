//! Reading `/proc`: the shared reader and parsers of [`leakwarden_core::proc`] (one copy for
//! both programs), plus what only the sidecar needs: unix socket peers through
//! NETLINK_SOCK_DIAG ([`sockdiag`]).

pub mod sockdiag;

pub use leakwarden_core::proc::*;

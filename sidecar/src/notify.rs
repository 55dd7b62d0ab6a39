//! systemd's notification protocol (`sd_notify(3)`), for a unit with `Type=notify` and
//! `WatchdogSec=`: `READY=1` once the first scan completed, `WATCHDOG=1` while scans keep
//! completing (never just because the process lives: a wedged sidecar stops pinging and systemd
//! restarts it), `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` everything here is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where systemd listens, if it does.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(Notifier { sock, addr })
    }

    /// Send one state line; failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, state, "sd_notify failed");
        }
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC` (systemd's own advice), if it is set
/// for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_every() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

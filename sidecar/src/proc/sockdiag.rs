//! Unix socket peers from NETLINK_SOCK_DIAG (what `ss -xp` prints): socket inode → peer inode.
//!
//! Used to tie `chrome_crashpad_handler` to its browser: the first handler's
//! `--initial-client-fd` is a socket whose peer is one of the browser's sockets; the second
//! handler's client socket peers with the first handler. Only sockets of the caller's network
//! namespace are visible (true for a pod sidecar; a DaemonSet falls back to start times).

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_packet_sock_diag::SockDiagMessage;
use rustix::net::netlink::{SocketAddrNetlink, SOCK_DIAG};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// Replies stop after this many messages (a bound on a hostile or enormous dump).
const MAX_SOCKETS: usize = 1_000_000;

/// Dump every unix socket with its peer (0 for a socket without one: unconnected, or its peer was
/// closed). Fails with an I/O error where netlink is unavailable.
pub fn unix_peers(timeout: Duration) -> io::Result<HashMap<u32, u32>> {
    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::DGRAM, Some(SOCK_DIAG))?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(timeout),
    )?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(
        hdr,
        SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: StateFlags::all(),
            inode: 0,
            show_flags: ShowFlags::PEER,
            cookie: [0xff; 8],
        })
        .into(),
    );
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    rustix::net::sendto(&fd, &out, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;

    let mut peers = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0usize;
    loop {
        let (n, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
        if n == 0 {
            return Ok(peers);
        }
        let mut off = 0;
        while off < n {
            let bytes = &buf[off..n];
            let m = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(r)) => {
                    peers.insert(r.header.inode, r.peer().unwrap_or(0));
                    seen += 1;
                    if seen > MAX_SOCKETS {
                        return Ok(peers);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(peers),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag: {e:?}")))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socketpair_is_seen_with_its_peer() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let ino = |s: &UnixStream| {
            let link =
                std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).expect("link");
            crate::proc::socket_inode(link.to_str().expect("utf8")).expect("socket inode") as u32
        };
        let (ia, ib) = (ino(&a), ino(&b));
        let peers = match unix_peers(Duration::from_secs(2)) {
            Ok(p) => p,
            // Some sandboxes forbid NETLINK_SOCK_DIAG; the caller falls back to start times.
            Err(e) => {
                eprintln!("sock_diag unavailable here: {e}");
                return;
            }
        };
        assert_eq!(peers.get(&ia), Some(&ib));
        assert_eq!(peers.get(&ib), Some(&ia));
        // Close one end: the other is listed without a live peer.
        drop(b);
        let peers = unix_peers(Duration::from_secs(2)).expect("dump");
        let p = peers.get(&ia).copied().expect("the open end is listed");
        assert!(p == 0 || !peers.contains_key(&p), "peer {p} should be gone");
    }
}

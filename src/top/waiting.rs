//! The connections waiting in one TCP listener's accept queue, one by one,
//! for the detail view when `top` samples here: one connection dump in the
//! listener's namespace, filtered by the kernel to its port, taken only
//! while that view is open. The metrics page holds only their count, bytes
//! and oldest age, so `--from` cannot list them.

use std::net::{IpAddr, SocketAddr};

use crate::aggregate::{ListenKey, in_accept_queue, listening_address};
use crate::diag::{DiagSocket, DumpRequest, Mode, PortFilter, RawAddr};
use crate::netns::NetnsInfo;
use crate::netns::handles::open_in;

use super::frame::{Frame, Kind, QueueKey, Waiting, WaitingList};

/// Most connections listed; the rest are only counted.
pub const MAX_LISTED: usize = 500;

/// The listening address a row's labels name.
fn listen_key(key: &QueueKey) -> Option<ListenKey> {
    let ip: IpAddr = key.address.parse().ok()?;
    Some(ListenKey {
        addr: RawAddr::from_ip(ip),
        port: key.port.parse().ok()?,
    })
}

/// Lists the connections waiting on `key`'s listener, in namespace `info`;
/// `frame` says which other addresses listen on the same port there, so a
/// connection is given to the same listener the daemon's figures give it
/// to.
pub fn list(info: &NetnsInfo, key: &QueueKey, frame: &Frame) -> Result<WaitingList, String> {
    if key.kind != Kind::Tcp {
        return Err("only TCP listeners have their connections listed".into());
    }
    let target = listen_key(key).ok_or_else(|| format!("{}: not an address", key.endpoint()))?;
    let listening: Vec<ListenKey> = frame
        .queues
        .keys()
        .filter(|k| k.kind == Kind::Tcp && k.netns == key.netns && k.port == key.port)
        .filter_map(listen_key)
        .collect();
    let filter = PortFilter::new(Mode::Only, vec![target.port])
        .map_err(|e| format!("port filter: {e:?}"))?;
    let request = DumpRequest::tcp_connections(true, filter.as_ref());
    let mut socket = open_in(info, DiagSocket::open)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("netns {}: {e}", info.name))?;
    let mut out = WaitingList::default();
    socket
        .dump(&request, |r| {
            if r.local_port != target.port
                || !in_accept_queue(r)
                || listening_address(r, |k| listening.contains(k)) != Some(target)
            {
                return;
            }
            out.total += 1;
            if out.listed.len() < MAX_LISTED {
                out.listed.push(Waiting {
                    peer: SocketAddr::new(r.remote.ip(), r.remote_port),
                    bytes: r.rqueue,
                    waited_ms: r.last_data_sent_ms,
                });
            }
        })
        .map_err(|e| format!("netns {}: {e}", info.name))?;
    out.listed
        .sort_by(|a, b| b.waited_ms.cmp(&a.waited_ms).then(a.peer.cmp(&b.peer)));
    Ok(out)
}

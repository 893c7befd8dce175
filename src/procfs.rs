//! Namespace-wide figures from procfs: TcpExt counters and somaxconn.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A procfs file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file's content is not what the kernel writes.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// TcpExt counters of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpExt {
    /// `ListenOverflows`: SYNs or final ACKs dropped because an accept queue
    /// was full.
    pub listen_overflows: Option<u64>,
    /// `ListenDrops`: every drop at a listener, overflows included.
    pub listen_drops: Option<u64>,
}

/// Reads TcpExt from a `netstat` file (`/proc/self/net/netstat` for the
/// namespace of the reading thread's process).
pub fn read_tcp_ext(path: &Path) -> Result<TcpExt, ProcError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tcp_ext(&text).map_err(|what| ProcError::Parse {
        path: path.to_path_buf(),
        what,
    })
}

/// Parses the TcpExt header/value line pair of a `netstat` file.
pub fn parse_tcp_ext(text: &str) -> Result<TcpExt, String> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err("no TcpExt header and value lines".to_string());
    };
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return Err(format!(
            "TcpExt has {} names but {} values",
            names.len(),
            values.len()
        ));
    }
    let mut out = TcpExt::default();
    for (name, value) in names.iter().zip(values.iter()) {
        let slot = match *name {
            "ListenOverflows" => &mut out.listen_overflows,
            "ListenDrops" => &mut out.listen_drops,
            _ => continue,
        };
        *slot = Some(
            value
                .parse()
                .map_err(|_| format!("TcpExt {name} is not a number: {value:?}"))?,
        );
    }
    Ok(out)
}

/// Reads a sysctl holding one unsigned number, e.g. `net.core.somaxconn`.
pub fn read_u64(path: &Path) -> Result<u64, ProcError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_u64(path, &text)
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, ProcError> {
    text.trim().parse().map_err(|_| ProcError::Parse {
        path: path.to_path_buf(),
        what: format!("not a number: {:?}", text.trim()),
    })
}

/// A procfs file read again at every sample: by path for the daemon's own
/// namespace, or through a descriptor opened inside another namespace
/// (procfs `net/` files and net sysctls answer for the namespace of the
/// task that opened them, and keep doing so).
#[derive(Debug)]
pub struct ProcFile {
    path: PathBuf,
    held: Option<File>,
}

impl ProcFile {
    /// Read by path each time.
    pub fn at(path: PathBuf) -> Self {
        ProcFile { path, held: None }
    }

    /// Opened now, from the calling thread's namespace, and read through
    /// that descriptor from then on: reading by path later would answer for
    /// the reading thread's namespace instead.
    pub fn open_here(path: PathBuf) -> Result<Self, ProcError> {
        match File::open(&path) {
            Ok(file) => Ok(ProcFile {
                path,
                held: Some(file),
            }),
            Err(source) => Err(ProcError::Read { path, source }),
        }
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole content, read afresh.
    pub fn read(&mut self) -> Result<String, ProcError> {
        let fail = |path: &Path, source| ProcError::Read {
            path: path.to_path_buf(),
            source,
        };
        match &mut self.held {
            None => std::fs::read_to_string(&self.path).map_err(|e| fail(&self.path, e)),
            Some(file) => {
                let mut text = String::new();
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.read_to_string(&mut text))
                    .map_err(|e| fail(&self.path, e))?;
                Ok(text)
            }
        }
    }
}

/// The UDP error counters of one namespace (v4 and v6 summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpErrors {
    /// `RcvbufErrors`: datagrams dropped for a full receive buffer.
    pub rcvbuf_errors: u64,
    /// `InErrors`: datagrams that could not be delivered (rcvbuf errors
    /// included).
    pub in_errors: u64,
}

/// Reads the `wanted` counters from the `prefix` (e.g. `Udp:`)
/// header/value line pair of a `net/snmp` file.
fn snmp_counters<const N: usize>(
    text: &str,
    prefix: &str,
    wanted: [&str; N],
) -> Result<[u64; N], String> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(format!("no {prefix} header and value lines"));
    };
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return Err(format!(
            "{prefix} has {} names but {} values",
            names.len(),
            values.len()
        ));
    }
    let mut out = [0; N];
    for (slot, want) in out.iter_mut().zip(wanted) {
        let Some(i) = names.iter().position(|n| *n == want) else {
            return Err(format!("{prefix} lacks {want}"));
        };
        let value = values[i];
        *slot = value
            .parse()
            .map_err(|_| format!("{prefix} {want} is not a number: {value:?}"))?;
    }
    Ok(out)
}

/// Parses the `Udp:` header/value line pair of a `net/snmp` file.
pub fn parse_snmp_udp(text: &str) -> Result<UdpErrors, String> {
    let [rcvbuf_errors, in_errors] = snmp_counters(text, "Udp:", ["RcvbufErrors", "InErrors"])?;
    Ok(UdpErrors {
        rcvbuf_errors,
        in_errors,
    })
}

/// Parses the `Tcp:` segment counters of a `net/snmp` file: (`InSegs`,
/// `OutSegs`).
pub fn parse_snmp_tcp_segments(text: &str) -> Result<(u64, u64), String> {
    let [in_segs, out_segs] = snmp_counters(text, "Tcp:", ["InSegs", "OutSegs"])?;
    Ok((in_segs, out_segs))
}

/// Parses one protocol's line of `net/sockstat` (`prefix` `TCP:`, `UDP:`)
/// or `net/sockstat6` (`TCP6:`, `UDP6:`): sockets in use in the namespace
/// (hashed: for TCP listening, connecting, connected, not TIME-WAIT, not
/// half-open requests; for UDP bound or connected), and TIME-WAIT sockets
/// where the line has them (TCP over IPv4 only; 0 otherwise).
pub fn parse_sockstat(text: &str, prefix: &str) -> Result<(u64, u64), String> {
    let Some(line) = text.lines().find(|l| l.starts_with(prefix)) else {
        return Err(format!("no {prefix} line"));
    };
    let mut fields = line.split_whitespace().skip(1);
    let (mut inuse, mut tw) = (None, 0);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let v: u64 = value
            .parse()
            .map_err(|_| format!("{prefix} {name} is not a number: {value:?}"))?;
        match name {
            "inuse" => inuse = Some(v),
            "tw" => tw = v,
            _ => {}
        }
    }
    let inuse = inuse.ok_or_else(|| format!("{prefix} lacks inuse"))?;
    Ok((inuse, tw))
}

/// Parses the `Udp6InErrors` and `Udp6RcvbufErrors` lines of a
/// `net/snmp6` file (one `name value` pair per line).
pub fn parse_snmp6_udp(text: &str) -> Result<UdpErrors, String> {
    let mut out = UdpErrors::default();
    let mut found = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let slot = match name {
            "Udp6RcvbufErrors" => &mut out.rcvbuf_errors,
            "Udp6InErrors" => &mut out.in_errors,
            _ => continue,
        };
        *slot = value
            .parse()
            .map_err(|_| format!("{name} is not a number: {value:?}"))?;
        found += 1;
    }
    if found < 2 {
        return Err("no Udp6InErrors and Udp6RcvbufErrors lines".to_string());
    }
    Ok(out)
}

/// Parses `net.ipv4.ip_local_port_range`: two port numbers, low and high.
pub fn parse_port_range(path: &Path, text: &str) -> Result<(u16, u16), ProcError> {
    let bad = || ProcError::Parse {
        path: path.to_path_buf(),
        what: format!("not two port numbers: {:?}", text.trim()),
    };
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next(), numbers.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Ok((lo, hi)),
        _ => Err(bad()),
    }
}

/// Parses a file holding one unsigned number (a sysctl such as
/// `net.core.somaxconn`), naming `path` in the error.
pub fn parse_number(path: &Path, text: &str) -> Result<u64, ProcError> {
    parse_u64(path, text)
}

/// Parses a file holding one signed number (a sysctl such as
/// `net.ipv4.tcp_ehash_entries`, negative when the hash is shared).
pub fn parse_signed(path: &Path, text: &str) -> Result<i64, ProcError> {
    text.trim().parse().map_err(|_| ProcError::Parse {
        path: path.to_path_buf(),
        what: format!("not a number: {:?}", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_ext_pairs_names_with_values() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 29 31\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_tcp_ext(text),
            Ok(TcpExt {
                listen_overflows: Some(29),
                listen_drops: Some(31)
            })
        );
    }

    #[test]
    fn tcp_ext_rejects_damage() {
        assert!(parse_tcp_ext("IpExt: a\nIpExt: 1\n").is_err());
        assert!(parse_tcp_ext("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1\n").is_err());
        assert!(
            parse_tcp_ext("TcpExt: ListenOverflows\nTcpExt: x\n")
                .unwrap_err()
                .contains("not a number")
        );
        // Counters a kernel lacks stay unknown rather than zero.
        assert_eq!(
            parse_tcp_ext("TcpExt: Foo\nTcpExt: 1\n"),
            Ok(TcpExt::default())
        );
    }

    #[test]
    fn udp_counters_of_both_families() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\nUdp: 10 0 7 3 5 0 0 0 0\nUdpLite: InDatagrams InErrors\nUdpLite: 0 0\n";
        assert_eq!(
            parse_snmp_udp(snmp),
            Ok(UdpErrors {
                rcvbuf_errors: 5,
                in_errors: 7
            })
        );
        let snmp6 = "Udp6InDatagrams                 \t4\nUdp6InErrors                    \t2\nUdp6RcvbufErrors                \t1\nUdpLite6InErrors 9\n";
        assert_eq!(
            parse_snmp6_udp(snmp6),
            Ok(UdpErrors {
                rcvbuf_errors: 1,
                in_errors: 2
            })
        );
        assert!(parse_snmp_udp("Tcp: A\nTcp: 1\n").is_err());
        assert!(parse_snmp_udp("Udp: InErrors\nUdp: x\n").is_err());
        assert!(
            parse_snmp6_udp("Udp6InErrors 1\n").is_err(),
            "half is damage"
        );
    }

    #[test]
    fn port_ranges() {
        let p = Path::new("ip_local_port_range");
        assert_eq!(
            parse_port_range(p, "32768\t60999\n").unwrap(),
            (32768, 60999)
        );
        assert!(parse_port_range(p, "60999 32768").is_err());
        assert!(parse_port_range(p, "1").is_err());
        assert!(parse_port_range(p, "1 2 3").is_err());
        assert!(parse_port_range(p, "1 70000").is_err());
    }

    #[test]
    fn unreadable_files_name_their_path() {
        let e = read_u64(Path::new("/nonexistent/somaxconn")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/somaxconn"), "{e}");
    }
}

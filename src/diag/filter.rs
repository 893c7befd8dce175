//! Kernel-side port filters: `INET_DIAG_REQ_BYTECODE` programs that make the
//! kernel skip sockets before building their replies.
//!
//! The kernel runs a program from its start: an op that matches jumps `yes`
//! bytes, one that fails jumps `no` bytes; landing exactly on the end accepts
//! the socket, jumping past it rejects it. Its audit (`inet_diag_bc_audit`
//! and `valid_cc` in `net/ipv4/inet_diag.c`) also insists that every `no`
//! target lies on the chain of `yes` jumps from the start, so each test here
//! is a 12-byte block: the condition (`yes` = 8), a carrier op holding the
//! port in its `no` field, and a `JMP` (`yes` = 4, so the chain continues to
//! the next block) whose `no` goes where a match should lead.

use std::fmt;

/// `INET_DIAG_BC_JMP`: jump by `no`, always.
const BC_JMP: u8 = 1;
/// `INET_DIAG_BC_S_EQ`: local port equals the next op's `no`.
const BC_S_EQ: u8 = 11;
/// `INET_DIAG_BC_D_EQ`: remote port equals the next op's `no`.
const BC_D_EQ: u8 = 12;
/// Size of `struct inet_diag_bc_op`.
const OP: usize = 4;
/// One test: condition, carrier, jump.
const BLOCK: usize = 3 * OP;

/// The most ports one filter may list: two tests each, and every jump must
/// fit the kernel's 16-bit offsets.
pub const MAX_FILTER_PORTS: usize = 2048;

/// What a filter does with sockets on its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep only sockets whose local or remote port is listed: the servers
    /// on those ports and the clients talking to them.
    Only,
    /// Keep every socket except those whose local port is listed: the
    /// servers on those ports. Matching remote ports too would also drop
    /// server sockets whose client happened to pick a listed port as its
    /// ephemeral source port, leaving other ports' figures short.
    Except,
}

/// A set of ports to keep or drop (see [`Mode`] for which end is tested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter {
    mode: Mode,
    ports: Vec<u16>,
    /// The bytecode, built once: every connection walk sends it.
    program: Vec<u8>,
}

/// A port list longer than [`MAX_FILTER_PORTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("port filter of {0} ports exceeds the {MAX_FILTER_PORTS} one request can carry")]
pub struct TooManyPorts(pub usize);

impl PortFilter {
    /// A filter over `ports` (duplicates are dropped); `None` for an empty
    /// list, which is no filter at all.
    pub fn new(mode: Mode, mut ports: Vec<u16>) -> Result<Option<Self>, TooManyPorts> {
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > MAX_FILTER_PORTS {
            return Err(TooManyPorts(ports.len()));
        }
        if ports.is_empty() {
            return Ok(None);
        }
        let program = build_program(mode, &ports);
        Ok(Some(PortFilter {
            mode,
            ports,
            program,
        }))
    }

    fn listed(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The ports, sorted.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// What the kernel program decides, for a socket with these ports.
    pub fn keeps(&self, local: u16, remote: u16) -> bool {
        match self.mode {
            Mode::Only => self.listed(local) || self.listed(remote),
            Mode::Except => !self.listed(local),
        }
    }

    /// Whether a walk under this filter sees every socket that counts for
    /// (role, port): the servers on local `port`, or the clients talking to
    /// remote `port`. Figures are exported only where it does; elsewhere
    /// the walk saw a stray subset (e.g. a server socket kept because its
    /// client's source port is listed) that must not pass for a total.
    pub fn covers(&self, server: bool, port: u16) -> bool {
        match self.mode {
            Mode::Only => self.listed(port),
            // Clients' local ports are ephemeral; one that happens to be
            // listed is skipped, a loss too small and random to withhold
            // every client figure for.
            Mode::Except => !server || !self.listed(port),
        }
    }

    /// The bytecode program.
    pub fn program(&self) -> &[u8] {
        &self.program
    }
}

fn build_program(mode: Mode, ports: &[u16]) -> Vec<u8> {
    match mode {
        Mode::Only => {
            let tests: Vec<(u8, u16)> = ports
                .iter()
                .flat_map(|&p| [(BC_S_EQ, p), (BC_D_EQ, p)])
                .collect();
            keep_on_match(&tests)
        }
        Mode::Except => {
            let tests: Vec<(u8, u16)> = ports.iter().map(|&p| (BC_S_EQ, p)).collect();
            reject_on_match(&tests)
        }
    }
}

impl fmt::Display for PortFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.mode {
            Mode::Only => "only",
            Mode::Except => "except",
        };
        write!(f, "{what} {} port(s)", self.ports.len())
    }
}

fn push_op(program: &mut Vec<u8>, code: u8, yes: u8, no: usize) {
    program.push(code);
    program.push(yes);
    // Offsets stay below BLOCK * 2 * MAX_FILTER_PORTS + OP < 65536.
    program.extend_from_slice(&(no as u16).to_ne_bytes());
}

/// Accept on the first match: a match reaches its JMP, which jumps to the
/// end; a miss moves on; the last miss overshoots the end and rejects.
fn keep_on_match(tests: &[(u8, u16)]) -> Vec<u8> {
    let total = tests.len() * BLOCK;
    let mut program = Vec::with_capacity(total);
    for (i, &(code, port)) in tests.iter().enumerate() {
        let remaining = total - i * BLOCK;
        let miss = if i + 1 == tests.len() {
            BLOCK + 4
        } else {
            BLOCK
        };
        push_op(&mut program, code, (2 * OP) as u8, miss);
        push_op(&mut program, 0, 0, usize::from(port));
        push_op(&mut program, BC_JMP, OP as u8, remaining - 2 * OP);
    }
    program
}

/// Reject on the first match: a match's JMP goes to a final rejecting op;
/// a miss moves on; the last miss jumps exactly to the end, over it.
fn reject_on_match(tests: &[(u8, u16)]) -> Vec<u8> {
    let total = tests.len() * BLOCK + OP;
    let mut program = Vec::with_capacity(total);
    for (i, &(code, port)) in tests.iter().enumerate() {
        let remaining = total - i * BLOCK;
        let miss = if i + 1 == tests.len() {
            BLOCK + OP
        } else {
            BLOCK
        };
        push_op(&mut program, code, (2 * OP) as u8, miss);
        push_op(&mut program, 0, 0, usize::from(port));
        // From this JMP to the rejecting op at the end.
        push_op(&mut program, BC_JMP, OP as u8, remaining - 2 * OP - OP);
    }
    // The rejecting op: 4 bytes from the end, it jumps 8.
    push_op(&mut program, BC_JMP, OP as u8, 2 * OP);
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program the way `inet_diag_bc_run` does, for the two ops we use.
    fn run(program: &[u8], sport: u16, dport: u16) -> bool {
        let mut at = 0usize;
        let mut len = program.len() as isize;
        while len > 0 {
            let code = program[at];
            let yes = program[at + 1] as isize;
            let no = u16::from_ne_bytes([program[at + 2], program[at + 3]]) as isize;
            let carried = || u16::from_ne_bytes([program[at + 6], program[at + 7]]);
            let matched = match code {
                BC_JMP => false,
                BC_S_EQ => sport == carried(),
                BC_D_EQ => dport == carried(),
                _ => panic!("unexpected op {code}"),
            };
            let step = if matched { yes } else { no };
            len -= step;
            at = (at as isize + step) as usize;
        }
        len == 0
    }

    #[test]
    fn programs_decide_like_the_userspace_mirror() {
        for mode in [Mode::Only, Mode::Except] {
            let f = PortFilter::new(mode, vec![443, 80, 80]).unwrap().unwrap();
            assert_eq!(f.ports(), &[80, 443]);
            let p = f.program();
            for (s, d) in [(80, 5000), (5000, 80), (443, 443), (5000, 5001), (81, 79)] {
                assert_eq!(run(p, s, d), f.keeps(s, d), "{mode:?} {s}->{d}");
            }
        }
    }

    #[test]
    fn too_many_ports_are_refused() {
        assert!(PortFilter::new(Mode::Only, (0..=MAX_FILTER_PORTS as u16).collect()).is_err());
        let f = PortFilter::new(Mode::Only, (0..MAX_FILTER_PORTS as u16).collect())
            .unwrap()
            .unwrap();
        assert!(
            f.program().len() < 65536,
            "fits the attribute's 16-bit length"
        );
        assert_eq!(
            PortFilter::new(Mode::Except, Vec::new()),
            Ok(None),
            "empty is no filter"
        );
    }
}

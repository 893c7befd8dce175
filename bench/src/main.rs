//! Benchmark of `sockdiag-exporter` on N loopback TCP connections.
//!
//! One binary plays every role, so that every measured command and every helper is a child
//! process started from the same executable:
//!
//! - the outer process (what the user runs) re-executes itself in a fresh user + network
//!   namespace and forwards Ctrl-C / SIGTERM to it;
//! - `internal-namespace` is the coordinator inside that namespace: it builds the
//!   connections with help of `internal-worker` processes, measures, and reports;
//! - `floor` is the minimal inet_diag dump every netlink collector is compared with;
//! - `namespaces` measures what collecting many network namespaces costs per sample, with
//!   `internal-netns-holder` processes each holding a child namespace; `namespaces --uneven`
//!   runs the daemon at its default flags on 100 namespaces spread unevenly (issue 12);
//! - `unix` measures the unix listener pass on S unix sockets held by `internal-unix-worker`
//!   processes, against `unix-floor` (a raw unix_diag dump) and `ss -xl`;
//! - `udp` measures the UDP receiver pass on S UDP sockets held by `internal-udp-worker`
//!   processes, against `udp-floor` (a raw inet_diag UDP dump with SKMEMINFO) and `ss -uanm`;
//! - `lookup` times dating the connections waiting in accept queues: the bare walk, the walk
//!   with tcp_info for all, and the bare walk plus exact lookups of the waiting ones;
//! - `churn` runs the daemon under connection, listener or namespace churn and checks what
//!   it serves and what it holds (`internal-churn-load` makes the TCP churn).

mod churn;
mod daemon;
mod diag;
mod helper;
mod lookup_bench;
mod measure;
mod namespace;
mod netns_bench;
mod netns_uneven;
mod proc_util;
mod render;
mod report;
mod rng;
mod setup;
mod tls_bench;
mod top_bench;
mod udp_bench;
mod udp_diag;
mod unix_bench;
mod unix_diag;
mod worker;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sockdiag-bench",
    about = "Measure sockdiag-exporter against a raw inet_diag dump and ss on N loopback TCP \
             connections, inside a private user + network namespace",
    after_help = "Run as: cargo run --release -p sockdiag-bench -- --connections 100000\n\
                  Works as root and as an ordinary user (needs unprivileged user namespaces)."
)]
struct Cli {
    #[command(flatten)]
    opts: BenchOpts,

    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchOpts {
    /// Client connections to set up (each has a server end too, so about 2N sockets).
    /// Accepts a plain number or a k / M suffix (100k, 1M).
    #[arg(long, default_value = "10000", value_parser = parse_count)]
    pub connections: u64,

    /// Timed runs of each command; the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,

    /// The exporter binary [default: <workspace>/target/release/sockdiag-exporter]. Also
    /// accepted after a subcommand.
    #[arg(long, global = true, value_name = "PATH")]
    pub exporter: Option<PathBuf>,

    /// A second exporter binary (e.g. the build before a change), measured as extra rows
    /// in the same rounds, each run back to back with the row it pairs with; the table adds
    /// the median of the per-round ratios new / baseline.
    #[arg(long, value_name = "PATH")]
    pub baseline_exporter: Option<PathBuf>,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Run the exporter daemon for this many seconds and report its CPU use and peak RSS
    /// (0 skips it).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub daemon_seconds: u64,

    /// Run `top` live (in a tmux pane) for this many seconds, at its default budget and
    /// with the budget lifted, then `ss -ltn; ss -tn` every second as long, and report
    /// each one's CPU (0 skips it).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub top_seconds: u64,

    /// Connections left waiting in accept queues (at most N). A non-empty queue makes the
    /// exporter read tcp_info to date them; 0 measures the walk without it.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub queued: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One minimal inet_diag dump of all TCP sockets (IPv4 then IPv6) of the current network
    /// namespace: counts the replies and sums Recv-Q / Send-Q, nothing else. This is the floor
    /// every netlink collector is compared with.
    Floor,

    /// Time /metrics scrapes of the real daemon holding many series: L listeners with one
    /// queued connection each, in a private namespace.
    Render(render::RenderOpts),

    /// What TLS and basic auth (--web.config.file) cost a scrape: a plain and a TLS daemon
    /// on the same L listeners, scraped in turn on new connections, in a private namespace.
    Tls(tls_bench::TlsOpts),

    /// Per-sample cost of collecting many network namespaces: K small child namespaces
    /// (the daemon on all of them against the daemon on its own only), or one big namespace
    /// next to small ones with shared and with per-namespace hash tables
    /// (--big-ns-connections), inside a private namespace.
    Namespaces(netns_bench::NamespacesOpts),

    /// The unix listener pass at scale: S unix sockets (L listeners, some with clients never
    /// accepted, some over full) in a private namespace; the exporter's unix-only snapshot
    /// against a raw unix_diag dump and `ss -xl`, and optionally the daemon's CPU on them.
    Unix(unix_bench::UnixOpts),

    /// One raw unix_diag dump of the listening unix sockets of the current network
    /// namespace, with names and queue figures: the floor of the unix benchmark.
    UnixFloor,

    /// The UDP receiver pass at scale: S UDP sockets (R receivers, some with datagrams
    /// queued, some flooded until they drop; the rest clients on ephemeral ports) in a
    /// private namespace; the exporter's udp-only snapshot against a raw UDP dump and
    /// `ss -uanm`, and optionally the daemon's CPU on them.
    Udp(udp_bench::UdpOpts),

    /// One raw inet_diag dump of the UDP sockets of the current network namespace, both
    /// families, with SKMEMINFO: the floor of the udp benchmark.
    UdpFloor,

    /// Robustness under churn, bounded in time: the daemon on fast intervals while a load
    /// loop opens and resets TCP connections and a listener comes and goes every 100 ms
    /// (or, with --namespaces K, while K network namespaces are created and deleted);
    /// checks /metrics every 500 ms and the daemon's memory, threads and descriptors.
    Churn(churn::ChurnOpts),

    /// What dating the connections waiting in accept queues costs, on --connections N with
    /// --queued Q of them waiting: the bare walk, the walk with tcp_info for every socket,
    /// and the bare walk plus exact batched lookups of the waiting ones, paired in rounds.
    Lookup(lookup_bench::LookupOpts),

    /// The lookup benchmark inside the private namespace.
    #[command(hide = true)]
    InternalLookup(lookup_bench::LookupOpts),

    /// Coordinator inside the private namespace (started by the outer process).
    #[command(hide = true)]
    InternalNamespace,

    /// The unix benchmark inside the private namespace.
    #[command(hide = true)]
    InternalUnix(unix_bench::UnixOpts),

    /// Holder of a share of the unix sockets (started by the unix benchmark).
    #[command(hide = true)]
    InternalUnixWorker(unix_bench::UnixWorkerArgs),

    /// The udp benchmark inside the private namespace.
    #[command(hide = true)]
    InternalUdp(udp_bench::UdpOpts),

    /// Holder of a share of the UDP sockets (started by the udp benchmark).
    #[command(hide = true)]
    InternalUdpWorker(udp_bench::UdpWorkerArgs),

    /// The churn run inside the private namespace.
    #[command(hide = true)]
    InternalChurn(churn::ChurnOpts),

    /// The TCP load of the churn run.
    #[command(hide = true)]
    InternalChurnLoad(churn::LoadArgs),

    /// The render benchmark inside the private namespace.
    #[command(hide = true)]
    InternalRender(render::RenderOpts),

    /// The TLS benchmark inside the private namespace.
    #[command(hide = true)]
    InternalTls(tls_bench::TlsOpts),

    /// The namespaces benchmark inside the private namespace.
    #[command(hide = true)]
    InternalNamespaces(netns_bench::NamespacesOpts),

    /// Holder of one child network namespace (started by the namespaces benchmark).
    #[command(hide = true)]
    InternalNetnsHolder(netns_bench::HolderArgs),

    /// Connection holder inside the private namespace (started by the coordinator).
    #[command(hide = true)]
    InternalWorker(worker::WorkerArgs),
}

/// Where the workspace build puts the exporter, known at compile time so that the bench
/// finds it from any working directory.
fn default_exporter_path() -> PathBuf {
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench_dir
        .parent()
        .unwrap_or(bench_dir)
        .join("target/release/sockdiag-exporter")
}

/// A path flag's value made absolute against the user's working directory before anything
/// else happens, so that messages name the file the user meant; `flag` names it if that
/// fails.
pub fn absolute(given: Option<PathBuf>, flag: &str) -> Result<Option<PathBuf>> {
    given
        .map(|p| {
            std::path::absolute(&p).with_context(|| format!("resolving {flag} {}", p.display()))
        })
        .transpose()
}

/// The exporter to measure: `--exporter` made absolute, else the workspace's release build.
pub fn exporter_path(given: Option<&Path>) -> Result<PathBuf> {
    Ok(absolute(given.map(Path::to_path_buf), "--exporter")?.unwrap_or_else(default_exporter_path))
}

/// What the subcommands that time the exporter against a floor and `ss` in rounds (`unix`,
/// `udp`) all take, and forward to their coordinator inside the namespace.
#[derive(Args, Debug, Clone)]
pub struct RoundOpts {
    /// Timed runs of each command; the table shows medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,

    /// A second exporter binary (e.g. the build before a change), measured as an extra row
    /// in the same rounds, each run back to back with the row it pairs with; skipped with a
    /// note if it lacks the collector measured.
    #[arg(long, value_name = "PATH")]
    pub baseline_exporter: Option<PathBuf>,

    /// Also run the daemon for this many seconds on the sockets, with and without the
    /// collector measured, and report its CPU and that collector's pass duration as it
    /// exports it (0 skips it).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub daemon_seconds: u64,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

impl RoundOpts {
    /// Resolves the paths against the user's working directory, which the coordinator
    /// does not share.
    pub fn resolve(&mut self) -> Result<()> {
        self.baseline_exporter = absolute(self.baseline_exporter.take(), "--baseline-exporter")?;
        self.json = absolute(self.json.take(), "--json")?;
        Ok(())
    }

    /// Appends these options to the coordinator's arguments.
    pub fn push_args(&self, args: &mut Vec<OsString>) {
        args.extend([
            "--runs".into(),
            self.runs.to_string().into(),
            "--daemon-seconds".into(),
            self.daemon_seconds.to_string().into(),
        ]);
        push_flag(
            args,
            "--baseline-exporter",
            self.baseline_exporter.as_deref(),
        );
        push_flag(args, "--json", self.json.as_deref());
    }
}

/// Appends `flag value` to the arguments of a coordinator when the value is given.
pub fn push_flag(args: &mut Vec<OsString>, flag: &str, value: Option<&Path>) {
    if let Some(v) = value {
        args.extend([flag.into(), v.into()]);
    }
}

/// [`exporter_path`], which must exist.
pub fn resolve_exporter(given: Option<&Path>) -> Result<PathBuf> {
    let exporter = exporter_path(given)?;
    if let Some(why) = exporter_missing(&exporter) {
        bail!("{why}");
    }
    Ok(exporter)
}

/// Why `exporter` cannot be run, if it cannot: it is not there.
pub fn exporter_missing(exporter: &Path) -> Option<String> {
    (!exporter.is_file()).then(|| {
        format!(
            "{} not found: build it with `cargo build --release`",
            exporter.display()
        )
    })
}

impl BenchOpts {
    /// The exporter inside the namespace: as the outer process passed it, else the
    /// workspace's release build.
    pub fn exporter(&self) -> PathBuf {
        self.exporter.clone().unwrap_or_else(default_exporter_path)
    }
}

fn parse_count(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000),
        Some((i, 'm' | 'M')) => (&t[..i], 1_000_000),
        _ => (t.as_str(), 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("{text:?} is not a count: {e}"))?;
    let n = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if !(1..=5_000_000).contains(&n) {
        return Err(format!("{n} is outside 1..=5000000"));
    }
    Ok(n)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => run_outer(cli.opts),
        Some(Cmd::Floor) => diag::floor_main(),
        Some(Cmd::InternalNamespace) => setup::coordinator_main(&cli.opts),
        Some(Cmd::Lookup(l)) => run_lookup(cli.opts, l),
        Some(Cmd::InternalLookup(l)) => lookup_bench::internal_main(&cli.opts, &l),
        Some(Cmd::Render(r)) => run_render(cli.opts, r),
        Some(Cmd::InternalRender(r)) => render::internal_main(&r, &cli.opts.exporter()),
        Some(Cmd::Tls(t)) => run_tls(cli.opts, t),
        Some(Cmd::InternalTls(t)) => tls_bench::internal_main(&t, &cli.opts.exporter()),
        Some(Cmd::Namespaces(n)) => netns_bench::run_outer(cli.opts, n),
        Some(Cmd::InternalNamespaces(n)) => resolve_exporter(cli.opts.exporter.as_deref())
            .and_then(|exporter| namespaces_main(&n, &exporter)),
        Some(Cmd::InternalNetnsHolder(args)) => netns_bench::holder_main(&args),
        Some(Cmd::InternalWorker(args)) => worker::worker_main(&args),
        Some(Cmd::Unix(u)) => unix_bench::run_outer(cli.opts, u),
        Some(Cmd::UnixFloor) => unix_diag::floor_main(),
        Some(Cmd::InternalUnix(u)) => unix_bench::internal_main(&cli.opts, &u),
        Some(Cmd::InternalUnixWorker(args)) => unix_bench::worker_main(&args),
        Some(Cmd::Udp(u)) => udp_bench::run_outer(cli.opts, u),
        Some(Cmd::UdpFloor) => udp_diag::floor_main(),
        Some(Cmd::InternalUdp(u)) => udp_bench::internal_main(&cli.opts, &u),
        Some(Cmd::InternalUdpWorker(args)) => udp_bench::worker_main(&args),
        Some(Cmd::Churn(c)) => churn::run_outer(cli.opts, c),
        Some(Cmd::InternalChurn(c)) => churn::internal_main(&cli.opts, &c),
        Some(Cmd::InternalChurnLoad(args)) => churn::load_main(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockdiag-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `namespaces` coordinator inside the private namespace, on the scenario its options
/// ask for: `--uneven`'s layout, else those of [`netns_bench`].
fn namespaces_main(opts: &netns_bench::NamespacesOpts, exporter: &Path) -> Result<ExitCode> {
    netns_bench::internal_main(opts, exporter, |ctx| match opts.big_connections() {
        Some(n) if opts.uneven => netns_uneven::uneven(ctx, n),
        _ => netns_bench::even(ctx),
    })
}

/// Resolves paths against the user's working directory before anything else happens, so
/// that messages name the file the user meant, then hands over to a coordinator inside a
/// new namespace.
fn run_outer(mut opts: BenchOpts) -> Result<ExitCode> {
    opts.exporter = Some(exporter_path(opts.exporter.as_deref())?);
    opts.baseline_exporter = absolute(opts.baseline_exporter.take(), "--baseline-exporter")?;
    opts.json = absolute(opts.json.take(), "--json")?;

    let mut args: Vec<OsString> = vec![
        "--connections".into(),
        opts.connections.to_string().into(),
        "--runs".into(),
        opts.runs.to_string().into(),
        "--daemon-seconds".into(),
        opts.daemon_seconds.to_string().into(),
        "--queued".into(),
        opts.queued.to_string().into(),
        "--top-seconds".into(),
        opts.top_seconds.to_string().into(),
    ];
    push_flag(&mut args, "--exporter", opts.exporter.as_deref());
    push_flag(&mut args, "--json", opts.json.as_deref());
    push_flag(
        &mut args,
        "--baseline-exporter",
        opts.baseline_exporter.as_deref(),
    );
    args.push("internal-namespace".into());

    let status = namespace::run_in_new_namespace(&args)?;
    namespace::exit_code_of(status, "the namespace coordinator")
}

/// Hands `lookup` over to a coordinator inside a new namespace.
fn run_lookup(opts: BenchOpts, lookup: lookup_bench::LookupOpts) -> Result<ExitCode> {
    let args: Vec<OsString> = vec![
        "--connections".into(),
        opts.connections.to_string().into(),
        "--runs".into(),
        opts.runs.to_string().into(),
        "--queued".into(),
        opts.queued.to_string().into(),
        "internal-lookup".into(),
        "--batch".into(),
        lookup.batch.to_string().into(),
    ];
    let status = namespace::run_in_new_namespace(&args)?;
    namespace::exit_code_of(status, "the lookup benchmark")
}

/// Hands `tls` over to a coordinator inside a new namespace.
fn run_tls(opts: BenchOpts, tls: tls_bench::TlsOpts) -> Result<ExitCode> {
    let exporter = resolve_exporter(opts.exporter.as_deref())?;
    let args: Vec<OsString> = vec![
        "--exporter".into(),
        exporter.into(),
        "internal-tls".into(),
        "--listeners".into(),
        tls.listeners.to_string().into(),
        "--scrapes".into(),
        tls.scrapes.to_string().into(),
    ];
    let status = namespace::run_in_new_namespace(&args)?;
    namespace::exit_code_of(status, "the TLS benchmark")
}

/// Hands `render` over to a coordinator inside a new namespace.
fn run_render(opts: BenchOpts, render: render::RenderOpts) -> Result<ExitCode> {
    let exporter = resolve_exporter(opts.exporter.as_deref())?;
    let args: Vec<OsString> = vec![
        "--exporter".into(),
        exporter.into(),
        "internal-render".into(),
        "--listeners".into(),
        render.listeners.to_string().into(),
        "--scrapes".into(),
        render.scrapes.to_string().into(),
    ];
    let status = namespace::run_in_new_namespace(&args)?;
    namespace::exit_code_of(status, "the render benchmark")
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_accept_suffixes_and_reject_nonsense() {
        assert_eq!(parse_count("10000"), Ok(10_000));
        assert_eq!(parse_count("100k"), Ok(100_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("1_000"), Ok(1_000));
        assert!(parse_count("0").is_err());
        assert!(parse_count("6M").is_err());
        assert!(parse_count("k").is_err());
        assert!(parse_count("-5").is_err());
    }
}

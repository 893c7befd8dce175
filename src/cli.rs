//! Command-line flags: one definition drives parsing, `--help` and the
//! README's flags table (checked by a test so they cannot drift).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Parser, Subcommand, ValueEnum};

use regex::Regex;

use crate::collect::{Collector, Common, REGISTRY};
use crate::netns::{DiscoveryConfig, NetnsFilter};
use crate::sampler::{Config as SamplerConfig, NETNS};

/// Prometheus exporter for Linux socket queues.
///
/// Reads TCP, UDP and unix sockets straight from the kernel over
/// NETLINK_SOCK_DIAG, in every network namespace, and serves, per listener
/// (TCP, and unix stream/seqpacket such as php-fpm or gunicorn sockets),
/// the accept queue against its limit (now, peak, time full) and the
/// process that owns it; for TCP also unaccepted connections (count,
/// bytes, age), SYN-RECV requests and drops; per UDP receiver, the receive
/// queue against its buffer, its peak and the datagrams dropped; per port,
/// connection states and Send-Q/Recv-Q by role; per namespace,
/// ListenOverflows/ListenDrops, UDP receive-buffer errors and somaxconn.
/// Scrapes read the latest sample and never make the kernel work.
#[derive(Debug, Parser)]
#[command(
    name = "sockdiag-exporter",
    version,
    about,
    long_about,
    max_term_width = 100
)]
pub struct Cli {
    /// Address to serve HTTP on: HOST:PORT, [IPV6]:PORT, or :PORT for every
    /// address. Repeat it to serve on several; --web.max-connections covers
    /// them all together.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = ":19101",
        action = ArgAction::Append
    )]
    pub listen_address: Vec<String>,

    /// Serve on the listening TCP sockets systemd passes (socket activation:
    /// a .socket unit with ListenStream=, or systemd-socket-activate)
    /// instead of --web.listen-address, which may not be given with it.
    /// Fails at start when no socket was passed.
    #[arg(long = "web.systemd-socket", conflicts_with = "listen_address")]
    pub systemd_socket: bool,

    /// Web configuration file in the Prometheus exporter-toolkit format: TLS
    /// (tls_server_config, client certificates), bcrypt basic_auth_users and
    /// http_server_config headers. Re-read when it or a certificate it names
    /// changes; a bad file at start is an error, later the last good one stays.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<std::path::PathBuf>,

    /// Path of the metrics page.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_path)]
    pub telemetry_path: String,

    /// Requests served at once; more get 503 at once instead of queueing.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_requests: u32,

    /// Open HTTP connections allowed, over every listen address. When all
    /// are open, a new one is let in by closing one not doing useful work,
    /// from the client address holding the most: the one sending its
    /// first request head (or TLS handshake) the longest, else one whose
    /// answer a client has not read for longer than --web.request-timeout,
    /// else the one idle on keep-alive the longest. Only when every
    /// connection is serving a request is the new one closed at once.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// Time a client has to send a request's headers, and to finish a TLS
    /// handshake before that. The same limit bounds how long a keep-alive
    /// connection (HTTP/1 or HTTP/2) may wait idle for its next request,
    /// so idle connections are closed after it too.
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", default_value = "3s", value_parser = parse_timeout)]
    pub read_header_timeout: Duration,

    /// Time a request's answer may take to render once its headers are
    /// read (and its password checked): a render that takes longer gets
    /// 503. A connection whose answer waits longer than this on a client
    /// that does not read it may be closed for a newcomer at the cap.
    #[arg(long = "web.request-timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub request_timeout: Duration,

    /// Time allowed on SIGTERM/SIGINT for requests in flight to finish.
    #[arg(long = "web.shutdown-timeout", value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub shutdown_timeout: Duration,

    /// Log level: error, warn, info, debug.
    #[arg(
        long = "log.level",
        value_name = "LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: LogLevel,

    /// Which collectors run, and how often.
    #[command(flatten)]
    pub collectors: CollectorFlags,

    /// `snapshot` or `top`, or none to run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take one full sample of every namespace the daemon would collect,
    /// print it, and exit.
    ///
    /// The `ss -ltn; ss -xl; ss -ulnm; ss -tn` replacement for a person at
    /// a shell: per namespace, TCP and unix listeners with queue, limit,
    /// fill, drops and owner, UDP receivers with queue, buffer, fill and
    /// drops, then ports by role. The peak and full-time figures need
    /// the daemon's repeated sampling and are not shown. Exits 1 when a
    /// sample failed (a namespace that may not be entered is reported, not
    /// a failure).
    Snapshot {
        /// Output format.
        #[arg(long, value_name = "FORMAT", default_value = "table")]
        format: Format,
    },
    /// Watch every queue on the node live, fullest first: `watch ss -ltn`
    /// with the limit, FULL, drops per second and the owner.
    ///
    /// One row per TCP and unix listener and UDP receiver of every
    /// namespace the daemon would collect, sorted by fill (queue / limit),
    /// FULL in words when the kernel refuses new connections; with drops
    /// per second, half-open requests (SYN-Q), the age of the oldest
    /// unaccepted connection, the owning process (and its unit or
    /// container) and the last minute of the queue. Below, clients by
    /// remote port: SYN-SENT, Send-Q and the gap between clients'
    /// ESTABLISHED and the server's. Keys: ? for help, / filter, s sort,
    /// Enter detail, p pause, q quit. Not on a terminal, or with --once or
    /// --iterations, it prints plain text.
    Top(TopArgs),
}

/// `top`'s own flags; the collector flags (which collectors, namespaces,
/// paths) apply as for the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Time between refreshes. Sampling here, listeners are sampled at
    /// least this often, and connections (SYN-Q, bytes, oldest, clients)
    /// walked this often within --collector.connections.cpu-budget.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_top_interval)]
    pub interval: Duration,

    /// Take one whole sample of every namespace, print it as plain text
    /// and exit. DROP/s needs two frames: use --iterations 2 for it.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,

    /// Print this many frames as plain text, --interval apart (the first
    /// after one interval), then exit. Plain text is also what `top`
    /// writes when its output is not a terminal (then until interrupted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: Option<u32>,

    /// Read a running daemon's metrics page instead of sampling here, so
    /// `top` needs no privileges on this machine: http://HOST:PORT (its
    /// /metrics) or a whole URL; http://USER:PASSWORD@HOST:PORT for basic
    /// auth; https://... for a daemon serving TLS (--web.config.file).
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,

    /// With an https --from: the CA that signed the daemon's certificate
    /// (PEM). Default: the system's CA bundle.
    #[arg(long = "from.ca-file", value_name = "FILE", requires = "from")]
    pub from_ca_file: Option<std::path::PathBuf>,

    /// With an https --from: a client certificate (PEM), for a daemon that
    /// requires one (client_auth_type RequireAndVerifyClientCert).
    #[arg(
        long = "from.cert-file",
        value_name = "FILE",
        requires_all = ["from", "from_key_file"]
    )]
    pub from_cert_file: Option<std::path::PathBuf>,

    /// With --from.cert-file: its private key (PEM).
    #[arg(
        long = "from.key-file",
        value_name = "FILE",
        requires_all = ["from", "from_cert_file"]
    )]
    pub from_key_file: Option<std::path::PathBuf>,

    /// With an https --from: the name to check the daemon's certificate
    /// against, when the URL reaches it by another (an IP address, a
    /// tunnel's localhost).
    #[arg(long = "from.server-name", value_name = "NAME", requires = "from")]
    pub from_server_name: Option<String>,

    /// Show only queues whose netns, address, port, kind or owner contains
    /// this text (any case); a number matches a port exactly. As typed
    /// after `/` in the live view.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
}

/// A refresh period for `top`: at least 100 ms (a person cannot read
/// faster, and each refresh samples), at most an hour.
fn parse_top_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{text:?} is too short: at least 100ms"));
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is too long: at most 1h"));
    }
    Ok(d)
}

/// `snapshot` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start-up, shutdown and state changes.
    Info,
    /// Everything, including each failed sample.
    Debug,
}

impl LogLevel {
    /// As a tracing level.
    pub fn tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
        }
    }
}

/// Collector switches and settings, shared by the daemon and `snapshot`:
/// the driver's own flags, then a `--collector.<name>` /
/// `--no-collector.<name>` pair and the settings of every collector in
/// the registry, each declared by its collector.
#[derive(Debug, Clone)]
pub struct CollectorFlags {
    /// The driver's settings.
    pub driver: DriverFlags,
    /// Whether each switchable name (every collector, and `netns`) is on.
    enabled: BTreeMap<&'static str, bool>,
    /// Everything parsed, for the collectors to read their own flags.
    matches: ArgMatches,
}

/// A `--collector.<name>` switch.
struct Switch {
    name: &'static str,
    default_enabled: bool,
    help: &'static str,
}

/// Namespace discovery is switched like a collector.
const NETNS_SWITCH: Switch = Switch {
    name: NETNS,
    default_enabled: true,
    help: "find every network namespace on the node (from /proc/*/ns/net and the ip netns \
           directory) and collect each one; without it only the daemon's own namespace is \
           collected. Entering others needs CAP_SYS_ADMIN; without it they are skipped (logged \
           once, sockdiag_netns_up 0).",
};

fn switches() -> impl Iterator<Item = Switch> {
    REGISTRY
        .iter()
        .map(|r| Switch {
            name: r.name,
            default_enabled: r.default_enabled,
            help: r.help,
        })
        .chain(std::iter::once(NETNS_SWITCH))
}

impl clap::FromArgMatches for CollectorFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let driver = DriverFlags::from_arg_matches(m)?;
        let enabled = switches()
            .map(|s| {
                let on = m.get_flag(&format!("collector.{}", s.name));
                let off = m.get_flag(&format!("no-collector.{}", s.name));
                // The later of the two wins (they override each other), so
                // at most one is set.
                (s.name, if on || off { on } else { s.default_enabled })
            })
            .collect();
        Ok(CollectorFlags {
            driver,
            enabled,
            matches: m.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for CollectorFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd;
        for s in switches() {
            let (on, off) = (
                format!("collector.{}", s.name),
                format!("no-collector.{}", s.name),
            );
            let default = if s.default_enabled { " (default)" } else { "" };
            cmd = cmd
                .arg(
                    Arg::new(on.clone())
                        .long(on.clone())
                        .action(ArgAction::SetTrue)
                        .overrides_with(off.clone())
                        .global(true)
                        .help(format!(
                            "Enable the {} collector{default}: {}",
                            s.name, s.help
                        )),
                )
                .arg(
                    Arg::new(off.clone())
                        .long(off)
                        .action(ArgAction::SetTrue)
                        .overrides_with(on)
                        .global(true)
                        .help(format!("Disable the {} collector.", s.name)),
                );
        }
        cmd = DriverFlags::augment_args(cmd);
        for r in REGISTRY {
            cmd = cmd.args((r.args)());
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The driver's settings: tier intervals, namespaces, paths.
#[derive(Debug, Clone, clap::Args)]
pub struct DriverFlags {
    /// How often to look for network namespaces that appeared or vanished.
    /// A vanished namespace's series go at the next look; one look stats
    /// /proc/<pid>/ns/net of every process.
    #[arg(long = "collector.netns.rescan-interval", value_name = "DURATION", default_value = "10s", value_parser = parse_interval, global = true)]
    pub netns_rescan_interval: Duration,

    /// Collect only namespaces whose netns label matches this regular
    /// expression (whole name), e.g. 'host|pod:.*'.
    #[arg(long = "collector.netns.include", value_name = "REGEX", value_parser = parse_regex, global = true)]
    pub netns_include: Option<Regex>,

    /// Skip namespaces whose netns label matches this regular expression
    /// (whole name), e.g. 'pod:kube-system/.*'. Applied after include.
    #[arg(long = "collector.netns.exclude", value_name = "REGEX", value_parser = parse_regex, global = true)]
    pub netns_exclude: Option<Regex>,

    /// How often the listeners collector samples. Shorter catches shorter
    /// bursts in the peak and full-time figures; each sample costs one dump
    /// of the listening sockets only (tens of microseconds for a few hundred
    /// listeners).
    #[arg(long = "collector.listeners.interval", value_name = "DURATION", default_value = "200ms", value_parser = parse_interval, global = true)]
    pub listener_interval: Duration,

    /// How long the peak accept-queue length is remembered.
    #[arg(long = "collector.listeners.peak-window", value_name = "DURATION", default_value = "1m", value_parser = parse_interval, global = true)]
    pub peak_window: Duration,

    /// How often the connections and netstat collectors sample. Each
    /// connections sample walks every TCP socket in the kernel: at 1M
    /// connections that is about 2 s of one core, so keep this well above
    /// the sample's own duration (see sockdiag_collector_duration_seconds).
    #[arg(long = "collector.connections.interval", value_name = "DURATION", default_value = "15s", value_parser = parse_interval, global = true)]
    pub connection_interval: Duration,

    /// Where procfs is mounted. In a container, mount the host's /proc here
    /// (with the host's pid namespace) to see every namespace and process.
    #[arg(
        long = "path.procfs",
        value_name = "PATH",
        default_value = "/proc",
        global = true
    )]
    pub procfs: PathBuf,

    /// Where `ip netns` keeps named namespaces; their names label them.
    #[arg(
        long = "path.run-netns",
        value_name = "PATH",
        default_value = "/run/netns",
        global = true
    )]
    pub run_netns: PathBuf,

    /// The kubelet's pod log directory (entries <namespace>_<pod>_<uid>),
    /// which turns pod UIDs into pod:<namespace>/<name> labels.
    #[arg(
        long = "path.pod-logs",
        value_name = "PATH",
        default_value = "/var/log/pods",
        global = true
    )]
    pub pod_logs: PathBuf,
}

impl CollectorFlags {
    /// Whether collector (or `netns`) `name` is on.
    pub fn enabled(&self, name: &str) -> bool {
        self.enabled.get(name).copied().unwrap_or(false)
    }

    /// The driver's settings.
    pub fn sampler_config(&self) -> SamplerConfig {
        let d = &self.driver;
        SamplerConfig {
            fast_interval: d.listener_interval,
            full_interval: d.connection_interval,
            discovery: DiscoveryConfig {
                enabled: self.enabled(NETNS),
                rescan_interval: d.netns_rescan_interval,
                filter: NetnsFilter {
                    include: d.netns_include.clone(),
                    exclude: d.netns_exclude.clone(),
                },
                procfs: d.procfs.clone(),
                run_netns: d.run_netns.clone(),
                pod_logs: d.pod_logs.clone(),
            },
            procfs: d.procfs.clone(),
        }
    }

    /// Names of the enabled collectors, plus `netns` when discovery is on:
    /// the `collector` label values of the exporter's own health metrics.
    pub fn health_names(&self, collectors: &[Arc<dyn Collector>]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> =
            collectors.iter().map(|c| c.registration().name).collect();
        if self.enabled(NETNS) {
            names.push(NETNS);
        }
        names
    }

    /// The enabled collectors, built from their flags, in registry order.
    /// `one_shot` is for `snapshot`, which looks once.
    pub fn build(&self, one_shot: bool) -> Vec<Arc<dyn Collector>> {
        let d = &self.driver;
        let common = Common {
            procfs: d.procfs.clone(),
            fast_interval: d.listener_interval,
            full_interval: d.connection_interval,
            peak_window: d.peak_window,
            owner_retry: d.netns_rescan_interval,
            one_shot,
        };
        REGISTRY
            .iter()
            .filter(|r| self.enabled(r.name))
            .map(|r| Arc::from((r.build)(&self.matches, &common)))
            .collect()
    }
}

/// Parses a regular expression that must match a whole name.
fn parse_regex(text: &str) -> Result<Regex, String> {
    NetnsFilter::pattern(text).map_err(|e| format!("not a valid regular expression: {e}"))
}

/// Parses `500ms`, `15s`, `2m`, `1h` (one number, one unit).
///
/// ```
/// use std::time::Duration;
/// use sockdiag_exporter::cli::parse_duration;
///
/// assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
/// assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
/// assert!(parse_duration("15").is_err(), "a bare number is ambiguous");
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?} has no unit: write e.g. 200ms, 15s, 2m"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

/// A sampling interval: a duration of at least 10 ms, since a zero interval
/// would spin a core and tiny ones buy nothing the kernel can show.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "{text:?} is too short: intervals must be at least 10ms"
        ));
    }
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!(
            "{text:?} is too long: intervals must be at most 24h"
        ));
    }
    Ok(d)
}

/// An HTTP timeout: between 100 ms (less cannot carry a request) and one
/// hour (more would let a client hold a connection slot indefinitely).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!(
            "{text:?} is out of range: timeouts must be between 100ms and 1h"
        ));
    }
    Ok(d)
}

/// A telemetry path: a plain URL path that does not shadow `/` or
/// `/healthz` (the router would refuse a clash at start-up).
fn parse_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') || text.len() < 2 {
        return Err(format!(
            "{text:?} must start with '/' and name a page, e.g. /metrics"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~')))
    {
        return Err(format!(
            "{text:?} contains {c:?}: use letters, digits and / - _ . ~"
        ));
    }
    if text == "/healthz" || text.contains("//") {
        return Err(format!(
            "{text:?} is reserved or malformed: choose another path"
        ));
    }
    Ok(text.to_string())
}

/// A flag as (`--name`, value name, default, help).
pub type FlagRow = (String, String, String, String);

/// Every flag of the daemon as (`--name`, value name, default, help), in
/// `--help` order: the source of the README's flags table.
pub fn flag_table() -> Vec<FlagRow> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(flag_row)
        .collect()
}

/// The flags of subcommand `name` itself (not the global ones it shares
/// with the daemon), as [`flag_table`] lists them; empty for an unknown
/// name.
pub fn subcommand_flag_table(name: &str) -> Vec<FlagRow> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    cmd.find_subcommand(name)
        .map(|sub| {
            sub.get_arguments()
                .filter(|a| !a.is_global_set())
                .filter_map(flag_row)
                .collect()
        })
        .unwrap_or_default()
}

fn flag_row(arg: &Arg) -> Option<FlagRow> {
    let long = arg.get_long()?;
    let value = arg
        .get_action()
        .takes_values()
        .then(|| arg.get_value_names())
        .flatten()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_default();
    let default = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(",");
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| {
            h.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some((format!("--{long}"), value, default, help))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flag_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_need_a_unit_and_a_sane_size() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_interval("0s").unwrap_err().contains("at least 10ms"));
        assert!(parse_interval("9ms").is_err());
        assert!(parse_interval("25h").is_err());
        assert!(parse_interval("10ms").is_ok());
        assert!(parse_timeout("3000000000000000h").is_err());
        assert!(parse_timeout("50ms").is_err());
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn telemetry_paths_cannot_clash_with_other_routes() {
        assert_eq!(parse_path("/metrics"), Ok("/metrics".to_string()));
        assert!(parse_path("/a/b-c_d.e~f").is_ok());
        for bad in [
            "metrics", "/", "/healthz", "/{x}", "/*rest", "/a b", "//x", "/:id",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn collector_switches_default_on_and_last_one_wins() {
        let flags = |args: &[&str]| {
            let mut all = vec!["sockdiag-exporter"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().collectors
        };
        let c = flags(&[]);
        for r in REGISTRY {
            assert_eq!(c.enabled(r.name), r.default_enabled, "{}", r.name);
        }
        assert!(c.enabled("netns"));
        assert!(!flags(&["--no-collector.connections"]).enabled("connections"));
        assert!(flags(&["--no-collector.netstat", "--collector.netstat"]).enabled("netstat"));
        assert!(!flags(&["--collector.netstat", "--no-collector.netstat"]).enabled("netstat"));
        assert!(
            !flags(&["snapshot", "--no-collector.listeners"]).enabled("listeners"),
            "global in subcommand"
        );
        let built = flags(&["--no-collector.netstat"]).build(false);
        let names: Vec<_> = built.iter().map(|c| c.registration().name).collect();
        assert!(!names.contains(&"netstat") && names.contains(&"listeners"));
        assert!(
            !flags(&["--no-collector.netns"])
                .sampler_config()
                .discovery
                .enabled
        );
    }

    #[test]
    fn every_registered_collector_has_its_switches_and_settings() {
        let cmd = Cli::command();
        let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        for r in REGISTRY {
            assert!(longs.contains(&format!("collector.{}", r.name).as_str()));
            assert!(longs.contains(&format!("no-collector.{}", r.name).as_str()));
            for a in (r.args)() {
                assert!(longs.contains(&a.get_long().unwrap()));
            }
        }
    }

    #[test]
    fn collector_settings_are_read_after_a_subcommand_too() {
        let cli = Cli::try_parse_from([
            "sockdiag-exporter",
            "snapshot",
            "--collector.connections.max-client-ports",
            "7",
        ])
        .unwrap();
        assert_eq!(
            cli.collectors
                .matches
                .get_one::<usize>("collector.connections.max-client-ports"),
            Some(&7)
        );
    }
}

//! `tls`: what `--web.config.file` with TLS and basic auth costs a scrape.
//! Inside a private namespace, the render benchmark's L listeners (one
//! queued connection each) are watched by two daemons at once: one plain,
//! one with TLS and a bcrypt password (cost 10, as the exporter-toolkit docs
//! suggest). Scrapes alternate between them, each on a new connection (with
//! the default 3 s `--web.read-header-timeout`, Prometheus's keep-alive
//! connections close between 15 s scrapes, so every scrape pays a
//! handshake); each daemon's CPU over the scrapes, less what it spent over
//! as long a time unscraped, is its cost per scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::Args;

use crate::daemon::{self, Running, scrape_gzipped};
use crate::{measure, render};

/// First port of the listeners watched.
const FIRST_PORT: u16 = 31000;

/// Where the TLS daemon listens.
const TLS_LISTEN: &str = "127.0.0.1:19198";

/// The password both sides know; its bcrypt hash is in the web config.
const PASSWORD: &str = "bench-password";

/// Options of `tls`.
#[derive(Args, Debug, Clone)]
pub struct TlsOpts {
    /// Listeners to open, each with one connection waiting in its queue.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=8000))]
    pub listeners: u16,

    /// Scrapes of each daemon to time.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub scrapes: u32,
}

/// The coordinator inside the namespace.
pub fn internal_main(opts: &TlsOpts, exporter: &Path) -> Result<ExitCode> {
    let keep = render::queued_listeners(FIRST_PORT, opts.listeners)?;
    let dir = std::env::temp_dir().join(format!("sockdiag-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| {
        let ca = write_pki(&dir)?;
        let client = client_config(&ca)?;
        let common = [
            "--collector.connections.interval",
            "1s",
            "--log.level",
            "warn",
        ];
        let mut plain = Running::start(exporter, &common)?;
        let config = dir.join("web.yml");
        let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        args.push("--web.config.file".into());
        args.push(config.display().to_string());
        let mut tls = Running::start_at(exporter, TLS_LISTEN, &args)?;
        measure_scrapes(opts, &mut plain, &mut tls, &client)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    drop(keep);
    result
}

/// Writes a CA, the server's certificate and key, and the web config into
/// `dir`; returns the CA certificate.
fn write_pki(dir: &Path) -> Result<rcgen::Certificate> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "exporter");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    write("server.crt", &cert.pem())?;
    write("server.key", &key.serialize_pem())?;
    let hash = bcrypt::hash(PASSWORD, 10).context("hashing the password")?;
    write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )?;
    Ok(ca)
}

fn client_config(ca: &rcgen::Certificate) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).context("trusting the CA")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One gzipped scrape over a new TLS connection with basic auth: status
/// line and seconds.
fn tls_scrape(config: &Arc<rustls::ClientConfig>) -> Result<(String, f64), String> {
    let addr: SocketAddr = TLS_LISTEN.parse().map_err(|e| format!("{e}"))?;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{PASSWORD}"));
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n\
         Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
    );
    let start = Instant::now();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {TLS_LISTEN}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    let connection =
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut body = Vec::new();
    match stream.read_to_end(&mut body) {
        Ok(_) => {}
        // A close without close_notify ends the answer as well.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(format!("reading the response: {e}")),
    }
    let status = String::from_utf8_lossy(body.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .trim()
        .to_string();
    Ok((status, start.elapsed().as_secs_f64()))
}

fn measure_scrapes(
    opts: &TlsOpts,
    plain: &mut Running,
    tls: &mut Running,
    client: &Arc<rustls::ClientConfig>,
) -> Result<ExitCode> {
    let expected = usize::from(opts.listeners) * 10;
    plain.ready_or_fail(
        Duration::from_millis(500),
        Duration::from_secs(15),
        |page| match page {
            Ok((s, _)) if s.series > expected => None,
            Ok((s, _)) => Some(format!("{} series, not yet over {expected}", s.series)),
            Err(e) => Some(e),
        },
    )?;
    // The TLS daemon answers once it listens; its first authenticated
    // answer pays the one bcrypt.
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        tls.check_alive()?;
        match tls_scrape(client) {
            Ok((status, seconds)) if status.contains("200") => break seconds,
            Ok((status, _)) => bail!("the TLS daemon answered {status}"),
            Err(e) if Instant::now() > deadline => bail!("the TLS daemon: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // Two connection samples, so every figure is present.
    std::thread::sleep(Duration::from_millis(2500));

    let idle = Duration::from_secs(3);
    let (p0, t0) = (
        daemon::cpu_seconds(plain.pid)?,
        daemon::cpu_seconds(tls.pid)?,
    );
    std::thread::sleep(idle);
    let idle_plain = (daemon::cpu_seconds(plain.pid)? - p0) / idle.as_secs_f64();
    let idle_tls = (daemon::cpu_seconds(tls.pid)? - t0) / idle.as_secs_f64();

    let (mut plain_times, mut tls_times) = (Vec::new(), Vec::new());
    let (mut plain_cpu, mut tls_cpu) = (0.0, 0.0);
    for _ in 0..opts.scrapes {
        let c0 = daemon::cpu_seconds(plain.pid)?;
        let s = scrape_gzipped().map_err(|e| anyhow!(e))?;
        if !s.status_line.contains("200") {
            bail!("plain scrape answered {}", s.status_line);
        }
        plain_cpu += daemon::cpu_seconds(plain.pid)? - c0;
        plain_times.push(s.seconds);

        let c0 = daemon::cpu_seconds(tls.pid)?;
        let (status, seconds) = tls_scrape(client).map_err(|e| anyhow!(e))?;
        if !status.contains("200") {
            bail!("TLS scrape answered {status}");
        }
        tls_cpu += daemon::cpu_seconds(tls.pid)? - c0;
        tls_times.push(seconds);
    }
    let n = f64::from(opts.scrapes);
    let plain_total: f64 = plain_times.iter().sum();
    let tls_total: f64 = tls_times.iter().sum();
    // CPU the daemon would have spent sampling anyway over the scrapes.
    let plain_per = (plain_cpu - idle_plain * plain_total).max(0.0) / n;
    let tls_per = (tls_cpu - idle_tls * tls_total).max(0.0) / n;

    println!(
        "## sockdiag-bench tls: {} listeners, {} scrapes of each daemon, a new connection each\n",
        opts.listeners, opts.scrapes
    );
    println!("| daemon | median scrape | slowest scrape | daemon CPU per scrape |");
    println!("|---|---:|---:|---:|");
    for (label, times, cpu) in [
        ("plain HTTP, gzip", &plain_times, plain_per),
        ("TLS + basic auth, gzip", &tls_times, tls_per),
    ] {
        let median = measure::median(times.clone()).unwrap_or(f64::NAN);
        let slowest = times.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {:.1} ms | {:.1} ms | {:.1} ms |",
            median * 1000.0,
            slowest * 1000.0,
            cpu * 1000.0
        );
    }
    println!(
        "\nFirst authenticated scrape (one bcrypt at cost 10, then cached): {:.1} ms. \
         Unscraped, the daemons used {:.1}% and {:.1}% of a core.",
        first * 1000.0,
        idle_plain * 100.0,
        idle_tls * 100.0
    );
    Ok(ExitCode::SUCCESS)
}

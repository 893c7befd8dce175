//! `--web.config.file` as exporter-toolkit users meet it: real TLS with
//! certificates made at test time (rcgen), curl as the client (an
//! independent TLS stack: OpenSSL), basic auth with bcrypt hashes, client
//! certificates with an allowed-SAN list, version limits, HTTP/2,
//! certificate rotation without a restart, and bad files refused.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// Fails with the package to install when curl is missing.
fn require_curl() {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "curl is needed: apt-get install curl (scripts/test installs it)"
    );
}

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// A leaf certificate and its key, PEM: `dns` and `ips` as SANs.
    fn leaf(&self, cn: &str, dns: &[&str], ips: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        for ip in ips {
            params
                .subject_alt_names
                .push(SanType::IpAddress(ip.parse().expect("an IP")));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing");
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, path: &Path) {
        write(path, &self.cert.pem());
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockdiag-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// What curl saw.
#[derive(Debug)]
struct Reply {
    /// curl's exit code: 0 when a response came; 35/56 and friends for a
    /// refused handshake.
    exit: i32,
    /// Status code, 0 when there was none.
    status: u16,
    /// Response head, lower case.
    head: String,
    body: String,
    stderr: String,
    /// Everything on standard output.
    raw: String,
}

fn curl(url: &str, args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_lowercase(), b.to_string()))
        .unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        exit: out.status.code().unwrap_or(-1),
        status,
        head,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        raw: text,
    }
}

/// A CA (`ca.pem`) and a server certificate for localhost and 127.0.0.1
/// signed by it (`server.crt`, `server.key`) in `dir`.
fn server_files(dir: &Path) -> Ca {
    let ca = Ca::new("test CA");
    ca.write(&dir.join("ca.pem"));
    let (cert, key) = ca.leaf("exporter", &["localhost"], &["127.0.0.1"], false);
    write(&dir.join("server.crt"), &cert);
    write(&dir.join("server.key"), &key);
    ca
}

/// Starts the daemon on a free port with `web_config`, and waits until
/// `/healthz` with `ready_args` answers other than 503 (or 401 without a
/// password in them).
fn start(web_config: &Path, https: bool, ready_args: &[&str]) -> Daemon {
    start_with(web_config, https, ready_args, &[])
}

/// [`start`] with `extra` flags for the daemon.
fn start_with(web_config: &Path, https: bool, ready_args: &[&str], extra: &[&str]) -> Daemon {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(exporter_bin())
        .args(["--web.listen-address", &addr.to_string()])
        .arg("--web.config.file")
        .arg(web_config)
        .args([
            "--collector.listeners.interval",
            "50ms",
            "--log.level",
            "debug",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the daemon");
    let daemon = Daemon { child, addr };
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{}/healthz", addr.port());
    let start = Instant::now();
    loop {
        let r = curl(&url, ready_args);
        // 503 until the first samples are in; 401 when `ready_args` carry
        // no password (the password is checked before readiness is).
        if r.status != 0 && r.status != 503 {
            return daemon;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no answer on {url} within 15 s: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn url(d: &Daemon, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", d.addr.port())
}

fn bcrypt_hash(password: &str) -> String {
    // Cost 4, the least bcrypt allows: the test checks the rule, not the
    // cost (a real file uses 10 or more).
    bcrypt::hash(password, 4).expect("hashing")
}

#[test]
fn tls_with_basic_auth() {
    require_curl();
    in_netns("tls_with_basic_auth", || {
        let dir = scratch("auth");
        let ca = Ca::new("test CA");
        ca.write(&dir.join("ca.pem"));
        let (cert, key) = ca.leaf("exporter", &["localhost"], &["127.0.0.1"], false);
        std::fs::create_dir_all(dir.join("tls")).expect("mkdir");
        write(&dir.join("tls/server.crt"), &cert);
        write(&dir.join("tls/server.key"), &key);
        // Relative paths: from the web config's own directory.
        write(
            &dir.join("web.yml"),
            &format!(
                "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n\
                 http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n    \
                 Strict-Transport-Security: max-age=31536000\n\
                 basic_auth_users:\n  prometheus: '{}'\n",
                bcrypt_hash("right horse")
            ),
        );
        let ca_pem = dir.join("ca.pem");
        let ca_arg = ca_pem.to_str().expect("utf-8 path");
        let d = start(&dir.join("web.yml"), true, &["--cacert", ca_arg]);

        let anonymous = curl(&url(&d, "/metrics"), &["--cacert", ca_arg]);
        assert_eq!(anonymous.status, 401, "{anonymous:?}");
        assert!(
            anonymous.head.contains("www-authenticate: basic"),
            "{anonymous:?}"
        );
        assert!(
            anonymous.head.contains("x-content-type-options: nosniff"),
            "headers go on every answer, 401 too: {anonymous:?}"
        );

        let wrong = curl(
            &url(&d, "/metrics"),
            &["--cacert", ca_arg, "-u", "prometheus:wrong horse"],
        );
        assert_eq!(wrong.status, 401, "{wrong:?}");
        let stranger = curl(
            &url(&d, "/metrics"),
            &["--cacert", ca_arg, "-u", "mallory:right horse"],
        );
        assert_eq!(stranger.status, 401, "{stranger:?}");

        for _ in 0..3 {
            let right = curl(
                &url(&d, "/metrics"),
                &["--cacert", ca_arg, "-u", "prometheus:right horse"],
            );
            assert_eq!(right.status, 200, "{right:?}");
            assert!(
                right
                    .body
                    .contains("sockdiag_web_config_last_reload_successful 1")
            );
            assert!(
                right
                    .head
                    .contains("strict-transport-security: max-age=31536000")
            );
        }

        // Every path and method is behind the password, over HTTP/2 too.
        for (path, extra) in [
            ("/", &[][..]),
            ("/healthz", &[][..]),
            ("/no-such-page", &[][..]),
            ("/metrics", &["-X", "POST"][..]),
            ("/metrics", &["--http2"][..]),
        ] {
            let mut args = vec!["--cacert", ca_arg];
            args.extend(extra);
            let r = curl(&url(&d, path), &args);
            assert_eq!(r.status, 401, "{path} {extra:?}: {r:?}");
        }

        // HTTP/2 is offered over TLS, as exporter-toolkit does by default.
        let h2 = curl(
            &url(&d, "/metrics"),
            &[
                "--cacert",
                ca_arg,
                "-u",
                "prometheus:right horse",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
            ],
        );
        assert_eq!(h2.exit, 0, "{h2:?}");
        assert_eq!(h2.raw, "2", "HTTP/2 negotiated: {h2:?}");

        // Plain HTTP to the TLS port: a clean refusal that says why.
        let plain = curl(&format!("http://127.0.0.1:{}/metrics", d.addr.port()), &[]);
        assert_eq!(plain.status, 400, "{plain:?}");
        assert!(plain.body.contains("HTTPS"), "{plain:?}");

        // The server's certificate must be checked by the client: one that
        // trusts another CA refuses it (the server is not accidentally
        // serving something curl accepts by default).
        let other = Ca::new("other CA");
        other.write(&dir.join("other.pem"));
        let untrusted = curl(
            &url(&d, "/healthz"),
            &["--cacert", dir.join("other.pem").to_str().expect("utf-8")],
        );
        assert_ne!(untrusted.exit, 0, "{untrusted:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn client_certificates_and_allowed_sans() {
    require_curl();
    in_netns("client_certificates_and_allowed_sans", || {
        let dir = scratch("mtls");
        let ca = server_files(&dir);
        let clients = [
            ("good", "prometheus.example"),
            ("intruder", "intruder.example"),
        ];
        for (name, san) in clients {
            let (cert, key) = ca.leaf(name, &[san], &[], true);
            write(&dir.join(format!("{name}.crt")), &cert);
            write(&dir.join(format!("{name}.key")), &key);
        }
        let rogue = Ca::new("rogue CA");
        let (cert, key) = rogue.leaf("rogue", &["prometheus.example"], &[], true);
        write(&dir.join("rogue.crt"), &cert);
        write(&dir.join("rogue.key"), &key);
        write(
            &dir.join("web.yml"),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  \
             client_allowed_sans: [prometheus.example]\n",
        );
        let path = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_string();
        let ca_arg = path("ca.pem");
        let with = |who: &str| {
            vec![
                "--cacert".to_string(),
                ca_arg.clone(),
                "--cert".to_string(),
                path(&format!("{who}.crt")),
                "--key".to_string(),
                path(&format!("{who}.key")),
            ]
        };
        let good = with("good");
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        let d = start(&dir.join("web.yml"), true, &good);

        let ok = curl(&url(&d, "/metrics"), &good);
        assert_eq!(ok.status, 200, "{ok:?}");

        let none = curl(&url(&d, "/metrics"), &["--cacert", &ca_arg]);
        assert_eq!(none.status, 0, "no client certificate: refused: {none:?}");
        assert_ne!(none.exit, 0, "{none:?}");

        for who in ["intruder", "rogue"] {
            let args = with(who);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = curl(&url(&d, "/metrics"), &args);
            assert_eq!(r.status, 0, "{who}'s certificate must be refused: {r:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// The subject CN of the certificate the server presents now.
fn served_cn(d: &Daemon, ca: &str) -> String {
    let r = curl(&url(d, "/healthz"), &["--cacert", ca, "-v"]);
    assert_eq!(r.status, 200, "{r:?}");
    r.stderr
        .lines()
        .find_map(|l| l.split("subject: CN=").nth(1))
        .unwrap_or_else(|| panic!("no subject in curl -v: {}", r.stderr))
        .trim()
        .to_string()
}

#[test]
fn versions_rotation_and_bad_reloads() {
    require_curl();
    in_netns("versions_rotation_and_bad_reloads", || {
        let dir = scratch("rotate");
        let ca = Ca::new("test CA");
        ca.write(&dir.join("ca.pem"));
        let (cert, key) = ca.leaf("first", &["localhost"], &["127.0.0.1"], false);
        write(&dir.join("server.crt"), &cert);
        write(&dir.join("server.key"), &key);
        let config = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                      min_version: TLS13\n";
        write(&dir.join("web.yml"), config);
        let ca_arg = dir.join("ca.pem");
        let ca_arg = ca_arg.to_str().expect("utf-8 path");
        let d = start(&dir.join("web.yml"), true, &["--cacert", ca_arg]);

        let tls12 = curl(
            &url(&d, "/healthz"),
            &["--cacert", ca_arg, "--tlsv1.2", "--tls-max", "1.2"],
        );
        assert_eq!(
            tls12.status, 0,
            "TLS 1.2 refused when min is 1.3: {tls12:?}"
        );
        let tls13 = curl(&url(&d, "/healthz"), &["--cacert", ca_arg, "--tlsv1.3"]);
        assert_eq!(tls13.status, 200, "{tls13:?}");
        assert_eq!(served_cn(&d, ca_arg), "first");

        // Rotation the way cert-manager or a Kubernetes Secret does it: new
        // files renamed into place, then served from the next handshake.
        let (cert, key) = ca.leaf("second", &["localhost"], &["127.0.0.1"], false);
        write(&dir.join("new.crt"), &cert);
        write(&dir.join("new.key"), &key);
        std::fs::rename(dir.join("new.key"), dir.join("server.key")).expect("rename");
        std::fs::rename(dir.join("new.crt"), dir.join("server.crt")).expect("rename");
        assert_eq!(served_cn(&d, ca_arg), "second");

        // As a Kubernetes Secret volume does it: the files stay put, a
        // symlink to the directory holding them is swapped.
        for (version, cn) in [("v1", "third"), ("v2", "fourth")] {
            let (cert, key) = ca.leaf(cn, &["localhost"], &["127.0.0.1"], false);
            std::fs::create_dir_all(dir.join(version)).expect("mkdir");
            write(&dir.join(version).join("tls.crt"), &cert);
            write(&dir.join(version).join("tls.key"), &key);
            let link = dir.join("..data.new");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(version, &link).expect("symlink");
            std::fs::rename(&link, dir.join("..data")).expect("swapping the symlink");
            if version == "v1" {
                std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).expect("link");
                std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).expect("link");
                write(
                    &dir.join("web.yml"),
                    "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  \
                     min_version: TLS13\n",
                );
            }
            assert_eq!(served_cn(&d, ca_arg), cn, "after swapping to {version}");
        }
        write(&dir.join("web.yml"), config);
        assert_eq!(served_cn(&d, ca_arg), "second");

        // A broken file keeps the last good config in service, and says so.
        write(&dir.join("web.yml"), "tls_server_config:\n  cert_fil: x\n");
        assert_eq!(served_cn(&d, ca_arg), "second");
        let page = curl(&url(&d, "/metrics"), &["--cacert", ca_arg]);
        assert!(
            page.body
                .contains("sockdiag_web_config_last_reload_successful 0"),
            "{}",
            page.body
        );
        // So does a key that does not go with the certificate.
        write(&dir.join("web.yml"), config);
        let (_, other_key) = ca.leaf("third", &["localhost"], &[], false);
        write(&dir.join("server.key"), &other_key);
        assert_eq!(served_cn(&d, ca_arg), "second");
        let page = curl(&url(&d, "/metrics"), &["--cacert", ca_arg]);
        assert!(
            page.body
                .contains("sockdiag_web_config_last_reload_successful 0")
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Runs the exporter with `--web.config.file` set to `text` and returns
/// its exit code and standard error.
fn refused_at_start(dir: &Path, text: &str) -> (Option<i32>, String) {
    let file = dir.join("web.yml");
    write(&file, text);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let out = Command::new(exporter_bin())
        .args(["--web.listen-address", &addr.to_string()])
        .arg("--web.config.file")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("running the exporter");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_web_configs_fail_at_start() {
    in_netns("bad_web_configs_fail_at_start", || {
        let dir = scratch("bad");
        let ca = Ca::new("test CA");
        let (cert, key) = ca.leaf("exporter", &["localhost"], &[], false);
        write(&dir.join("server.crt"), &cert);
        write(&dir.join("server.key"), &key);
        write(
            &dir.join("garbage.pem"),
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        );
        let cases: &[(&str, &str)] = &[
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  colour: blue\n",
                "unknown field `colour`",
            ),
            (
                "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
                "missing.crt: cannot read it",
            ),
            (
                "basic_auth_users:\n  prometheus: plaintext\n",
                "not a bcrypt hash",
            ),
            (
                "tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n",
                "garbage.pem: cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
                "no usable private key",
            ),
        ];
        for (text, wanted) in cases {
            let (code, stderr) = refused_at_start(&dir, text);
            assert_eq!(code, Some(1), "{text:?}: {stderr}");
            assert!(
                stderr.contains(wanted),
                "{text:?}: {stderr:?} lacks {wanted:?}"
            );
            assert!(
                stderr.contains("web.yml") || stderr.contains(".pem") || stderr.contains(".crt"),
                "{stderr}"
            );
        }
        let missing = Command::new(exporter_bin())
            .args(["--web.config.file", "/nonexistent/web.yml"])
            .stdin(Stdio::null())
            .output()
            .expect("running the exporter");
        assert_eq!(missing.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&missing.stderr)
                .contains("/nonexistent/web.yml: cannot read it")
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn stalled_handshakes_give_way_to_scrapers() {
    require_curl();
    in_netns("stalled_handshakes_give_way_to_scrapers", || {
        use std::io::Write;
        let dir = scratch("stall");
        server_files(&dir);
        write(
            &dir.join("web.yml"),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        );
        let ca_arg = dir.join("ca.pem");
        let ca_arg = ca_arg.to_str().expect("utf-8 path");
        let d = start_with(
            &dir.join("web.yml"),
            true,
            &["--cacert", ca_arg],
            &[
                "--web.max-connections",
                "16",
                "--web.read-header-timeout",
                "2s",
            ],
        );
        let addr = d.addr;
        // Far more than the cap, each stopping after the first byte of a
        // TLS record: a handshake that never finishes.
        let stalled: Vec<std::net::TcpStream> = (0..64)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).expect("connecting");
                s.write_all(&[0x16]).expect("one byte");
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..5 {
            let r = curl(&url(&d, "/metrics"), &["--cacert", ca_arg]);
            assert_eq!(r.status, 200, "a scrape beside stalled handshakes: {r:?}");
        }
        let page = curl(&url(&d, "/metrics"), &["--cacert", ca_arg]).body;
        let evicted: f64 = page
            .lines()
            .find(|l| l.starts_with("sockdiag_http_connections_evicted_total{reason=\"slow\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(
            evicted >= 48.0,
            "stalled handshakes evicted: {evicted}\n{page}"
        );
        // Those left are closed by the read-header timeout, and counted.
        std::thread::sleep(Duration::from_millis(2500));
        let page = curl(&url(&d, "/metrics"), &["--cacert", ca_arg]).body;
        let failures: f64 = page
            .lines()
            .find(|l| l.starts_with("sockdiag_http_tls_handshake_failures_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(failures >= 1.0, "timed-out handshakes counted: {page}");
        drop(stalled);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// `top --once --from` with `args`: exit code, standard output and error.
fn top_from(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(exporter_bin())
        .args(["top", "--once"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running top");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn top_reads_a_daemon_over_mutual_tls_with_a_password() {
    require_curl();
    in_netns("top_reads_a_daemon_over_mutual_tls_with_a_password", || {
        let dir = scratch("top");
        let ca = Ca::new("test CA");
        ca.write(&dir.join("ca.pem"));
        // Named by DNS only: reaching it by IP needs --from.server-name.
        let (cert, key) = ca.leaf("exporter", &["exporter.example"], &[], false);
        write(&dir.join("server.crt"), &cert);
        write(&dir.join("server.key"), &key);
        let (cert, key) = ca.leaf("operator", &["operator.example"], &[], true);
        write(&dir.join("client.crt"), &cert);
        write(&dir.join("client.key"), &key);
        write(
            &dir.join("web.yml"),
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n\
                 basic_auth_users:\n  ops: '{}'\n",
                bcrypt_hash("pw")
            ),
        );
        let path = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_string();
        let (ca_pem, crt, key) = (path("ca.pem"), path("client.crt"), path("client.key"));
        let d = start(
            &dir.join("web.yml"),
            true,
            // With the password, so the first samples are in before `top`
            // looks for the daemon's own listener.
            &[
                "--cacert", &ca_pem, "--cert", &crt, "--key", &key, "-k", "-u", "ops:pw",
            ],
        );
        let port = d.addr.port().to_string();
        let url = format!("https://ops:pw@127.0.0.1:{port}");
        let tls = [
            "--from.ca-file",
            ca_pem.as_str(),
            "--from.cert-file",
            crt.as_str(),
            "--from.key-file",
            key.as_str(),
            "--from.server-name",
            "exporter.example",
        ];
        let mut args = vec!["--from", url.as_str()];
        args.extend(tls);
        let (code, out, err) = top_from(&args);
        assert_eq!(code, Some(0), "{err}\n{out}");
        assert!(
            out.contains(&format!(":{port}")),
            "top lists the daemon's own listener: {out}"
        );
        assert!(
            !out.contains("pw@") && !err.contains(":pw"),
            "no password shown"
        );

        // Each missing piece is refused, and says which.
        let no_name = top_from(&[
            "--from",
            &url,
            "--from.ca-file",
            &ca_pem,
            "--from.cert-file",
            &crt,
            "--from.key-file",
            &key,
        ]);
        assert_eq!(no_name.0, Some(1), "{no_name:?}");
        assert!(no_name.2.contains("TLS"), "{no_name:?}");
        let no_cert = top_from(&[
            "--from",
            &url,
            "--from.ca-file",
            &ca_pem,
            "--from.server-name",
            "exporter.example",
        ]);
        assert_eq!(no_cert.0, Some(1), "{no_cert:?}");
        let other = Ca::new("other CA");
        other.write(&dir.join("other.pem"));
        let other_pem = path("other.pem");
        let mut untrusted = vec!["--from", url.as_str(), "--from.ca-file", &other_pem];
        untrusted.extend(&tls[2..]);
        let untrusted = top_from(&untrusted);
        assert_eq!(untrusted.0, Some(1), "{untrusted:?}");
        assert!(untrusted.2.contains("handshake failed"), "{untrusted:?}");
        let wrong_password = format!("https://ops:nope@127.0.0.1:{port}");
        let mut args = vec!["--from", wrong_password.as_str()];
        args.extend(tls);
        let refused = top_from(&args);
        assert_eq!(refused.0, Some(1), "{refused:?}");
        assert!(refused.2.contains("401"), "{refused:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn an_idle_http2_connection_is_closed_like_an_http1_one() {
    in_netns(
        "an_idle_http2_connection_is_closed_like_an_http1_one",
        || {
            use std::io::Read;
            let dir = scratch("h2idle");
            let ca = Ca::new("test CA");
            let (cert, key) = ca.leaf("exporter", &["localhost"], &["127.0.0.1"], false);
            write(&dir.join("server.crt"), &cert);
            write(&dir.join("server.key"), &key);
            write(
                &dir.join("web.yml"),
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
            );
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let child = Command::new(exporter_bin())
                .args(["--web.listen-address", &addr.to_string()])
                .arg("--web.config.file")
                .arg(dir.join("web.yml"))
                .args(["--web.read-header-timeout", "1s"])
                .stdin(Stdio::null())
                .spawn()
                .expect("starting the daemon");
            let _d = Daemon { child, addr };
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).expect("trusting the CA");
            let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let config = std::sync::Arc::new(config);
            let start = Instant::now();
            let tcp = loop {
                match std::net::TcpStream::connect(addr) {
                    Ok(s) => break s,
                    Err(_) if start.elapsed() < Duration::from_secs(15) => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => panic!("connecting: {e}"),
                }
            };
            tcp.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(config, name).expect("client");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // Handshake, then say nothing: no preface, no request.
            let opened = Instant::now();
            let mut buf = [0u8; 1024];
            loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                assert_eq!(
                    tls.conn.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "the server chose HTTP/2"
                );
            }
            let held = opened.elapsed();
            assert!(
                held < Duration::from_secs(5),
                "an idle HTTP/2 connection was held {held:?} with a 1 s read-header timeout"
            );
            let _ = std::fs::remove_dir_all(&dir);
        },
    );
}

#[test]
fn cipher_suites_and_http2_off_are_honoured() {
    require_curl();
    in_netns("cipher_suites_and_http2_off_are_honoured", || {
        let dir = scratch("ciphers");
        let ca = Ca::new("test CA");
        ca.write(&dir.join("ca.pem"));
        // rcgen's keys are ECDSA P-256, so the ECDSA suites apply.
        let (cert, key) = ca.leaf("exporter", &["localhost"], &["127.0.0.1"], false);
        write(&dir.join("server.crt"), &cert);
        write(&dir.join("server.key"), &key);
        write(
            &dir.join("web.yml"),
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n\
             http_server_config:\n  http2: false\n",
        );
        let ca_arg = dir.join("ca.pem");
        let ca_arg = ca_arg.to_str().expect("utf-8 path");
        let d = start(&dir.join("web.yml"), true, &["--cacert", ca_arg]);
        // curl names suites as OpenSSL does.
        let with = |cipher: &str| {
            curl(
                &url(&d, "/healthz"),
                &["--cacert", ca_arg, "--tls-max", "1.2", "--ciphers", cipher],
            )
        };
        let listed = with("ECDHE-ECDSA-AES256-GCM-SHA384");
        assert_eq!(listed.status, 200, "{listed:?}");
        let other = with("ECDHE-ECDSA-AES128-GCM-SHA256");
        assert_eq!(other.status, 0, "a suite not listed is refused: {other:?}");
        let tls13 = curl(&url(&d, "/healthz"), &["--cacert", ca_arg, "--tlsv1.3"]);
        assert_eq!(tls13.status, 0, "max_version TLS12: {tls13:?}");
        let h1 = curl(
            &url(&d, "/healthz"),
            &[
                "--cacert",
                ca_arg,
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
            ],
        );
        assert_eq!(h1.raw, "1.1", "http2: false keeps to HTTP/1.1: {h1:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

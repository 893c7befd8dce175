//! `/metrics` gzipped for a scraper that asks for it, as Prometheus does:
//! the same series in a fraction of the bytes; plain for one that does not.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// `GET /metrics` with `accept_encoding`, over HTTP/1.0 (the server closes
/// after the body): the response head, lower case, and the raw body.
fn get(addr: SocketAddr, accept_encoding: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept-Encoding: {accept_encoding}\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    (head, raw[split + 4..].to_vec())
}

/// The accept-queue series of a page, as (series, value) lines.
fn queues(page: &str) -> Vec<String> {
    let mut v: Vec<String> = page
        .lines()
        .filter(|l| l.starts_with("sockdiag_accept_queue_l"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn a_scraper_that_accepts_gzip_gets_the_same_page_gzipped() {
    in_netns(
        "a_scraper_that_accepts_gzip_gets_the_same_page_gzipped",
        || {
            let mut held = Vec::new();
            for port in 7601..7621 {
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                held.push(listen(addr, 8, false, None));
                held.push(start_connect(addr));
            }
            let daemon = Daemon::start(&["--no-collector.netns"]);
            daemon.wait_for(
                "the twenty listeners",
                |m| m.find("sockdiag_accept_queue_length", &[]).len() >= 20,
                |m| format!("{:?}", m.find("sockdiag_accept_queue_length", &[]).len()),
            );

            let (head, zipped) = get(daemon.addr, "gzip");
            assert!(
                head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"),
                "{head}"
            );
            assert!(head.contains("content-encoding: gzip"), "{head}");
            assert!(head.contains("vary: accept-encoding"), "{head}");
            let mut page = String::new();
            flate2::read::GzDecoder::new(zipped.as_slice())
                .read_to_string(&mut page)
                .expect("a gzip body");

            let (head, plain) = get(daemon.addr, "identity");
            assert!(!head.contains("content-encoding"), "{head}");
            let plain = String::from_utf8(plain).expect("a text body");
            assert_eq!(queues(&page), queues(&plain), "the same accept queues");
            // Length and limit of the 20 listeners and the daemon's own.
            assert_eq!(queues(&page).len(), 42);
            eprintln!(
                "page: {} bytes plain, {} gzipped ({:.1}x smaller)",
                plain.len(),
                zipped.len(),
                plain.len() as f64 / zipped.len() as f64
            );
            assert!(zipped.len() * 4 < plain.len(), "gzip shrinks the page");

            let (head, _) = get(daemon.addr, "gzip;q=0, identity");
            assert!(
                !head.contains("content-encoding"),
                "q=0 refuses gzip: {head}"
            );
        },
    );
}

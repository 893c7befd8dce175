//! The README's two commands, as a newcomer reads them in "Quick start":
//! the test command exists as written, is what `.ci/run` runs, runs every
//! test binary without fail-fast, and installs every package the README
//! says it installs (and no other); the run command starts the daemon on
//! defaults that serve the URL the README names.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The Quick start section of the README.
fn quick_start() -> String {
    let readme = read("README.md");
    let start = readme
        .find("## Quick start")
        .expect("README has a \"## Quick start\" section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e);
    rest[..end].to_string()
}

/// The command under the `# <comment>` line of Quick start's first code
/// block whose comment starts with `comment`.
fn command_after(section: &str, comment: &str) -> (String, String) {
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(c) = line.trim().strip_prefix("# ") {
            if c.starts_with(comment) {
                let cmd = lines
                    .next()
                    .unwrap_or_else(|| panic!("no command after {line:?}"));
                return (c.to_string(), cmd.trim().to_string());
            }
        }
    }
    panic!("Quick start has no \"# {comment}...\" line");
}

/// Lines of a shell script without comments and blank lines.
fn code_lines(script: &str) -> Vec<String> {
    script
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn the_test_command_is_what_ci_runs() {
    let (_, test) = command_after(&quick_start(), "run the whole test suite");
    let program = test.split_whitespace().next().unwrap_or("");
    let path = root().join(program);
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| {
        panic!(
            "the README's test command {test:?}: {}: {e}",
            path.display()
        )
    });
    assert!(
        meta.permissions().mode() & 0o111 != 0,
        "{} is not executable",
        path.display()
    );
    let script = read(program);
    assert!(
        script.starts_with("#!/usr/bin/env bash") || script.starts_with("#!/bin/bash"),
        "{program} must say which shell runs it"
    );
    let ci = code_lines(&read(".ci/run"));
    assert!(
        ci.contains(&test),
        ".ci/run must run the README's test command {test:?} as written: {ci:#?}"
    );
    for check in [
        "cargo fmt --all -- --check",
        "cargo clippy --workspace --all-targets -- -D warnings",
    ] {
        assert!(ci.iter().any(|l| l == check), ".ci/run lacks {check:?}");
    }
    // One failing binary must never hide the others.
    let lines = code_lines(&script);
    let runs: Vec<&String> = lines.iter().filter(|l| l.contains("cargo test")).collect();
    assert!(!runs.is_empty(), "{program} never runs cargo test");
    for run in runs {
        assert!(
            run.contains("--workspace") && run.contains("--no-fail-fast"),
            "{program}: {run:?} must test the whole workspace with --no-fail-fast"
        );
    }
}

/// The apt packages `scripts/test` installs: each `need+=(...)` entry.
fn packages_installed(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code_lines(script) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("need+=(") {
            let after = &rest[i + "need+=(".len()..];
            let Some(end) = after.find(')') else { break };
            out.extend(after[..end].split_whitespace().map(str::to_string));
            rest = &after[end..];
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_readme_names_every_package_the_test_command_installs() {
    let section = quick_start();
    let (_, test) = command_after(&section, "run the whole test suite");
    let program = test.split_whitespace().next().unwrap_or("");
    let packages = packages_installed(&read(program));
    assert!(packages.len() >= 5, "too few packages found: {packages:?}");
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| !section.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "Quick start does not name these packages {program} installs: {missing:?}"
    );
}

#[test]
fn the_run_command_serves_the_readmes_url_on_defaults() {
    let section = quick_start();
    let (comment, run) = command_after(&section, "build and run the daemon");
    assert_eq!(
        run, "cargo run --release",
        "the run command changed: update this test"
    );
    // `cargo run` with no `--bin` needs exactly one binary in the package.
    let manifest = read("Cargo.toml");
    assert!(
        !manifest.contains("[[bin]]") && !Path::new(&root().join("src/bin")).exists(),
        "cargo run needs a single binary or default-run"
    );
    let url = comment
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {comment:?}"));
    let port: u16 = url
        .trim_start_matches("http://localhost:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"));
    let path = format!("/{}", url.splitn(4, '/').nth(3).unwrap_or(""));
    in_netns("the_run_command_serves_the_readmes_url_on_defaults", || {
        // The same binary `cargo run` builds, with no flags at all.
        let child = Command::new(exporter_bin())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the daemon");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let daemon = Daemon { child, addr };
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = daemon.try_get(&path) {
                assert!(body.contains("sockdiag_accept_queue_length"), "{body}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "nothing served on {url} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

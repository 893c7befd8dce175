//! `lookup`: what dating the connections waiting in accept queues costs, three ways, on the
//! same sockets in the same rounds (issue 15):
//!
//! - (a) the bare connection walk, no extensions: the floor;
//! - (b) the walk with `tcp_info` for every socket, as the connections collector does today
//!   while some queue is non-empty;
//! - (c) the bare walk collecting the waiting connections' identities, then exact batched
//!   lookups of just those (`diag::Lookup`).
//!
//! Each round runs the three in a rotating order, each on its own warm sock_diag socket, and
//! times each by wall clock and by the thread's CPU clock (the kernel builds dump replies and
//! answers lookups in our thread's system calls, so that CPU is the cost). Ratios are the
//! medians of per-round ratios to (a).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use sockdiag_exporter::aggregate::in_accept_queue;
use sockdiag_exporter::diag::lookup::DEFAULT_BATCH;
use sockdiag_exporter::diag::{
    Answer, DiagSocket, DumpRequest, Lookup, LookupStats, SocketIdentity,
};

use crate::measure::median;
use crate::setup::{self, FIRST_PORT, Fleet, LISTENERS};
use crate::{BenchOpts, diag, namespace};

/// Options of `lookup`.
#[derive(Args, Debug, Clone)]
pub struct LookupOpts {
    /// Lookup requests per send.
    #[arg(long, default_value_t = DEFAULT_BATCH as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
}

/// The connections collector's walk, with or without `tcp_info`.
fn walk(tcp_info: bool) -> DumpRequest<'static> {
    DumpRequest::tcp_connections(tcp_info, None)
}

/// Whether a local port is one of the bench's listeners.
fn listening(port: u16) -> bool {
    (FIRST_PORT..FIRST_PORT + LISTENERS).contains(&port)
}

/// What one timed variant saw: waiting connections and the oldest one's age.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    sockets: u64,
    waiting: u64,
    dated: u64,
    oldest_ms: u32,
}

/// Wall and thread CPU seconds of one run.
#[derive(Debug, Clone, Copy)]
struct Time {
    wall: f64,
    cpu: f64,
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Time, T)> {
    let (w, c) = (Instant::now(), thread_cpu());
    let out = f()?;
    Ok((
        Time {
            wall: w.elapsed().as_secs_f64(),
            cpu: thread_cpu() - c,
        },
        out,
    ))
}

/// (a): the bare walk, noting waiting connections as the aggregator would.
fn bare(socket: &mut DiagSocket) -> Result<Seen> {
    let mut seen = Seen::default();
    socket.dump(&walk(false), |r| {
        seen.sockets += 1;
        if in_accept_queue(r) && listening(r.local_port) {
            seen.waiting += 1;
        }
    })?;
    Ok(seen)
}

/// (b): the walk with tcp_info for every socket.
fn with_info(socket: &mut DiagSocket) -> Result<Seen> {
    let mut seen = Seen::default();
    socket.dump(&walk(true), |r| {
        seen.sockets += 1;
        if in_accept_queue(r) && listening(r.local_port) {
            seen.waiting += 1;
            if let Some(age) = r.last_data_sent_ms {
                seen.dated += 1;
                seen.oldest_ms = seen.oldest_ms.max(age);
            }
        }
    })?;
    Ok(seen)
}

/// (c): the bare walk collecting identities into `ids` (reused), then their lookups.
/// Returns what it saw, the time the lookups alone took and what they did.
fn with_lookups(
    socket: &mut DiagSocket,
    lookup: &mut Lookup,
    ids: &mut Vec<SocketIdentity>,
) -> Result<(Seen, (Time, LookupStats))> {
    let mut seen = Seen::default();
    ids.clear();
    socket.dump(&walk(false), |r| {
        seen.sockets += 1;
        if in_accept_queue(r) && listening(r.local_port) {
            seen.waiting += 1;
            ids.push(SocketIdentity::of(r));
        }
    })?;
    let (time, stats) = timed(|| {
        Ok(lookup.run(socket, ids, |_, answer| {
            if let Answer::Found(r) = answer
                && in_accept_queue(&r)
                && let Some(age) = r.last_data_sent_ms
            {
                seen.dated += 1;
                seen.oldest_ms = seen.oldest_ms.max(age);
            }
        })?)
    })?;
    Ok((seen, (time, stats)))
}

/// The coordinator inside the private namespace.
pub fn internal_main(opts: &BenchOpts, lookup_opts: &LookupOpts) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::tune_sysctls();
    let nofile = namespace::raise_nofile_limit()?;
    let n = opts.connections;
    let queued = opts.queued.min(n);
    let per_worker = setup::per_worker(nofile)?;
    eprintln!("sockdiag-bench lookup: setting up {n} connections, {queued} of them waiting");
    let listeners = setup::create_listeners(LISTENERS)?;
    let start = Instant::now();
    let mut fleet = Fleet::default();
    fleet.build(
        &listeners,
        n - queued,
        per_worker,
        setup::parallel_workers(),
    )?;
    let held = setup::fill_accept_queues(n - queued, queued)?;
    let census = diag::census().context("counting the sockets that were set up")?;
    setup::verify(&census, n, queued)?;
    eprintln!(
        "sockdiag-bench lookup: {} sockets ready in {:.1} s; measuring {} rounds",
        census.sockets,
        start.elapsed().as_secs_f64(),
        opts.runs
    );

    let mut sockets = [
        DiagSocket::open()?,
        DiagSocket::open()?,
        DiagSocket::open()?,
    ];
    let mut lookup = Lookup::with_batch(lookup_opts.batch as usize);
    let mut ids = Vec::with_capacity(queued as usize);
    // One untimed round warms buffers, maps and the kernel's caches.
    bare(&mut sockets[0])?;
    with_info(&mut sockets[1])?;
    with_lookups(&mut sockets[2], &mut lookup, &mut ids)?;

    let mut times: [Vec<Time>; 3] = Default::default();
    let mut lookups_only = Vec::new();
    let mut lookup_stats = LookupStats::default();
    let mut last = [Seen::default(); 3];
    for round in 0..opts.runs as usize {
        for k in 0..3 {
            let variant = (round + k) % 3;
            let (time, seen) = match variant {
                0 => timed(|| bare(&mut sockets[0]))?,
                1 => timed(|| with_info(&mut sockets[1]))?,
                _ => {
                    let (time, (seen, (only, stats))) =
                        timed(|| with_lookups(&mut sockets[2], &mut lookup, &mut ids))?;
                    lookups_only.push(only);
                    lookup_stats = stats;
                    (time, seen)
                }
            };
            if seen.waiting != queued {
                bail!(
                    "variant {variant} saw {} waiting connections, not {queued}",
                    seen.waiting
                );
            }
            times[variant].push(time);
            last[variant] = seen;
        }
    }
    if last[1].dated != queued || last[2].dated != queued {
        bail!("not every waiting connection was dated: {last:?}");
    }

    let med = |v: &[Time], f: fn(&Time) -> f64| median(v.iter().map(f).collect()).unwrap_or(0.0);
    let ratio = |i: usize, f: fn(&Time) -> f64| {
        median(
            times[i]
                .iter()
                .zip(&times[0])
                .map(|(x, a)| f(x) / f(a))
                .collect(),
        )
        .unwrap_or(0.0)
    };
    let wall = |t: &Time| t.wall;
    let cpu = |t: &Time| t.cpu;
    println!(
        "\n{} sockets ({n} connections), {queued} waiting in {LISTENERS} accept queues, \
         medians of {} rounds, kernel {}\n",
        census.sockets,
        opts.runs,
        crate::report::kernel_and_cpus()
    );
    println!("| variant | wall ms | thread CPU ms | wall / (a) | CPU / (a) | oldest age ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let names = [
        "(a) bare walk",
        "(b) walk with tcp_info for all",
        "(c) bare walk + exact lookups",
    ];
    for i in 0..3 {
        println!(
            "| {} | {:.1} | {:.1} | {:.3} | {:.3} | {} |",
            names[i],
            med(&times[i], wall) * 1e3,
            med(&times[i], cpu) * 1e3,
            ratio(i, wall),
            ratio(i, cpu),
            if i == 0 {
                "-".to_string()
            } else {
                last[i].oldest_ms.to_string()
            }
        );
    }
    let only_wall = med(&lookups_only, wall);
    let only_cpu = med(&lookups_only, cpu);
    println!(
        "| of which the {queued} lookups (batch {}) | {:.2} | {:.2} | | | {:.1} us wall, \
         {:.1} us CPU each |",
        lookup.batch(),
        only_wall * 1e3,
        only_cpu * 1e3,
        only_wall * 1e6 / queued.max(1) as f64,
        only_cpu * 1e6 / queued.max(1) as f64,
    );
    println!("\nlast lookup pass: {lookup_stats:?}");

    drop(held);
    drop(fleet);
    drop(listeners);
    Ok(ExitCode::SUCCESS)
}

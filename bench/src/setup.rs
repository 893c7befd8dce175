//! The coordinator: runs inside the private namespace, builds the connections, measures,
//! reports, and tears everything down.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::diag::{self, Census};
use crate::helper::{self, Helper};
use crate::report::{self, Environment};
use crate::worker::{self, DATA, DATA_EVERY, STALL_LIMIT};
use crate::{BenchOpts, daemon, measure, namespace, proc_util};

pub const LISTENERS: u16 = 16;
pub const FIRST_PORT: u16 = 20000;
const BACKLOG: i32 = 4096;
/// Descriptors a worker keeps free for stdio, the listeners and whatever libc opens.
const FD_HEADROOM: u64 = 100;
/// About 18,000 descriptors per worker, as the machine's 20,000 limit allows.
const MAX_PER_WORKER: u64 = 8_950;

/// Opens `count` non-blocking listeners on 127.0.0.1, ports [`FIRST_PORT`] onwards, in the
/// caller's network namespace.
pub fn create_listeners(count: u16) -> Result<Vec<OwnedFd>> {
    (0..count)
        .map(|i| {
            let port = FIRST_PORT + i;
            proc_util::loopback_listener(port, BACKLOG, true)
                .with_context(|| format!("listening on 127.0.0.1:{port}"))
        })
        .collect()
}

/// Every worker started so far. Dropping it kills and reaps them all, on success and on
/// every error path alike.
#[derive(Default)]
pub struct Fleet {
    workers: Vec<Helper>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // All killed first, so that the kernel tears their sockets down side by side;
        // dropping each helper then reaps it.
        for w in &self.workers {
            proc_util::kill(w.pid, libc::SIGKILL);
        }
    }
}

impl Fleet {
    fn spawn(&mut self, fds: &[RawFd], first: u64, count: u64) -> Result<()> {
        let list = fds
            .iter()
            .map(|fd| fd.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = helper::bench_command("internal-worker")?;
        cmd.args(["--first-client", &first.to_string()])
            .args(["--clients", &count.to_string()])
            .args(["--listen-fds", &list]);
        let fds = fds.to_vec();
        // SAFETY: fcntl is async-signal-safe; fds was built before fork.
        unsafe {
            cmd.pre_exec(move || {
                // The listeners are CLOEXEC so that measured commands never inherit them;
                // workers are the one exception.
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        self.workers
            .push(Helper::spawn(cmd, "a connection worker")?);
        Ok(())
    }

    /// Starts workers for `total` connections, at most `parallel` at a time, and returns
    /// when all of them hold their share. Workers connect in the caller's network
    /// namespace, so `listeners` must have been opened there.
    pub fn build(
        &mut self,
        listeners: &[OwnedFd],
        total: u64,
        per_worker: u64,
        parallel: usize,
    ) -> Result<()> {
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let plan: Vec<(u64, u64)> = (0..total.div_ceil(per_worker))
            .map(|i| {
                let first = i * per_worker;
                (first, per_worker.min(total - first))
            })
            .collect();
        let start = Instant::now();
        let mut next = 0;
        let mut active: Vec<usize> = Vec::new();
        let mut ready_conns = 0u64;
        let mut last_progress = Instant::now();
        let mut last_print = Instant::now();

        while ready_conns < total {
            while active.len() < parallel && next < plan.len() {
                let (first, count) = plan[next];
                self.spawn(&fds, first, count)?;
                active.push(self.workers.len() - 1);
                next += 1;
            }
            let watched: Vec<(usize, RawFd)> = active
                .iter()
                .filter_map(|&i| Some((i, self.workers[i].stdout_fd()?)))
                .collect();
            let mut pfds: Vec<libc::pollfd> = watched
                .iter()
                .map(|&(_, fd)| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: pfds is a valid array of the length passed.
            let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err).context("waiting for workers");
                }
            }
            let mut finished = Vec::new();
            for (&(i, _), pfd) in watched.iter().zip(&pfds) {
                if pfd.revents == 0 {
                    continue;
                }
                let w = &mut self.workers[i];
                w.fill()?;
                while let Some(line) = w.take_line() {
                    last_progress = Instant::now();
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next()) {
                        (Some("ready"), Some(c)) => {
                            let c: u64 = c
                                .parse()
                                .with_context(|| format!("bad line from worker: {line:?}"))?;
                            ready_conns += c;
                            finished.push(i);
                        }
                        (Some("progress"), _) => {}
                        _ => bail!("unexpected line from worker {}: {line:?}", w.pid),
                    }
                }
            }
            active.retain(|i| !finished.contains(i));
            if active.is_empty() && next >= plan.len() && ready_conns < total {
                bail!("all workers finished but only {ready_conns} of {total} connections exist");
            }
            if last_progress.elapsed() > STALL_LIMIT {
                bail!(
                    "connection setup made no progress for {} s ({ready_conns} of {total} \
                     connections ready after {:.0} s)",
                    STALL_LIMIT.as_secs(),
                    start.elapsed().as_secs_f64()
                );
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "sockdiag-bench: setup: {ready_conns}/{total} connections held by {} \
                     workers, {:.0} s",
                    self.workers.len(),
                    start.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
        }
        Ok(())
    }
}

/// Opens the last connections without anyone to accept them, spread over the listeners.
/// Called after every worker is ready, when nobody accepts any more.
pub fn fill_accept_queues(first: u64, count: u64) -> Result<Vec<OwnedFd>> {
    (first..first + count)
        .map(|k| worker::connect_client(k, FIRST_PORT + (k % u64::from(LISTENERS)) as u16))
        .collect()
}

/// Connections one worker can hold under an RLIMIT_NOFILE of `nofile` (two descriptors
/// each).
pub fn per_worker(nofile: u64) -> Result<u64> {
    let per_worker = (nofile.saturating_sub(FD_HEADROOM) / 2).min(MAX_PER_WORKER);
    if per_worker == 0 {
        bail!("RLIMIT_NOFILE is {nofile}: too low to hold any connection");
    }
    Ok(per_worker)
}

/// Workers building at once: one per core builds fastest; more only add wake-ups on the
/// shared listeners.
pub fn parallel_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |p| p.get().clamp(1, 4))
}

/// Checks that the namespace holds what the bench claims to measure.
pub fn verify(c: &Census, n: u64, queued: u64) -> Result<()> {
    let listeners = u64::from(LISTENERS);
    let data_bytes = n.div_ceil(DATA_EVERY) * DATA.len() as u64;
    if c.listeners != listeners || c.accept_queued != queued || c.established != 2 * n {
        bail!(
            "the namespace does not hold what was set up: expected {listeners} listeners, \
             {queued} queued connections and {} established sockets; the dump shows {c:?}",
            2 * n
        );
    }
    if c.recv_q_bytes != data_bytes || c.send_q_bytes != 0 || c.other_states != 0 {
        eprintln!(
            "sockdiag-bench: warning: expected {data_bytes} bytes in Recv-Q, 0 in Send-Q and \
             no sockets in other states; the dump shows {c:?}"
        );
    }
    Ok(())
}

pub fn coordinator_main(opts: &BenchOpts) -> Result<ExitCode> {
    namespace::bring_loopback_up()?;
    namespace::tune_sysctls();
    let nofile = namespace::raise_nofile_limit()?;
    let exporter = opts.exporter();
    let n = opts.connections;

    let per_worker = per_worker(nofile)?;
    let queued = opts.queued.min(n);
    if queued + u64::from(LISTENERS) + FD_HEADROOM > nofile {
        bail!("RLIMIT_NOFILE is {nofile}: too low to hold {queued} queued connections");
    }
    let parallel = parallel_workers();

    eprintln!(
        "sockdiag-bench: setting up {n} loopback connections ({} workers of up to {per_worker})",
        (n - queued).div_ceil(per_worker)
    );
    let listeners = create_listeners(LISTENERS)?;
    let start = Instant::now();
    let mut fleet = Fleet::default();
    fleet.build(&listeners, n - queued, per_worker, parallel)?;
    let held_queued = fill_accept_queues(n - queued, queued)?;
    let setup_seconds = start.elapsed().as_secs_f64();

    let census = diag::census().context("counting the sockets that were set up")?;
    verify(&census, n, queued)?;
    eprintln!(
        "sockdiag-bench: {} sockets ready in {setup_seconds:.1} s ({} workers); measuring",
        census.sockets,
        fleet.workers.len()
    );

    let env = Environment::collect(opts, &exporter, census, setup_seconds, fleet.workers.len());
    let results = measure::measure_all(&exporter, opts.baseline_exporter.as_deref(), opts.runs)?;
    let daemon = if opts.daemon_seconds > 0 {
        Some(daemon::run(
            &exporter,
            Duration::from_secs(opts.daemon_seconds),
        ))
    } else {
        None
    };

    let mut markdown = report::markdown(&env, &results, daemon.as_ref());
    if opts.top_seconds > 0 {
        let rows = crate::top_bench::run(&exporter, Duration::from_secs(opts.top_seconds))
            .context("measuring top")?;
        markdown.push_str(&crate::top_bench::markdown(n, &rows));
    }
    print!("{markdown}");
    report::write_json(opts.json.as_deref(), || {
        report::json(&env, &results, daemon.as_ref())
    })?;

    eprintln!("sockdiag-bench: tearing down");
    drop(held_queued);
    drop(fleet);
    drop(listeners);
    Ok(report::exit_code(results.iter().any(|r| r.failed())))
}

//! `sockdiag-exporter top`: every queue on the node, live, fullest first.
//!
//! Figures flow one way: a [`source`] yields the exposition text (the
//! daemon's collectors run here, or a remote daemon's `/metrics`), it is
//! parsed ([`exposition`]) into a [`frame`], the [`model`] takes frames and
//! keys, and [`draw`] (terminal) or [`text`] (plain) show the model. Only
//! this module's loops touch the terminal.

pub mod cells;
pub mod draw;
pub mod exposition;
pub mod fetch;
pub mod fetch_tls;
pub mod frame;
pub mod model;
pub mod source;
pub mod terminal;
pub mod text;
pub mod waiting;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::cli::{CollectorFlags, TopArgs};
use draw::Status;
use frame::{Frame, QueueKey};
use model::{Action, Key, Model, View};
use source::Source;

/// Whether `top` will take over the terminal: both ends are one (keys
/// come from standard input), and no plain output was asked for.
pub fn is_live(args: &TopArgs) -> bool {
    !args.once
        && args.iterations.is_none()
        && io::stdout().is_terminal()
        && io::stdin().is_terminal()
}

/// Runs `top`.
pub fn run(args: &TopArgs, flags: &CollectorFlags) -> Result<ExitCode> {
    if is_live(args) {
        live(args, flags)
    } else {
        plain(args, flags)
    }
}

fn open(args: &TopArgs, flags: &CollectorFlags, continuous: bool) -> Result<Source> {
    match &args.from {
        // A fetch slower than a refresh would only queue up; a slow node
        // still gets a few seconds.
        Some(url) => Source::remote(
            url,
            &tls_options(args),
            args.interval
                .clamp(Duration::from_secs(2), Duration::from_secs(10)),
        ),
        None => Source::local(flags, args.interval, continuous),
    }
}

/// The TLS settings of an https `--from`.
fn tls_options(args: &TopArgs) -> fetch_tls::TlsOptions {
    fetch_tls::TlsOptions {
        ca_file: args.from_ca_file.clone(),
        cert_file: args.from_cert_file.clone(),
        key_file: args.from_key_file.clone(),
        server_name: args.from_server_name.clone(),
    }
}

/// Wall-clock time, as the header shows it.
fn clock_now() -> String {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    draw::clock_of(unix)
}

fn interval_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Frames as plain text: `--once`, `--iterations`, or output that is not a
/// terminal. `--once` takes one whole sample and prints it; otherwise the
/// daemon's sampler runs (within its CPU budget) and a frame is printed
/// every interval, the first after one, when every collector has passed.
/// A failed read prints nothing on standard output and says why on
/// standard error; the exit code is 1 when the last read failed.
fn plain(args: &TopArgs, flags: &CollectorFlags) -> Result<ExitCode> {
    let continuous = !args.once;
    let mut source = open(args, flags, continuous)?;
    let iterations = if args.once { Some(1) } else { args.iterations };
    let mut model = Model::default();
    model.filter = args.filter.clone().unwrap_or_default();
    let start = Instant::now();
    let mut ok;
    let mut n = 0u32;
    let mut out = io::stdout().lock();
    let mut began = Instant::now();
    loop {
        if continuous || n > 0 {
            std::thread::sleep(args.interval.saturating_sub(began.elapsed()));
        }
        began = Instant::now();
        n += 1;
        let frame = match source.read(None) {
            Ok(frame) => frame,
            Err(e) => {
                eprintln!("sockdiag-exporter: top: {e}");
                ok = false;
                if iterations.is_some_and(|i| n >= i) {
                    break;
                }
                continue;
            }
        };
        ok = true;
        model.update(frame, began.duration_since(start).as_secs_f64());
        let title = format!(
            "sockdiag-exporter top: {} at {}",
            source.describe(),
            clock_now()
        );
        let text = text::frame(&model, &title);
        let written = if n > 1 {
            writeln!(out).and_then(|()| out.write_all(text.as_bytes()))
        } else {
            out.write_all(text.as_bytes())
        }
        .and_then(|()| out.flush());
        match written {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            other => other.context("writing to standard output")?,
        }
        if iterations.is_some_and(|i| n >= i) {
            break;
        }
    }
    source.stop();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the reading thread sends: a frame or why there is none, when it
/// was read (monotonic) and the wall clock then.
type Reading = (Result<Frame, String>, Instant, String);

/// Reads `source` every `interval` on its own thread, so a slow dump or a
/// slow remote node never freezes the keys.
fn spawn_reader(
    mut source: Source,
    interval: Duration,
    stop: Arc<AtomicBool>,
    detail: Arc<Mutex<Option<QueueKey>>>,
) -> io::Result<mpsc::Receiver<Reading>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("top-read".into())
        .stack_size(crate::memory::THREAD_STACK_BYTES)
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let began = Instant::now();
                let wanted = detail.lock().map(|d| d.clone()).unwrap_or_default();
                let reading = source.read(wanted.as_ref());
                if tx.send((reading, began, clock_now())).is_err() {
                    break;
                }
                let next = began + interval;
                while !stop.load(Ordering::SeqCst) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20).min(interval));
                }
            }
            source.stop();
        })?;
    Ok(rx)
}

/// crossterm's key, as the model knows keys.
fn key_of(k: KeyEvent) -> Option<Key> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    Some(match k.code {
        KeyCode::Char(c) if ctrl => Key::Ctrl(c),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::F(6) => Key::F6,
        _ => return None,
    })
}

/// The terminal view: one loop draws on a new frame, a key or a resize,
/// and leaves on `q`, Ctrl-C or a signal, putting the terminal back.
fn live(args: &TopArgs, flags: &CollectorFlags) -> Result<ExitCode> {
    terminal::catch_signals().context("installing signal handlers")?;
    let source = open(args, flags, true)?;
    let mut status = Status {
        local: matches!(source, Source::Local(_)),
        source: source.describe(),
        clock: clock_now(),
        interval: interval_text(args.interval),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let detail = Arc::new(Mutex::new(None));
    let readings = spawn_reader(source, args.interval, stop.clone(), detail.clone())
        .context("starting the reader")?;
    let mut model = Model::default();
    model.filter = args.filter.clone().unwrap_or_default();
    let start = Instant::now();
    let result = (|| -> Result<()> {
        let mut guard = terminal::Guard::enter().context("taking over the terminal")?;
        let mut dirty = true;
        loop {
            if terminal::signalled() {
                return Ok(());
            }
            if terminal::panicked() {
                anyhow::bail!("a thread panicked (see above); the terminal was put back");
            }
            loop {
                match readings.try_recv() {
                    Ok((Ok(frame), at, clock)) => {
                        if !model.paused {
                            status.clock = clock;
                        }
                        model.update(frame, at.duration_since(start).as_secs_f64());
                    }
                    // The clock stays at the last good read: old figures
                    // must not look fresh.
                    Ok((Err(e), _, _)) => model.failed(e),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        anyhow::bail!("the thread reading the figures ended")
                    }
                }
                dirty = true;
            }
            if dirty {
                guard
                    .tty
                    .draw(|screen| draw::draw(screen, &mut model, &status))
                    .context("drawing")?;
                dirty = false;
            }
            if terminal::wait_for_input(Duration::from_millis(50)).context("reading keys")?
                == terminal::Input::Gone
            {
                return Ok(());
            }
            // Whatever crossterm has: it reads the terminal in chunks and
            // keeps what it has not handed out yet, which poll(2) no longer
            // sees. Never block in crossterm (see `wait_for_input`).
            while event::poll(Duration::ZERO).context("reading keys")? {
                match event::read().context("reading keys")? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        let Some(key) = key_of(k) else { continue };
                        if model.key(key) == Action::Quit {
                            return Ok(());
                        }
                        // The reader lists the waiting connections of the
                        // queue whose detail is open, from its next read.
                        if let Ok(mut d) = detail.lock() {
                            *d = match &model.view {
                                View::Detail(k) => Some(k.clone()),
                                _ => None,
                            };
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
    })();
    stop.store(true, Ordering::SeqCst);
    result?;
    Ok(ExitCode::SUCCESS)
}

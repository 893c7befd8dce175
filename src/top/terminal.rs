//! The terminal's state while `top` runs, and putting it back on every way
//! out: quit, error, panic and the signals that end a process (SIGTERM,
//! SIGHUP when the terminal goes, SIGINT from `kill -INT`: Ctrl-C itself
//! arrives as a key in raw mode).

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{cursor, execute, terminal};

/// The terminal `top` draws on.
pub type Tty = Terminal<CrosstermBackend<Stdout>>;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: anything else is not async-signal-safe. The
    // event loop polls the flag and leaves through the normal path.
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Whether SIGTERM, SIGHUP or SIGINT arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Routes SIGTERM, SIGHUP and SIGINT to [`signalled`] instead of killing
/// the process with the terminal still in raw mode.
pub fn catch_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic; sigaction is given
        // a zeroed, then filled, struct it only reads.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Whether any thread panicked since [`Guard::enter`]: the hook has put
/// the terminal back already, so the loop must stop drawing and leave.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

/// What became of the terminal while `top` waited on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing to read within the wait.
    Idle,
    /// A key, a resize or some other event is ready.
    Ready,
    /// The terminal is gone (its window closed, the ssh session dropped).
    Gone,
}

/// Waits up to `timeout` for input on standard input, which is the
/// terminal crossterm reads. Done with poll(2) here rather than by
/// crossterm: crossterm 0.28 spins forever on a terminal that hung up
/// (crossterm-rs/crossterm#793), so a closed window would leave `top`
/// running, burning a core, deaf to SIGTERM.
pub fn wait_for_input(timeout: std::time::Duration) -> io::Result<Input> {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, its count, a timeout.
    let rc = unsafe { libc::poll(&mut fd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Input::Idle)
        } else {
            Err(e)
        };
    }
    Ok(
        if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            Input::Gone
        } else if fd.revents & libc::POLLIN != 0 {
            Input::Ready
        } else {
            Input::Idle
        },
    )
}

/// Puts the terminal back: raw mode off, main screen, cursor shown. Safe
/// to call more than once.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen; restored when
/// dropped, and by a panic hook installed here before anything changes.
pub struct Guard {
    /// Where to draw.
    pub tty: Tty,
}

impl Guard {
    /// Takes over the terminal.
    pub fn enter() -> io::Result<Guard> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Any thread: a sampler or the reader as much as the loop.
            PANICKED.store(true, Ordering::SeqCst);
            restore();
            hook(info);
        }));
        terminal::enable_raw_mode()?;
        // From here every failure must put the terminal back itself: the
        // guard that would is not built yet.
        let tty = execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match tty {
            Ok(tty) => Ok(Guard { tty }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

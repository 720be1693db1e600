//! `profilemate top`: a live view of an attach session (issue 11 §4).
//!
//! Owns: the view thread (ratatui + crossterm on a terminal, one plain-text block per second
//! otherwise), the guard that restores the terminal, and the scratch session directory used
//! when `--out` is not given. Does not own: the session (`session::run_live`, the same code
//! as `attach`) or the statistics (`profilers::live`).

use std::{
    io::IsTerminal,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use crossterm::{
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute,
    terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{
    backend::CrosstermBackend,
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph},
    Terminal,
};

use crate::{
    config::AttachConfig,
    output::{console, monotonic_ns},
    profilers::live::LiveStats,
    session::{self, LiveHook},
};

/// How often the view is redrawn.
const REFRESH: Duration = Duration::from_secs(1);

/// Raw mode and the alternate screen, left on Drop (also on an error or a panic of the view).
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self> {
        enable_raw_mode().context("cannot put the terminal in raw mode")?;
        console::hold_err();
        let guard = Self;
        execute!(std::io::stdout(), EnterAlternateScreen)
            .context("cannot enter the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
        let _ = disable_raw_mode();
        // The warnings said meanwhile, now that they cannot scribble over the view.
        console::release_err();
    }
}

/// Runs `profilemate top`. `cfg.out_dir` is used only when `keep` (`--out` given); otherwise
/// the session goes to a scratch directory removed at the end.
///
/// # Errors
///
/// The session could not start or ended in failure.
pub fn run(mut cfg: AttachConfig, keep: bool) -> Result<()> {
    let scratch: Option<PathBuf> = (!keep).then(|| {
        std::env::temp_dir().join(format!(
            "profilemate-top-{}-{}",
            cfg.pid,
            std::process::id()
        ))
    });
    if let Some(s) = &scratch {
        cfg.out_dir.clone_from(s);
        cfg.report = false;
    }
    cfg.quiet = true;
    let hook = LiveHook {
        stats: Arc::new(Mutex::new(LiveStats::new(monotonic_ns()))),
        quit: Arc::new(tokio::sync::Notify::new()),
        scratch_dir: scratch.is_some(),
    };
    let done = Arc::new(AtomicBool::new(false));
    let view = {
        let (stats, quit, done) = (hook.stats.clone(), hook.quit.clone(), done.clone());
        let title = format!("profilemate top --pid {} (q: quit)", cfg.pid);
        std::thread::Builder::new()
            .name("profilemate-top".into())
            .spawn(move || {
                let r = if std::io::stdout().is_terminal() {
                    terminal_view(&stats, &quit, &done, &title)
                } else {
                    plain_view(&stats, &quit, &done);
                    Ok(())
                };
                if r.is_err() {
                    // Without a view nobody can press q: stop the session.
                    quit.notify_one();
                }
                r
            })
            .context("cannot start the view thread")?
    };
    let finished = session::run_live(&cfg, Some(&hook), &mut |_| {});
    done.store(true, Ordering::Relaxed);
    let viewed = view
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the view thread panicked")));
    let outcome = finished.map(|f| detach(&cfg, scratch.is_none(), f));
    if let Some(s) = &scratch {
        let _ = std::fs::remove_dir_all(s);
    }
    let outcome = outcome?;
    viewed?;
    // Why it stopped (q, a signal, the target exiting), once the screen is back.
    if let Some(line) = outcome.summary.first() {
        crate::say!("profilemate top: {line}");
    }
    match outcome.failure {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

/// With `--out` (`keep`), prints the session's path as attach does; detaches the probes;
/// then writes the report (its warnings only: top is quiet).
fn detach(cfg: &AttachConfig, keep: bool, finished: session::Finished) -> session::SessionOutcome {
    let dir = finished.outcome.dir.clone();
    if keep {
        if let Err(e) = console::out_line(&format!("session: {}", dir.display())) {
            crate::say!(
                "warning: cannot print the session path to stdout ({e}); the session is in {}",
                dir.display()
            );
        }
    }
    let outcome = finished.detach();
    if cfg.report {
        for line in crate::report::after_session(&dir) {
            if line.starts_with("warning") {
                crate::say!("{line}");
            }
        }
    }
    outcome
}

/// The current snapshot's lines.
fn lines(stats: &Mutex<LiveStats>) -> Vec<String> {
    stats
        .lock()
        .map(|mut s| s.snapshot(monotonic_ns()).lines())
        .unwrap_or_default()
}

/// One block of lines per second on stdout, a blank line between blocks; a failed write
/// (closed pipe) stops the session.
fn plain_view(stats: &Mutex<LiveStats>, quit: &tokio::sync::Notify, done: &AtomicBool) {
    let mut next = std::time::Instant::now() + REFRESH;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if std::time::Instant::now() < next {
            continue;
        }
        next += REFRESH;
        let mut block = lines(stats);
        block.push(String::new());
        if console::out_line(&block.join("\n")).is_err() {
            quit.notify_one();
            return;
        }
    }
}

/// The full-screen view until the session ends; q, Esc or Ctrl-C ask it to.
fn terminal_view(
    stats: &Mutex<LiveStats>,
    quit: &tokio::sync::Notify,
    done: &AtomicBool,
    title: &str,
) -> Result<()> {
    let _guard = TerminalGuard::enter()?;
    let mut term =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).context("cannot draw")?;
    let mut status = "q, Esc or Ctrl-C: detach";
    let mut next = std::time::Instant::now();
    while !done.load(Ordering::Relaxed) {
        if std::time::Instant::now() >= next {
            next += REFRESH;
            let body = lines(stats);
            term.draw(|f| {
                let mut text: Vec<Line> = body
                    .iter()
                    .map(|l| {
                        if l.ends_with(':') {
                            Line::from(Span::styled(
                                l.clone(),
                                Style::default().add_modifier(Modifier::BOLD),
                            ))
                        } else {
                            Line::from(l.clone())
                        }
                    })
                    .collect();
                text.push(Line::from(""));
                text.push(Line::from(status));
                if let Some(w) = console::last_held_err() {
                    text.push(Line::from(w));
                }
                let block = Block::default().borders(Borders::ALL).title(title);
                f.render_widget(Paragraph::new(text).block(block), f.area());
            })
            .context("cannot draw")?;
        }
        if event::poll(Duration::from_millis(100)).context("cannot read the keyboard")? {
            if let Event::Key(k) = event::read().context("cannot read the keyboard")? {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind == KeyEventKind::Press
                    && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                {
                    quit.notify_one();
                    status = "detaching...";
                    next = std::time::Instant::now();
                }
            }
        }
    }
    Ok(())
}

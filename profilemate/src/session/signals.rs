//! Why a session stops, and the signals that stop it: how long the pipeline may catch up
//! after each kind of stop, and what a further signal does.
//!
//! Owns the stop reasons and their graces; not the main loop that waits for them (`session`).

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{pipeline::StopBudget, SessionError};

/// How long the pipeline may go on processing what is queued once `--duration` ends (the
/// files must be written within 1 s of it); what it has not reached by then is counted
/// (metadata `losses.pipeline.unprocessed_at_stop`), not processed.
const DURATION_GRACE: Duration = Duration::from_millis(600);
/// How long the pipeline may go on after a stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT):
/// prompt, but a little more patient than after `--duration`. A second signal cuts it short.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);
/// After the targets exited nobody waits on the clock: everything read is processed.
const EXIT_GRACE: Duration = Duration::from_secs(60);

/// The signals that stop a session: Ctrl-C, `kill`, a closed terminal or dropped SSH
/// session (SIGHUP), Ctrl-\ (SIGQUIT). Each would otherwise kill the process before the
/// files are written; caught, each stops the session the same way.
pub(super) struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    quit: Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Self, SessionError> {
        let one = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SessionError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Self {
            interrupt: one(SignalKind::interrupt(), "SIGINT")?,
            terminate: one(SignalKind::terminate(), "SIGTERM")?,
            hangup: one(SignalKind::hangup(), "SIGHUP")?,
            quit: one(SignalKind::quit(), "SIGQUIT")?,
        })
    }

    /// The next stop signal. A stream that ends (only when the runtime shuts down) is never
    /// taken for a signal.
    pub(super) async fn recv(&mut self) -> Stop {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Stop::Interrupt,
            Some(()) = self.terminate.recv() => Stop::Terminate,
            Some(()) = self.hangup.recv() => Stop::Hangup,
            Some(()) = self.quit.recv() => Stop::Quit,
            else => std::future::pending().await,
        }
    }

    /// After the stop: a further signal cuts the pipeline's grace short (the files are
    /// still written, with what was processed so far), and is never the default action
    /// that would kill the process in the middle of writing them.
    pub(super) fn shorten_on_next(mut self, budget: StopBudget, quiet: bool) {
        tokio::spawn(async move {
            let stop = self.recv().await;
            budget.start(Duration::ZERO);
            if !quiet {
                crate::say!(
                    "profilemate: {}: writing what was processed so far",
                    stop.describe()
                );
            }
            // Keep the handlers installed (and further signals ignored) until exit.
            loop {
                self.recv().await;
            }
        });
    }
}

/// Why the session stopped.
pub(super) enum Stop {
    Duration,
    Interrupt,
    Terminate,
    Hangup,
    Quit,
    /// q or Ctrl-C in `profilemate top`.
    Viewer,
    TargetsExited,
    /// The reader or pipeline thread ended on its own (a panic).
    PipelineEnded,
    /// CUDA libraries were found and not one probe could be attached.
    NothingAttached,
}

impl Stop {
    /// How long the pipeline may catch up after this stop.
    pub(super) fn grace(&self) -> Duration {
        match self {
            Self::Duration => DURATION_GRACE,
            Self::Interrupt | Self::Terminate | Self::Hangup | Self::Quit | Self::Viewer => {
                SIGNAL_GRACE
            }
            Self::TargetsExited | Self::PipelineEnded => EXIT_GRACE,
            Self::NothingAttached => Duration::ZERO,
        }
    }

    pub(super) fn describe(&self) -> &'static str {
        match self {
            Self::Duration => "duration elapsed",
            Self::Interrupt => "interrupted (SIGINT)",
            Self::Terminate => "terminated (SIGTERM)",
            Self::Hangup => "hung up (SIGHUP)",
            Self::Quit => "quit (SIGQUIT)",
            Self::Viewer => "quit from the live view",
            Self::TargetsExited => "all target processes exited",
            Self::PipelineEnded => "the pipeline thread ended early",
            Self::NothingAttached => "no probe could be attached",
        }
    }
}

//! SIGTERM/SIGINT → shutdown. The first signal stops new sessions and starts the drain deadline;
//! in-flight sessions may finish until then, after which they are cancelled. A second signal
//! cancels them at once. Either way cleanup runs in full before the runner exits.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The two stages of shutdown.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop starting sessions.
    pub intake: CancellationToken,
    /// Cancel sessions in flight.
    pub hard: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begin draining: no new sessions; in-flight ones get `drain` to finish.
    pub fn drain(&self, drain: Duration) {
        if self.intake.is_cancelled() {
            return;
        }
        self.intake.cancel();
        let hard = self.hard.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = hard.cancelled() => {}
                _ = tokio::time::sleep(drain) => {
                    tracing::warn!(?drain, "drain deadline passed; cancelling sessions in flight");
                    hard.cancel();
                }
            }
        });
    }
}

/// Listen for SIGTERM and SIGINT until `done`.
pub fn install(
    shutdown: Shutdown,
    drain: Duration,
    done: CancellationToken,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut seen = 0u32;
        loop {
            let name = tokio::select! {
                _ = done.cancelled() => break,
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    signal = name,
                    ?drain,
                    "shutting down: no new sessions, draining"
                );
                shutdown.drain(drain);
            } else {
                tracing::warn!(
                    signal = name,
                    "second signal: cancelling sessions in flight now"
                );
                shutdown.hard.cancel();
            }
        }
    });
    Ok(())
}

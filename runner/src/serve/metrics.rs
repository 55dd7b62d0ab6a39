//! The service's own metrics, on the same registry (and port) as the runner's: admission
//! (rejections by reason, queue wait, the configured bounds, so saturation is a ratio in PromQL),
//! how sessions ended, and the CDP messages relayed. Label values come from the enums below and
//! every child series is fetched once here.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a connection got no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Every slot taken and the queue full: 429.
    QueueFull,
    /// Queued, and no slot freed before the queue deadline: 429.
    QueueTimeout,
    /// A slot, but memory admission let no browser start before the deadline: 503.
    Memory,
    /// A slot, but no browser could be launched before the deadline: 503.
    NoBrowser,
    /// The service is draining (SIGTERM): 503.
    Draining,
    /// Wrong or missing token: 401.
    Unauthorized,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::QueueFull,
        Reject::QueueTimeout,
        Reject::Memory,
        Reject::NoBrowser,
        Reject::Draining,
        Reject::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::QueueFull => "queue_full",
            Reject::QueueTimeout => "queue_timeout",
            Reject::Memory => "memory",
            Reject::NoBrowser => "no_browser",
            Reject::Draining => "draining",
            Reject::Unauthorized => "unauthorized",
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The client closed the WebSocket (close frame) or sent `Browser.close`.
    Closed,
    /// The connection dropped without a close (client killed, network gone).
    Disconnected,
    /// No command from the client and none in flight for `--idle-timeout`.
    Idle,
    /// Past `--session-timeout`.
    Timeout,
    /// Ended by the service: shutdown after `--drain-timeout`.
    Killed,
    /// The client sent something that is not CDP (garbage, binary, an oversized frame).
    ProtocolError,
    /// The client stopped reading: a message could not be written within `--write-timeout`.
    SlowClient,
    /// The browser exited or closed its pipe under the session.
    BrowserExited,
}

impl End {
    pub const ALL: [End; 8] = [
        End::Closed,
        End::Disconnected,
        End::Idle,
        End::Timeout,
        End::Killed,
        End::ProtocolError,
        End::SlowClient,
        End::BrowserExited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Disconnected => "disconnected",
            End::Idle => "idle",
            End::Timeout => "timeout",
            End::Killed => "killed",
            End::ProtocolError => "protocol_error",
            End::SlowClient => "slow_client",
            End::BrowserExited => "browser_exited",
        }
    }
}

pub struct ServiceMetrics {
    rejected: [IntCounter; 6],
    ended: [IntCounter; 8],
    pub queue_wait: Histogram,
    pub messages_from_client: IntCounter,
    pub messages_from_browser: IntCounter,
    pub max_sessions: IntGauge,
    pub max_queue: IntGauge,
    pub draining: IntGauge,
}

/// Seconds in the queue: none at all for most, up to the queue deadline.
const QUEUE_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl ServiceMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let rejected_vec = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_sessions_rejected_total",
                "Connections that got no session, by reason (queue_full, queue_timeout, memory, no_browser, draining, unauthorized).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rejected_vec.clone()))?;
        let ended_vec = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_sessions_ended_total",
                "Service sessions ended, by reason (closed, disconnected, idle, timeout, killed, protocol_error, slow_client, browser_exited).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(ended_vec.clone()))?;
        let messages = IntCounterVec::new(
            Opts::new(
                "leakwarden_runner_cdp_messages_total",
                "CDP messages relayed by the service, by direction (from client, from browser).",
            ),
            &["from"],
        )?;
        registry.register(Box::new(messages.clone()))?;
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "leakwarden_runner_session_queue_seconds",
                "From a connection's arrival to its session's start (slot and browser), for the sessions that started.",
            )
            .buckets(QUEUE_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(queue_wait.clone()))?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            rejected: Reject::ALL.map(|r| rejected_vec.with_label_values(&[r.as_str()])),
            ended: End::ALL.map(|e| ended_vec.with_label_values(&[e.as_str()])),
            queue_wait,
            messages_from_client: messages.with_label_values(&["client"]),
            messages_from_browser: messages.with_label_values(&["browser"]),
            max_sessions: gauge(
                "leakwarden_runner_sessions_max",
                "--max-sessions: sessions the service runs at once (saturation = active_sessions / this).",
            )?,
            max_queue: gauge(
                "leakwarden_runner_queue_max",
                "--queue: connections that may wait for a session slot.",
            )?,
            draining: gauge(
                "leakwarden_runner_draining",
                "1 while the service drains after SIGTERM (no new sessions).",
            )?,
        })
    }

    pub fn rejected(&self, r: Reject) -> &IntCounter {
        &self.rejected[r as usize]
    }

    pub fn ended(&self, e: End) -> &IntCounter {
        &self.ended[e as usize]
    }
}

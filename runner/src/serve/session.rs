//! One session: the client's WebSocket relayed to its browser's CDP pipe, until the session
//! ends — whatever the client does — and then the browser closed and verified.
//!
//! The relay is one loop over both directions, so back-pressure is natural: while a message
//! waits for a slow client, nothing more is read from the browser (its pipe fills, and Chromium
//! holds its own events), and a message the client does not take within `write_timeout` ends
//! the session. Every buffer is bounded: a client's message by `max_message_size` (checked on
//! the frame header, before the payload is read), a browser's by
//! [`super::config::MAX_BROWSER_MESSAGE`], the WebSocket write buffer by one message.

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures::{AsyncRead, AsyncWrite, StreamExt};
use tokio_util::sync::CancellationToken;

use super::agent::Agent;
use super::cdp::{self, Client};
use super::metrics::{End, ServiceMetrics};
use crate::browser::pipe::{CdpPipe, PipeError};

/// Limits of one session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    pub write_timeout: Duration,
    pub max_message_size: usize,
}

/// How long a closing handshake with the client may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub fn ws_config(limits: &Limits) -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(limits.max_message_size);
    c.max_frame_size = Some(limits.max_message_size);
    // `send` flushes each message, so the buffer holds at most one browser message.
    c.max_write_buffer_size = super::config::MAX_BROWSER_MESSAGE + (1 << 20);
    c
}

/// What the relay saw.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    pub end: End,
    pub from_client: u64,
    pub from_browser: u64,
}

/// Relay until the session ends; then say goodbye to the client (when it is still there).
pub async fn relay<S>(
    ws: &mut WebSocketStream<S>,
    pipe: &mut CdpPipe,
    agent: &mut Agent,
    browser_dead: &CancellationToken,
    kill: &CancellationToken,
    limits: Limits,
    metrics: &ServiceMetrics,
) -> Relayed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + limits.session_timeout);
    let idle = tokio::time::sleep(limits.idle_timeout);
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(idle, deadline);
    let mut in_flight: u64 = 0;
    let mut r = Relayed {
        end: End::Closed,
        from_client: 0,
        from_browser: 0,
    };
    let mut too_big = false;
    r.end = loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => break End::Killed,
            _ = browser_dead.cancelled() => break End::BrowserExited,
            _ = &mut deadline => break End::Timeout,
            _ = &mut idle => {
                if in_flight == 0 {
                    break End::Idle;
                }
                // Waiting for the browser is not idleness; a command that never returns is
                // bounded by the session timeout.
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
            }
            m = ws.next() => match m {
                None => break End::Disconnected,
                Some(Ok(Message::Text(t))) => {
                    r.from_client += 1;
                    metrics.messages_from_client.inc();
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    match cdp::inspect_client(t.as_bytes()) {
                        Err(e) => {
                            tracing::info!(error = %e, "client sent a message that is not CDP; ending its session");
                            break End::ProtocolError;
                        }
                        Ok(Client::Close(reply)) => {
                            let _ = tokio::time::timeout(
                                limits.write_timeout,
                                ws.send(Message::Text(reply.into())),
                            )
                            .await;
                            break End::Closed;
                        }
                        Ok(Client::Forward) => {
                            in_flight += 1;
                            let rewritten = agent.rewrite_client(t.as_bytes());
                            let out = rewritten.as_deref().map_or(t.as_bytes(), str::as_bytes);
                            match tokio::time::timeout(limits.write_timeout, pipe.send(out)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) | Err(_) => break End::BrowserExited,
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    tracing::info!("client sent a binary frame; CDP is text; ending its session");
                    break End::ProtocolError;
                }
                Some(Ok(Message::Close(_))) => break End::Closed,
                // Pings are answered by the WebSocket layer.
                Some(Ok(_)) => {}
                Some(Err(e)) => break classify(&e, &mut too_big),
            },
            b = pipe.rx.next() => match b {
                Ok(Some(msg)) => {
                    r.from_browser += 1;
                    metrics.messages_from_browser.inc();
                    if agent.intercepting() {
                        match tokio::time::timeout(limits.write_timeout, agent.on_browser(&msg, pipe)).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(_) => break End::BrowserExited,
                        }
                    }
                    if cdp::is_reply(&msg) {
                        in_flight = in_flight.saturating_sub(1);
                    }
                    let Ok(text) = Utf8Bytes::try_from(msg) else {
                        tracing::warn!("browser sent a message that is not UTF-8; dropped");
                        continue;
                    };
                    match tokio::time::timeout(limits.write_timeout, ws.send(Message::Text(text))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break classify(&e, &mut too_big),
                        Err(_) => break End::SlowClient,
                    }
                }
                Ok(None) => break End::BrowserExited,
                Err(PipeError::TooLarge { limit }) => {
                    tracing::warn!(limit, "browser message over the limit; ending the session");
                    break End::BrowserExited;
                }
                Err(_) => break End::BrowserExited,
            },
        }
    };
    if !matches!(r.end, End::Disconnected | End::SlowClient) {
        let (code, reason) = close_frame(r.end, too_big);
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(Some(frame))).await;
    }
    r
}

fn classify(e: &WsError, too_big: &mut bool) -> End {
    tracing::debug!(error = %e, "session WebSocket error");
    match e {
        WsError::Capacity(_) => {
            *too_big = true;
            End::ProtocolError
        }
        // The peer vanished without a close frame: a killed client, a dropped network.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Disconnected,
        WsError::Protocol(_) | WsError::Utf8(_) => End::ProtocolError,
        WsError::WriteBufferFull(_) => End::SlowClient,
        _ => End::Disconnected,
    }
}

fn close_frame(end: End, too_big: bool) -> (CloseCode, &'static str) {
    match end {
        End::Closed => (CloseCode::Normal, "session closed"),
        End::Idle => (CloseCode::Policy, "idle timeout"),
        End::Timeout => (CloseCode::Policy, "session timeout"),
        End::Killed => (CloseCode::Away, "service shutting down"),
        End::ProtocolError if too_big => (CloseCode::Size, "message too large"),
        End::ProtocolError => (CloseCode::Protocol, "not a CDP command"),
        End::BrowserExited => (CloseCode::Error, "browser exited"),
        End::Disconnected | End::SlowClient => (CloseCode::Away, ""),
    }
}

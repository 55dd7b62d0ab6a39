//! The service's own CDP client inside a session: it applies the session's options
//! (`netopts.rs`) alongside the client, on the same pipe, without the client seeing it.
//!
//! - Downloads go to the session's directory under `--artifacts`: set for the browser at
//!   start, and a client's `Browser.setDownloadBehavior` / `Page.setDownloadBehavior` keeps its
//!   behaviour but gets that path (a client cannot make the browser write elsewhere on the host).
//! - Cookies of a storage state are set at start (`Storage.setCookies`) and read at the end
//!   (`Storage.getCookies`) to be saved (`mod.rs` does the files).
//! - Proxy credentials and blocked requests need the Fetch domain in every page: the agent
//!   attaches to the browser target on a session of its own and auto-attaches (flattened,
//!   waiting for the debugger) to every target, enables Fetch there, then lets the target run.
//!   In flattened mode every event of an attachment is delivered on the session that asked for
//!   it, so everything the agent started carries one of its session ids and is consumed here;
//!   its commands use ids from [`INTERNAL_ID_BASE`] up, whose replies are consumed too.
//!   Paused requests that match a block rule fail with `BlockedByClient`; the others continue;
//!   a proxy's challenge is answered with the session's credentials.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::browser::pipe::{CdpPipe, PipeError, INTERNAL_ID_BASE};
use crate::netopts::Network;

/// Ids below this are the agent's start-up calls (`CdpPipe::call`); the relay's own commands
/// count up from here.
const RELAY_ID_BASE: u64 = INTERNAL_ID_BASE + 1000;

pub struct Agent {
    network: Network,
    downloads: PathBuf,
    /// The agent's session on the browser target, when it intercepts.
    root: Option<String>,
    children: HashSet<String>,
    next_id: u64,
}

/// `"sessionId":"…"` of a browser message, read from its end (Chromium writes it last) without
/// parsing the message.
pub fn session_id(msg: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""sessionId":""#;
    let tail_from = msg.len().saturating_sub(128);
    let tail = &msg[tail_from..];
    let at = tail.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = &tail[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Whether a browser message is a reply to one of the relay's own commands.
fn is_own_reply(msg: &[u8]) -> bool {
    // `{"id":21400…`: the agent's ids all have ten digits starting with 214.
    msg.starts_with(br#"{"id":214"#)
        && msg
            .get(6..16)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
}

impl Agent {
    /// Apply the options at the start of a session, before the client's first message is
    /// relayed.
    pub async fn start(
        pipe: &mut CdpPipe,
        network: Network,
        downloads: PathBuf,
        cookies: Vec<serde_json::Value>,
        timeout: Duration,
    ) -> Result<Agent, PipeError> {
        let mut id = INTERNAL_ID_BASE + 10;
        let mut next = || {
            id += 1;
            id
        };
        pipe.call(
            next(),
            "Browser.setDownloadBehavior",
            serde_json::json!({ "behavior": "allow", "downloadPath": downloads }),
            timeout,
        )
        .await?;
        if !cookies.is_empty() {
            pipe.call(
                next(),
                "Storage.setCookies",
                serde_json::json!({ "cookies": cookies }),
                timeout,
            )
            .await?;
        }
        let mut agent = Agent {
            network,
            downloads,
            root: None,
            children: HashSet::new(),
            next_id: RELAY_ID_BASE,
        };
        if agent.network.needs_fetch() {
            let r = pipe
                .call(
                    next(),
                    "Target.attachToBrowserTarget",
                    serde_json::json!({}),
                    timeout,
                )
                .await?;
            let root = r
                .get("sessionId")
                .and_then(|s| s.as_str())
                .map(str::to_string)
                .ok_or(PipeError::Failed {
                    method: "Target.attachToBrowserTarget",
                    reply: r.to_string(),
                })?;
            agent.root = Some(root.clone());
            agent.auto_attach(pipe, &root).await?;
        }
        Ok(agent)
    }

    async fn send(
        &mut self,
        pipe: &mut CdpPipe,
        session: &str,
        method: &str,
        params: serde_json::Value,
    ) -> std::io::Result<()> {
        self.next_id += 1;
        let msg = serde_json::json!({
            "id": self.next_id,
            "method": method,
            "params": params,
            "sessionId": session,
        });
        pipe.send(msg.to_string().as_bytes()).await
    }

    async fn auto_attach(&mut self, pipe: &mut CdpPipe, session: &str) -> std::io::Result<()> {
        self.send(
            pipe,
            session,
            "Target.setAutoAttach",
            serde_json::json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
        )
        .await
    }

    /// Whether the session intercepts at all (else browser messages need no look).
    pub fn intercepting(&self) -> bool {
        self.root.is_some()
    }

    /// A browser message: `true` to relay it to the client, `false` when it was the agent's.
    pub async fn on_browser(&mut self, msg: &Bytes, pipe: &mut CdpPipe) -> bool {
        if !self.intercepting() {
            return true;
        }
        if is_own_reply(msg) {
            return false;
        }
        let Some(sid) = session_id(msg) else {
            return true;
        };
        if self.root.as_deref() != Some(sid) && !self.children.contains(sid) {
            return true;
        }
        let sid = sid.to_string();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(msg) else {
            return false;
        };
        let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("");
        let params = v.get("params").cloned().unwrap_or_default();
        let r = match method {
            "Target.attachedToTarget" => self.attached(pipe, &params).await,
            "Target.detachedFromTarget" => {
                if let Some(s) = params.get("sessionId").and_then(|s| s.as_str()) {
                    self.children.remove(s);
                }
                Ok(())
            }
            "Fetch.requestPaused" => self.paused(pipe, &sid, &params).await,
            "Fetch.authRequired" => self.auth(pipe, &sid, &params).await,
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, method, "session agent could not answer");
        }
        false
    }

    async fn attached(
        &mut self,
        pipe: &mut CdpPipe,
        params: &serde_json::Value,
    ) -> std::io::Result<()> {
        let Some(child) = params.get("sessionId").and_then(|s| s.as_str()) else {
            return Ok(());
        };
        let child = child.to_string();
        self.children.insert(child.clone());
        let kind = params
            .pointer("/targetInfo/type")
            .and_then(|t| t.as_str())
            .unwrap_or("");
        if matches!(
            kind,
            "page" | "iframe" | "worker" | "service_worker" | "shared_worker"
        ) {
            let patterns = self.network.fetch_patterns();
            let auth = self.network.credentials().is_some();
            self.send(
                pipe,
                &child,
                "Fetch.enable",
                serde_json::json!({ "patterns": patterns, "handleAuthRequests": auth }),
            )
            .await?;
            if matches!(kind, "page" | "iframe") {
                self.auto_attach(pipe, &child).await?;
            }
        }
        if params.get("waitingForDebugger").and_then(|w| w.as_bool()) == Some(true) {
            self.send(
                pipe,
                &child,
                "Runtime.runIfWaitingForDebugger",
                serde_json::json!({}),
            )
            .await?;
        }
        Ok(())
    }

    async fn paused(
        &mut self,
        pipe: &mut CdpPipe,
        sid: &str,
        params: &serde_json::Value,
    ) -> std::io::Result<()> {
        let Some(req) = params.get("requestId").cloned() else {
            return Ok(());
        };
        let url = params
            .pointer("/request/url")
            .and_then(|u| u.as_str())
            .unwrap_or("");
        let kind = params
            .get("resourceType")
            .and_then(|t| t.as_str())
            .unwrap_or("");
        if self.network.blocks(url, kind) {
            self.send(
                pipe,
                sid,
                "Fetch.failRequest",
                serde_json::json!({ "requestId": req, "errorReason": "BlockedByClient" }),
            )
            .await
        } else {
            self.send(
                pipe,
                sid,
                "Fetch.continueRequest",
                serde_json::json!({ "requestId": req }),
            )
            .await
        }
    }

    async fn auth(
        &mut self,
        pipe: &mut CdpPipe,
        sid: &str,
        params: &serde_json::Value,
    ) -> std::io::Result<()> {
        let Some(req) = params.get("requestId").cloned() else {
            return Ok(());
        };
        let from_proxy = params
            .pointer("/authChallenge/source")
            .and_then(|s| s.as_str())
            == Some("Proxy");
        let response = match self.network.credentials() {
            Some((user, pass)) if from_proxy => serde_json::json!({
                "response": "ProvideCredentials", "username": user, "password": pass,
            }),
            _ => serde_json::json!({ "response": "Default" }),
        };
        self.send(
            pipe,
            sid,
            "Fetch.continueWithAuth",
            serde_json::json!({ "requestId": req, "authChallengeResponse": response }),
        )
        .await
    }

    /// A client's download settings keep their behaviour and get the session's directory.
    /// `None`: relay the message as it is.
    pub fn rewrite_client(&self, msg: &[u8]) -> Option<String> {
        rewrite_download_path(msg, &self.downloads)
    }
}

/// `Browser.setDownloadBehavior` / `Page.setDownloadBehavior` with `downloadPath` set to `dir`.
pub fn rewrite_download_path(msg: &[u8], dir: &Path) -> Option<String> {
    // Cheap first: most messages are not about downloads.
    if !msg.windows(19).any(|w| w == b"setDownloadBehavior") {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(msg).ok()?;
    let method = v.get("method")?.as_str()?;
    if method != "Browser.setDownloadBehavior" && method != "Page.setDownloadBehavior" {
        return None;
    }
    let params = v.get_mut("params")?.as_object_mut()?;
    let allows = matches!(
        params.get("behavior").and_then(|b| b.as_str()),
        Some("allow" | "allowAndName")
    );
    if allows {
        params.insert(
            "downloadPath".into(),
            serde_json::Value::from(dir.display().to_string()),
        );
    }
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn session_ids_are_read_from_the_end() {
        assert_eq!(
            session_id(br#"{"method":"Fetch.requestPaused","params":{"x":1},"sessionId":"AB12"}"#),
            Some("AB12")
        );
        assert_eq!(session_id(br#"{"id":1,"result":{}}"#), None);
        // A sessionId inside params, far from the end, is not the message's.
        let long = format!(
            r#"{{"method":"Target.attachedToTarget","params":{{"sessionId":"CHILD","pad":"{}"}}}}"#,
            "x".repeat(200)
        );
        assert_eq!(session_id(long.as_bytes()), None);
    }

    #[test]
    fn own_replies() {
        assert!(is_own_reply(br#"{"id":2140001001,"result":{}}"#));
        assert!(!is_own_reply(br#"{"id":214,"result":{}}"#));
        assert!(!is_own_reply(br#"{"id":7,"result":{}}"#));
    }

    #[test]
    fn download_paths_are_the_sessions() {
        let d = Path::new("/a/s1-downloads");
        let m = br#"{"id":3,"method":"Browser.setDownloadBehavior","params":{"behavior":"allowAndName","downloadPath":"/etc","browserContextId":"C"}}"#;
        let r: serde_json::Value =
            serde_json::from_str(&rewrite_download_path(m, d).unwrap()).unwrap();
        assert_eq!(r["params"]["downloadPath"], "/a/s1-downloads");
        assert_eq!(r["params"]["browserContextId"], "C");
        assert_eq!(r["id"], 3);
        let deny =
            br#"{"id":4,"method":"Browser.setDownloadBehavior","params":{"behavior":"deny"}}"#;
        let r: serde_json::Value =
            serde_json::from_str(&rewrite_download_path(deny, d).unwrap()).unwrap();
        assert!(r["params"].get("downloadPath").is_none());
        assert_eq!(
            rewrite_download_path(br#"{"id":5,"method":"Page.navigate"}"#, d),
            None
        );
    }

    proptest! {
        #[test]
        fn any_message_is_read_safely(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = session_id(&b);
            let _ = is_own_reply(&b);
            let _ = rewrite_download_path(&b, Path::new("/d"));
        }
    }
}

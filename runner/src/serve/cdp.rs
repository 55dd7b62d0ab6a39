//! What the service reads of the CDP messages it relays: only enough to keep its promises.
//!
//! From the client, every message must be one JSON object with an integer `id` and a string
//! `method` (what every CDP client sends); anything else ends the session — the browser never
//! sees a stranger's garbage, and a message cannot smuggle a NUL byte (the pipe's separator:
//! valid JSON has none). `Browser.close` is answered by the service itself and ends the session,
//! so the browser is closed by the runner's verified close rather than by its own shutdown.
//! From the browser, only whether a message is a reply (`{"id":…`) is looked at — it is not
//! parsed — which keeps large replies (screenshots) cheap; replies settle the client's
//! commands in flight, and a session is idle only with none in flight.

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Deserialize)]
struct Command<'a> {
    id: u64,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(default, rename = "sessionId", borrow)]
    session_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    #[allow(dead_code)]
    params: Option<IgnoredAny>,
}

/// What to do with a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Client {
    /// Relay it to the browser.
    Forward,
    /// Answer with this reply and end the session as closed by the client.
    Close(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a CDP command (a JSON object with an integer id and a method): {0}")]
    NotCommand(String),
}

/// Judge one client message.
pub fn inspect_client(msg: &[u8]) -> Result<Client, Invalid> {
    let cmd: Command<'_> =
        serde_json::from_slice(msg).map_err(|e| Invalid::NotCommand(e.to_string()))?;
    if cmd.method == "Browser.close" {
        let reply = match cmd.session_id {
            Some(s) => serde_json::json!({ "id": cmd.id, "result": {}, "sessionId": s }),
            None => serde_json::json!({ "id": cmd.id, "result": {} }),
        };
        return Ok(Client::Close(reply.to_string()));
    }
    Ok(Client::Forward)
}

/// Whether a browser message is a reply to a command (Chromium writes `id` first).
pub fn is_reply(msg: &[u8]) -> bool {
    msg.starts_with(br#"{"id":"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_pass_and_garbage_does_not() {
        assert_eq!(
            inspect_client(br#"{"id":1,"method":"Target.getTargets","params":{}}"#),
            Ok(Client::Forward)
        );
        assert_eq!(
            inspect_client(
                br#"{"id":7,"method":"Page.navigate","params":{"url":"x"},"sessionId":"S"}"#
            ),
            Ok(Client::Forward)
        );
        for bad in [
            &b"garbage"[..],
            b"",
            br#"{"method":"Page.enable"}"#,
            br#"{"id":-1,"method":"x"}"#,
            br#"{"id":"1","method":"x"}"#,
            br#"{"id":1,"method":"x"} trailing"#,
            b"{\"id\":1,\"method\":\"a\0b\"}",
            br#"[1,2]"#,
        ] {
            assert!(
                inspect_client(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn browser_close_is_answered_here() {
        assert_eq!(
            inspect_client(br#"{"id":9,"method":"Browser.close"}"#),
            Ok(Client::Close(r#"{"id":9,"result":{}}"#.into()))
        );
        assert_eq!(
            inspect_client(br#"{"id":3,"method":"Browser.close","sessionId":"AB"}"#),
            Ok(Client::Close(
                r#"{"id":3,"result":{},"sessionId":"AB"}"#.into()
            ))
        );
    }

    #[test]
    fn replies_and_events() {
        assert!(is_reply(br#"{"id":1,"result":{}}"#));
        assert!(!is_reply(
            br#"{"method":"Target.targetCreated","params":{}}"#
        ));
    }

    proptest! {
        /// Whatever bytes a client sends, judging them never panics, and whatever passes holds
        /// no NUL byte (the pipe's message separator).
        #[test]
        fn any_bytes_are_judged_safely(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if inspect_client(&b).is_ok() {
                prop_assert!(!b.contains(&0));
            }
        }

        #[test]
        fn any_command_shape_passes(id in 0u64..u64::MAX, m in "[A-Za-z]{1,10}\\.[A-Za-z]{1,10}", p in "[ -~]{0,40}") {
            let msg = serde_json::json!({"id": id, "method": m, "params": {"v": p}}).to_string();
            let r = inspect_client(msg.as_bytes());
            if m == "Browser.close" {
                prop_assert!(matches!(r, Ok(Client::Close(_))));
            } else {
                prop_assert_eq!(r, Ok(Client::Forward));
            }
        }
    }
}

//! Per-session network and state options, for the jobs a runner runs and for the service's
//! sessions (query parameters of the endpoint URL). Pure: parsing, validation, matching; the
//! CDP that applies them lives with each kind of session (`serve/agent.rs` for endpoint
//! sessions, `session.rs` for job sessions).
//!
//! ```yaml
//! network:
//!   proxy: http://proxy.example:3128     # --proxy-server (per browser, or per context in jobs)
//!   proxy_username: bot                  # answered on Fetch.authRequired from the proxy
//!   proxy_password: s3cret
//!   proxy_bypass: "<-loopback>"          # --proxy-bypass-list
//!   block: [image, font, media]          # resource types that fail with BlockedByClient
//!   block_urls: ["*.doubleclick.net/*"]  # wildcards: * any run, ? one character
//! state: cookies.json                    # cookies loaded at start, saved at the end
//! ```
//!
//! Everything here comes from strangers (a job posted to the service, a URL's query): values
//! are bounded and checked before any of them reaches a browser's command line.

use serde::Deserialize;

/// Longest proxy, bypass list, URL pattern or credential accepted.
pub const MAX_VALUE: usize = 512;
/// Most URL patterns in one session.
pub const MAX_PATTERNS: usize = 64;

/// Resource types a session may block (Chromium's `Network.ResourceType`, lower-cased).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Font,
    Media,
    Stylesheet,
    Script,
    Xhr,
    Fetch,
    Websocket,
    Texttrack,
    Eventsource,
    Manifest,
    Ping,
    Other,
}

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::Image,
        Kind::Font,
        Kind::Media,
        Kind::Stylesheet,
        Kind::Script,
        Kind::Xhr,
        Kind::Fetch,
        Kind::Websocket,
        Kind::Texttrack,
        Kind::Eventsource,
        Kind::Manifest,
        Kind::Ping,
        Kind::Other,
    ];

    /// The name CDP uses.
    pub fn cdp(self) -> &'static str {
        match self {
            Kind::Image => "Image",
            Kind::Font => "Font",
            Kind::Media => "Media",
            Kind::Stylesheet => "Stylesheet",
            Kind::Script => "Script",
            Kind::Xhr => "XHR",
            Kind::Fetch => "Fetch",
            Kind::Websocket => "WebSocket",
            Kind::Texttrack => "TextTrack",
            Kind::Eventsource => "EventSource",
            Kind::Manifest => "Manifest",
            Kind::Ping => "Ping",
            Kind::Other => "Other",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.cdp().eq_ignore_ascii_case(s.trim()))
    }
}

/// A session's network options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default)]
    pub proxy: Option<String>,
    #[serde(default)]
    pub proxy_username: Option<String>,
    #[serde(default)]
    pub proxy_password: Option<String>,
    #[serde(default)]
    pub proxy_bypass: Option<String>,
    #[serde(default)]
    pub block: Vec<Kind>,
    #[serde(default)]
    pub block_urls: Vec<String>,
}

/// Everything a session may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    pub network: Network,
    /// A storage state's name (service: a file `<--state-dir>/<name>.json`).
    pub state: Option<String>,
}

impl Network {
    /// Whether anything needs the Fetch domain (interception) in the session's pages.
    pub fn needs_fetch(&self) -> bool {
        self.credentials().is_some() || !self.block.is_empty() || !self.block_urls.is_empty()
    }

    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.proxy_username
            .as_deref()
            .map(|u| (u, self.proxy_password.as_deref().unwrap_or("")))
    }

    /// `Fetch.enable`'s patterns: every request when proxy credentials must be answered (the
    /// challenge comes for an intercepted request only), else only what may be blocked.
    pub fn fetch_patterns(&self) -> Vec<serde_json::Value> {
        if self.credentials().is_some() {
            return vec![serde_json::json!({ "urlPattern": "*", "requestStage": "Request" })];
        }
        let types = self
            .block
            .iter()
            .map(|k| serde_json::json!({ "resourceType": k.cdp(), "requestStage": "Request" }));
        let urls = self
            .block_urls
            .iter()
            .map(|p| serde_json::json!({ "urlPattern": p, "requestStage": "Request" }));
        types.chain(urls).collect()
    }

    /// Whether a paused request is to fail.
    pub fn blocks(&self, url: &str, resource_type: &str) -> bool {
        self.block.iter().any(|k| k.cdp() == resource_type)
            || self.block_urls.iter().any(|p| glob(p, url))
    }

    /// Check every value (see the module documentation).
    pub fn validate(&self) -> Result<(), String> {
        let plain = |what: &str, v: &str| -> Result<(), String> {
            if v.is_empty() || v.len() > MAX_VALUE {
                return Err(format!("{what}: 1 to {MAX_VALUE} characters"));
            }
            if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!("{what}: no spaces or control characters"));
            }
            Ok(())
        };
        if let Some(p) = &self.proxy {
            plain("proxy", p)?;
            if !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/_=;-[]".contains(c))
            {
                return Err("proxy: [scheme://]host:port (or Chromium's proxy rules)".into());
            }
        }
        if let Some(b) = &self.proxy_bypass {
            plain("proxy_bypass", b)?;
        }
        for (what, v) in [
            ("proxy_username", &self.proxy_username),
            ("proxy_password", &self.proxy_password),
        ] {
            if let Some(v) = v {
                if v.len() > MAX_VALUE || v.chars().any(char::is_control) {
                    return Err(format!(
                        "{what}: at most {MAX_VALUE} characters, no control characters"
                    ));
                }
            }
        }
        if self.credentials().is_some() && self.proxy.is_none() {
            return Err("proxy_username: needs a proxy".into());
        }
        if self.block_urls.len() > MAX_PATTERNS {
            return Err(format!("block_urls: at most {MAX_PATTERNS}"));
        }
        for p in &self.block_urls {
            plain("block_urls", p)?;
        }
        Ok(())
    }
}

/// A storage state's name: letters, digits, `_` and `-`, 1 to 64 of them (it names a file).
pub fn valid_state_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

impl SessionOptions {
    /// From an endpoint URL's query: `proxy`, `proxy_username`, `proxy_password`,
    /// `proxy_bypass`, `block` (comma-separated types), `block_url` (repeatable), `state`.
    /// `token` is the service's; any other key is an error (a typo must not silently drop an
    /// option).
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut o = SessionOptions::default();
        let n = &mut o.network;
        for (k, v) in pairs {
            match k.as_str() {
                "token" => {}
                "proxy" => n.proxy = Some(v.clone()),
                "proxy_username" => n.proxy_username = Some(v.clone()),
                "proxy_password" => n.proxy_password = Some(v.clone()),
                "proxy_bypass" => n.proxy_bypass = Some(v.clone()),
                "block" => {
                    for t in v.split(',').filter(|t| !t.trim().is_empty()) {
                        let k = Kind::parse(t).ok_or_else(|| {
                            format!("block: unknown resource type `{t}` (image, font, media, stylesheet, script, xhr, fetch, websocket, texttrack, eventsource, manifest, ping, other)")
                        })?;
                        if !n.block.contains(&k) {
                            n.block.push(k);
                        }
                    }
                }
                "block_url" => n.block_urls.push(v.clone()),
                "state" => o.state = Some(v.clone()),
                other => return Err(format!("unknown session option `{other}`")),
            }
        }
        o.network.validate()?;
        if let Some(s) = &o.state {
            if !valid_state_name(s) {
                return Err("state: a name of letters, digits, _ and - (1 to 64)".into());
            }
        }
        Ok(o)
    }

    pub fn is_default(&self) -> bool {
        *self == SessionOptions::default()
    }
}

/// Wildcard match as CDP's URL patterns: `*` any run of characters, `?` exactly one. Linear
/// in time (the classic two-pointer match with one backtrack point), so a stranger's pattern
/// cannot make it slow.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Cookies in a storage state file: Playwright's `storageState` shape (`{"cookies": [...]}`,
/// other keys ignored) or a bare array of CDP cookies.
pub fn cookies_from_state(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) => match o.remove("cookies") {
            Some(serde_json::Value::Array(a)) => a,
            None => Vec::new(),
            Some(_) => return Err("`cookies` is not an array".into()),
        },
        _ => return Err("a storage state is an object with `cookies`, or an array".into()),
    };
    // CDP's CookieParam takes what Storage.getCookies gives, minus what it computes itself.
    Ok(list
        .into_iter()
        .filter(|c| c.get("name").is_some() && c.get("value").is_some())
        .map(|mut c| {
            if let Some(o) = c.as_object_mut() {
                for k in [
                    "size",
                    "session",
                    "priority",
                    "sourceScheme",
                    "sourcePort",
                    "partitionKeyOpaque",
                ] {
                    o.remove(k);
                }
                // Playwright writes -1 for session cookies.
                if o.get("expires")
                    .and_then(|e| e.as_f64())
                    .is_some_and(|e| e < 0.0)
                {
                    o.remove("expires");
                }
            }
            c
        })
        .collect())
}

/// A storage state file from CDP cookies (Playwright's shape, so either tool can load it).
pub fn state_from_cookies(cookies: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "cookies": cookies.clone(), "origins": [] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Result<SessionOptions, String> {
        SessionOptions::from_query(&crate::serve::auth::parse_query(s))
    }

    #[test]
    fn query_options() {
        let o = q("token=x&proxy=http://127.0.0.1:3128&proxy_username=u&proxy_password=p%20w&block=image,Font&block_url=*.png&state=acct-1").unwrap();
        assert_eq!(o.network.proxy.as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(o.network.credentials(), Some(("u", "p w")));
        assert_eq!(o.network.block, vec![Kind::Image, Kind::Font]);
        assert_eq!(o.state.as_deref(), Some("acct-1"));
        assert!(o.network.needs_fetch());
        assert_eq!(
            o.network.fetch_patterns().len(),
            1,
            "credentials: intercept everything"
        );
        assert!(q("").unwrap().is_default());
        assert!(q("token=t").unwrap().is_default());
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "proxi=x",
            "block=pictures",
            "proxy=http://a b:1",
            "proxy=--no-sandbox%20--x",
            "proxy_username=u",
            "state=../x",
            "state=",
        ] {
            assert!(q(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocking_by_type_and_url() {
        let n = Network {
            block: vec![Kind::Image, Kind::Media],
            block_urls: vec!["*://ads.example/*".into(), "*.woff?".into()],
            ..Network::default()
        };
        assert!(n.blocks("http://x/a.png", "Image"));
        assert!(!n.blocks("http://x/", "Document"));
        assert!(n.blocks("https://ads.example/t.js", "Script"));
        assert!(n.blocks("http://x/f.woff2", "Font"));
        assert!(!n.blocks("http://x/f.woff", "Font"));
        assert_eq!(n.fetch_patterns().len(), 4);
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*.png", "http://x/y.png"));
        assert!(!glob("*.png", "http://x/y.png?z"));
    }

    #[test]
    fn state_files() {
        let cookies = cookies_from_state(
            r#"{"cookies":[{"name":"a","value":"1","domain":"127.0.0.1","path":"/","expires":-1,"size":2,"session":true}],"origins":[]}"#,
        )
        .unwrap();
        assert_eq!(cookies.len(), 1);
        assert!(cookies[0].get("size").is_none() && cookies[0].get("expires").is_none());
        assert!(cookies_from_state("[]").unwrap().is_empty());
        assert!(cookies_from_state("7").is_err());
    }

    proptest! {
        /// The matcher agrees with a naive recursive definition.
        #[test]
        fn glob_matches_the_definition(p in "[ab*?]{0,8}", t in "[ab]{0,10}") {
            fn naive(p: &[char], t: &[char]) -> bool {
                match p.first() {
                    None => t.is_empty(),
                    Some('*') => naive(&p[1..], t) || (!t.is_empty() && naive(p, &t[1..])),
                    Some('?') => !t.is_empty() && naive(&p[1..], &t[1..]),
                    Some(c) => t.first() == Some(c) && naive(&p[1..], &t[1..]),
                }
            }
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(glob(&p, &t), naive(&pc, &tc));
        }

        /// Whatever a URL's query holds, parsing options never panics, and what passes never
        /// puts a space or control character on a browser's command line.
        #[test]
        fn any_query_is_judged_safely(s in ".{0,300}") {
            if let Ok(o) = q(&s) {
                for v in [&o.network.proxy, &o.network.proxy_bypass].into_iter().flatten() {
                    prop_assert!(!v.chars().any(|c| c.is_whitespace() || c.is_control()));
                }
            }
        }
    }
}

//! The service's token (`--token`) and the query strings it and the session options arrive in.
//!
//! A client proves it knows the token with `?token=…` on any URL (what `browserWSEndpoint`
//! strings carry) or an `Authorization: Bearer …` header. The comparison takes the same time
//! whatever the guess has in common with the token, so response times do not leak it byte by
//! byte.

/// Constant-time equality: every byte of `expected` is looked at whatever `given` holds; only
/// `expected`'s length (the service's own secret's length, not a guess) shapes the time.
pub fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = (expected.len() ^ given.len()) as u64;
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= u64::from(e ^ g);
    }
    std::hint::black_box(diff) == 0
}

/// `key=value` pairs of a query string, percent-decoded (`+` is a space). Malformed escapes
/// are kept as they are; nothing here fails.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether a request carries the token (`None`: the service has no token; everyone may).
pub fn authorized(
    token: Option<&str>,
    query: &[(String, String)],
    authorization: Option<&[u8]>,
) -> bool {
    let Some(expected) = token else {
        return true;
    };
    let from_header = authorization
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .map(|t| token_matches(expected.as_bytes(), t.trim_ascii()))
        .unwrap_or(false);
    let from_query = query
        .iter()
        .filter(|(k, _)| k == "token")
        .any(|(_, v)| token_matches(expected.as_bytes(), v.as_bytes()));
    from_header | from_query
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cret", b"s3cre"));
        assert!(!token_matches(b"s3cret", b"s3cret!"));
        assert!(!token_matches(b"s3cret", b""));
        assert!(!token_matches(b"s3cret", b"S3cret"));
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query("token=a%2Fb&x=1+2&flag&&bad=%zz%4"),
            vec![
                ("token".into(), "a/b".into()),
                ("x".into(), "1 2".into()),
                ("flag".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
    }

    #[test]
    fn header_or_query() {
        let q = parse_query("token=t0k");
        assert!(authorized(Some("t0k"), &q, None));
        assert!(authorized(Some("t0k"), &[], Some(b"Bearer t0k")));
        assert!(!authorized(Some("t0k"), &[], Some(b"Basic t0k")));
        assert!(!authorized(Some("t0k"), &parse_query("token=nope"), None));
        assert!(authorized(None, &[], None));
    }

    proptest! {
        #[test]
        fn equal_iff_bytes_equal(a in proptest::collection::vec(any::<u8>(), 0..40),
                                 b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(token_matches(&a, &b), a == b);
            prop_assert!(token_matches(&a, &a));
        }

        /// Whatever a stranger puts in a URL, parsing neither panics nor loses an encoded value.
        #[test]
        fn query_parsing_is_total_and_round_trips(s in ".{0,200}", v in "[a-zA-Z0-9 /:?=&%+]{0,40}") {
            let _ = parse_query(&s);
            let enc: String = v.bytes().map(|c| format!("%{c:02X}")).collect();
            let q = parse_query(&format!("k={enc}"));
            prop_assert_eq!(q, vec![("k".to_string(), v)]);
        }
    }
}

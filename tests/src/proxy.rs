//! A small HTTP forward proxy on 127.0.0.1 that demands Basic credentials
//! (`Proxy-Authorization`), for the tests of per-session proxies: it answers 407 with a
//! `Proxy-Authenticate` challenge until the right credentials come, then forwards plain-HTTP
//! requests (absolute-form) to their origin and logs each forwarded URL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct AuthProxy {
    pub port: u16,
    /// URLs forwarded with the right credentials.
    pub forwarded: Arc<Mutex<Vec<String>>>,
    /// Requests answered with 407.
    pub challenged: Arc<Mutex<u64>>,
}

impl AuthProxy {
    pub fn start(user: &str, pass: &str) -> AuthProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let expected = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let challenged = Arc::new(Mutex::new(0));
        let (f, c) = (forwarded.clone(), challenged.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (expected, f, c) = (expected.clone(), f.clone(), c.clone());
                std::thread::spawn(move || serve(stream, &expected, &f, &c));
            }
        });
        AuthProxy {
            port,
            forwarded,
            challenged,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(
    mut client: TcpStream,
    expected: &str,
    forwarded: &Mutex<Vec<String>>,
    challenged: &Mutex<u64>,
) {
    client.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(clone) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) {
            return;
        }
        let l = line.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        match l.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("proxy-authorization") => {
                auth = Some(v.trim().to_string())
            }
            Some((k, _)) if k.to_ascii_lowercase().starts_with("proxy-") => {}
            Some((k, _)) if k.eq_ignore_ascii_case("connection") => {}
            _ => headers.push(l),
        }
    }
    if auth.as_deref() != Some(expected) {
        *challenged.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let _ = client.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"leakwarden-test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(url)) = (parts.next(), parts.next()) else {
        return;
    };
    let Some(rest) = url.strip_prefix("http://") else {
        let _ = client.write_all(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let Ok(mut origin) = TcpStream::connect(host) else {
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    forwarded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(url.to_string());
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in &headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    if origin.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut response = Vec::new();
    origin.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let _ = origin.read_to_end(&mut response);
    let _ = client.write_all(&response);
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_known_values() {
        assert_eq!(super::base64(b"u:p"), "dTpw");
        assert_eq!(super::base64(b"bot:s3cret"), "Ym90OnMzY3JldA==");
        assert_eq!(super::base64(b"ab"), "YWI=");
    }
}

//! What keeps the web view to its user: the server listens on 127.0.0.1 only; it answers only requests whose
//! `Host` is its own address (a DNS-rebinding page reaches it under a name of the attacker's) and whose
//! `Origin`, when the browser sends one, is its own (a page of another site cannot drive it: CSRF); and every
//! request that changes something carries the session's token, a random value made at start and embedded in
//! the page the server serves, which other sites cannot read.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The header that carries the session token on state-changing requests.
pub const TOKEN_HEADER: &str = "x-sluice-token";

/// The Content-Security-Policy of every answer: scripts, styles and connections from the server itself only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A new random session token: 32 bytes from the operating system, as hex.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The checks of one server: its port (for Host and Origin) and its token.
#[derive(Clone, Debug)]
pub struct Guard {
    hosts: Vec<String>,
    origins: Vec<String>,
    token: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No Host header, or not the server's address.
    Host(String),
    /// An Origin that is not the server's.
    Origin(String),
    /// A state-changing request without the session token, or with another one.
    Token,
    /// The browser says the request comes from another site.
    CrossSite,
}

impl Refusal {
    /// The message of the 403 answer.
    pub fn message(&self) -> String {
        match self {
            Refusal::Host(h) => format!(
                "refused: Host {h:?} is not this server's address (open the URL kubectl sluice ui printed)"
            ),
            Refusal::Origin(o) => format!("refused: requests from origin {o:?} are not accepted"),
            Refusal::Token => {
                "refused: a change needs this session's token (reload the page from the URL kubectl sluice ui printed)"
                    .into()
            }
            Refusal::CrossSite => "refused: cross-site request".into(),
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    // Constant time in the token's content.
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Guard {
    /// The guard of a server on `127.0.0.1:port` with session token `token`.
    pub fn new(port: u16, token: String) -> Self {
        let hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Self {
            hosts,
            origins,
            token,
        }
    }

    /// The session token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Checks a request's method, path and headers. Only a page load (`GET` outside `/api/`) may come from a
    /// link on another site; its answer tells that site nothing, which cannot read it.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let host = text(header::HOST).unwrap_or_default();
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return Err(Refusal::Host(host));
        }
        if let Some(origin) = text(header::ORIGIN)
            && !self.origins.iter().any(|o| o.eq_ignore_ascii_case(&origin))
        {
            return Err(Refusal::Origin(origin));
        }
        let safe = matches!(*method, Method::GET | Method::HEAD);
        let page = safe && !path.starts_with("/api/");
        if !page
            && headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes() == b"cross-site")
        {
            return Err(Refusal::CrossSite);
        }
        if !safe {
            let given = headers
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same(given, &self.token) {
                return Err(Refusal::Token);
            }
        }
        Ok(())
    }
}

/// The middleware: refuses what [`Guard::check`] refuses with 403 and a JSON `{"error": ...}`, and adds the
/// security headers to every answer.
pub async fn guard(
    State(guard): State<std::sync::Arc<Guard>>,
    req: Request,
    next: Next,
) -> Response {
    let mut response = match guard.check(req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({ "error": refusal.message(), "reason": "Refused", "code": 403 })),
        )
            .into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn host_origin_and_token_are_checked() {
        let g = Guard::new(8080, "t0k".into());
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            g.check(&get, "/api/runs", &headers(&[("host", "127.0.0.1:8080")])),
            Ok(())
        );
        assert_eq!(
            g.check(&get, "/api/runs", &headers(&[("host", "localhost:8080")])),
            Ok(())
        );
        // DNS rebinding: the attacker's name, or another port.
        assert!(matches!(
            g.check(
                &get,
                "/api/runs",
                &headers(&[("host", "evil.example:8080")])
            ),
            Err(Refusal::Host(_))
        ));
        assert!(matches!(
            g.check(&get, "/api/runs", &headers(&[("host", "127.0.0.1:8081")])),
            Err(Refusal::Host(_))
        ));
        assert!(matches!(
            g.check(&get, "/api/runs", &headers(&[])),
            Err(Refusal::Host(_))
        ));
        // CSRF: another origin, even for reads (EventSource, fetch).
        assert!(matches!(
            g.check(
                &get,
                "/api/runs",
                &headers(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://evil.example")
                ])
            ),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(
            g.check(
                &get,
                "/api/runs",
                &headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])
            ),
            Err(Refusal::Origin(_))
        ));
        let cross = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(g.check(&get, "/api/runs", &cross), Err(Refusal::CrossSite));
        // A link from another site may open the page (which it cannot read), nothing else.
        assert_eq!(g.check(&get, "/runs/n/r", &cross), Ok(()));
        // Changes need the token.
        let own = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ];
        assert_eq!(
            g.check(&post, "/api/runs/n/r/cancel", &headers(&own)),
            Err(Refusal::Token)
        );
        let mut wrong = own.to_vec();
        wrong.push((TOKEN_HEADER, "t0j"));
        assert_eq!(
            g.check(&post, "/api/runs/n/r/cancel", &headers(&wrong)),
            Err(Refusal::Token)
        );
        let mut right = own.to_vec();
        right.push((TOKEN_HEADER, "t0k"));
        assert_eq!(
            g.check(&post, "/api/runs/n/r/cancel", &headers(&right)),
            Ok(())
        );
    }

    #[test]
    fn tokens_are_random() {
        let a = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_token().unwrap());
    }
}

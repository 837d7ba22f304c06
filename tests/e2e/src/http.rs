//! A minimal HTTP/1.1 client over a loopback TCP connection, for tests that must see exactly what an endpoint
//! answers (status, content type, body) or must send what a worker would, bearer token included.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{HarnessError, Result};

/// How long an exchange may take before it is an error.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What an endpoint answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, empty when there is none.
    pub content_type: String,
    /// The body as text.
    pub body: String,
}

/// One request to `127.0.0.1:{port}` with a JSON `body` (and `Authorization: Bearer {token}` when given), on its
/// own connection (`Connection: close`), bounded by 30 seconds.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<HttpResponse> {
    let what = format!("{method} {path} on port {port}");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| HarnessError::Process(format!("{what}: no answer within {TIMEOUT:?}")))?
        .map_err(HarnessError::io(what.clone()))?;
    parse(&response)
        .ok_or_else(|| HarnessError::Process(format!("{what}: not an HTTP response: {response:?}")))
}

fn parse(response: &str) -> Option<HttpResponse> {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .skip(1)
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Some(HttpResponse {
        status,
        content_type,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_into_status_type_and_body() {
        let r = parse("HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n\r\n{\"x\":1}")
            .unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 409,
                content_type: "application/json".into(),
                body: "{\"x\":1}".into()
            }
        );
        let r = parse("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!((r.status, r.content_type.as_str()), (200, ""));
        assert!(parse("garbage").is_none());
    }
}

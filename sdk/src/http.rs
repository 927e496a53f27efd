//! Blocking outbound HTTP over `wasi:http/outgoing-handler`.
//!
//! The host sends a request only to origins the operator allow-listed for this
//! connector; anything else fails with [`HttpError::Denied`].
//!
//! ```no_run
//! use ebb_connector_sdk::http::Request;
//! let response = Request::post("http://127.0.0.1:3000/token")
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body("grant_type=client_credentials")
//!     .send()?;
//! assert_eq!(response.status, 200);
//! # Ok::<(), ebb_connector_sdk::http::HttpError>(())
//! ```

use crate::Error;
use crate::wit::wasi::http::outgoing_handler;
use crate::wit::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::wit::wasi::io::streams::StreamError;

/// The most response body bytes read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// An HTTP request under construction.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: the origin is not on this connector's
    /// allow-list, or it resolves to an address the operator did not allow.
    Denied(String),
    /// The request was malformed (bad URL, bad header).
    Invalid(String),
    /// The request failed on the way (connection refused, timeout, TLS...).
    Unavailable(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Denied(m) => write!(f, "request denied by the host: {m}"),
            Self::Invalid(m) => write!(f, "invalid request: {m}"),
            Self::Unavailable(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Denied(_) => Error::Denied(e.to_string()),
            HttpError::Invalid(_) => Error::Invalid(e.to_string()),
            HttpError::Unavailable(_) => Error::Unavailable(e.to_string()),
        }
    }
}

impl Response {
    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header named `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

impl Request {
    fn new(method: Method, url: &str) -> Self {
        Self {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A GET request.
    pub fn get(url: &str) -> Self {
        Self::new(Method::Get, url)
    }

    /// A POST request.
    pub fn post(url: &str) -> Self {
        Self::new(Method::Post, url)
    }

    /// A DELETE request.
    pub fn delete(url: &str) -> Self {
        Self::new(Method::Delete, url)
    }

    /// A PUT request.
    pub fn put(url: &str) -> Self {
        Self::new(Method::Put, url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::from_list(&self.headers)
            .map_err(|e| HttpError::Invalid(format!("bad header: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| HttpError::Invalid(format!("{what} rejected for {}", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(&authority))
            .map_err(|()| invalid("authority"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| invalid("path"))?;
        let body = request.body().map_err(|()| invalid("body"))?;
        let future =
            outgoing_handler::handle(request, None).map_err(|e| map_error(&self.url, e))?;
        {
            let stream = body.write().map_err(|()| invalid("body stream"))?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Unavailable(format!("writing the body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| map_error(&self.url, e))?;
        let response = loop {
            match future.get() {
                Some(result) => break result,
                None => future.subscribe().block(),
            }
        };
        let response = response
            .map_err(|()| HttpError::Unavailable("response already taken".into()))?
            .map_err(|e| map_error(&self.url, e))?;
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Unavailable("response body already taken".into()))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| HttpError::Unavailable("response body stream".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() > MAX_BODY {
                            return Err(HttpError::Unavailable(format!(
                                "response body from {} is larger than {MAX_BODY} bytes",
                                self.url
                            )));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Unavailable(format!(
                            "reading the response body: {}",
                            e.to_debug_string()
                        )));
                    }
                }
            }
        }
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

fn map_error(url: &str, e: ErrorCode) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => {
            HttpError::Denied(format!("{url} is not on this connector's allow-list"))
        }
        ErrorCode::DestinationIpProhibited => HttpError::Denied(format!(
            "{url} resolves to an address this connector may not reach"
        )),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            HttpError::Invalid(format!("{url}: {e:?}"))
        }
        other => HttpError::Unavailable(format!("{url}: {other:?}")),
    }
}

/// Splits `scheme://authority/path?query`.
fn split_url(url: &str) -> Result<(Scheme, String, String), HttpError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| HttpError::Invalid(format!("`{url}` has no scheme")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(HttpError::Invalid(format!("unsupported scheme `{other}`"))),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Invalid(format!("`{url}` has no host")));
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((scheme, authority.to_owned(), path))
}

/// Percent-encodes `s` for an `application/x-www-form-urlencoded` body, the way
/// Python's `urlencode` and most servers expect (space as `+`).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An `application/x-www-form-urlencoded` body from `pairs`, in their order.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let (s, a, p) = split_url("http://127.0.0.1:9000/a/b?c=d").unwrap();
        assert!(matches!(s, Scheme::Http));
        assert_eq!((a.as_str(), p.as_str()), ("127.0.0.1:9000", "/a/b?c=d"));
        let (_, a, p) = split_url("https://example.com").unwrap();
        assert_eq!((a.as_str(), p.as_str()), ("example.com", "/"));
        let (_, _, p) = split_url("https://example.com?x=1").unwrap();
        assert_eq!(p, "/?x=1");
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("nohost").is_err());
    }

    #[test]
    fn form_encodes_like_urlencode() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(form(&[("a", "1 2"), ("b", "x:y")]), "a=1+2&b=x%3Ay");
    }
}

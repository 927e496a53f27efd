//! Outbound HTTP for connectors (`wasi:http/outgoing-handler`), limited to the
//! origins the operator allow-listed for each connector.
//!
//! A request is sent only if its `scheme://host:port` is allow-listed and every
//! address its host resolves to is public — or the origin is explicitly allowed to be
//! private (loopback, link-local, private, CGNAT, unique-local...). The request is
//! then sent to the checked address itself (`egress.rs`), HTTP and HTTPS alike, so
//! DNS cannot change between the check and the connection; TLS still verifies the
//! origin's name.
//!
//! For origins the operator holds basic-auth credentials for, the host adds them to
//! requests that carry no `Authorization` header (an OAuth client's secret stays in
//! the host; the connector sends its own header to use an issued token).

use crate::lend::HttpConfig;
use anyhow::{Context, bail};
use base64::Engine as _;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// `scheme://host:port`, the unit of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]` (no path).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = s.parse().context("not a URI")?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("the scheme must be http or https"),
        };
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        {
            bail!("an origin has no path");
        }
        let host = uri.host().context("no host")?;
        Ok(Self::new(https, host, uri.port_u16()))
    }

    fn new(https: bool, host: &str, port: Option<u16>) -> Self {
        Self {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: port.unwrap_or(if https { 443 } else { 80 }),
        }
    }

    fn of_request(uri: &http::Uri) -> Option<Self> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        Some(Self::new(https, uri.host()?, uri.port_u16()))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// One connector's egress policy.
#[derive(Debug)]
pub(crate) struct HttpPolicy {
    connector: Arc<str>,
    allow: BTreeSet<Origin>,
    allow_private: BTreeSet<Origin>,
    /// `Authorization: Basic ...` per origin, held by the host (sensitive).
    basic_auth: BTreeMap<Origin, http::HeaderValue>,
    /// Web PKI roots plus the operator's CA file.
    tls: Arc<rustls::ClientConfig>,
    /// Fault injection for tests: every lookup answers these addresses, as a
    /// resolver the system's cannot be made to act like (e.g. one that rebinds).
    #[cfg(test)]
    fixed_dns: Option<Vec<IpAddr>>,
}

impl HttpPolicy {
    pub fn new(connector: Arc<str>, config: &HttpConfig) -> anyhow::Result<Self> {
        let parse = |list: &[String]| -> anyhow::Result<BTreeSet<Origin>> {
            list.iter()
                .map(|o| Origin::parse(o).with_context(|| format!("http origin `{o}`")))
                .collect()
        };
        let allow_private = parse(&config.allow_private)?;
        let mut allow = parse(&config.allow)?;
        allow.extend(allow_private.iter().cloned());
        let mut basic_auth = BTreeMap::new();
        for (origin, auth) in &config.basic_auth {
            let parsed =
                Origin::parse(origin).with_context(|| format!("basic-auth origin `{origin}`"))?;
            if !allow.contains(&parsed) {
                bail!("basic-auth origin `{origin}` is not an allowed origin");
            }
            // A password in cleartext only to what the operator marked private
            // (loopback, a private network); anything else must be HTTPS.
            if !parsed.https && !allow_private.contains(&parsed) {
                bail!(
                    "basic-auth origin `{origin}` is plain HTTP: use https, or list it in \
                     allow-private if it is on a private network"
                );
            }
            let password = auth
                .resolve_password()
                .with_context(|| format!("basic-auth password for `{origin}`"))?;
            let pair = zeroize::Zeroizing::new(format!("{}:{}", auth.user, password.expose()));
            let header = zeroize::Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ));
            let mut value = http::HeaderValue::try_from(header.as_str())
                .context("basic-auth credentials are not a valid header")?;
            value.set_sensitive(true);
            basic_auth.insert(parsed, value);
        }
        let tls = super::egress::tls_config(config.ca_file.as_deref())?;
        Ok(Self {
            connector,
            allow,
            allow_private,
            basic_auth,
            tls,
            #[cfg(test)]
            fixed_dns: None,
        })
    }

    /// Checks a request and returns the address to connect to.
    async fn check(&self, uri: &http::Uri) -> Result<(Origin, SocketAddr), HttpError> {
        let Some(origin) = Origin::of_request(uri) else {
            return Err(HttpError::HttpRequestUriInvalid);
        };
        if !self.allow.contains(&origin) {
            tracing::warn!(connector = &*self.connector, %origin, "outbound HTTP denied: origin is not on the connector's allow-list");
            return Err(HttpError::HttpRequestDenied);
        }
        let addrs = self.lookup(&origin).await?;
        let first = *addrs.first().ok_or(HttpError::DestinationNotFound)?;
        if !self.allow_private.contains(&origin)
            && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
        {
            {
                tracing::warn!(connector = &*self.connector, %origin, address = %bad.ip(), "outbound HTTP denied: origin resolves to a non-public address");
                return Err(HttpError::DestinationIpProhibited);
            }
        }
        Ok((origin, first))
    }

    async fn lookup(&self, origin: &Origin) -> Result<Vec<SocketAddr>, HttpError> {
        #[cfg(test)]
        if let Some(ips) = &self.fixed_dns {
            return Ok(ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, origin.port))
                .collect());
        }
        Ok(tokio::net::lookup_host((origin.host.as_str(), origin.port))
            .await
            .map_err(|_| HttpError::DestinationNotFound)?
            .collect())
    }
}

/// Whether an address is on the public internet. Everything else — loopback,
/// unspecified, private, shared (CGNAT), link-local, multicast, broadcast,
/// documentation, unique-local, site-local, the IETF protocol block (Teredo,
/// benchmarking, ORCHID), discard-only — needs an explicit `allow-private`. An IPv6
/// address that carries an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64's
/// well-known prefix, 6to4) is judged by the IPv4 address it carries, so no
/// spelling of 127.0.0.1 passes.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let v4 = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            if let Some(mapped) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(mapped));
            }
            // ::a.b.c.d (IPv4-compatible; also :: and ::1) and 64:ff9b::a.b.c.d (NAT64).
            if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
                return is_public(v4(s[6], s[7]));
            }
            // 6to4: 2002:aabb:ccdd::/48 routes to a.b.c.d.
            if s[0] == 0x2002 {
                return is_public(v4(s[1], s[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                // Site-local (deprecated, still private).
                || (s[0] & 0xffc0) == 0xfec0
                // Local-use NAT64 (64:ff9b:1::/48).
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // IETF protocol assignments, incl. Teredo, benchmarking, ORCHID.
                || (s[0] == 0x2001 && s[1] < 0x0200)
                // Documentation.
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x3fff && s[1] < 0x1000)
                // Discard-only.
                || (s[0] == 0x0100 && s[1..4] == [0; 3]))
        }
    }
}

/// The `wasi:http` hooks of one call.
pub(crate) struct HttpHooks {
    policy: Arc<HttpPolicy>,
}

impl HttpHooks {
    pub fn new(policy: Arc<HttpPolicy>) -> Self {
        Self { policy }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        drop(fut);
        let policy = self.policy.clone();
        Box::new(async move {
            let (origin, addr) = policy.check(request.uri()).await?;
            if let Some(auth) = policy.basic_auth.get(&origin)
                && !request.headers().contains_key(http::header::AUTHORIZATION)
            {
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, auth.clone());
            }
            // To the address just checked; the Host header was already set from
            // the original authority.
            let tls = origin
                .https
                .then(|| (policy.tls.clone(), origin.host.as_str()));
            super::egress::send(request, options, addr, tls).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_default_ports() {
        assert_eq!(
            Origin::parse("https://Example.com").unwrap().to_string(),
            "https://example.com:443"
        );
        assert_eq!(
            Origin::parse("http://127.0.0.1:9000").unwrap().to_string(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            Origin::parse("http://[::1]:80").unwrap().to_string(),
            "http://[::1]:80"
        );
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("https://x/path").is_err());
    }

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "255.255.255.255",
            // Every IPv6 spelling of loopback and private IPv4 space.
            "0:0:0:0:0:0:0:1",
            "::0.0.0.1",
            "::127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:0101::1",
            "fec0::1",
            "fc00::1",
            "2001::1",
            "2001:db8::1",
            "100::1",
            "ff02::1",
            "192.0.0.1",
            "198.18.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn basic_auth_only_for_allowed_origins() {
        let auth = |origin: &str| HttpConfig {
            allow: vec!["https://idp.example".into()],
            allow_private: vec![],
            basic_auth: BTreeMap::from([(
                origin.to_owned(),
                crate::lend::BasicAuth {
                    user: "ebb".into(),
                    password: Some(crate::lend::Secret::new("pw".into())),
                    password_env: None,
                },
            )]),
            ca_file: None,
        };
        let policy = HttpPolicy::new(Arc::from("t"), &auth("https://idp.example")).unwrap();
        let header = &policy.basic_auth[&Origin::parse("https://idp.example").unwrap()];
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Basic ZWJiOnB3");
        let err = HttpPolicy::new(Arc::from("t"), &auth("https://other.example")).unwrap_err();
        assert!(err.to_string().contains("not an allowed origin"), "{err}");
        let mut plain = auth("http://idp.example");
        plain.allow.push("http://idp.example".into());
        let err = HttpPolicy::new(Arc::from("t"), &plain).unwrap_err();
        assert!(err.to_string().contains("plain HTTP"), "{err}");
        plain.allow_private.push("http://idp.example".into());
        assert!(HttpPolicy::new(Arc::from("t"), &plain).is_ok());
    }

    #[tokio::test]
    async fn denies_origins_off_the_list_and_private_addresses() {
        let config = HttpConfig {
            allow: vec!["http://localhost:9000".into()],
            allow_private: vec!["http://127.0.0.1:9001".into()],
            basic_auth: BTreeMap::new(),
            ca_file: None,
        };
        let policy = HttpPolicy::new(Arc::from("t"), &config).unwrap();
        let err = policy
            .check(&"http://127.0.0.1:9999/x".parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::HttpRequestDenied), "{err:?}");
        let err = policy
            .check(&"http://localhost:9000/x".parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::DestinationIpProhibited), "{err:?}");
        let (_, addr) = policy
            .check(&"http://127.0.0.1:9001/x".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(addr, "127.0.0.1:9001".parse().unwrap());
    }

    /// An HTTPS server on loopback with a certificate for `name` from a fresh CA;
    /// answers every request with its Host header. Returns its port and the folder
    /// holding the CA file (`ca.pem`).
    async fn tls_server(name: &str) -> (u16, ebb_test_support::TempDir) {
        use http_body_util::Full;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let ca = ebb_test_support::tls::TestCa::new().unwrap();
        let (cert, key) = ca.server_cert(&[name]).unwrap();
        let dir = ebb_test_support::TempDir::new("egress-ca").unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .map(|h| h.to_str().unwrap_or_default().to_owned())
                            .unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(format!("served {host}")),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (port, dir)
    }

    async fn get(policy: HttpPolicy, url: &str) -> Result<String, HttpError> {
        use http_body_util::{BodyExt, Empty};
        let uri: http::Uri = url.parse().unwrap();
        let request = http::Request::get(&uri)
            .header(http::header::HOST, uri.authority().unwrap().as_str())
            .body(
                Empty::<bytes::Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap();
        let mut hooks = HttpHooks::new(Arc::new(policy));
        let sent = hooks.send_request(request, None, Box::new(async { Ok(()) }));
        let (response, _io) = Box::into_pin(sent).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    /// Issue 13: HTTPS goes to the address the egress check judged. The name
    /// resolves only through the check's (injected) resolver — a second lookup by
    /// the system, as before, finds nothing — and TLS still verifies the name
    /// against the operator's CA file; without that CA the handshake is refused.
    #[tokio::test]
    async fn https_connects_to_the_checked_address_and_verifies_the_name() {
        let name = "pinned.ebb.test";
        let (port, dir) = tls_server(name).await;
        let ca_file = dir.join("ca.pem");
        let origin = format!("https://{name}:{port}");
        let config = |ca: Option<&std::path::Path>| HttpConfig {
            allow: vec![],
            allow_private: vec![origin.clone()],
            basic_auth: BTreeMap::new(),
            ca_file: ca.map(std::path::Path::to_path_buf),
        };
        let pinned = |ca| {
            let mut policy = HttpPolicy::new(Arc::from("t"), &config(ca)).unwrap();
            policy.fixed_dns = Some(vec!["127.0.0.1".parse().unwrap()]);
            policy
        };
        let url = format!("{origin}/hello");
        assert_eq!(
            get(pinned(Some(&ca_file)), &url).await.unwrap(),
            format!("served {name}:{port}")
        );
        let err = get(pinned(None), &url).await.unwrap_err();
        assert!(matches!(err, HttpError::TlsCertificateError), "{err:?}");
        // The system resolver does not know the name: only the checked address works.
        assert!(tokio::net::lookup_host((name, port)).await.is_err());
    }
}

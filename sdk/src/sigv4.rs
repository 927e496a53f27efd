//! AWS Signature Version 4 for requests a connector sends itself over
//! [`crate::http`] (IAM and STS query APIs, and the like).
//!
//! ```
//! use ebb_connector_sdk::sigv4::{Key, Scope, sign};
//! let key = Key { access_key_id: "AKIDEXAMPLE", secret_access_key: "secret" };
//! let scope = Scope { region: "us-east-1", service: "sts" };
//! let headers = sign(
//!     &key, &scope, "POST", "https://sts.amazonaws.com/",
//!     &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
//!     b"Action=GetCallerIdentity&Version=2011-06-15", 1_795_953_600,
//! ).unwrap();
//! assert!(headers.iter().any(|(n, _)| n == "authorization"));
//! ```

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// An access key.
#[derive(Clone, Copy)]
pub struct Key<'a> {
    /// The access key id (not secret).
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
}

impl std::fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where a request goes: the region and the service's signing name.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// e.g. `us-east-1`.
    pub region: &'a str,
    /// e.g. `iam`, `sts`.
    pub service: &'a str,
}

/// Signs a request made at `unix_secs` and returns the headers to add to it
/// (`x-amz-date` and `authorization`). `headers` are the request's other headers;
/// `host` is signed from `url` and must not be among them (the HTTP stack sets it).
/// The URL's path and query must already be in canonical, percent-encoded form, with
/// the query's parameters sorted.
pub fn sign(
    key: &Key<'_>,
    scope: &Scope<'_>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    unix_secs: u64,
) -> Result<Vec<(String, String)>, String> {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("`{url}` has no scheme"))?;
    let (authority, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let host = authority
        .strip_suffix(":443")
        .filter(|_| url.starts_with("https://"))
        .or_else(|| {
            authority
                .strip_suffix(":80")
                .filter(|_| url.starts_with("http://"))
        })
        .unwrap_or(authority);
    let amz_date = amz_date(unix_secs);
    let date = &amz_date[..8];

    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if signed.iter().any(|(n, _)| n == "host") {
        return Err("the host header is signed from the URL".into());
    }
    signed.push(("host".into(), host.to_owned()));
    signed.push(("x-amz-date".into(), amz_date.clone()));
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = signed
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(body))
    );
    let Scope { region, service } = *scope;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut signing_key = hmac(
        format!("AWS4{}", key.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region, service, "aws4_request"] {
        signing_key = hmac(&signing_key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&signing_key, string_to_sign.as_bytes()));
    Ok(vec![
        ("x-amz-date".into(), amz_date),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                key.access_key_id
            ),
        ),
    ])
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// `YYYYMMDDTHHMMSSZ` (SigV4's `x-amz-date`) for a Unix time (UTC).
pub fn amz_date(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_795_953_600), "20261129T120000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    }

    /// The reference is botocore 1.44.8's `SigV4Auth` for the same request and time.
    #[test]
    fn matches_botocore() {
        let key = Key {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        };
        let headers = sign(
            &key,
            &Scope {
                region: "us-east-1",
                service: "iam",
            },
            "POST",
            "http://127.0.0.1:5055/",
            &[(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            b"Action=GetUser&UserName=a+b&Version=2010-05-08",
            1_795_953_600,
        )
        .unwrap();
        assert_eq!(
            headers,
            vec![
                ("x-amz-date".to_owned(), "20261129T120000Z".to_owned()),
                (
                    "authorization".to_owned(),
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/us-east-1/iam/aws4_request, \
                     SignedHeaders=content-type;host;x-amz-date, \
                     Signature=cff645657014db8d576b969910d3bf8a851725980f707131b04e61b6e4305c24"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn refuses_a_host_header() {
        let key = Key {
            access_key_id: "a",
            secret_access_key: "b",
        };
        let scope = Scope {
            region: "r",
            service: "s",
        };
        assert!(sign(&key, &scope, "GET", "https://x/", &[("Host", "x")], b"", 0).is_err());
    }
}

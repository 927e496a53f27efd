//! Workload identity: requesters prove who they are with an OIDC ID token or a
//! SPIFFE JWT-SVID, verified against the issuer's JWKS (a file, or a URL fetched
//! and refreshed), for issuer, audience, expiry, not-before and signature.
//!
//! Only asymmetric algorithms are accepted, and only the ones the key's type
//! allows (an RSA key verifies RS*/PS*, an EC key ES*, an OKP key EdDSA): `none`
//! and HMAC are refused, as is a token whose `alg` does not fit its key. The
//! verified `sub` becomes the grant's subject, and the token's claims its claims.

use crate::config::{IdentityConfig, IssuerConfig, Role};
use ebb_core::contract::SubjectKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How often keys from a URL are fetched again.
const REFRESH: Duration = Duration::from_secs(300);
/// The soonest an unknown `kid` may trigger another fetch.
const MIN_REFETCH: Duration = Duration::from_secs(30);

/// Who a verified token says the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub issuer: String,
    pub kind: SubjectKind,
    pub roles: HashSet<Role>,
    /// String-valued claims (arrays of strings joined with `,`), registered
    /// claims (`exp`, `iat`, `nbf`, `jti`) left out.
    pub claims: Vec<(String, String)>,
}

/// Why a token was refused. Said in the audit log; the caller gets a plain 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("no configured issuer is `{0}`")]
    UnknownIssuer(String),
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no key `{0}` in the issuer's JWKS")]
    UnknownKey(String),
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl TokenError {
    /// What kind of refusal this is, in a few words taken from a fixed set (or the
    /// JWT library's error name): safe to count by, unlike the message, which may
    /// carry what the caller sent.
    pub fn class(&self) -> String {
        match self {
            Self::Malformed(_) => "malformed".into(),
            Self::UnknownIssuer(_) => "unknown issuer".into(),
            Self::Algorithm(_) => "algorithm".into(),
            Self::UnknownKey(_) => "unknown key".into(),
            Self::Invalid(why) => why
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .take(40)
                .collect(),
        }
    }
}

#[derive(Debug)]
struct Issuer {
    config: IssuerConfig,
    keys: RwLock<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    jwks: Vec<Jwk>,
    /// The last fetch an unknown `kid` caused (rate-limits them).
    refetched: Option<Instant>,
}

/// Verifies tokens for the configured issuers.
#[derive(Debug)]
pub struct Verifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
}

impl Verifier {
    /// Reads the JWKS files and fetches the JWKS URLs once.
    pub async fn new(config: &IdentityConfig) -> anyhow::Result<Self> {
        let verifier = Self {
            issuers: config
                .issuers
                .iter()
                .map(|c| Issuer {
                    config: c.clone(),
                    keys: RwLock::new(Keys::default()),
                })
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        for issuer in &verifier.issuers {
            verifier.refresh(issuer).await?;
        }
        Ok(verifier)
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    async fn refresh(&self, issuer: &Issuer) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let text = match (&issuer.config.jwks_file, &issuer.config.jwks_url) {
            (Some(file), _) => std::fs::read_to_string(file)
                .with_context(|| format!("reading JWKS {}", file.display()))?,
            (None, Some(url)) => {
                self.http
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .with_context(|| format!("fetching JWKS {url}"))?
                    .text()
                    .await?
            }
            (None, None) => {
                anyhow::bail!("issuer {}: no jwks-file or jwks-url", issuer.config.issuer)
            }
        };
        let jwks = parse_jwks(&text)
            .with_context(|| format!("the JWKS of issuer {}", issuer.config.issuer))?;
        let mut keys = issuer.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.jwks = jwks;
        Ok(())
    }

    /// Keeps URL-fetched keys fresh: call once, it runs until the process ends.
    pub fn spawn_refresh(self: &std::sync::Arc<Self>) {
        if !self.issuers.iter().any(|i| i.config.jwks_url.is_some()) {
            return;
        }
        let verifier = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                for issuer in verifier
                    .issuers
                    .iter()
                    .filter(|i| i.config.jwks_url.is_some())
                {
                    if let Err(e) = verifier.refresh(issuer).await {
                        tracing::warn!(issuer = %issuer.config.issuer, error = format!("{e:#}"), "could not refresh the JWKS; keeping the keys we have");
                    }
                }
            }
        });
    }

    /// Verifies `token` and says who it is for.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            // `alg: none` (and anything else unknown) fails here.
            TokenError::Malformed(e.to_string())
        })?;
        let unverified_iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == unverified_iss)
            .ok_or_else(|| TokenError::UnknownIssuer(unverified_iss.clone()))?;
        let jwk = match self.find_key(issuer, header.kid.as_deref()) {
            Some(jwk) => jwk,
            None if issuer.config.jwks_url.is_some() && self.may_refetch(issuer) => {
                let _ = self.refresh(issuer).await;
                self.find_key(issuer, header.kid.as_deref())
                    .ok_or_else(|| TokenError::UnknownKey(header.kid.clone().unwrap_or_default()))?
            }
            None => {
                return Err(TokenError::UnknownKey(
                    header.kid.clone().unwrap_or_default(),
                ));
            }
        };
        let allowed = algorithms_for(&jwk);
        if !allowed.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&issuer.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = issuer.config.leeway_seconds;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let subject = claims
            .get(&issuer.config.subject_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                TokenError::Invalid(format!("no `{}` claim", issuer.config.subject_claim))
            })?
            .to_owned();
        Ok(Identity {
            subject,
            issuer: issuer.config.issuer.clone(),
            kind: issuer.config.kind,
            roles: issuer.config.roles.iter().copied().collect(),
            claims: flatten_claims(&claims),
        })
    }

    fn find_key(&self, issuer: &Issuer, kid: Option<&str>) -> Option<Jwk> {
        let keys = issuer.keys.read().unwrap_or_else(|p| p.into_inner());
        match kid {
            Some(kid) => keys
                .jwks
                .iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid))
                .cloned(),
            // Without a kid, only an unambiguous set will do.
            None if keys.jwks.len() == 1 => keys.jwks.first().cloned(),
            None => None,
        }
    }

    /// Whether an unknown `kid` may fetch the keys now (at most once per
    /// [`MIN_REFETCH`], so junk tokens cannot make the host hammer the issuer).
    fn may_refetch(&self, issuer: &Issuer) -> bool {
        let mut keys = issuer.keys.write().unwrap_or_else(|p| p.into_inner());
        if keys.refetched.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return false;
        }
        keys.refetched = Some(Instant::now());
        true
    }
}

/// The `iss` claim before verification, to pick the issuer's keys. Nothing else is
/// read from an unverified token.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Malformed("no payload".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(e.to_string()))?;
    claims
        .get("iss")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| TokenError::Invalid("no `iss` claim".into()))
}

/// The keys of a JWKS document usable for signatures; keys this host cannot use
/// (encryption keys, symmetric keys, unknown types) are skipped.
fn parse_jwks(text: &str) -> anyhow::Result<Vec<Jwk>> {
    let doc: serde_json::Value = serde_json::from_str(text)?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| anyhow::anyhow!("no `keys` array"))?;
    let mut usable = Vec::new();
    for key in keys {
        match serde_json::from_value::<Jwk>(key.clone()) {
            Ok(jwk)
                if !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                    && !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) =>
            {
                usable.push(jwk);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping a JWKS key this host cannot use"),
        }
    }
    if usable.is_empty() {
        anyhow::bail!("no usable signing key");
    }
    Ok(usable)
}

/// The algorithms a key may verify: by its type, narrowed by its `alg` if it has one.
fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm as A;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512]
        }
        AlgorithmParameters::EllipticCurve(_) => &[A::ES256, A::ES384],
        AlgorithmParameters::OctetKeyPair(_) => &[A::EdDSA],
        AlgorithmParameters::OctetKey(_) => &[],
    };
    match jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok())
    {
        Some(alg) => by_type.iter().copied().filter(|a| *a == alg).collect(),
        None => by_type.to_vec(),
    }
}

fn flatten_claims(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, String)> {
    const REGISTERED: [&str; 4] = ["exp", "iat", "nbf", "jti"];
    claims
        .iter()
        .filter(|(k, _)| !REGISTERED.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.to_string(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => return None,
            };
            Some((k.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests;

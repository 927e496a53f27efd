//! JIT access through OAuth 2.0 access tokens, over `wasi:http`.
//!
//! `issue` asks the authorization server for a client-credentials token (RFC 6749
//! §4.4) with exactly the requested scopes and refuses — revoking it at once — a
//! token whose scopes differ from the request (servers drop unknown scopes silently)
//! or whose lifetime outlives the grant. `revoke` calls the revocation endpoint
//! (RFC 7009) with the token, which the host passes back: a token can be revoked
//! only by its value. A 200 from that endpoint proves nothing (it answers 200 for
//! any token), so `verify-revoked` asks the introspection endpoint (RFC 7662)
//! whether the token is still active.
//!
//! Self-contained JWT access tokens (`token-format = "jwt"`) cannot be revoked or
//! introspected: the connector then does not claim `revocable`, and
//! `verify-revoked` reports the token as active until its own `exp`.
//!
//! A permission is `scope` on `<scope name>`, e.g. `scope` on `invoices:read`.
//!
//! The client authenticates with HTTP basic auth that the host adds to its requests
//! (`[connectors.<name>.http.basic-auth."<origin>"]`): the client secret never enters
//! the connector. Settings (`[connectors.<name>.config]`):
//! - `token-endpoint`, `revocation-endpoint`, `introspection-endpoint`: URLs.
//! - `token-format`: `opaque` (default) or `jwt`.
//! - `allowed-scopes`: comma-separated scopes a grant may name. Nothing is allowed
//!   until this is set.
//! - `resource`: a resource indicator (RFC 8707) to request tokens for.

use base64::Engine as _;
use ebb_connector_sdk::http::{Request, Response, form};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, Issued, Permission, Residue,
    ResidueKind, Verdict, config, export_connector, log, now_ms,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

struct OAuth2;

/// A token must not outlive its grant by more than this (clock skew).
const SKEW_MS: u64 = 5_000;

fn jwt_format() -> bool {
    config::get("token-format").is_some_and(|f| f.eq_ignore_ascii_case("jwt"))
}

/// A short, non-secret name for a token: the start of its SHA-256.
fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..6])
}

fn access_token(credential: &Credential) -> Option<&str> {
    credential.get("access_token")
}

/// The requested scopes, each allowed and named once, in a stable order.
fn scopes(permissions: &[Permission]) -> Result<Vec<String>, Error> {
    let allowed = config::list("allowed-scopes", "");
    let mut scopes = Vec::new();
    for p in permissions {
        if p.action != "scope" {
            return Err(Error::Invalid(format!(
                "unknown action `{}`: this connector grants `scope`",
                p.action
            )));
        }
        let scope = p.resource.trim();
        if scope.is_empty()
            || !scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(Error::Invalid(format!(
                "`{scope}` is not a scope (RFC 6749 §3.3)"
            )));
        }
        if !allowed.iter().any(|a| a == scope) {
            return Err(Error::Invalid(format!(
                "scope `{scope}` is not in the connector's allowed-scopes"
            )));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    if scopes.is_empty() {
        return Err(Error::Invalid(
            "a grant must name at least one scope".into(),
        ));
    }
    scopes.sort();
    Ok(scopes)
}

/// POSTs a form to one of the server's endpoints (the host adds the client's
/// authentication) and returns the response.
fn post(setting: &str, pairs: &[(&str, &str)]) -> Result<Response, Error> {
    let url = config::require(setting)?;
    let response = Request::post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(form(pairs))
        .send()?;
    Ok(response)
}

/// The OAuth error of a failed response, mapped to the contract's cases.
fn oauth_error(what: &str, response: &Response) -> Error {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let code = body["error"].as_str().unwrap_or("").to_owned();
    let detail = body["error_description"].as_str().unwrap_or("");
    let message = format!("{what}: HTTP {} {code} {detail}", response.status);
    match (response.status, code.as_str()) {
        (401, _) | (_, "invalid_client" | "unauthorized_client") => Error::Denied(message),
        (429 | 500..=599, _) | (_, "temporarily_unavailable") => Error::Unavailable(message),
        (400, _) => Error::Invalid(message),
        _ => Error::Internal(message),
    }
}

fn json(what: &str, response: &Response) -> Result<Value, Error> {
    if response.status != 200 {
        return Err(oauth_error(what, response));
    }
    serde_json::from_slice(&response.body)
        .map_err(|e| Error::Internal(format!("{what}: the response is not JSON: {e}")))
}

/// What the host keeps (non-secret): the token's fingerprint, expiry and scopes.
#[derive(Debug, Default)]
struct Handle {
    token: String,
    exp_ms: u64,
    scope: String,
}

impl Handle {
    fn render(&self) -> String {
        format!(
            "token={};exp={};scope={}",
            self.token, self.exp_ms, self.scope
        )
    }

    fn parse(s: &str) -> Result<Self, Error> {
        let mut h = Handle::default();
        for part in s.split(';') {
            match part.split_once('=') {
                Some(("token", v)) => h.token = v.to_owned(),
                Some(("exp", v)) => {
                    h.exp_ms = v
                        .parse()
                        .map_err(|_| Error::Invalid(format!("bad handle `{s}`")))?;
                }
                Some(("scope", v)) => h.scope = v.to_owned(),
                _ => return Err(Error::Invalid(format!("bad handle `{s}`"))),
            }
        }
        Ok(h)
    }
}

/// The `exp` claim (ms) of a JWT, read without checking its signature: it only
/// bounds how long the token may still be honoured.
fn jwt_exp_ms(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["exp"].as_u64().map(|s| s.saturating_mul(1000))
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && jwt_exp_ms(token).is_some()
}

/// Asks the revocation endpoint to revoke `token`. A self-contained JWT the server
/// cannot revoke is not an error: it is declared as such and reported by verify.
fn revoke_token(token: &str) -> Result<(), Error> {
    let response = post(
        "revocation-endpoint",
        &[("token", token), ("token_type_hint", "access_token")],
    )?;
    if response.status == 200 {
        return Ok(());
    }
    let error = oauth_error("revocation", &response);
    if looks_like_jwt(token) && matches!(error, Error::Invalid(_)) {
        return Ok(());
    }
    Err(error)
}

/// Whether the server reports `token` active (RFC 7662), and until when.
fn introspect(token: &str) -> Result<Option<u64>, Error> {
    let response = post(
        "introspection-endpoint",
        &[("token", token), ("token_type_hint", "access_token")],
    )?;
    let body = json("introspection", &response)?;
    match body["active"].as_bool() {
        Some(true) => Ok(Some(body["exp"].as_u64().unwrap_or(0).saturating_mul(1000))),
        Some(false) => Ok(None),
        None => Err(Error::Internal(
            "introspection: the response has no `active`".into(),
        )),
    }
}

/// The residue of a token that may still be honoured until `exp_ms`.
fn active_until(what: String, exp_ms: u64) -> Verdict {
    if now_ms() >= exp_ms {
        return Verdict::Revoked;
    }
    Verdict::Residual(vec![Residue::new(
        ResidueKind::TokenActive,
        format!("{what}; honoured until {exp_ms} ms since the epoch"),
    )])
}

impl Connector for OAuth2 {
    fn describe() -> ConnectorInfo {
        let mut capabilities = Capabilities::DOWNSTREAM_EXPIRY
            | Capabilities::CAN_VERIFY
            | Capabilities::REVOKES_BY_VALUE;
        if !jwt_format() {
            capabilities |= Capabilities::REVOCABLE | Capabilities::CAN_VERIFY_ISSUED;
        }
        ConnectorInfo::new(
            "oauth2",
            env!("CARGO_PKG_VERSION"),
            "OAuth 2.0 authorization server (client credentials, RFC 7009, RFC 7662)",
        )
        .with_description(
            "Client-credentials access tokens with exactly the granted scopes, revoked \
             (RFC 7009) and proven inactive by introspection (RFC 7662)",
        )
        .with_action(
            "scope",
            "An access token carrying this scope",
            "a scope name from the connector's allowed-scopes, e.g. invoices:read",
        )
        .with_capabilities(capabilities)
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        scopes(&permissions).map(drop)
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let scopes = scopes(&grant.permissions)?;
        let requested = scopes.join(" ");
        let resource = config::get("resource");
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("scope", requested.as_str()),
        ];
        if let Some(resource) = &resource {
            pairs.push(("resource", resource.as_str()));
        }
        let body = json("token request", &post("token-endpoint", &pairs)?)?;
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Internal("token response without access_token".into()))?
            .to_owned();
        let now = now_ms();
        // Everything below refuses the token it got: revoke it before saying why.
        let refuse = |why: String| -> Error {
            if let Err(e) = revoke_token(&token) {
                log::warn(&format!("revoking a refused token failed: {e:?}"));
            }
            Error::Invalid(why)
        };
        if jwt_format() != looks_like_jwt(&token) {
            return Err(refuse(format!(
                "the server issued a {} token but the connector is configured for {}",
                if looks_like_jwt(&token) {
                    "JWT"
                } else {
                    "opaque"
                },
                if jwt_format() { "jwt" } else { "opaque" },
            )));
        }
        // RFC 6749 §5.1: an absent scope means exactly the requested one.
        let mut granted: Vec<&str> = body["scope"]
            .as_str()
            .unwrap_or(&requested)
            .split_whitespace()
            .collect();
        granted.sort_unstable();
        granted.dedup();
        if granted != scopes.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(refuse(format!(
                "the server granted scopes `{}` for a request of `{requested}`",
                granted.join(" ")
            )));
        }
        let exp_ms = match (body["expires_in"].as_u64(), jwt_exp_ms(&token)) {
            (_, Some(exp)) => exp,
            (Some(secs), None) => now.saturating_add(secs.saturating_mul(1000)),
            (None, None) => {
                return Err(refuse(
                    "the server did not say when the token expires".into(),
                ));
            }
        };
        if exp_ms > grant.not_after.saturating_add(SKEW_MS) {
            return Err(refuse(format!(
                "the server's token lives {} s, beyond the grant's {} s; shorten the client's \
                 token lifetime or request a longer grant",
                exp_ms.saturating_sub(now) / 1000,
                grant.not_after.saturating_sub(now) / 1000
            )));
        }
        let handle = Handle {
            token: fingerprint(&token),
            exp_ms,
            scope: requested.replace(' ', ","),
        };
        // A refresh token would mint access tokens after this one is revoked: it is
        // revoked now and never handed out. If the server still calls it active, the
        // grant is refused.
        if let Some(refresh) = body["refresh_token"].as_str().filter(|t| !t.is_empty()) {
            post(
                "revocation-endpoint",
                &[("token", refresh), ("token_type_hint", "refresh_token")],
            )?;
            if introspect(refresh)?.is_some() {
                return Err(refuse(format!(
                    "the server issued refresh token {} with the access token and it stays \
                     active after revocation",
                    fingerprint(refresh)
                )));
            }
            log::info(&format!(
                "revoked refresh token {} that came with the access token",
                fingerprint(refresh)
            ));
        }
        let token_type = body["token_type"].as_str().unwrap_or("Bearer").to_owned();
        Ok(Issued {
            handle: handle.render(),
            credential: Credential::new([
                ("access_token", token.as_str()),
                ("token_type", token_type.as_str()),
            ]),
            expires_at: Some(exp_ms),
        })
    }

    fn revoke(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<(), Error> {
        match credential.as_ref().and_then(access_token) {
            Some(token) => revoke_token(token),
            None => {
                // Only the token's value can revoke it. Whatever was issued is bound
                // to expire by not-after; verify keeps reporting it until then.
                log::warn(&format!(
                    "grant {}: no token to revoke (handle {}); it lapses by its own expiry",
                    grant.id,
                    handle.as_deref().unwrap_or("none")
                ));
                Ok(())
            }
        }
    }

    fn verify_revoked(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let handle = handle.as_deref().map(Handle::parse).transpose()?;
        if let Some(token) = credential.as_ref().and_then(access_token) {
            let name = fingerprint(token);
            if looks_like_jwt(token) {
                let exp = jwt_exp_ms(token).unwrap_or(u64::MAX);
                return Ok(active_until(
                    format!("self-contained JWT {name} cannot be revoked"),
                    exp,
                ));
            }
            return Ok(match introspect(token)? {
                None => Verdict::Revoked,
                Some(exp) => Verdict::Residual(vec![Residue::new(
                    ResidueKind::TokenActive,
                    format!("token {name} is active (introspection), until {exp} ms"),
                )]),
            });
        }
        Ok(match handle {
            Some(h) => active_until(
                format!("token {} cannot be checked without its value", h.token),
                h.exp_ms,
            ),
            None => active_until(
                "a token may have been issued for this grant (its reply was lost) and cannot \
                 be found without its value"
                    .into(),
                grant.not_after.saturating_add(SKEW_MS),
            ),
        })
    }

    fn verify_issued(_grant: Grant, _handle: String, credential: Credential) -> Result<(), Error> {
        let token = access_token(&credential)
            .ok_or_else(|| Error::Invalid("the credential has no access_token".into()))?;
        match introspect(token)? {
            Some(_) => Ok(()),
            None => Err(Error::Unavailable(
                "the new token is not active yet (introspection)".into(),
            )),
        }
    }
}

export_connector!(OAuth2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip() {
        let h = Handle {
            token: "abc".into(),
            exp_ms: 42,
            scope: "a,b".into(),
        };
        let back = Handle::parse(&h.render()).unwrap();
        assert_eq!(
            (back.token.as_str(), back.exp_ms, back.scope.as_str()),
            ("abc", 42, "a,b")
        );
        assert!(Handle::parse("token=x;exp=soon").is_err());
    }

    #[test]
    fn reads_jwt_expiry() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1700000000}"#);
        let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        assert_eq!(jwt_exp_ms(&jwt), Some(1_700_000_000_000));
        assert!(looks_like_jwt(&jwt));
        assert!(!looks_like_jwt("opaque-token"));
    }
}

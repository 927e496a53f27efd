//! Bearer-token authentication with roles. Tokens are configured as sha256 hashes;
//! a presented token is hashed and looked up, so the host never holds a usable
//! token. Refused calls are audited.

use super::{ApiError, AppState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ebb_core::audit::NewEvent;
use ebb_core::contract::SubjectKind;
use ebb_engine::config::{Role, TokenConfig};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// Who is calling.
///
/// A principal is the pair (who vouched, subject): the host's own configured
/// tokens, or one configured identity provider. [`Principal::id`] spells the pair
/// so that nothing matches across sources: a configured token's id is its subject
/// (which may not contain `#`), a verified token's is `<issuer>#<sub>` (an OIDC
/// issuer has no fragment). Ownership of grants and distinct approvers are decided
/// by this id alone.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name, or a verified token's `<issuer>#<sub>`, for the audit log.
    pub name: String,
    /// The namespaced identity: what requests, owns and approves grants.
    pub id: String,
    /// The subject a requester acts as.
    pub subject: String,
    pub kind: SubjectKind,
    /// Who vouched for the subject: a verified token's issuer, `None` for a
    /// configured token.
    pub issuer: Option<String>,
    /// A verified token's claims.
    pub claims: Vec<(String, String)>,
    pub roles: HashSet<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Requires any of `roles`.
    pub async fn require(
        &self,
        state: &AppState,
        roles: &[Role],
        action: &str,
    ) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        let message = format!("`{}` may not {action}", self.name);
        state
            .lifecycle
            .audit_log()
            .note(
                NewEvent::new("auth.forbidden", &self.name)
                    .detail(serde_json::json!({ "action": action })),
            )
            .await;
        Err(ApiError::Forbidden(message))
    }
}

/// The configured tokens, by hash.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl Tokens {
    pub fn new(configs: &[TokenConfig]) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        for c in configs {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&c.sha256, &mut hash)
                .map_err(|_| anyhow::anyhow!("token `{}`: sha256 is not hex", c.name))?;
            let subject = c.subject.clone().unwrap_or_else(|| c.name.clone());
            if subject.contains('#') {
                anyhow::bail!(
                    "token `{}`: its subject may not contain `#` (reserved for identity providers' `<issuer>#<sub>`)",
                    c.name
                );
            }
            by_hash.insert(
                hash,
                Principal {
                    name: c.name.clone(),
                    id: subject.clone(),
                    subject,
                    kind: c.kind,
                    issuer: None,
                    claims: vec![],
                    roles: c.roles.iter().copied().collect(),
                },
            );
        }
        Ok(Self { by_hash })
    }

    pub(crate) fn find(&self, token: &str) -> Option<&Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

pub use crate::token::hash_token;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = parts
            .extensions
            .get::<super::guard::ClientAddr>()
            .map(|c| c.0);
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // A configured token costs one hash: it is never rate limited, so a flood
        // from a shared address does not lock out the host's own callers.
        if let Some(principal) = token.and_then(|t| state.tokens.find(t)) {
            return Ok(principal.clone());
        }
        // A JWT from a configured identity provider. Checking one costs a parse and
        // a signature: that is paid for from the client's bucket of refusals (a
        // client that used it up is answered 429 before anything is checked).
        // Everything else is refused for the cost of a hash lookup, and counted.
        let mut refused = None;
        if let (Some(t), Some(verifier)) = (token, &state.identity)
            && t.split('.').count() == 3
        {
            if !state.guard.admits(client) {
                return Err(ApiError::TooManyRequests);
            }
            match verifier.verify(t).await {
                Ok(id) => {
                    let namespaced = format!("{}#{}", id.issuer, id.subject);
                    return Ok(Principal {
                        name: namespaced.clone(),
                        id: namespaced,
                        subject: id.subject,
                        kind: id.kind,
                        issuer: Some(id.issuer),
                        claims: id.claims,
                        roles: id.roles,
                    });
                }
                Err(e) => refused = Some((e.class(), e.to_string())),
            }
        }
        // Counted, with a cut sample, into the next `auth.refusals` summary: nothing
        // an anonymous caller sends is written whole, or once per request.
        let (class, why) = refused.unwrap_or_else(|| {
            let class = if token.is_some() {
                "unknown token"
            } else {
                "no token"
            };
            (class.to_owned(), class.to_owned())
        });
        state.guard.refused(
            client,
            "unauthenticated",
            &class,
            &format!("{} {}: {why}", parts.method, parts.uri.path()),
        );
        Err(ApiError::Unauthenticated)
    }
}

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
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name (or a verified token's subject), for the audit log.
    pub name: String,
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
    pub fn require(&self, state: &AppState, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        let message = format!("`{}` may not {action}", self.name);
        state.lifecycle.audit_log().note(
            NewEvent::new("auth.forbidden", &self.name)
                .detail(serde_json::json!({ "action": action })),
        );
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
            by_hash.insert(
                hash,
                Principal {
                    name: c.name.clone(),
                    subject: c.subject.clone().unwrap_or_else(|| c.name.clone()),
                    kind: c.kind,
                    issuer: None,
                    claims: vec![],
                    roles: c.roles.iter().copied().collect(),
                },
            );
        }
        Ok(Self { by_hash })
    }

    fn find(&self, token: &str) -> Option<&Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

pub use crate::token::hash_token;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(principal) = token.and_then(|t| state.tokens.find(t)) {
            return Ok(principal.clone());
        }
        // A JWT from a configured identity provider.
        let mut refused = None;
        if let (Some(t), Some(verifier)) = (token, &state.identity)
            && t.split('.').count() == 3
        {
            match verifier.verify(t).await {
                Ok(id) => {
                    return Ok(Principal {
                        name: id.subject.clone(),
                        subject: id.subject,
                        kind: id.kind,
                        issuer: Some(id.issuer),
                        claims: id.claims,
                        roles: id.roles,
                    });
                }
                Err(e) => refused = Some(e.to_string()),
            }
        }
        state.lifecycle.audit_log().note(
            NewEvent::new("auth.unauthenticated", "anonymous").detail(serde_json::json!({
                "path": parts.uri.path(),
                "token_present": token.is_some(),
                "why": refused,
            })),
        );
        Err(ApiError::Unauthenticated)
    }
}

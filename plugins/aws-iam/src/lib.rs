//! JIT access to AWS through a per-grant IAM user, over `wasi:http` with SigV4
//! signing in the connector.
//!
//! `issue` creates the IAM user `ebb-<grant id>` (path `/ebb/`, tagged with the
//! grant), gives it one inline policy allowing exactly the requested actions on
//! exactly the requested resources — with an `aws:CurrentTime` condition, so AWS
//! itself stops honouring it at `not-after` — and an access key, the credential. A
//! retried `issue` replaces any key it finds (its secret was lost with the reply).
//! `revoke` finds the user from the grant id and deletes its access keys (no new
//! requests authenticate), its policies (sessions derived from a key, e.g. by
//! `GetSessionToken`, are evaluated against them and lose every permission), then
//! the user. `verify-revoked` asks STS `GetCallerIdentity` with the key whether it
//! still authenticates, and IAM whether the user, a key or a policy remains.
//!
//! A permission is `<service>:<Action>` on a resource ARN (or `*`), e.g.
//! `s3:GetObject` on `arn:aws:s3:::invoices/*`.
//!
//! Settings (`[connectors.<name>.config]`):
//! - `iam-endpoint` (default `https://iam.amazonaws.com`), `sts-endpoint` (default
//!   `https://sts.amazonaws.com`), `region` (default `us-east-1`).
//! - `access-key-id`: the connector's own key id. Its secret is lent as the secret
//!   `secret-access-key` (`[connectors.<name>.secrets]`); it needs `iam:CreateUser`,
//!   `iam:DeleteUser`, `iam:GetUser`, `iam:TagUser`, `iam:*UserPolic*`,
//!   `iam:*AccessKey*` on `arn:aws:iam::*:user/ebb/*`.
//! - `allowed-actions`: comma-separated actions a grant may name (exact names).
//! - `allowed-resources`: comma-separated ARNs or `prefix*` patterns a grant's
//!   resources must fall within (`*` allows any). Nothing is allowed until both are
//!   set.
//! - `allow-minting` (default `false`): whether a grant may name an action that
//!   creates identities or credentials (`iam:CreateUser`, `iam:CreateAccessKey`,
//!   `iam:Put*Policy`, `sts:GetFederationToken`, … or a wildcard covering one).
//!
//! The grant's footprint: access minted with a grant (a second user, a key for
//! another user) outlives the grant's own user. By default such actions are not
//! offered (a request naming one is refused before anyone approves it) and every
//! Ebb user's policy also carries an explicit `Deny` of them. With `allow-minting`,
//! `verify-revoked` lists what was created while the grant was active (outside
//! Ebb's own `/ebb/` path) — IAM users and access keys (`derived-credential`),
//! console passwords (login profiles), customer-managed policies (`owned-object`)
//! — and reports each as residue, with the step that removes it, until they are
//! gone. IAM cannot say who made them (that needs CloudTrail), so Ebb reports and
//! never deletes them itself; it also cannot date a group membership, so a grant
//! allowed `iam:AddUserToGroup` is not checked for one (keep it denied).

use ebb_connector_sdk::http::{Request, form};
use ebb_connector_sdk::sigv4::{self, Key, Scope};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, InventoryItem, Issued,
    Permission, Residue, ResidueKind, Verdict, config, export_connector, log, secrets,
};

struct AwsIam;

const POLICY: &str = "ebb-grant";
const PATH: &str = "/ebb/";

/// Actions that create identities or credentials, or widen what one may do: what
/// a grant does with them can outlive the grant.
const MINTING: &[&str] = &[
    "iam:AddUserToGroup",
    "iam:AttachGroupPolicy",
    "iam:AttachRolePolicy",
    "iam:AttachUserPolicy",
    "iam:CreateAccessKey",
    "iam:CreateGroup",
    "iam:CreateLoginProfile",
    "iam:CreateOpenIDConnectProvider",
    "iam:CreatePolicy",
    "iam:CreatePolicyVersion",
    "iam:CreateRole",
    "iam:CreateSAMLProvider",
    "iam:CreateServiceSpecificCredential",
    "iam:CreateUser",
    "iam:CreateVirtualMFADevice",
    "iam:DeleteRolePermissionsBoundary",
    "iam:DeleteUserPermissionsBoundary",
    "iam:PassRole",
    "iam:PutGroupPolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:PutRolePolicy",
    "iam:PutUserPermissionsBoundary",
    "iam:PutUserPolicy",
    "iam:SetDefaultPolicyVersion",
    "iam:UpdateAccessKey",
    "iam:UpdateAssumeRolePolicy",
    "iam:UpdateLoginProfile",
    "iam:UploadSSHPublicKey",
    "iam:UploadSigningCertificate",
    "sts:AssumeRole",
    "sts:GetFederationToken",
];

/// The explicit `Deny` every Ebb user's policy carries unless minting is allowed:
/// the list above, widened to the families it belongs to.
const DENY_MINTING: &[&str] = &[
    "iam:Add*",
    "iam:Attach*",
    "iam:Create*",
    "iam:Delete*PermissionsBoundary",
    "iam:PassRole",
    "iam:Put*",
    "iam:SetDefaultPolicyVersion",
    "iam:Update*",
    "iam:Upload*",
    "sts:AssumeRole*",
    "sts:GetFederationToken",
];

/// Whether the action pattern (AWS's `*` and `?` wildcards, case-insensitive)
/// covers an action that mints.
fn mints(pattern: &str) -> bool {
    MINTING.iter().any(|action| glob(pattern, action))
}

fn minting_allowed() -> bool {
    config::get_or("allow-minting", "false").eq_ignore_ascii_case("true")
}

/// AWS action matching: `*` any run of characters, `?` one, case-insensitive.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (
        pattern.to_ascii_lowercase().chars().collect(),
        text.to_ascii_lowercase().chars().collect(),
    );
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The IAM user a grant gets: `ebb-` and the grant id, from IAM's alphabet.
fn user_name(grant_id: &str) -> Result<String, Error> {
    if grant_id.is_empty()
        || grant_id.len() > 60
        || !grant_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Invalid(format!(
            "grant id `{grant_id}` cannot name an IAM user"
        )));
    }
    Ok(format!("ebb-{grant_id}"))
}

/// The inline policy for a grant: exactly its permissions, until `not-after`.
fn policy_document(permissions: &[Permission], not_after: u64) -> Result<String, Error> {
    let actions = config::list("allowed-actions", "");
    let resources = config::list("allowed-resources", "");
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant must name at least one permission".into(),
        ));
    }
    let mut statements = Vec::new();
    let minting = minting_allowed();
    for p in permissions {
        if !actions.iter().any(|a| a == &p.action) {
            return Err(Error::Invalid(format!(
                "action `{}` is not in the connector's allowed-actions",
                p.action
            )));
        }
        if !minting && mints(&p.action) {
            return Err(Error::Invalid(format!(
                "action `{}` can create identities or credentials that would outlive the \
                 grant; this connector does not allow-minting",
                p.action
            )));
        }
        let resource = p.resource.trim();
        if resource != "*" && !resource.starts_with("arn:") {
            return Err(Error::Invalid(format!(
                "`{resource}` is not an ARN (or `*`)"
            )));
        }
        if !resources.iter().any(|a| config::within(resource, a)) {
            return Err(Error::Invalid(format!(
                "resource `{resource}` is not within the connector's allowed-resources"
            )));
        }
        statements.push(serde_json::json!({
            "Effect": "Allow",
            "Action": p.action,
            "Resource": resource,
            "Condition": { "DateLessThan": { "aws:CurrentTime": iso8601(not_after / 1000) } },
        }));
    }
    if !minting {
        statements.push(serde_json::json!({
            "Effect": "Deny",
            "Action": DENY_MINTING,
            "Resource": "*",
        }));
    }
    Ok(serde_json::json!({ "Version": "2012-10-17", "Statement": statements }).to_string())
}

/// `YYYY-MM-DDTHH:MM:SSZ`, from SigV4's compact date.
fn iso8601(unix_secs: u64) -> String {
    let compact = sigv4::amz_date(unix_secs);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &compact[0..4],
        &compact[4..6],
        &compact[6..8],
        &compact[9..11],
        &compact[11..13],
        &compact[13..15]
    )
}

/// An AWS query-API error: its code and message.
#[derive(Debug)]
struct AwsError {
    status: u16,
    code: String,
    message: String,
}

impl AwsError {
    fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

impl From<AwsError> for Error {
    fn from(e: AwsError) -> Self {
        let message = format!("HTTP {} {}: {}", e.status, e.code, e.message);
        match e.code.as_str() {
            "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "AccessDeniedException"
            | "ExpiredToken"
            | "UnrecognizedClientException" => Error::Denied(message),
            "Throttling" | "ServiceUnavailable" | "RequestLimitExceeded" => {
                Error::Unavailable(message)
            }
            "MalformedPolicyDocument" | "ValidationError" | "InvalidInput" => {
                Error::Invalid(message)
            }
            _ if e.status >= 500 => Error::Unavailable(message),
            _ => Error::Internal(message),
        }
    }
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// The text of every `<tag>…</tag>` in `xml`.
fn tags<'a>(mut xml: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    while let Some(value) = tag(xml, name) {
        out.push(value);
        let consumed = xml.find(&format!("</{name}>")).unwrap_or(xml.len());
        xml = &xml[consumed + name.len() + 3..];
    }
    out
}

/// Calls a query API (`Action=...`) signed with `key`; the body as text, or the
/// service's error. Transport failures are [`Error`]s.
fn call(
    endpoint: &str,
    service: &str,
    key: &Key<'_>,
    params: &[(&str, &str)],
) -> Result<Result<String, AwsError>, Error> {
    let body = form(params);
    let region = config::get_or("region", "us-east-1");
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let url = format!("{}/", endpoint.trim_end_matches('/'));
    let signed = sigv4::sign(
        key,
        &Scope {
            region: &region,
            service,
        },
        "POST",
        &url,
        &[("content-type", content_type)],
        body.as_bytes(),
        ebb_connector_sdk::now_ms() / 1000,
    )
    .map_err(Error::Invalid)?;
    let mut request = Request::post(&url).header("content-type", content_type);
    for (name, value) in &signed {
        request = request.header(name, value);
    }
    let response = request.body(body).send()?;
    let text = response.text();
    if response.status == 200 {
        return Ok(Ok(text));
    }
    Ok(Err(AwsError {
        status: response.status,
        code: tag(&text, "Code").unwrap_or("Unknown").to_owned(),
        message: tag(&text, "Message")
            .unwrap_or("")
            .chars()
            .take(300)
            .collect(),
    }))
}

/// The connector's own IAM client: its endpoint and key, read once per operation.
struct Iam {
    endpoint: String,
    key_id: String,
    secret: String,
}

impl Iam {
    fn new() -> Result<Self, Error> {
        Ok(Self {
            endpoint: config::get_or("iam-endpoint", "https://iam.amazonaws.com"),
            key_id: config::require("access-key-id")?,
            secret: secrets::require("secret-access-key")?,
        })
    }

    /// One IAM call: the body, or the service's error.
    fn call(&self, params: &[(&str, &str)]) -> Result<Result<String, AwsError>, Error> {
        let key = Key {
            access_key_id: &self.key_id,
            secret_access_key: &self.secret,
        };
        let mut all = params.to_vec();
        all.push(("Version", "2010-05-08"));
        call(&self.endpoint, "iam", &key, &all)
    }

    /// A call that must succeed, or fail with one of `tolerated` codes (`None`).
    fn ok(&self, params: &[(&str, &str)], tolerated: &[&str]) -> Result<Option<String>, Error> {
        match self.call(params)? {
            Ok(body) => Ok(Some(body)),
            Err(e) if tolerated.iter().any(|c| e.is(c)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The `<item>`s a `List…` action answers for `user` (none if it is gone).
    fn names(&self, action: &str, user: &str, item: &str) -> Result<Vec<String>, Error> {
        let body = self.ok(&[("Action", action), ("UserName", user)], &["NoSuchEntity"])?;
        Ok(body
            .map(|body| tags(&body, item).into_iter().map(str::to_owned).collect())
            .unwrap_or_default())
    }

    fn access_keys(&self, user: &str) -> Result<Vec<String>, Error> {
        self.names("ListAccessKeys", user, "AccessKeyId")
    }

    fn inline_policies(&self, user: &str) -> Result<Vec<String>, Error> {
        self.names("ListUserPolicies", user, "member")
    }

    fn attached_policies(&self, user: &str) -> Result<Vec<String>, Error> {
        self.names("ListAttachedUserPolicies", user, "PolicyArn")
    }

    fn delete_access_keys(&self, user: &str) -> Result<(), Error> {
        for key in self.access_keys(user)? {
            self.ok(
                &[
                    ("Action", "DeleteAccessKey"),
                    ("UserName", user),
                    ("AccessKeyId", &key),
                ],
                &["NoSuchEntity"],
            )?;
        }
        Ok(())
    }
}

/// Users and access keys created at or after `since` (Unix seconds) outside Ebb's
/// own path: what a grant allowed to mint may have made.
fn minted_since(iam: &Iam, since: u64) -> Result<Vec<Residue>, Error> {
    let mut residue = Vec::new();
    let body = iam
        .ok(&[("Action", "ListUsers"), ("MaxItems", "1000")], &[])?
        .unwrap_or_default();
    for member in tags(&body, "member") {
        let (Some(name), Some(path)) = (tag(member, "UserName"), tag(member, "Path")) else {
            continue;
        };
        if path.starts_with(PATH) {
            continue;
        }
        if tag(member, "CreateDate")
            .and_then(unix_secs)
            .is_some_and(|t| t >= since)
        {
            residue.push(
                Residue::new(
                    ResidueKind::DerivedCredential,
                    format!("IAM user {name} was created while the grant was active"),
                )
                .at(path)
                .remedy(format!(
                    "if it is not yours: delete its access keys, policies, login profile and \
                     group memberships, then aws iam delete-user --user-name {name}"
                )),
            );
        }
        let keys = iam
            .ok(
                &[("Action", "ListAccessKeys"), ("UserName", name)],
                &["NoSuchEntity"],
            )?
            .unwrap_or_default();
        for key in tags(&keys, "member") {
            let (Some(id), Some(created)) = (tag(key, "AccessKeyId"), tag(key, "CreateDate"))
            else {
                continue;
            };
            if unix_secs(created).is_some_and(|t| t >= since) {
                residue.push(
                    Residue::new(
                        ResidueKind::DerivedCredential,
                        format!(
                            "access key {id} of IAM user {name} was created while the grant \
                             was active"
                        ),
                    )
                    .at(path)
                    .remedy(format!(
                        "if it is not yours: aws iam delete-access-key --user-name {name} \
                         --access-key-id {id}"
                    )),
                );
            }
        }
        // A console password set on a user (an existing one too) is a credential.
        let profile = iam
            .ok(
                &[("Action", "GetLoginProfile"), ("UserName", name)],
                &["NoSuchEntity"],
            )?
            .unwrap_or_default();
        if tag(&profile, "CreateDate")
            .and_then(unix_secs)
            .is_some_and(|t| t >= since)
        {
            residue.push(
                Residue::new(
                    ResidueKind::DerivedCredential,
                    format!(
                        "a console password (login profile) of IAM user {name} was set while \
                         the grant was active"
                    ),
                )
                .at(path)
                .remedy(format!(
                    "if it is not yours: aws iam delete-login-profile --user-name {name}"
                )),
            );
        }
    }
    // Customer-managed policies created in the window can grant anything to whoever
    // they are attached to.
    let policies = iam
        .ok(
            &[
                ("Action", "ListPolicies"),
                ("Scope", "Local"),
                ("MaxItems", "1000"),
            ],
            &[],
        )?
        .unwrap_or_default();
    for member in tags(&policies, "member") {
        let (Some(name), Some(arn)) = (tag(member, "PolicyName"), tag(member, "Arn")) else {
            continue;
        };
        if tag(member, "CreateDate")
            .and_then(unix_secs)
            .is_some_and(|t| t >= since)
        {
            residue.push(
                Residue::new(
                    ResidueKind::OwnedObject,
                    format!("managed policy {name} was created while the grant was active"),
                )
                .at(arn)
                .remedy(format!(
                    "if it is not yours: detach it everywhere, then aws iam delete-policy \
                     --policy-arn {arn}"
                )),
            );
        }
    }
    Ok(residue)
}

/// Seconds since the Unix epoch of an ISO 8601 UTC time as IAM writes it
/// (`2026-11-30T05:40:00Z`, with or without fractions or `+00:00`).
fn unix_secs(iso: &str) -> Option<u64> {
    let num = |range: std::ops::Range<usize>| iso.get(range)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for the proleptic Gregorian calendar.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3_600 + mm * 60 + ss)
}

/// Asks STS who `credential`'s key is: its ARN, or `None` if it does not authenticate.
fn caller_identity(credential: &Credential) -> Result<Option<String>, Error> {
    let (Some(id), Some(secret)) = (
        credential.get("access_key_id"),
        credential.get("secret_access_key"),
    ) else {
        return Err(Error::Invalid("the credential is not an access key".into()));
    };
    let endpoint = config::get_or("sts-endpoint", "https://sts.amazonaws.com");
    let key = Key {
        access_key_id: id,
        secret_access_key: secret,
    };
    let params = [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")];
    match call(&endpoint, "sts", &key, &params)? {
        Ok(body) => Ok(Some(tag(&body, "Arn").unwrap_or("").to_owned())),
        Err(e) if e.is("InvalidClientTokenId") || e.is("SignatureDoesNotMatch") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Connector for AwsIam {
    fn describe() -> ConnectorInfo {
        let mut info = ConnectorInfo::new(
            "aws-iam",
            env!("CARGO_PKG_VERSION"),
            "AWS IAM and STS (query API, SigV4)",
        )
        .with_description(
            "A per-grant IAM user with an inline policy of exactly the granted actions and \
             resources, and an access key as the credential",
        )
        .with_capabilities(
            Capabilities::REVOCABLE
                | Capabilities::DOWNSTREAM_EXPIRY
                | Capabilities::CAN_VERIFY
                | Capabilities::CAN_VERIFY_ISSUED,
        );
        let minting = minting_allowed();
        for action in config::list("allowed-actions", "") {
            // Not offered, so a request naming it is refused before approval.
            if !minting && mints(&action) {
                log::warn(&format!(
                    "allowed action `{action}` mints identities or credentials and is not \
                     offered: set allow-minting to grant it"
                ));
                continue;
            }
            info = info.with_action(
                &action,
                &format!("Allow `{action}`"),
                "a resource ARN within the connector's allowed-resources, or `*`",
            );
        }
        info
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        policy_document(&permissions, 0).map(drop)
    }

    /// Every IAM user under Ebb's path (`/ebb/`), named `ebb-<grant id>`.
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        let body = Iam::new()?
            .ok(
                &[
                    ("Action", "ListUsers"),
                    ("PathPrefix", PATH),
                    ("MaxItems", "1000"),
                ],
                &[],
            )?
            .unwrap_or_default();
        Ok(tags(&body, "member")
            .into_iter()
            .filter_map(|member| tag(member, "UserName"))
            .filter_map(|name| {
                let id = name.strip_prefix("ebb-")?;
                Some(InventoryItem::new(id, format!("IAM user {name}")).at(PATH))
            })
            .collect())
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let user = user_name(&grant.id)?;
        let document = policy_document(&grant.permissions, grant.not_after)?;
        let iam = Iam::new()?;
        iam.ok(
            &[
                ("Action", "CreateUser"),
                ("UserName", &user),
                ("Path", PATH),
                ("Tags.member.1.Key", "ebb-grant"),
                ("Tags.member.1.Value", &grant.id),
            ],
            &["EntityAlreadyExists"],
        )?;
        iam.ok(
            &[
                ("Action", "PutUserPolicy"),
                ("UserName", &user),
                ("PolicyName", POLICY),
                ("PolicyDocument", &document),
            ],
            &[],
        )?;
        // A retried issue: the earlier key's secret went with the lost reply.
        iam.delete_access_keys(&user)?;
        let body = iam
            .ok(&[("Action", "CreateAccessKey"), ("UserName", &user)], &[])?
            .unwrap_or_default();
        let (Some(key_id), Some(secret)) =
            (tag(&body, "AccessKeyId"), tag(&body, "SecretAccessKey"))
        else {
            return Err(Error::Internal(
                "CreateAccessKey answered without a key".into(),
            ));
        };
        Ok(Issued::new(
            format!(
                "user={user};key={key_id};at={}",
                ebb_connector_sdk::now_ms() / 1000
            ),
            Credential::new([("access_key_id", key_id), ("secret_access_key", secret)]),
        )
        .expiring_at(grant.not_after))
    }

    fn revoke(grant: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        let iam = Iam::new()?;
        iam.delete_access_keys(&user)?;
        for policy in iam.inline_policies(&user)? {
            iam.ok(
                &[
                    ("Action", "DeleteUserPolicy"),
                    ("UserName", &user),
                    ("PolicyName", &policy),
                ],
                &["NoSuchEntity"],
            )?;
        }
        for arn in iam.attached_policies(&user)? {
            iam.ok(
                &[
                    ("Action", "DetachUserPolicy"),
                    ("UserName", &user),
                    ("PolicyArn", &arn),
                ],
                &["NoSuchEntity"],
            )?;
        }
        iam.ok(
            &[("Action", "DeleteUser"), ("UserName", &user)],
            &["NoSuchEntity"],
        )?;
        Ok(())
    }

    fn verify_revoked(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let user = user_name(&grant.id)?;
        let iam = Iam::new()?;
        let mut residue = Vec::new();
        if grant.permissions.iter().any(|p| mints(&p.action)) {
            // Issued at (from the handle), or without one the grant's whole window.
            let since = handle
                .as_deref()
                .and_then(|h| h.split(';').find_map(|kv| kv.strip_prefix("at=")))
                .and_then(|at| at.parse::<u64>().ok())
                .unwrap_or(0);
            residue.extend(minted_since(&iam, since)?);
        }
        if let Some(credential) = &credential
            && let Some(arn) = caller_identity(credential)?
        {
            residue.push(Residue::new(
                ResidueKind::CredentialAccepted,
                format!("the access key still authenticates as {arn} (STS GetCallerIdentity)"),
            ));
        }
        if iam
            .ok(
                &[("Action", "GetUser"), ("UserName", &user)],
                &["NoSuchEntity"],
            )?
            .is_some()
        {
            residue.push(Residue::new(
                ResidueKind::EntitlementPresent,
                format!("IAM user {user} exists"),
            ));
            for key in iam.access_keys(&user)? {
                residue.push(Residue::new(
                    ResidueKind::EntitlementPresent,
                    format!("access key {key} of {user} exists"),
                ));
            }
            for policy in iam.inline_policies(&user)? {
                residue.push(Residue::new(
                    ResidueKind::EntitlementPresent,
                    format!("inline policy {policy} of {user} exists"),
                ));
            }
        }
        Ok(Verdict::from_residue(residue))
    }

    fn verify_issued(grant: Grant, _handle: String, credential: Credential) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        match caller_identity(&credential)? {
            Some(arn) if arn.ends_with(&format!("/{user}")) => Ok(()),
            Some(arn) => Err(Error::Internal(format!(
                "the new key authenticates as {arn}, not {user}"
            ))),
            None => {
                log::debug("the new key does not authenticate yet");
                Err(Error::Unavailable(
                    "the new access key does not authenticate yet".into(),
                ))
            }
        }
    }
}

export_connector!(AwsIam);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minting_actions_are_recognised_through_wildcards() {
        for pattern in [
            "iam:CreateUser",
            "iam:create*",
            "iam:*",
            "*",
            "iam:Put?serPolicy",
            "sts:*",
        ] {
            assert!(mints(pattern), "{pattern}");
        }
        for pattern in [
            "iam:ListUsers",
            "iam:List*",
            "s3:*",
            "iam:GetUser",
            "sts:GetCallerIdentity",
        ] {
            assert!(!mints(pattern), "{pattern}");
        }
    }

    #[test]
    fn iam_times_parse() {
        assert_eq!(unix_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_secs("2026-11-30T05:40:01.123456+00:00"),
            Some(1_796_017_201)
        );
        assert_eq!(unix_secs("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(unix_secs("garbage"), None);
    }

    #[test]
    fn reads_query_api_xml() {
        let xml = "<R><AccessKeyMetadata><member><AccessKeyId>A1</AccessKeyId></member>\
                   <member><AccessKeyId>A2</AccessKeyId></member></AccessKeyMetadata></R>";
        assert_eq!(tags(xml, "AccessKeyId"), vec!["A1", "A2"]);
        assert_eq!(tag(xml, "Missing"), None);
    }

    #[test]
    fn names_and_bounds() {
        assert_eq!(user_name("01abc").unwrap(), "ebb-01abc");
        assert!(user_name("a/b").is_err());
        assert!(config::within("arn:aws:s3:::b/k", "arn:aws:s3:::b/*"));
        assert!(!config::within("arn:aws:s3:::bb/k", "arn:aws:s3:::b/*"));
        assert_eq!(iso8601(1_795_953_600), "2026-11-29T12:00:00Z");
    }
}

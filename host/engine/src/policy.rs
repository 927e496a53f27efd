//! Approval as code: Cedar policies decide, at request time, whether a grant is
//! denied, approved automatically, or needs approval by N people other than the
//! requester — and how long it may last.
//!
//! The model:
//! - **principal**: `Ebb::Workload::"<subject>"` or `Ebb::Person::"<subject>"`,
//!   with `issuer` and the verified token's claims as tags
//!   (`principal.getTag("repo")`);
//! - **action**: the permission's action, as connectors describe it
//!   (`Ebb::Action::"select"`);
//! - **resource**: the connector instance, `Ebb::Connector::"<name>"`, with its
//!   `kind` and `system`;
//! - **context**: `task`, `reason`, `resource` (the permission's resource),
//!   `ttl_seconds`, `now`, `hour_utc`, `weekday_utc` (0 = Monday), `source`,
//!   `risk` (a set: `anomalous-subject`, …), `break_glass`, and what the subject can
//!   already do downstream without a grant as the connector reports it:
//!   `standing_known`, `standing` (a set of findings) and `standing_count` — e.g.
//!   `forbid (principal, action, resource) when { context.standing_count > 0 };`
//!   refuses a JIT grant that would reduce nothing.
//!
//! Each permission of a request is one Cedar query; all must be permitted. Permit
//! policies say what follows with annotations: `@approval("auto")` approves without
//! a person (every permit that applies must say so), `@approvers("2")` needs two
//! people, `@max_ttl("15m")` caps the TTL (the smallest cap applies, and a request
//! over it is denied with the reason). `@id("…")` names a policy in the audit log.
//!
//! The schema is generated from the loaded connectors' actions, and policies are
//! validated against it (strictly) when they load; a file that does not parse or
//! validate is refused with the error, and the policies in force stay in force.
//! Break-glass requests are decided by their own policy files.

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use ebb_core::contract::{Permission, SubjectKind};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

/// What the policies decided about one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ruling {
    pub outcome: Outcome,
    /// The policies that decided it (permits that allowed, or forbids that denied).
    pub policies: Vec<String>,
    /// Why, for a denial.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The smallest `@max_ttl` among the deciding permits, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl_ms: Option<u64>,
}

/// Deny, approve, or ask people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision", content = "approvers")]
pub enum Outcome {
    Deny,
    AutoApprove,
    /// Needs this many approvals, each by someone other than the requester.
    NeedsApproval(u32),
}

/// The request as the policies see it.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub subject: &'a str,
    pub kind: SubjectKind,
    pub issuer: Option<&'a str>,
    pub claims: &'a [(String, String)],
    pub connector: &'a str,
    pub connector_kind: &'a str,
    pub system: &'a str,
    pub permissions: &'a [Permission],
    pub ttl_ms: u64,
    pub task: &'a str,
    pub reason: &'a str,
    pub source: &'a str,
    pub risk: &'a [String],
    pub break_glass: bool,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The subject's standing access downstream; `None` if not known.
    pub standing: Option<&'a [String]>,
}

/// A policy set that loaded and validated, with where it came from.
#[derive(Debug)]
struct Loaded {
    normal: PolicySet,
    break_glass: PolicySet,
    ids: Vec<String>,
    /// sha256 over each file's name (not its folder) and contents, in load order:
    /// equal on hosts that hold the same policies wherever their folders are.
    digest: String,
}

/// Where policies come from.
#[derive(Debug, Clone)]
pub struct PolicyFiles {
    /// `*.cedar` files for normal requests: a file or a folder of them.
    pub normal: PathBuf,
    /// `*.cedar` files for break-glass requests.
    pub break_glass: Option<PathBuf>,
}

/// The policies in force. Cheap to share; reloads swap the whole set.
#[derive(Debug)]
pub struct Policies {
    files: PolicyFiles,
    current: RwLock<Arc<Loaded>>,
}

/// Why a policy set was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl Policies {
    /// Loads and validates the policies; `actions` are the action names the loaded
    /// connectors describe.
    pub fn load(files: PolicyFiles, actions: &BTreeSet<String>) -> Result<Self, PolicyError> {
        let loaded = load(&files, actions)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    /// Loads the files again. On any error the policies in force stay, and the
    /// error says what is wrong.
    pub fn reload(&self, actions: &BTreeSet<String>) -> Result<Vec<String>, PolicyError> {
        let loaded = load(&self.files, actions)?;
        let ids = loaded.ids.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(ids)
    }

    /// The digest of the policies in force (file names and contents).
    pub fn digest(&self) -> String {
        self.current().digest.clone()
    }

    /// The ids of the policies in force.
    pub fn ids(&self) -> Vec<String> {
        self.current().ids.clone()
    }

    /// The files the policies come from.
    pub fn files(&self) -> &PolicyFiles {
        &self.files
    }

    /// A digest of the policy files as they are on disk now (names and contents),
    /// so a watcher reloads only when a policy file really changed.
    pub fn fingerprint_on_disk(&self) -> Result<String, PolicyError> {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        let paths = std::iter::once(&self.files.normal).chain(self.files.break_glass.as_ref());
        for path in paths {
            for file in cedar_files(path)? {
                let text = std::fs::read(&file)
                    .map_err(|e| PolicyError(format!("reading {}: {e}", file.display())))?;
                hash.update(file.as_os_str().as_encoded_bytes());
                hash.update([0]);
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(&text);
            }
        }
        Ok(hex::encode(hash.finalize()))
    }

    /// Whether a change at `path` can concern the policies: a policy file itself, or
    /// a `.cedar` file in a policy folder. Anything else in those folders (a log,
    /// an editor's swap file) is not.
    pub fn concerns(&self, path: &Path) -> bool {
        let is_cedar = path.extension().and_then(|e| e.to_str()) == Some("cedar");
        std::iter::once(&self.files.normal)
            .chain(self.files.break_glass.as_ref())
            .any(|p| path == p || (is_cedar && path.parent() == Some(p.as_path())))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Decides `query`.
    pub fn decide(&self, query: &Query<'_>) -> Ruling {
        let loaded = self.current();
        let set = if query.break_glass {
            &loaded.break_glass
        } else {
            &loaded.normal
        };
        decide(set, query)
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, PolicyError> {
    EntityTypeName::from_str(name).map_err(|e| PolicyError(e.to_string()))
}

fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

/// The Cedar schema for the given connector actions.
pub fn schema_text(actions: &BTreeSet<String>) -> String {
    let mut text = String::from(
        "namespace Ebb {\n\
         \x20 entity Workload = { issuer: String } tags String;\n\
         \x20 entity Person = { issuer: String } tags String;\n\
         \x20 entity Connector = { kind: String, system: String };\n\
         \x20 type Request = {\n\
         \x20   task: String, reason: String, resource: String, ttl_seconds: Long,\n\
         \x20   now: Long, hour_utc: Long, weekday_utc: Long, source: String,\n\
         \x20   risk: Set<String>, break_glass: Bool,\n\
         \x20   standing_known: Bool, standing: Set<String>, standing_count: Long,\n\
         \x20 };\n",
    );
    if !actions.is_empty() {
        let names: Vec<String> = actions.iter().map(|a| format!("{:?}", a)).collect();
        text.push_str(&format!(
            "  action {} appliesTo {{ principal: [Workload, Person], resource: Connector, context: Request }};\n",
            names.join(", ")
        ));
    }
    text.push_str("}\n");
    text
}

fn load(files: &PolicyFiles, actions: &BTreeSet<String>) -> Result<Loaded, PolicyError> {
    let (schema, _) = Schema::from_cedarschema_str(&schema_text(actions))
        .map_err(|e| PolicyError(format!("the generated schema: {e}")))?;
    use sha2::Digest as _;
    let mut ids = Vec::new();
    let mut digest = sha2::Sha256::new();
    digest.update(b"normal\0");
    let normal = load_set(&files.normal, &schema, &mut ids, &mut digest)?;
    digest.update(b"break-glass\0");
    let break_glass = match &files.break_glass {
        Some(path) => load_set(path, &schema, &mut ids, &mut digest)?,
        None => PolicySet::new(),
    };
    Ok(Loaded {
        normal,
        break_glass,
        ids,
        digest: hex::encode(digest.finalize()),
    })
}

/// The `*.cedar` files at `path` (a file, or a folder of them), sorted.
fn cedar_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| PolicyError(format!("reading {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cedar"))
        .collect();
    files.sort();
    Ok(files)
}

fn load_set(
    path: &Path,
    schema: &Schema,
    ids: &mut Vec<String>,
    digest: &mut sha2::Sha256,
) -> Result<PolicySet, PolicyError> {
    use sha2::Digest as _;
    let mut set = PolicySet::new();
    for file in cedar_files(path)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| PolicyError(format!("reading {}: {e}", file.display())))?;
        if let Some(name) = file.file_name() {
            digest.update(name.as_encoded_bytes());
        }
        digest.update([0]);
        digest.update((text.len() as u64).to_be_bytes());
        digest.update(text.as_bytes());
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("policy")
            .to_owned();
        let parsed = PolicySet::from_str(&text)
            .map_err(|e| PolicyError(format!("{}: {e}", file.display())))?;
        for (n, policy) in parsed.policies().enumerate() {
            let id = match policy.annotation("id") {
                Some(id) => id.to_owned(),
                None => format!("{stem}#{n}"),
            };
            if ids.contains(&id) {
                return Err(PolicyError(format!(
                    "{}: policy id `{id}` is used twice",
                    file.display()
                )));
            }
            check_annotations(policy, &id)
                .map_err(|e| PolicyError(format!("{}: {e}", file.display())))?;
            set.add(policy.new_id(PolicyId::new(&id)))
                .map_err(|e| PolicyError(format!("{}: {e}", file.display())))?;
            ids.push(id);
        }
        if parsed.templates().next().is_some() {
            return Err(PolicyError(format!(
                "{}: templates are not supported",
                file.display()
            )));
        }
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        return Err(PolicyError(format!(
            "{} does not validate against the schema: {}",
            path.display(),
            errors.join("; ")
        )));
    }
    Ok(set)
}

fn check_annotations(policy: &cedar_policy::Policy, id: &str) -> Result<(), String> {
    if let Some(a) = policy.annotation("approval")
        && a != "auto"
        && a != "required"
    {
        return Err(format!(
            "policy `{id}`: @approval must be \"auto\" or \"required\", not {a:?}"
        ));
    }
    if let Some(n) = policy.annotation("approvers")
        && !n.parse::<u32>().is_ok_and(|n| (1..=10).contains(&n))
    {
        return Err(format!("policy `{id}`: @approvers must be 1-10, not {n:?}"));
    }
    if let Some(ttl) = policy.annotation("max_ttl")
        && humantime::parse_duration(ttl).is_err()
    {
        return Err(format!(
            "policy `{id}`: @max_ttl {ttl:?} is not a duration like 15m"
        ));
    }
    Ok(())
}

fn decide(set: &PolicySet, q: &Query<'_>) -> Ruling {
    match evaluate(set, q) {
        Ok(v) => v,
        Err(e) => Ruling {
            outcome: Outcome::Deny,
            policies: vec![],
            reasons: vec![format!("the request could not be evaluated: {e}")],
            max_ttl_ms: None,
        },
    }
}

fn evaluate(set: &PolicySet, q: &Query<'_>) -> Result<Ruling, PolicyError> {
    let err = |e: &dyn std::fmt::Display| PolicyError(e.to_string());
    let principal_type = type_name(match q.kind {
        SubjectKind::Workload => "Ebb::Workload",
        SubjectKind::Person => "Ebb::Person",
    })?;
    let principal = uid(&principal_type, q.subject);
    let connector = uid(&type_name("Ebb::Connector")?, q.connector);
    let action_type = type_name("Ebb::Action")?;
    // Claims become tags; a claim given twice keeps its first value.
    let mut tags = BTreeMap::new();
    for (k, v) in q.claims {
        tags.entry(k.clone())
            .or_insert_with(|| RestrictedExpression::new_string(v.clone()));
    }
    let entities = Entities::from_entities(
        [
            Entity::new_with_tags(
                principal.clone(),
                [(
                    "issuer".to_owned(),
                    RestrictedExpression::new_string(q.issuer.unwrap_or("ebb").to_owned()),
                )],
                [],
                tags,
            )
            .map_err(|e| err(&e))?,
            Entity::new(
                connector.clone(),
                [
                    (
                        "kind".to_owned(),
                        RestrictedExpression::new_string(q.connector_kind.to_owned()),
                    ),
                    (
                        "system".to_owned(),
                        RestrictedExpression::new_string(q.system.to_owned()),
                    ),
                ]
                .into_iter()
                .collect(),
                Default::default(),
            )
            .map_err(|e| err(&e))?,
        ],
        None,
    )
    .map_err(|e| err(&e))?;
    let secs = i64::try_from(q.now_ms / 1000).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    // 1970-01-01 was a Thursday (3, counting Monday as 0).
    let weekday = (days + 3).rem_euclid(7);
    let hour = secs.rem_euclid(86_400) / 3600;
    let ttl_seconds = i64::try_from(q.ttl_ms / 1000).unwrap_or(i64::MAX);

    let authorizer = Authorizer::new();
    let mut policies = BTreeSet::new();
    let mut reasons = Vec::new();
    let mut approvers = 0u32;
    let mut max_ttl_ms: Option<(u64, String)> = None;
    for p in q.permissions {
        let context = Context::from_pairs([
            (
                "task".to_owned(),
                RestrictedExpression::new_string(q.task.to_owned()),
            ),
            (
                "reason".to_owned(),
                RestrictedExpression::new_string(q.reason.to_owned()),
            ),
            (
                "resource".to_owned(),
                RestrictedExpression::new_string(p.resource.clone()),
            ),
            (
                "ttl_seconds".to_owned(),
                RestrictedExpression::new_long(ttl_seconds),
            ),
            ("now".to_owned(), RestrictedExpression::new_long(secs)),
            ("hour_utc".to_owned(), RestrictedExpression::new_long(hour)),
            (
                "weekday_utc".to_owned(),
                RestrictedExpression::new_long(weekday),
            ),
            (
                "source".to_owned(),
                RestrictedExpression::new_string(q.source.to_owned()),
            ),
            (
                "risk".to_owned(),
                RestrictedExpression::new_set(
                    q.risk
                        .iter()
                        .map(|r| RestrictedExpression::new_string(r.clone())),
                ),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(q.break_glass),
            ),
            (
                "standing_known".to_owned(),
                RestrictedExpression::new_bool(q.standing.is_some()),
            ),
            (
                "standing".to_owned(),
                RestrictedExpression::new_set(
                    q.standing
                        .unwrap_or_default()
                        .iter()
                        .map(|f| RestrictedExpression::new_string(f.clone())),
                ),
            ),
            (
                "standing_count".to_owned(),
                RestrictedExpression::new_long(
                    i64::try_from(q.standing.map_or(0, <[String]>::len)).unwrap_or(i64::MAX),
                ),
            ),
        ])
        .map_err(|e| err(&e))?;
        let request = Request::new(
            principal.clone(),
            uid(&action_type, &p.action),
            connector.clone(),
            context,
            None,
        )
        .map_err(|e| err(&e))?;
        let response = authorizer.is_authorized(&request, set, &entities);
        let deciding: Vec<&PolicyId> = response.diagnostics().reason().collect();
        match response.decision() {
            Decision::Deny => {
                if deciding.is_empty() {
                    reasons.push(format!(
                        "no policy permits `{}` on `{}` for {}",
                        p.action, p.resource, q.subject
                    ));
                } else {
                    for id in &deciding {
                        policies.insert(id.to_string());
                    }
                    reasons.push(format!(
                        "`{}` on `{}` is forbidden by {}",
                        p.action,
                        p.resource,
                        deciding
                            .iter()
                            .map(|id| format!("`{id}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            Decision::Allow => {
                // Strictest wins: auto only if every deciding permit says auto.
                let mut needed = 0u32;
                for id in &deciding {
                    policies.insert(id.to_string());
                    let annotation = |key: &str| set.annotation(id, key);
                    if annotation("approval") != Some("auto") {
                        let n = annotation("approvers")
                            .and_then(|n| n.parse::<u32>().ok())
                            .unwrap_or(1);
                        needed = needed.max(n);
                    }
                    if let Some(ttl) = annotation("max_ttl")
                        && let Ok(d) = humantime::parse_duration(ttl)
                    {
                        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                        if max_ttl_ms.as_ref().is_none_or(|(m, _)| ms < *m) {
                            max_ttl_ms = Some((ms, id.to_string()));
                        }
                    }
                }
                approvers = approvers.max(needed);
            }
        }
    }
    let policies: Vec<String> = policies.into_iter().collect();
    if !reasons.is_empty() {
        return Ok(Ruling {
            outcome: Outcome::Deny,
            policies,
            reasons,
            max_ttl_ms: None,
        });
    }
    if let Some((max, id)) = &max_ttl_ms
        && q.ttl_ms > *max
    {
        return Ok(Ruling {
            outcome: Outcome::Deny,
            policies,
            reasons: vec![format!(
                "a ttl of {} is over the {} that policy `{id}` allows",
                humantime::format_duration(std::time::Duration::from_millis(q.ttl_ms)),
                humantime::format_duration(std::time::Duration::from_millis(*max))
            )],
            max_ttl_ms: Some(*max),
        });
    }
    Ok(Ruling {
        outcome: if approvers == 0 {
            Outcome::AutoApprove
        } else {
            Outcome::NeedsApproval(approvers)
        },
        policies,
        reasons: vec![],
        max_ttl_ms: max_ttl_ms.map(|(m, _)| m),
    })
}

#[cfg(test)]
mod tests;

//! Data-driven policy tests: each case is a request and what the policies must say.

use super::*;
use ebb_core::contract::Permission;

const NORMAL: &str = r#"
@id("ci-reads-auto")
@approval("auto")
@max_ttl("30m")
permit (principal is Ebb::Workload, action == Ebb::Action::"select", resource is Ebb::Connector)
when {
  principal.issuer == "https://ci.example" &&
  principal.hasTag("repo") && principal.getTag("repo") == "acme/billing" &&
  resource.kind == "postgres"
};

@id("people-read")
permit (principal is Ebb::Person, action == Ebb::Action::"select", resource);

@id("people-write-two-approvers")
@approvers("2")
@max_ttl("1h")
permit (principal is Ebb::Person, action in [Ebb::Action::"insert", Ebb::Action::"update"], resource);

@id("no-salaries")
forbid (principal, action, resource) when { context.resource == "public.salaries" };

@id("no-anomalous-subjects")
forbid (principal, action, resource) when { context.risk.contains("anomalous-subject") };

@id("no-jit-on-standing-access")
forbid (principal, action, resource) when { context.standing_count > 0 };
"#;

const BREAK_GLASS: &str = r#"
@id("oncall-break-glass")
@approval("auto")
@max_ttl("1h")
permit (principal is Ebb::Person, action, resource)
when { principal.hasTag("group") && principal.getTag("group") == "oncall" && context.reason like "INC-*" };
"#;

fn actions() -> BTreeSet<String> {
    ["select", "insert", "update", "use"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn setup(tag: &str) -> (Policies, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ebb-policy-{tag}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(dir.join("normal")).unwrap();
    std::fs::write(dir.join("normal/main.cedar"), NORMAL).unwrap();
    std::fs::write(dir.join("break-glass.cedar"), BREAK_GLASS).unwrap();
    let policies = Policies::load(
        PolicyFiles {
            normal: dir.join("normal"),
            break_glass: Some(dir.join("break-glass.cedar")),
        },
        &actions(),
    )
    .unwrap();
    (policies, dir)
}

struct Case {
    name: &'static str,
    kind: SubjectKind,
    issuer: &'static str,
    claims: &'static [(&'static str, &'static str)],
    permissions: &'static [(&'static str, &'static str)],
    ttl: &'static str,
    reason: &'static str,
    risk: &'static [&'static str],
    break_glass: bool,
    /// The subject's standing access as the connector reported it (`None`: unknown).
    standing: Option<&'static [&'static str]>,
    expect: Outcome,
    /// A substring of the reasons (denials) or a deciding policy id.
    because: &'static str,
}

const CI: &[(&str, &str)] = &[("repo", "acme/billing")];
const ONCALL: &[(&str, &str)] = &[("group", "oncall")];

fn base() -> Case {
    Case {
        name: "",
        kind: SubjectKind::Workload,
        issuer: "https://ci.example",
        claims: CI,
        permissions: &[("select", "public.invoices")],
        ttl: "15m",
        reason: "",
        risk: &[],
        break_glass: false,
        standing: Some(&[]),
        expect: Outcome::Deny,
        because: "",
    }
}

fn decide_case(policies: &Policies, c: &Case) -> Ruling {
    let claims: Vec<(String, String)> = c
        .claims
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let permissions: Vec<Permission> = c
        .permissions
        .iter()
        .map(|(a, r)| Permission {
            action: (*a).to_owned(),
            resource: (*r).to_owned(),
        })
        .collect();
    let risk: Vec<String> = c.risk.iter().map(|r| (*r).to_owned()).collect();
    let standing: Option<Vec<String>> = c
        .standing
        .map(|found| found.iter().map(|f| (*f).to_owned()).collect());
    policies.decide(&Query {
        subject: "spiffe://acme/ci/billing",
        kind: c.kind,
        issuer: Some(c.issuer),
        claims: &claims,
        connector: "pg",
        connector_kind: "postgres",
        system: "postgresql",
        permissions: &permissions,
        ttl_ms: humantime::parse_duration(c.ttl).unwrap().as_millis() as u64,
        task: "reconcile",
        reason: c.reason,
        source: "api",
        risk: &risk,
        break_glass: c.break_glass,
        now_ms: 1_790_000_000_000,
        standing: standing.as_deref(),
    })
}

#[test]
fn decides_every_case_as_written() {
    let (policies, _) = setup("cases");
    let cases = vec![
        Case {
            name: "ci reads: approved automatically",
            expect: Outcome::AutoApprove,
            because: "ci-reads-auto",
            ..base()
        },
        Case {
            name: "ci reads over the max ttl",
            ttl: "1h",
            because: "over the 30m that policy `ci-reads-auto` allows",
            ..base()
        },
        Case {
            name: "a JIT grant on top of standing access reduces nothing",
            standing: Some(&["role svc_billing can select on public.invoices outside any grant"]),
            because: "forbidden by `no-jit-on-standing-access`",
            ..base()
        },
        Case {
            name: "standing access unknown: the policy's condition does not hold",
            standing: None,
            expect: Outcome::AutoApprove,
            because: "ci-reads-auto",
            ..base()
        },
        Case {
            name: "a forbid beats a permit",
            permissions: &[("select", "public.salaries")],
            because: "forbidden by `no-salaries`",
            ..base()
        },
        Case {
            name: "nothing permits ci to write",
            permissions: &[("insert", "public.invoices")],
            because: "no policy permits `insert`",
            ..base()
        },
        Case {
            name: "claims come from the verified token",
            claims: &[("repo", "evil/fork")],
            because: "no policy permits",
            ..base()
        },
        Case {
            name: "the issuer counts",
            issuer: "https://other.example",
            because: "no policy permits",
            ..base()
        },
        Case {
            name: "people read with one approver",
            kind: SubjectKind::Person,
            claims: &[],
            expect: Outcome::NeedsApproval(1),
            because: "people-read",
            ..base()
        },
        Case {
            name: "people write with two approvers",
            kind: SubjectKind::Person,
            claims: &[],
            permissions: &[("update", "public.invoices")],
            expect: Outcome::NeedsApproval(2),
            because: "people-write-two-approvers",
            ..base()
        },
        Case {
            name: "the strictest permission decides",
            kind: SubjectKind::Person,
            claims: &[],
            permissions: &[("select", "public.invoices"), ("insert", "public.invoices")],
            expect: Outcome::NeedsApproval(2),
            because: "people-write-two-approvers",
            ..base()
        },
        Case {
            name: "one forbidden permission denies all",
            kind: SubjectKind::Person,
            claims: &[],
            permissions: &[("select", "public.invoices"), ("select", "public.salaries")],
            because: "no-salaries",
            ..base()
        },
        Case {
            name: "anomalous subjects are refused",
            risk: &["anomalous-subject"],
            because: "no-anomalous-subjects",
            ..base()
        },
        Case {
            name: "break-glass for on-call with an incident",
            kind: SubjectKind::Person,
            claims: ONCALL,
            reason: "INC-4711 db down",
            break_glass: true,
            expect: Outcome::AutoApprove,
            because: "oncall-break-glass",
            ..base()
        },
        Case {
            name: "break-glass needs an incident reason",
            kind: SubjectKind::Person,
            claims: ONCALL,
            reason: "just because",
            break_glass: true,
            because: "no policy permits",
            ..base()
        },
        Case {
            name: "break-glass is not for everyone",
            kind: SubjectKind::Person,
            claims: &[],
            reason: "INC-1",
            break_glass: true,
            because: "no policy permits",
            ..base()
        },
        Case {
            name: "break-glass has its own max ttl",
            kind: SubjectKind::Person,
            claims: ONCALL,
            reason: "INC-1",
            ttl: "2h",
            break_glass: true,
            because: "over the 1h",
            ..base()
        },
        Case {
            name: "break-glass policies do not decide normal requests",
            kind: SubjectKind::Person,
            claims: ONCALL,
            reason: "INC-1",
            permissions: &[("use", "x")],
            because: "no policy permits",
            ..base()
        },
    ];
    for c in &cases {
        let v = decide_case(&policies, c);
        assert_eq!(v.outcome, c.expect, "{}: {v:?}", c.name);
        let said = format!("{} {}", v.reasons.join(" "), v.policies.join(" "));
        assert!(said.contains(c.because), "{}: {v:?}", c.name);
    }
}

#[test]
fn a_broken_reload_keeps_the_policies_in_force_and_says_why() {
    let (policies, dir) = setup("reload");
    let before = policies.ids();
    let ok = decide_case(
        &policies,
        &Case {
            expect: Outcome::AutoApprove,
            ..base()
        },
    );
    assert_eq!(ok.outcome, Outcome::AutoApprove);
    for (broken, why) in [
        ("permit (principal, action, resource", "main.cedar"),
        (
            "permit (principal, action == Ebb::Action::\"selekt\", resource);",
            "selekt",
        ),
        (
            "permit (principal, action, resource) when { context.nope == 1 };",
            "nope",
        ),
        (
            "@approvers(\"many\")\npermit (principal, action, resource);",
            "@approvers",
        ),
        (
            "@max_ttl(\"forever\")\npermit (principal, action, resource);",
            "@max_ttl",
        ),
        (
            "@id(\"x\")\npermit (principal, action, resource);\n@id(\"x\")\npermit (principal, action, resource);",
            "used twice",
        ),
    ] {
        std::fs::write(dir.join("normal/main.cedar"), broken).unwrap();
        let err = policies.reload(&actions()).unwrap_err();
        assert!(err.to_string().contains(why), "{broken}: {err}");
        assert_eq!(policies.ids(), before);
        assert_eq!(
            decide_case(&policies, &base()).outcome,
            Outcome::AutoApprove,
            "{broken}"
        );
    }
    // A good file takes over.
    std::fs::write(
        dir.join("normal/main.cedar"),
        "@id(\"nothing\")\nforbid (principal, action, resource);",
    )
    .unwrap();
    assert_eq!(
        policies.reload(&actions()).unwrap(),
        vec!["nothing", "oncall-break-glass"]
    );
    assert_eq!(decide_case(&policies, &base()).outcome, Outcome::Deny);
}

#[test]
fn the_generated_schema_names_every_connector_action() {
    let text = schema_text(&actions());
    assert!(
        text.contains("action \"insert\", \"select\", \"update\", \"use\" appliesTo"),
        "{text}"
    );
    let (_, _) = Schema::from_cedarschema_str(&schema_text(&BTreeSet::new())).unwrap();
}

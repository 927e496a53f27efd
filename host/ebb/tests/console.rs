//! The web console in a real browser: Debian's Chromium driven over WebDriver, a
//! real `ebb serve`, and people signing in through oidc-provider's own login page.
//!
//! One story, as people would live it: an approver signs in through the identity
//! provider and watches the queue; a workload's request appears without a reload;
//! the approver approves it (the audit log names the person's verified identity),
//! watches it become active, revokes it and sees it verified. A requester who is
//! also an approver never gets an approve button on their own request, and the
//! server refuses it anyway; a forged cross-site POST is refused. Every page passes
//! axe-core with no serious or critical violation, and is photographed for the
//! README (`tests/console-screenshots/`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use ebb_test_support::browser::fantoccini::{Client, Locator};
use ebb_test_support::{Browser, Host, Oidc, browser};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const AGENT: &str = "console-test-agent-token-6c1e0b";
const LEAD: &str = "console-test-lead-token-94d2aa";
const OPS: &str = "console-test-ops-token-31f7c4";
const SECRET_VAR: &str = "EBB_TEST_CONSOLE_SECRET";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/console-screenshots")
}

/// Photographs the page for the README and requires axe-core to find no serious or
/// critical violation on it.
async fn check_page(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::create_dir_all(screenshots()).unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
    let violations = browser::axe(client).await.unwrap();
    assert!(
        violations.is_empty(),
        "axe-core on the {name} page: {violations:#?}"
    );
}

/// Waits until `css` is on the page.
async fn wait_for(
    client: &Client,
    css: &str,
) -> ebb_test_support::browser::fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}` never appeared: {e}"))
}

/// Clicks `css`, finding it again if a live update replaced it in between.
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "clicking `{css}`: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `css`'s text satisfies `ok`; returns it.
async fn wait_for_text(client: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = match client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "`{css}` still says `{text}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs `person` in through the identity provider's login page.
async fn sign_in_oidc(client: &Client, console: &str, idp: &str, person: &str) {
    client
        .goto(&format!("{console}/console/login"))
        .await
        .unwrap();
    wait_for(client, "#sign-in-oidc")
        .await
        .click()
        .await
        .unwrap();
    let login = wait_for(client, "input[name=login]").await;
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(idp),
        "the sign-in goes through the identity provider"
    );
    login.send_keys(person).await.unwrap();
    client
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("any password")
        .await
        .unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let who = wait_for_text(client, "#who", |t| !t.is_empty()).await;
    assert_eq!(who, format!("{idp}#{person}"));
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        }
        .bearer_auth(token);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn request(&self, token: &str, task: &str) -> String {
        let (status, body) = self
            .call(
                token,
                "POST",
                "/v1/grants",
                Some(json!({
                    "connector": "noop",
                    "permissions": [{"action": "use", "resource": "reports"}],
                    "ttl": "10m",
                    "task": task,
                    "reason": "ticket OPS-77",
                })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["grant"]["grant"]["id"].as_str().unwrap().to_owned()
    }

    async fn state(&self, id: &str) -> String {
        let (status, body) = self
            .call(OPS, "GET", &format!("/v1/grants/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["state"].as_str().unwrap().to_owned()
    }
}

/// Serves one page on 127.0.0.2 (another site than the console's 127.0.0.1) whose
/// form posts an approval to the console as soon as it loads.
async fn attacker_site(console: &str, grant: &str) -> String {
    let page = format!(
        "<!doctype html><html lang=en><title>win a prize</title><body>\
         <form id=f method=post action=\"{console}/console/grants/{grant}/approve\">\
         <input type=hidden name=csrf value=guessed><input type=hidden name=note value=forged>\
         </form><script>document.getElementById('f').submit()</script></body></html>"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_approve_watch_and_revoke_in_a_real_browser() {
    ebb_test_support::require!(Oidc, Browser);
    let port = ebb_test_support::free_port().unwrap();
    let console = format!("http://127.0.0.1:{port}");
    let oidc = Oidc::start_for_console(&format!("{console}/console/callback")).unwrap();
    // Two people must approve a noop grant; the misbehaving connector's grants are
    // approved by policy, and what they leave behind will not go away.
    let files = ebb_test_support::TempDir::new("console-files").unwrap();
    std::fs::write(
        files.join("policy.cedar"),
        "@id(\"two-people\")\n@approvers(\"2\")\n\
         permit (principal, action, resource == Ebb::Connector::\"noop\");\n\
         @id(\"stuck-auto\")\n@approval(\"auto\")\n\
         permit (principal, action, resource == Ebb::Connector::\"stuck\");\n",
    )
    .unwrap();
    std::fs::create_dir_all(files.join("plugins")).unwrap();
    std::fs::copy(ebb_test_plugins::NOOP, files.join("plugins/noop.wasm")).unwrap();
    let hash = ebb::token::hash_token;
    let host = Host::start_on(
        env!("CARGO_BIN_EXE_ebb"),
        "console",
        port,
        &[(SECRET_VAR, ebb_test_support::oidc::CLIENT_SECRET)],
        "",
        &format!(
            r#"
[[tokens]]
name = "agent"
subject = "spiffe://console.test/agent"
sha256 = "{agent}"
roles = ["requester"]

[[tokens]]
name = "lead"
sha256 = "{lead}"
roles = ["requester", "approver"]

[[tokens]]
name = "ops"
sha256 = "{ops}"
roles = ["operator", "auditor"]

[connectors.noop]
component = "{noop}"

[connectors.stuck]
component = "{misbehave}"
config = {{ verify = "residual" }}
lifecycle = {{ escalate-after = 1, retry-base-ms = 60000, retry-max-ms = 60000 }}

[policy]
path = "{policy}"

[plugins]
dir = "{plugins}"

[console]
public-url = "{console}"

[console.oidc]
issuer = "{issuer}"
client-id = "ebb-console"
client-secret-env = "{SECRET_VAR}"
scopes = ["openid", "profile", "groups"]
name = "the test identity provider"

[console.oidc.roles]
ebb-approvers = ["approver"]
ebb-operators = ["operator", "auditor"]
ebb-auditors = ["auditor"]
ebb-requesters = ["requester"]
"#,
            agent = hash(AGENT),
            lead = hash(LEAD),
            ops = hash(OPS),
            noop = ebb_test_plugins::NOOP,
            misbehave = ebb_test_plugins::MISBEHAVE,
            policy = files.join("policy.cedar").display(),
            plugins = files.join("plugins").display(),
            issuer = oidc.origin(),
        ),
    )
    .unwrap();
    let api = Api {
        base: host.api.clone(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let browser = Browser::start().unwrap();

    // Alice signs in through the identity provider's own login page.
    let alice = browser.session().await.unwrap();
    alice.goto(&format!("{console}/console/")).await.unwrap();
    wait_for(&alice, "#sign-in-oidc").await;
    assert_eq!(alice.current_url().await.unwrap().path(), "/console/login");
    check_page(&alice, "login").await;
    sign_in_oidc(&alice, &console, &oidc.origin(), "alice").await;
    let alice_id = format!("{}#alice", oidc.origin());

    // The session cookie is HttpOnly and SameSite; every page has a strict CSP.
    let cookie = alice.get_named_cookie("ebb_console").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Lax")
    );
    let page = api
        .http
        .get(format!("{console}/console/login"))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(csp, ebb::console::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));

    // A workload's request appears in the queue live: no reload (the page's own
    // JavaScript state survives).
    alice
        .goto(&format!("{console}/console/requests"))
        .await
        .unwrap();
    wait_for(&alice, "#no-requests").await;
    wait_for(&alice, "html[data-live-connected=yes]").await;
    alice
        .execute("window.__notReloaded = 42;", vec![])
        .await
        .unwrap();
    let g1 = api.request(AGENT, "export the November invoices").await;
    wait_for(&alice, &format!("#request-{g1}")).await;
    assert_eq!(
        alice
            .execute("return window.__notReloaded;", vec![])
            .await
            .unwrap(),
        json!(42),
        "the request appeared without reloading the page"
    );
    let card = alice
        .find(Locator::Id(&format!("request-{g1}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for shown in [
        "spiffe://console.test/agent",
        "export the November invoices",
        "reports",
        "10m",
        "ticket OPS-77",
        "two-people",
        "needs 2 different approvers",
        "0 of 2",
    ] {
        assert!(
            card.contains(shown),
            "the request card shows `{shown}`: {card}"
        );
    }
    check_page(&alice, "requests").await;

    // Approve with a note: two clicks (the note is optional). One of two.
    alice
        .find(Locator::Id(&format!("note-{g1}")))
        .await
        .unwrap()
        .send_keys("looks right")
        .await
        .unwrap();
    click(&alice, &format!("#approve-{g1}")).await;
    wait_for_text(&alice, "#flash", |t| t.contains("1 of 2")).await;
    assert_eq!(api.state(&g1).await, "requested");

    // Bob, a second person, sees the progress and approves it.
    let bob = browser.session().await.unwrap();
    sign_in_oidc(&bob, &console, &oidc.origin(), "bob").await;
    bob.goto(&format!("{console}/console/requests"))
        .await
        .unwrap();
    wait_for_text(&bob, &format!("#progress-{g1}"), |t| t == "1 of 2").await;
    wait_for(&bob, &format!("#approve-{g1}")).await;
    click(&bob, &format!("#approve-{g1}")).await;
    wait_for_text(&bob, "#flash", |t| t.contains("Approved")).await;
    assert_eq!(api.state(&g1).await, "approved");
    let (_, report) = api
        .call(OPS, "GET", &format!("/v1/grants/{g1}/report"), None)
        .await;
    let events = report["events"].as_array().unwrap();
    let first = events
        .iter()
        .find(|e| e["detail"]["approvals"] == 1)
        .expect("the first approval's event");
    assert_eq!(
        first["actor"],
        json!(alice_id),
        "the audit log names the person's verified identity"
    );
    assert_eq!(first["detail"]["note"], "looks right");
    let second = events
        .iter()
        .find(|e| e["to"] == "approved")
        .expect("the approval event");
    assert_eq!(second["actor"], json!(format!("{}#bob", oidc.origin())));
    // Pages Bob may not open say so (and pass axe-core too).
    bob.goto(&format!("{console}/console/audit")).await.unwrap();
    wait_for_text(&bob, "main", |t| t.contains("may not")).await;
    check_page(&bob, "forbidden").await;
    bob.close().await.unwrap();

    // It becomes active while Alice watches the grants page.
    alice
        .goto(&format!("{console}/console/grants"))
        .await
        .unwrap();
    wait_for(&alice, "html[data-live-connected=yes]").await;
    wait_for_text(&alice, &format!("#grant-{g1} .state"), |t| t == "approved").await;
    alice
        .execute("window.__notReloaded = 43;", vec![])
        .await
        .unwrap();
    let (status, issued) = api
        .call(AGENT, "POST", &format!("/v1/grants/{g1}/issue"), None)
        .await;
    assert_eq!(status, 201, "{issued}");
    wait_for_text(&alice, &format!("#grant-{g1} .state"), |t| t == "active").await;
    assert_eq!(
        alice
            .execute("return window.__notReloaded;", vec![])
            .await
            .unwrap(),
        json!(43),
        "it became active without reloading the page"
    );
    // The countdown is the script's, ticking toward not-after.
    let countdown = wait_for_text(&alice, &format!("#grant-{g1} time"), |t| {
        t.ends_with('s') && t.contains('m')
    })
    .await;
    assert!(
        countdown.starts_with('9') || countdown.starts_with("10m"),
        "{countdown}"
    );
    // The credential never reaches the console.
    let source = alice.source().await.unwrap();
    for value in issued["credential"].as_object().unwrap().values() {
        let secret = value.as_str().unwrap();
        if secret.len() > 8 {
            assert!(!source.contains(secret), "the console shows a credential");
        }
    }
    check_page(&alice, "grants").await;

    // Revoke now: the report page shows it verified.
    click(&alice, &format!("#revoke-{g1}")).await;
    wait_for_text(&alice, "#grant-state", |t| t == "verified").await;
    wait_for(&alice, "#verified-at").await;
    let timeline = alice
        .find(Locator::Id("timeline"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for step in ["requested", "approved", "active", "revoking", "verified"] {
        assert!(
            timeline.contains(step),
            "the timeline shows `{step}`: {timeline}"
        );
    }
    assert_eq!(api.state(&g1).await, "verified");
    check_page(&alice, "grant-report").await;

    // A grant whose session will not go away: escalated, on top, with its residue.
    let (status, body) = api
        .call(
            AGENT,
            "POST",
            "/v1/grants",
            Some(
                json!({"connector": "stuck", "permissions": [{"action": "use", "resource": "db"}],
                        "ttl": "10m", "task": "poke the stuck system"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let stuck = body["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    alice
        .goto(&format!("{console}/console/grants"))
        .await
        .unwrap();
    wait_for(&alice, "html[data-live-connected=yes]").await;
    wait_for_text(&alice, &format!("#grant-{stuck} .state"), |t| t == "active").await;
    click(&alice, &format!("#revoke-{stuck}")).await;
    wait_for_text(&alice, "#grant-state", |t| t == "escalated").await;
    alice
        .goto(&format!("{console}/console/grants"))
        .await
        .unwrap();
    let troubled = wait_for(&alice, &format!("article#grant-{stuck}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        troubled.contains("escalated") && troubled.contains("is still open"),
        "{troubled}"
    );
    check_page(&alice, "grants-escalated").await;

    // Connectors: load one through the form, reload, unload with the live-grants
    // decision.
    alice
        .goto(&format!("{console}/console/connectors"))
        .await
        .unwrap();
    let noop = wait_for(&alice, "#connector-noop")
        .await
        .text()
        .await
        .unwrap();
    assert!(noop.contains("healthy") && noop.contains("noop"), "{noop}");
    let stuck_row = alice
        .find(Locator::Id("connector-stuck"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(stuck_row.contains("1 escalated grant"), "{stuck_row}");
    check_page(&alice, "connectors").await;
    alice
        .find(Locator::Id("load-name"))
        .await
        .unwrap()
        .send_keys("spare")
        .await
        .unwrap();
    click(&alice, "#load-submit").await;
    wait_for_text(&alice, "#flash", |t| t.contains("Loaded `spare`")).await;
    wait_for(&alice, "#connector-spare").await;
    click(&alice, "#reload-spare").await;
    wait_for_text(&alice, "#flash", |t| t.contains("Reloaded `spare`")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let chosen = match alice.find(Locator::Id("live-spare")).await {
            Ok(e) => e.select_by_value("revoke").await,
            Err(e) => Err(e),
        };
        match chosen {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "choosing `revoke`: {e}"),
        }
    }
    click(&alice, "#unload-spare").await;
    wait_for_text(&alice, "#flash", |t| t.contains("Unloaded `spare`")).await;
    assert!(alice.find(Locator::Id("connector-spare")).await.is_err());
    let (_, connectors) = api.call(OPS, "GET", "/v1/connectors", None).await;
    assert!(
        !connectors.to_string().contains("\"spare\""),
        "{connectors}"
    );

    // Policies: listed, and reloaded from the console.
    alice
        .goto(&format!("{console}/console/policies"))
        .await
        .unwrap();
    let ids = wait_for(&alice, "#policy-ids").await.text().await.unwrap();
    assert!(
        ids.contains("two-people") && ids.contains("stuck-auto"),
        "{ids}"
    );
    click(&alice, "#reload-policies").await;
    wait_for_text(&alice, "#flash", |t| t.contains("Policies reloaded: 2")).await;
    check_page(&alice, "policies").await;
    alice
        .goto(&format!("{console}/console/audit"))
        .await
        .unwrap();
    click(&alice, "#check-chain").await;
    wait_for_text(&alice, "#chain-result", |t| t.contains("intact")).await;
    check_page(&alice, "audit").await;
    alice.goto(&format!("{console}/console/")).await.unwrap();
    wait_for(&alice, "#count-live").await;
    check_page(&alice, "overview").await;

    // A requester who is also an approver signs in (with an API token) and never
    // sees an approve button on their own request.
    let lead = browser.session().await.unwrap();
    lead.goto(&format!("{console}/console/login"))
        .await
        .unwrap();
    wait_for(&lead, "#token")
        .await
        .send_keys(LEAD)
        .await
        .unwrap();
    click(&lead, "#sign-in-token").await;
    wait_for_text(&lead, "#who", |t| t == "lead").await;
    let g2 = api.request(LEAD, "rotate the reporting password").await;
    let g3 = api.request(AGENT, "reconcile the ledger").await;
    lead.goto(&format!("{console}/console/requests"))
        .await
        .unwrap();
    wait_for(&lead, &format!("#own-{g2}")).await;
    assert!(
        lead.find(Locator::Id(&format!("approve-{g2}")))
            .await
            .is_err()
    );
    wait_for(&lead, &format!("#approve-{g3}")).await;
    // …and the server refuses it anyway, with the session's own CSRF token.
    let session = lead.get_named_cookie("ebb_console").await.unwrap();
    let session = format!("ebb_console={}", session.value());
    let csrf = lead
        .find(Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let post = |grant: String, origin: String, csrf: String| {
        let http = api.http.clone();
        let session = session.clone();
        let console = console.clone();
        async move {
            http.post(format!("{console}/console/grants/{grant}/approve"))
                .header("cookie", session)
                .header("origin", origin)
                .form(&[("csrf", csrf.as_str()), ("note", "")])
                .send()
                .await
                .unwrap()
        }
    };
    let refused = post(g2.clone(), console.clone(), csrf.clone()).await;
    assert_eq!(refused.status().as_u16(), 303);
    assert_eq!(api.state(&g2).await, "requested");
    let back = refused.headers()["location"].to_str().unwrap().to_owned();
    lead.goto(&format!("{console}{back}")).await.unwrap();
    wait_for_text(&lead, "#flash", |t| t.contains("never approve its own")).await;

    // A forged cross-site POST, from a page on another site the person visits.
    let evil = attacker_site(&console, &g3).await;
    lead.goto(&evil).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lead
        .current_url()
        .await
        .unwrap()
        .as_str()
        .starts_with(&console)
    {
        assert!(
            Instant::now() < deadline,
            "the forged form was never posted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = wait_for_text(&lead, "body", |t| !t.is_empty()).await;
    assert!(
        answer.contains("not signed in") || answer.contains("refused"),
        "{answer}"
    );
    assert_eq!(
        api.state(&g3).await,
        "requested",
        "the forged approval was refused"
    );
    // Even with the cookie (a browser without SameSite), another origin or a
    // wrong token is refused; the right token from the console's origin is not.
    let elsewhere = evil.trim_end_matches('/').to_owned();
    assert_eq!(
        post(g3.clone(), elsewhere, csrf.clone())
            .await
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        post(g3.clone(), console.clone(), "guessed".into())
            .await
            .status()
            .as_u16(),
        403
    );
    assert_eq!(api.state(&g3).await, "requested");
    assert_eq!(
        post(g3.clone(), console.clone(), csrf.clone())
            .await
            .status()
            .as_u16(),
        303
    );
    let (_, g3_now) = api
        .call(OPS, "GET", &format!("/v1/grants/{g3}"), None)
        .await;
    assert_eq!(g3_now["approvals"][0]["by"], "lead", "{g3_now}");

    // Sign-out ends the session: its cookie opens nothing any more.
    lead.goto(&format!("{console}/console/")).await.unwrap();
    wait_for(&lead, "form[action='/console/logout'] button").await;
    click(&lead, "form[action='/console/logout'] button").await;
    wait_for(&lead, "#token").await;
    lead.goto(&format!("{console}/console/requests"))
        .await
        .unwrap();
    wait_for(&lead, "#token").await;
    assert_eq!(lead.current_url().await.unwrap().path(), "/console/login");
    let stale = api
        .http
        .get(format!("{console}/console/requests"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 303, "a signed-out session is gone");

    // A sign-in this browser did not start is refused, on a page that says why.
    lead.goto(&format!(
        "{console}/console/callback?code=stolen&state=forged"
    ))
    .await
    .unwrap();
    wait_for_text(&lead, "main", |t| t.contains("did not start that sign-in")).await;
    check_page(&lead, "sign-in-refused").await;

    // The chain still verifies through the API.
    let (_, chain) = api.call(OPS, "GET", "/v1/audit/verify", None).await;
    assert!(chain["problem"].is_null(), "{chain}");

    // An open live-update stream does not hold the host's graceful shutdown.
    alice
        .goto(&format!("{console}/console/grants"))
        .await
        .unwrap();
    wait_for(&alice, "html[data-live-connected=yes]").await;
    let mut host = host;
    assert!(
        host.terminate(Duration::from_secs(20)).unwrap(),
        "the host did not stop with a console page open"
    );
    alice.close().await.unwrap();
    lead.close().await.unwrap();
}

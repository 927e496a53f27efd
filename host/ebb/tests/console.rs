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
lifecycle = {{ approval = "required" }}

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
    alice
        .find(Locator::Id("sign-in-oidc"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let login = wait_for(&alice, "input[name=login]").await;
    assert!(
        alice
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&oidc.origin()),
        "the sign-in goes through the identity provider"
    );
    login.send_keys("alice").await.unwrap();
    alice
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("any password")
        .await
        .unwrap();
    alice
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let who = wait_for_text(&alice, "#who", |t| !t.is_empty()).await;
    assert_eq!(who, format!("{}#alice", oidc.origin()));

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
        "approval required",
        "0 of 1",
    ] {
        assert!(
            card.contains(shown),
            "the request card shows `{shown}`: {card}"
        );
    }
    check_page(&alice, "requests").await;

    // Approve with a note: two clicks (the note is optional).
    alice
        .find(Locator::Id(&format!("note-{g1}")))
        .await
        .unwrap()
        .send_keys("looks right")
        .await
        .unwrap();
    alice
        .find(Locator::Id(&format!("approve-{g1}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&alice, "#flash", |t| t.contains("Approved")).await;
    assert_eq!(api.state(&g1).await, "approved");
    let (_, report) = api
        .call(OPS, "GET", &format!("/v1/grants/{g1}/report"), None)
        .await;
    let approval = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "approved")
        .expect("an approval event");
    assert_eq!(
        approval["actor"],
        json!(format!("{}#alice", oidc.origin())),
        "the audit log names the person's verified identity"
    );
    assert_eq!(approval["detail"]["note"], "looks right");

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
    alice
        .find(Locator::Id(&format!("revoke-{g1}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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

    // The operator's and auditor's other pages.
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
    check_page(&alice, "connectors").await;
    alice
        .goto(&format!("{console}/console/policies"))
        .await
        .unwrap();
    wait_for(&alice, "h1").await;
    check_page(&alice, "policies").await;
    alice
        .goto(&format!("{console}/console/audit"))
        .await
        .unwrap();
    alice
        .find(Locator::Id("check-chain"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
    lead.find(Locator::Id("sign-in-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(g2.clone(), console.clone(), csrf.clone()).await, 303);
    assert_eq!(api.state(&g2).await, "requested");
    lead.goto(&format!("{console}/console/requests"))
        .await
        .unwrap();
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
    assert_eq!(post(g3.clone(), elsewhere, csrf.clone()).await, 403);
    assert_eq!(
        post(g3.clone(), console.clone(), "guessed".into()).await,
        403
    );
    assert_eq!(api.state(&g3).await, "requested");
    assert_eq!(post(g3.clone(), console.clone(), csrf.clone()).await, 303);
    assert_eq!(api.state(&g3).await, "approved");

    // Sign-out ends the session: its cookie opens nothing any more.
    lead.goto(&format!("{console}/console/")).await.unwrap();
    wait_for(&lead, "form[action='/console/logout'] button")
        .await
        .click()
        .await
        .unwrap();
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

    // The chain still verifies through the API.
    let (_, chain) = api.call(OPS, "GET", "/v1/audit/verify", None).await;
    assert!(chain["problem"].is_null(), "{chain}");
    alice.close().await.unwrap();
    lead.close().await.unwrap();
    drop(host);
}

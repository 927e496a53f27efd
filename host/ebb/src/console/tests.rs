//! The console through its router, without a browser: headers, sign-in, CSRF and
//! origin checks, role-shaped pages and live events. (The browser story is in
//! `host/ebb/tests/console.rs`.)

use super::*;
use crate::api::tests::{call, grant_body, state};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use ebb_engine::config::ConsoleConfig;
use tower::ServiceExt as _;

const ORIGIN: &str = "http://127.0.0.1:8700";

struct Setup {
    api: Router,
    console: Router,
}

async fn setup() -> Setup {
    let app = state().await;
    let console = Arc::new(
        Console::new(
            &ConsoleConfig {
                public_url: Some(ORIGIN.into()),
                ..ConsoleConfig::default()
            },
            std::net::SocketAddr::from(([127, 0, 0, 1], 8700)),
        )
        .unwrap(),
    );
    Setup {
        api: crate::api::router(app.clone()),
        console: router(app, console),
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r.body(Body::empty()).unwrap()
}

fn post(uri: &str, cookie: &str, origin: Option<&str>, form: &str) -> Request<Body> {
    let mut r = Request::post(uri)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    r.body(Body::from(form.to_owned())).unwrap()
}

/// The `name=value` of cookie `name` that `answer` sets.
fn set_cookie(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value of the first `name="<field>" value="…"` in a page.
fn field(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Signs in with the API token of `who` (`tok-<who>`); returns the session cookie.
async fn sign_in(app: &Router, who: &str) -> String {
    let page = send(app, get("/console/login", None)).await;
    let pre_cookie = set_cookie(&page, "ebb_pre").unwrap();
    let pre_cookie = pre_cookie.split(';').next().unwrap().to_owned();
    let pre = field(&page.body, "pre");
    let answer = send(
        app,
        post(
            "/console/login/token",
            &pre_cookie,
            Some(ORIGIN),
            &format!("token=tok-{who}&pre={pre}"),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let session = set_cookie(&answer, "ebb_console").unwrap();
    session.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn every_page_has_a_strict_policy_and_strangers_are_sent_to_sign_in() {
    let s = setup().await;
    let login = send(&s.console, get("/console/login", None)).await;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(
        login.headers["content-security-policy"],
        CONTENT_SECURITY_POLICY
    );
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(login.headers["x-content-type-options"], "nosniff");
    assert_eq!(login.headers["x-frame-options"], "DENY");
    assert_eq!(login.headers["cache-control"], "no-store");
    assert!(!login.body.contains("<script>"), "no inline script");
    let pre = set_cookie(&login, "ebb_pre").unwrap();
    assert!(pre.contains("HttpOnly") && pre.contains("SameSite=Lax") && !pre.contains("Secure"));

    for page in [
        "/console/",
        "/console/requests",
        "/console/grants",
        "/console/audit",
    ] {
        let answer = send(&s.console, get(page, None)).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(answer.headers["location"], "/console/login", "{page}");
    }
    let answer = send(&s.console, get("/console/events", None)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = send(
        &s.console,
        post(
            "/console/grants/x/approve",
            "ebb_console=forged",
            Some(ORIGIN),
            "csrf=x",
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let js = send(&s.console, get("/console/assets/console.js", None)).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
}

#[tokio::test]
async fn token_sign_in_needs_the_forms_token_and_a_real_token() {
    let s = setup().await;
    let page = send(&s.console, get("/console/login", None)).await;
    let cookie = set_cookie(&page, "ebb_pre").unwrap();
    let cookie = cookie.split(';').next().unwrap();
    let pre = field(&page.body, "pre");
    // Without the double-submitted token (a cross-site form could not read it).
    let answer = send(
        &s.console,
        post(
            "/console/login/token",
            cookie,
            Some(ORIGIN),
            "token=tok-alice&pre=guess",
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // From another origin.
    let answer = send(
        &s.console,
        post(
            "/console/login/token",
            cookie,
            Some("http://evil.test"),
            &format!("token=tok-alice&pre={pre}"),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // A token that is not one.
    let answer = send(
        &s.console,
        post(
            "/console/login/token",
            cookie,
            Some(ORIGIN),
            &format!("token=tok-nobody&pre={pre}"),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("not valid"));
    assert!(set_cookie(&answer, "ebb_console").is_none());
    // The real one: a session cookie, HttpOnly and SameSite.
    let session = sign_in(&s.console, "alice").await;
    let home = send(&s.console, get("/console/", Some(&session))).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains("Signed in as"));
}

#[tokio::test]
async fn state_changes_need_the_sessions_csrf_token_and_the_consoles_origin() {
    let s = setup().await;
    let (status, body) = call(
        &s.api,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&grant_body("manual", "10m")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let session = sign_in(&s.console, "alice").await;
    let queue = send(&s.console, get("/console/requests", Some(&session))).await;
    assert!(
        queue.body.contains(&format!("id=\"approve-{id}\"")),
        "{}",
        queue.body
    );
    let csrf = field(&queue.body, "csrf");
    let approve = format!("/console/grants/{id}/approve");
    let refused = [
        (Some(ORIGIN), "csrf=guessed".to_owned()),
        (Some(ORIGIN), String::new()),
        (Some("http://evil.test"), format!("csrf={csrf}")),
        (Some("null"), format!("csrf={csrf}")),
    ];
    for (origin, form) in refused {
        let answer = send(&s.console, post(&approve, &session, origin, &form)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{origin:?} {form}");
    }
    let mut cross = post(&approve, &session, None, &format!("csrf={csrf}"));
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(send(&s.console, cross).await.status, StatusCode::FORBIDDEN);
    let (_, grant) = call(
        &s.api,
        "GET",
        &format!("/v1/grants/{id}"),
        Some("ops"),
        None,
    )
    .await;
    assert_eq!(grant["state"], "requested");
    // The real thing: approved, by the person the session is.
    let answer = send(
        &s.console,
        post(
            &approve,
            &session,
            Some(ORIGIN),
            &format!("csrf={csrf}&note=fine"),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let (_, grant) = call(
        &s.api,
        "GET",
        &format!("/v1/grants/{id}"),
        Some("ops"),
        None,
    )
    .await;
    assert_eq!(grant["state"], "approved");
    assert_eq!(grant["approvals"][0]["by"], "spiffe://test/alice");
    let back = answer.headers["location"].to_str().unwrap().to_owned();
    assert!(back.starts_with("/console/requests?flash="), "{back}");
    let page = send(&s.console, get(&back, Some(&session))).await;
    assert!(
        page.body.contains(&format!("Approved {id}")),
        "{}",
        page.body
    );
    let again = send(&s.console, get(&back, Some(&session))).await;
    assert!(
        !again.body.contains(&format!("Approved {id}")),
        "the outcome is said once"
    );
}

#[tokio::test]
async fn nothing_from_the_path_reaches_a_header() {
    let s = setup().await;
    let session = sign_in(&s.console, "ops").await;
    let page = send(&s.console, get("/console/connectors", Some(&session))).await;
    let csrf = field(&page.body, "csrf");
    let answer = send(
        &s.console,
        post(
            "/console/grants/x%0D%0ASet-Cookie:%20a=b/revoke",
            &session,
            Some(ORIGIN),
            &format!("csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let location = answer.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("/console/grants/xSetCookieab?flash="),
        "{location}"
    );
    assert!(set_cookie(&answer, "a").is_none());
}

#[tokio::test]
async fn a_requester_never_gets_an_approve_button_on_their_own_request() {
    let s = setup().await;
    let (_, body) = call(
        &s.api,
        "POST",
        "/v1/grants",
        Some("selfish"),
        Some(&grant_body("manual", "10m")),
    )
    .await;
    let id = body["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let session = sign_in(&s.console, "selfish").await;
    let queue = send(&s.console, get("/console/requests", Some(&session))).await;
    assert!(queue.body.contains(&format!("id=\"own-{id}\"")));
    assert!(!queue.body.contains(&format!("id=\"approve-{id}\"")));
    let csrf = field(&queue.body, "csrf");
    let answer = send(
        &s.console,
        post(
            &format!("/console/grants/{id}/approve"),
            &session,
            Some(ORIGIN),
            &format!("csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let (_, grant) = call(
        &s.api,
        "GET",
        &format!("/v1/grants/{id}"),
        Some("ops"),
        None,
    )
    .await;
    assert_eq!(grant["state"], "requested");
    let back = answer.headers["location"].to_str().unwrap().to_owned();
    let page = send(&s.console, get(&back, Some(&session))).await;
    assert!(page.body.contains("never approve its own"), "{}", page.body);
}

#[tokio::test]
async fn pages_follow_the_api_s_roles() {
    let s = setup().await;
    let agent = sign_in(&s.console, "agent").await;
    // A requester sees no queue, and cannot open it.
    let home = send(&s.console, get("/console/", Some(&agent))).await;
    assert!(!home.body.contains("href=\"/console/requests\""));
    let queue = send(&s.console, get("/console/requests", Some(&agent))).await;
    assert_eq!(queue.status, StatusCode::FORBIDDEN, "{}", queue.body);
    let audit = send(&s.console, get("/console/audit", Some(&agent))).await;
    assert_eq!(audit.status, StatusCode::FORBIDDEN);
    // An auditor reads the log and checks the chain, but cannot revoke.
    let auditor = sign_in(&s.console, "audit").await;
    let audit = send(&s.console, get("/console/audit?check=1", Some(&auditor))).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(audit.body.contains("The chain is intact"), "{}", audit.body);
    let connectors = send(&s.console, get("/console/connectors", Some(&auditor))).await;
    assert!(connectors.body.contains("id=\"connector-manual\""));
    assert!(!connectors.body.contains("id=\"unload-manual\""));
}

#[tokio::test]
async fn live_events_carry_grant_changes_a_person_may_see() {
    use futures_util::StreamExt as _;
    let s = setup().await;
    let ops = sign_in(&s.console, "ops").await;
    let other = sign_in(&s.console, "other-agent").await;
    let open = |cookie: String| {
        let console = s.console.clone();
        async move {
            let response = console
                .oneshot(get("/console/events", Some(&cookie)))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            response.into_body().into_data_stream()
        }
    };
    let mut ops_events = open(ops).await;
    let mut other_events = open(other).await;
    let (_, body) = call(
        &s.api,
        "POST",
        "/v1/grants",
        Some("agent"),
        Some(&grant_body("manual", "10m")),
    )
    .await;
    let id = body["grant"]["grant"]["id"].as_str().unwrap().to_owned();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), ops_events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame = String::from_utf8_lossy(&frame).into_owned();
    assert!(frame.contains("event: grant"), "{frame}");
    assert!(
        frame.contains(&id) && frame.contains("requested"),
        "{frame}"
    );
    // Another requester's session hears nothing of it.
    let heard =
        tokio::time::timeout(std::time::Duration::from_millis(300), other_events.next()).await;
    assert!(
        heard.is_err(),
        "a requester heard of another's grant: {heard:?}"
    );
}

#[test]
fn cookies_are_secure_when_the_console_is_reached_over_https() {
    let console = Console::new(
        &ConsoleConfig {
            public_url: Some("https://ebb.example.com/".into()),
            ..ConsoleConfig::default()
        },
        std::net::SocketAddr::from(([127, 0, 0, 1], 8700)),
    )
    .unwrap();
    assert_eq!(console.url(), "https://ebb.example.com/console/");
    let cookie = session::set_cookie(
        &console,
        "ebb_console",
        "v",
        std::time::Duration::from_secs(60),
    );
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"));
    assert!(
        Console::new(
            &ConsoleConfig {
                public_url: Some("ftp://x".into()),
                ..ConsoleConfig::default()
            },
            std::net::SocketAddr::from(([127, 0, 0, 1], 8700)),
        )
        .is_err()
    );
}

#[test]
fn a_persons_groups_map_to_roles() {
    let config: ebb_engine::config::ConsoleOidcConfig = toml::from_str(
        r#"
        issuer = "https://idp.test"
        client-id = "ebb-console"
        default-roles = ["requester"]
        [roles]
        sre = ["operator", "approver"]
        audit = ["auditor"]
        "#,
    )
    .unwrap();
    let provider = oidc::Provider::new(&config, ORIGIN).unwrap();
    let roles = |groups: &str| {
        let mut r: Vec<_> = provider
            .roles(&[
                ("groups".into(), groups.into()),
                ("name".into(), "sre".into()),
            ])
            .into_iter()
            .map(|r| format!("{r:?}"))
            .collect();
        r.sort();
        r
    };
    assert_eq!(roles("sre"), ["Approver", "Operator", "Requester"]);
    assert_eq!(
        roles("audit,sre"),
        ["Approver", "Auditor", "Operator", "Requester"]
    );
    assert_eq!(
        roles("unknown"),
        ["Requester"],
        "only mapped groups give roles"
    );
    assert_eq!(roles(""), ["Requester"]);
}

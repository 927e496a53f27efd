//! Talking to a real `ebb serve` over HTTP, as the crash and cluster tests do: JSON
//! reads, every grant page by page, and waiting until every grant is settled.

use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `GET url` with `token`, as JSON.
#[expect(clippy::panic, reason = "a test helper: a failed read fails the test")]
pub async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Value {
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Every grant the host at `base` holds, page by page.
pub async fn all_grants(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let mut grants = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/grants?limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = get_json(client, &url, token).await;
        grants.extend(page["grants"].as_array().into_iter().flatten().cloned());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return grants,
        }
    }
}

/// Waits (60 s at most) until every grant is closed — verified, denied, or
/// requested/approved but never issued (nothing was created downstream) — and
/// returns them all.
#[expect(
    clippy::panic,
    reason = "a test helper: grants left open fail the test"
)]
pub async fn settled_grants(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let grants = all_grants(client, base, token).await;
        let open: Vec<&Value> = grants
            .iter()
            .filter(|g| match g["state"].as_str() {
                Some("verified" | "denied") => false,
                Some("requested" | "approved") => g["issued_at"].as_u64().is_some(),
                _ => true,
            })
            .collect();
        if open.is_empty() {
            return grants;
        }
        if Instant::now() > deadline {
            panic!("grants still open after 60 s: {open:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fails unless every grant in `acknowledged` is among `grants`, verified.
#[expect(clippy::panic, reason = "a test helper: a lost grant fails the test")]
pub fn assert_all_verified(grants: &[Value], acknowledged: &[String]) {
    let states: HashMap<&str, &str> = grants
        .iter()
        .filter_map(|g| Some((g["grant"]["id"].as_str()?, g["state"].as_str()?)))
        .collect();
    for id in acknowledged {
        if states.get(id.as_str()) != Some(&"verified") {
            panic!(
                "acknowledged grant {id} was lost or not verified: {:?}",
                states.get(id.as_str())
            );
        }
    }
}

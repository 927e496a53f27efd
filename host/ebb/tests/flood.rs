//! An anonymous flood against a real `ebb serve` (issue 13), bounded in count and
//! time, on loopback: refusals are answered (401, then 429) without writing one
//! audit event each, the audit log grows by at most one summary per window of
//! bounded size, and grants expiring meanwhile are revoked on time.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TOKEN: &str = "flood-test-agent-token";
/// The flood's length and the number of concurrent senders.
const FLOOD: Duration = Duration::from_secs(6);
const SENDERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_neither_fills_the_store_nor_delays_expiry() {
    // An identity provider is configured, so forged three-part tokens are parsed
    // and checked: the costly refusals the per-client bucket limits.
    let jwks = std::env::temp_dir().join(format!("ebb-flood-jwks-{}.json", rand::random::<u64>()));
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
                         "x": base64_url(&"k".repeat(32))}]})
        .to_string(),
    )
    .unwrap();
    let host = ebb_test_support::Host::start(
        env!("CARGO_BIN_EXE_ebb"),
        "flood",
        "",
        &format!(
            "[[tokens]]\nname = \"agent\"\nsha256 = \"{}\"\nroles = [\"requester\", \"auditor\"]\n\
             [connectors.noop]\ncomponent = \"{}\"\nlifecycle = {{ approval = \"auto\" }}\n\
             [[identity.issuers]]\nissuer = \"https://idp.flood.test\"\naudiences = [\"ebb\"]\n\
             jwks-file = \"{}\"",
            ebb::token::hash_token(TOKEN),
            ebb_test_plugins::NOOP,
            jwks.display()
        ),
    )
    .unwrap();
    let api = host.api.clone();
    let http = reqwest::Client::new();
    let events = || async {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e["seq"].as_u64().unwrap());
            let page = http
                .get(format!("{api}/v1/audit?limit=1000&after={after}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Vec<Value>>()
                .await
                .unwrap();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    };
    let before = events().await.len();

    // Grants that expire in the middle of the flood.
    let mut ids = Vec::new();
    for _ in 0..20 {
        let v: Value = http
            .post(format!("{api}/v1/grants"))
            .bearer_auth(TOKEN)
            .json(&json!({
                "connector": "noop",
                "permissions": [{"action": "use", "resource": "x"}],
                "ttl": "2s",
                "task": "flood test",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(v["grant"]["grant"]["id"].as_str().unwrap().to_owned());
    }

    // The flood: long paths without a token, and forged three-part tokens with a
    // large unverified `iss`, from one client, as fast as it goes, for FLOOD.
    let long_path = format!("/v1/grants/{}", "a".repeat(8 * 1024));
    let forged = format!(
        "{}.{}.sig",
        "eyJhbGciOiJFUzI1NiJ9",
        base64_url(&json!({ "iss": "x".repeat(16 * 1024) }).to_string())
    );
    let started = Instant::now();
    let mut senders = Vec::new();
    for n in 0..SENDERS {
        let (http, api, long_path, forged) =
            (http.clone(), api.clone(), long_path.clone(), forged.clone());
        senders.push(tokio::spawn(async move {
            let (mut sent, mut limited) = (0u64, 0u64);
            while started.elapsed() < FLOOD {
                let request = if n % 2 == 0 {
                    http.get(format!("{api}{long_path}"))
                } else {
                    http.post(format!("{api}/v1/grants")).bearer_auth(&forged)
                };
                if let Ok(response) = request.send().await {
                    sent += 1;
                    if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        limited += 1;
                    }
                }
            }
            (sent, limited)
        }));
    }
    let (mut sent, mut limited) = (0, 0);
    for s in senders {
        let (a, b) = s.await.unwrap();
        sent += a;
        limited += b;
    }

    // Every grant expired during the flood was revoked on time and verified.
    let mut worst_lag = 0;
    for id in &ids {
        let mut grant = Value::Null;
        for _ in 0..200 {
            grant = http
                .get(format!("{api}/v1/grants/{id}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if grant["state"] == "verified" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(grant["state"], "verified", "{grant}");
        let lag = grant["revoke_started_at"].as_u64().unwrap()
            - grant["grant"]["not_after"].as_u64().unwrap();
        worst_lag = worst_lag.max(lag);
    }
    assert!(
        worst_lag < 1_000,
        "expiry started {worst_lag} ms late under the flood"
    );

    // Wait out the summary window, then count what the flood wrote.
    tokio::time::sleep(ebb::api::guard::WINDOW + Duration::from_secs(1)).await;
    let all = events().await;
    let written: Vec<&Value> = all[before..]
        .iter()
        .filter(|e| e["grant_id"].is_null())
        .collect();
    let bytes: usize = written.iter().map(|e| e.to_string().len()).sum();
    // One summary per window at most: the flood and the wait span at most three.
    assert!(
        written.len() <= 3 && written.iter().all(|e| e["kind"] == "auth.refusals"),
        "{} events: {:?}",
        written.len(),
        written.iter().map(|e| &e["kind"]).collect::<Vec<_>>()
    );
    assert!(
        bytes < 3 * 16 * 1024,
        "{bytes} bytes of audit for the flood"
    );
    let counted: u64 = written
        .iter()
        .map(|e| e["detail"]["total"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, sent, "every refusal is counted");
    assert!(
        limited > sent / 2,
        "most of the flood was answered 429: {limited}/{sent}"
    );
    drop(host);
    let _ = std::fs::remove_file(&jwks);
    println!(
        "flood: {sent} requests in {FLOOD:?} ({limited} answered 429), {} audit events / {bytes} bytes, worst expiry lag {worst_lag} ms",
        written.len()
    );
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

//! Tokens minted here with keys made here: only a valid one passes.

use super::*;
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "https://idp.test.example";
const AUDIENCE: &str = "ebb";

struct Keypair {
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn keypair(kid: &str) -> Keypair {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = signing.to_pkcs8_der().unwrap();
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    Keypair {
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(key: &Keypair, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn claims() -> serde_json::Value {
    json!({
        "iss": ISSUER,
        "sub": "spiffe://acme.example/ci/billing",
        "aud": AUDIENCE,
        "exp": now() + 300,
        "iat": now(),
        "repo": "acme/billing",
        "groups": ["ci", "billing"],
    })
}

async fn verifier(keys: &[&Keypair]) -> Verifier {
    let dir = std::env::temp_dir().join(format!("ebb-jwks-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    let jwks = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    std::fs::write(&file, jwks.to_string()).unwrap();
    Verifier::new(&IdentityConfig {
        issuers: vec![IssuerConfig {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            jwks_file: Some(file),
            jwks_url: None,
            kind: SubjectKind::Workload,
            roles: vec![Role::Requester],
            subject_claim: "sub".into(),
            leeway_seconds: 5,
        }],
    })
    .await
    .unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn only_a_valid_token_passes() {
    let key = keypair("k1");
    let other = keypair("k1");
    let v = verifier(&[&key]).await;

    let identity = v.verify(&mint(&key, "k1", claims())).await.unwrap();
    assert_eq!(identity.subject, "spiffe://acme.example/ci/billing");
    assert_eq!(identity.issuer, ISSUER);
    assert!(identity.roles.contains(&Role::Requester));
    assert!(
        identity
            .claims
            .contains(&("repo".into(), "acme/billing".into()))
    );
    assert!(
        identity
            .claims
            .contains(&("groups".into(), "ci,billing".into()))
    );
    assert!(!identity.claims.iter().any(|(k, _)| k == "exp"));

    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        edit(&mut c);
        c
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            mint(&key, "k1", with(&|c| c["exp"] = json!(now() - 120))),
            "ExpiredSignature",
        ),
        (
            "not yet valid",
            mint(&key, "k1", with(&|c| c["nbf"] = json!(now() + 600))),
            "ImmatureSignature",
        ),
        (
            "wrong audience",
            mint(&key, "k1", with(&|c| c["aud"] = json!("someone-else"))),
            "InvalidAudience",
        ),
        (
            "wrong issuer",
            mint(
                &key,
                "k1",
                with(&|c| c["iss"] = json!("https://evil.example")),
            ),
            "no configured issuer",
        ),
        (
            "no subject",
            mint(
                &key,
                "k1",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            ),
            "sub",
        ),
        (
            "bad signature",
            mint(&other, "k1", claims()),
            "InvalidSignature",
        ),
        ("unknown key", mint(&key, "k2", claims()), "no key `k2`"),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims())
            ),
            "not a JWT",
        ),
        (
            "alg HS256 keyed with the public key",
            {
                let x = key.jwk["x"].as_str().unwrap();
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some("k1".into());
                jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(x.as_bytes()))
                    .unwrap()
            },
            "not accepted",
        ),
        ("garbage", "not.a.token".into(), "not a JWT"),
    ];
    for (name, token, why) in cases {
        let err = v.verify(&token).await.unwrap_err();
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
}

#[tokio::test]
async fn keys_come_from_a_url_and_rotate() {
    let first = keypair("k1");
    let second = keypair("k2");
    let served = std::sync::Arc::new(std::sync::Mutex::new(
        json!({ "keys": [first.jwk.clone()] }),
    ));
    let doc = served.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let v = Verifier::new(&IdentityConfig {
        issuers: vec![IssuerConfig {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            jwks_file: None,
            jwks_url: Some(url),
            kind: SubjectKind::Person,
            roles: vec![Role::Requester],
            subject_claim: "sub".into(),
            leeway_seconds: 5,
        }],
    })
    .await
    .unwrap();
    assert_eq!(
        v.verify(&mint(&first, "k1", claims())).await.unwrap().kind,
        SubjectKind::Person
    );
    // The issuer rotates in a new key: a token signed with it makes the host fetch again.
    served.lock().unwrap()["keys"] = json!([first.jwk.clone(), second.jwk.clone()]);
    v.verify(&mint(&second, "k2", claims())).await.unwrap();
    // Unknown keys cannot make it fetch again at once.
    let third = keypair("k3");
    served.lock().unwrap()["keys"] = json!([third.jwk.clone()]);
    let err = v.verify(&mint(&third, "k3", claims())).await.unwrap_err();
    assert_eq!(err, TokenError::UnknownKey("k3".into()));
}

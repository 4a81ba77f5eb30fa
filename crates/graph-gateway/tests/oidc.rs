//! Token validation against a real issuer served over HTTP in the test: discovery, JWKS,
//! key rotation, an unreachable provider, and the usual forgeries.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use graph_gateway::issuer::{DevIssuer, TokenSpec};
use graph_gateway::oidc::{AuthError, OidcSettings, Validator};
use serde_json::json;

const AUDIENCE: &str = "api://trackunit-test";

async fn serve_issuer() -> DevIssuer {
    DevIssuer::spawn_local().await.expect("issuer")
}

fn settings(issuer: &DevIssuer) -> OidcSettings {
    OidcSettings {
        issuer: issuer.issuer().to_owned(),
        audiences: vec![AUDIENCE.into(), "other-accepted".into()],
        required_scope: "analysis".into(),
        jwks_max_age: Duration::from_secs(3600),
        refetch_cooldown: Duration::from_secs(3600),
        max_stale: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(60),
    }
}

fn spec(subject: &str) -> TokenSpec {
    TokenSpec {
        subject: subject.into(),
        audience: AUDIENCE.into(),
        scope: "openid analysis".into(),
        lifetime: Duration::from_secs(600),
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(issuer: &DevIssuer) -> serde_json::Value {
    json!({"iss": issuer.issuer(), "sub": "alice", "aud": AUDIENCE, "scp": "analysis",
           "iat": now(), "exp": now() + 600})
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test]
async fn a_good_token_passes_and_bad_ones_get_their_reason() {
    let issuer = serve_issuer().await;
    let v = Validator::new(settings(&issuer));
    let good = issuer.token(&spec("alice")).expect("token");
    let caller = v
        .validate_header(Some(&format!("Bearer {good}")))
        .await
        .expect("valid");
    assert_eq!(caller.subject, "alice");
    assert!(caller.scopes.iter().any(|s| s == "analysis"));

    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(&issuer);
        f(&mut c);
        issuer.sign(&c).expect("sign")
    };
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "expired beyond the skew",
            with(&|c| c["exp"] = json!(now() - 120)),
            AuthError::Expired,
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("api://someone-else")),
            AuthError::WrongAudience,
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
            AuthError::WrongIssuer,
        ),
        (
            "missing scope",
            with(&|c| c["scp"] = json!("openid profile")),
            AuthError::MissingScope("analysis".into()),
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
            AuthError::MissingClaim("exp".into()),
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("aud"));
            }),
            AuthError::MissingClaim("aud".into()),
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 600)),
            AuthError::NotYetValid,
        ),
    ];
    for (what, token, expected) in cases {
        assert_eq!(v.validate(&token).await, Err(expected), "{what}");
    }
    // Within the 60 s skew an expired token still passes.
    let just_expired = with(&|c| c["exp"] = json!(now() - 20));
    assert!(v.validate(&just_expired).await.is_ok());
    // Keycloak puts scopes in `scope`, Entra in `scp`; an array works too.
    let keycloak = with(&|c| {
        c.as_object_mut().map(|o| o.remove("scp"));
        c["scope"] = json!("profile analysis");
    });
    assert!(v.validate(&keycloak).await.is_ok());
    let list = with(&|c| c["scp"] = json!(["analysis"]));
    assert!(v.validate(&list).await.is_ok());
    assert_eq!(
        v.validate_header(None).await,
        Err(AuthError::Missing),
        "no header"
    );
    assert_eq!(
        v.validate("not.a.jwt").await.map_err(|e| e.reason()),
        Err("malformed")
    );
}

#[tokio::test]
async fn forgeries_are_refused() {
    let issuer = serve_issuer().await;
    let v = Validator::new(settings(&issuer));
    let kid = issuer.current_kid();
    let payload = b64(claims(&issuer).to_string().as_bytes());

    // alg: none, no signature.
    let header = b64(json!({"alg": "none", "typ": "JWT", "kid": kid})
        .to_string()
        .as_bytes());
    let none = format!("{header}.{payload}.");
    let err = v.validate(&none).await.expect_err("alg none");
    assert_eq!(err.code(), "UNAUTHENTICATED");
    assert_eq!(err.reason(), "algorithm_not_allowed");

    // HS256 "signed" with the published public key as the HMAC secret.
    let public_pem = issuer.public_key_pem();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.clone());
    let hs = jsonwebtoken::encode(
        &header,
        &claims(&issuer),
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()).expect("hmac key"),
    )
    .expect("hs256");
    assert_eq!(
        v.validate(&hs).await.map_err(|e| e.reason()),
        Err("algorithm_not_allowed")
    );

    // Signed by another key that claims the issuer's kid.
    let impostor = DevIssuer::generate(issuer.issuer()).expect("impostor");
    let mut forged_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    forged_header.kid = Some(kid);
    let forged = jsonwebtoken::encode(
        &forged_header,
        &claims(&issuer),
        &jsonwebtoken::EncodingKey::from_rsa_pem(impostor.private_key_pem().as_bytes())
            .expect("key"),
    )
    .expect("forged");
    assert_eq!(v.validate(&forged).await, Err(AuthError::BadSignature));

    // A valid token with one payload byte changed.
    let good = issuer.token(&spec("alice")).expect("token");
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let tampered_claims = {
        let mut c = claims(&issuer);
        c["sub"] = json!("mallory");
        b64(c.to_string().as_bytes())
    };
    parts[1] = tampered_claims;
    assert_eq!(
        v.validate(&parts.join(".")).await,
        Err(AuthError::BadSignature)
    );

    // A kid nobody published.
    let stranger = DevIssuer::generate(issuer.issuer()).expect("stranger");
    let unknown = stranger.sign(&claims(&issuer)).expect("sign");
    assert_eq!(v.validate(&unknown).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn rotated_keys_are_fetched_once_and_unknown_kids_wait_for_the_cooldown() {
    let issuer = serve_issuer().await;
    let mut s = settings(&issuer);
    s.refetch_cooldown = Duration::from_millis(300);
    let v = Arc::new(Validator::new(s));
    v.validate(&issuer.token(&spec("alice")).expect("token"))
        .await
        .expect("first key");
    assert_eq!(issuer.jwks_fetches(), 1);

    // Rotation mid-test: the provider signs with a new key the gateway has not seen.
    tokio::time::sleep(Duration::from_millis(350)).await;
    issuer.rotate().expect("rotate");
    issuer.retire_old_keys();
    let rotated = issuer.token(&spec("alice")).expect("token");
    // Twenty concurrent requests with the new kid share one fetch.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let v = v.clone();
        let t = rotated.clone();
        tasks.push(tokio::spawn(async move { v.validate(&t).await }));
    }
    for t in tasks {
        assert!(t.await.expect("join").is_ok(), "new key accepted");
    }
    assert_eq!(issuer.jwks_fetches(), 2, "one merged refetch");

    // Unknown kids within the cooldown do not reach the provider.
    let stranger = DevIssuer::generate(issuer.issuer()).expect("stranger");
    let unknown = stranger.sign(&claims(&issuer)).expect("sign");
    for _ in 0..10 {
        assert_eq!(v.validate(&unknown).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(issuer.jwks_fetches(), 2, "cooldown holds");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(v.validate(&unknown).await, Err(AuthError::UnknownKey));
    assert_eq!(issuer.jwks_fetches(), 3, "after the cooldown one refetch");
}

#[tokio::test]
async fn known_keys_serve_while_the_provider_is_down() {
    let issuer = serve_issuer().await;
    let mut s = settings(&issuer);
    s.jwks_max_age = Duration::from_millis(200);
    s.max_stale = Duration::from_secs(60);
    let v = Validator::new(s);
    let token = issuer.token(&spec("alice")).expect("token");
    v.validate(&token).await.expect("valid");
    issuer.set_available(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The cache is past its age and the refetch fails: the stale key still verifies.
    assert!(v.validate(&token).await.is_ok());
    issuer.set_available(true);

    // A validator that never got keys says the provider is unavailable.
    let cold_issuer = serve_issuer().await;
    cold_issuer.set_available(false);
    let cold = Validator::new(settings(&cold_issuer));
    let t = cold_issuer.token(&spec("bob")).expect("token");
    assert_eq!(cold.validate(&t).await, Err(AuthError::ProviderUnavailable));
    assert!(!cold.has_keys().await);
}

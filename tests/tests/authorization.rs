//! The authorization matrix: every route × every kind of bad credential → the status the
//! API documents; and secrets, tokens and API keys are stored only as hashes.

use std::time::Duration;
use webhooks::ports::{ApplicationStore, ClientStore};
use webhooks_tests::api::{RECORD, TestApi, encode_component, request};

/// (case, headers, expected status, expected error code)
type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);

const CALLBACK: &str = "https://nowhere2.com/0000-0002-7465-2162/updated";

#[tokio::test]
async fn every_route_and_every_bad_credential() {
    let (api, tokens) = TestApi::new().await;
    let webhook = format!("/{RECORD}/webhook/{}", encode_component(CALLBACK));
    let bearer = |t: &str| format!("Bearer {t}");
    // APP-2 owns one webhook, so APP-1 meets "another client's webhook".
    let theirs = format!(
        "/{RECORD}/webhook/{}",
        encode_component("https://theirs.example/hook")
    );
    let (status, _, _) = api
        .call(request(
            "PUT",
            &theirs,
            &[("authorization", &bearer(&tokens.app2))],
            "",
        ))
        .await;
    assert_eq!(status, 201);
    api.clock.advance(Duration::from_secs(61)); // the short-lived token has expired

    let mut rows = Vec::new();
    // APP-2's webhook id, for the routes that take one.
    let their_id = webhooks::attempts::EndpointKey::subscription(
        &webhooks::record::RecordId::parse(RECORD).unwrap(),
        &webhooks::callback::CallbackUrl::parse(
            "https://theirs.example/hook",
            webhooks::callback::UrlPolicy::default(),
        )
        .unwrap(),
    );
    let their_attempts = format!("/webhooks/{}/attempts", their_id.as_str());
    let their_message = format!(
        "/webhooks/{}/messages/msg_00000000000000000000000000000000",
        their_id.as_str()
    );
    let their_redeliver = format!("{their_message}/redeliver");
    let their_recover = format!("/webhooks/{}/recover", their_id.as_str());
    let their_recovery = format!("{their_recover}/rec_0");
    // (route, method, path, body), for bearer-token routes.
    for (method, path) in [
        ("PUT", webhook.as_str()),
        ("DELETE", webhook.as_str()),
        ("GET", "/webhooks"),
        ("GET", their_attempts.as_str()),
        ("GET", their_message.as_str()),
        ("POST", their_redeliver.as_str()),
        ("POST", their_recover.as_str()),
        ("GET", their_recovery.as_str()),
    ] {
        let cases: Vec<Case> = vec![
            ("no credentials", vec![], 401, "invalid_token"),
            (
                "malformed: Bearer without token",
                vec![("authorization", "Bearer".into())],
                401,
                "invalid_token",
            ),
            (
                "malformed: other scheme",
                vec![("authorization", "Token abc".into())],
                401,
                "invalid_token",
            ),
            (
                "malformed: Basic",
                vec![("authorization", "Basic QVBQLTE6c2VjcmV0LTE=".into())],
                401,
                "invalid_token",
            ),
            (
                "unknown token",
                vec![(
                    "authorization",
                    bearer("5eb23750-1e19-47a3-b6f6-26635c34e8ee"),
                )],
                401,
                "invalid_token",
            ),
            (
                "expired token",
                vec![("authorization", bearer(&tokens.short_lived))],
                401,
                "invalid_token",
            ),
            (
                "wrong scope",
                vec![("authorization", bearer(&tokens.wrong_scope))],
                403,
                "insufficient_scope",
            ),
            (
                "an application's API key instead",
                vec![("x-access-token", "key-1".into())],
                401,
                "invalid_token",
            ),
        ];
        let route = if path.starts_with("/webhooks") {
            format!("{method} {}", path.replace(their_id.as_str(), "{id}"))
        } else {
            format!("{method} /{{record}}/webhook/{{url}}")
        };
        for (name, headers, status, code) in cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            rows.push((
                route.clone(),
                name,
                api.call(request(method, path, &headers, "")).await,
                status,
                code,
            ));
        }
        if path == "/webhooks" {
            continue;
        }
        if path.starts_with("/webhooks/") {
            // Webhook ids are opaque: another client's is not found, as a made-up one.
            let other = api
                .call(request(
                    method,
                    path,
                    &[("authorization", &bearer(&tokens.app1))],
                    "",
                ))
                .await;
            rows.push((
                route,
                "another client's webhook",
                other,
                404,
                "webhook_not_found",
            ));
            continue;
        }
        let other = api
            .call(request(
                method,
                &theirs,
                &[("authorization", &bearer(&tokens.app1))],
                "",
            ))
            .await;
        rows.push((
            format!("{method} /{{record}}/webhook/{{url}}"),
            "another client's webhook",
            other,
            403,
            "forbidden",
        ));
    }
    // API-key routes.
    let app_routes = [
        ("GET", "/application/app-1", ""),
        (
            "PATCH",
            "/application/app-1",
            r#"{"webhook":{"requestIntervalMs":5}}"#,
        ),
        ("POST", "/application/app-1/webhook/secret", ""),
        ("POST", "/application/app-1/webhook/test", ""),
        ("POST", "/application/app-1/webhook/sync", ""),
        ("GET", "/application/app-1/webhook/sync/sync_0", ""),
        ("GET", "/application/app-1/webhook/attempts", ""),
        (
            "GET",
            "/application/app-1/webhook/attempts?status=failed&limit=5",
            "",
        ),
        (
            "GET",
            "/application/app-1/webhook/messages/msg_00000000000000000000000000000000",
            "",
        ),
        (
            "POST",
            "/application/app-1/webhook/messages/msg_00000000000000000000000000000000/redeliver",
            "",
        ),
        ("GET", "/application/app-1/webhook/recover/rec_0", ""),
        (
            "POST",
            "/application/app-1/webhook/recover",
            r#"{"since":"2026-11-26T00:00:00Z"}"#,
        ),
    ];
    for (method, path, body) in app_routes {
        let cases: Vec<Case> = vec![
            ("no credentials", vec![], 401, "invalid_api_key"),
            (
                "malformed: empty key",
                vec![("x-access-token", "".into())],
                401,
                "invalid_api_key",
            ),
            (
                "malformed: blank key",
                vec![("x-access-token", "   ".into())],
                401,
                "invalid_api_key",
            ),
            (
                "unknown key",
                vec![("x-access-token", "key-9".into())],
                401,
                "invalid_api_key",
            ),
            (
                "an OAuth token instead",
                vec![("authorization", bearer(&tokens.app1))],
                401,
                "invalid_api_key",
            ),
            (
                "another application's key",
                vec![("x-access-token", "key-2".into())],
                403,
                "forbidden",
            ),
        ];
        for (name, headers, status, code) in cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            rows.push((
                format!("{method} {path}"),
                name,
                api.call(request(method, path, &headers, body)).await,
                status,
                code,
            ));
        }
        // Another application's id with a valid key of app-1: never revealed.
        let other_path = path.replace("app-1", "app-2");
        let other = api
            .call(request(
                method,
                &other_path,
                &[("x-access-token", "key-1")],
                body,
            ))
            .await;
        rows.push((
            format!("{method} {other_path}"),
            "own key, another application",
            other,
            403,
            "forbidden",
        ));
    }
    // The token endpoint.
    let token_cases = [
        (
            "no credentials",
            "grant_type=client_credentials&scope=%2Fwebhook",
            vec![],
            400,
            "invalid_request",
        ),
        (
            "unknown client",
            "client_id=APP-9&client_secret=x&grant_type=client_credentials&scope=%2Fwebhook",
            vec![],
            401,
            "invalid_client",
        ),
        (
            "wrong secret",
            "client_id=APP-1&client_secret=x&grant_type=client_credentials&scope=%2Fwebhook",
            vec![],
            401,
            "invalid_client",
        ),
        (
            "wrong scope",
            "client_id=APP-1&client_secret=secret-1&grant_type=client_credentials&scope=%2Fadmin",
            vec![],
            401,
            "invalid_scope",
        ),
        (
            "wrong Basic secret",
            "grant_type=client_credentials&scope=%2Fwebhook",
            vec![("authorization", "Basic QVBQLTE6bm9wZQ==")],
            401,
            "invalid_client",
        ),
    ];
    for (name, body, headers, status, code) in token_cases {
        rows.push((
            "POST /oauth/token".into(),
            name,
            api.call(request("POST", "/oauth/token", &headers, body))
                .await,
            status,
            code,
        ));
    }

    let mut failures = Vec::new();
    for (route, case, (got, got_code, body), status, code) in &rows {
        let ok = got == status && got_code == code;
        println!(
            "{:<48} {:<36} {got} {got_code:<22} {}",
            route,
            case,
            if ok { "ok" } else { "WRONG" }
        );
        if !ok {
            failures.push(format!(
                "{route} / {case}: expected {status} {code}, got {got} {body}"
            ));
        }
    }
    println!("{} cells", rows.len());
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(rows.len() >= 60);
}

#[tokio::test]
async fn secrets_tokens_and_api_keys_are_stored_only_as_hashes() {
    let (api, tokens) = TestApi::new().await;
    let stored = serde_json::to_string(&(
        api.store.list_clients().await.unwrap(),
        api.store.list_applications().await.unwrap(),
        api.store.stored_tokens(),
    ))
    .unwrap();
    for plain in [
        "secret-1",
        "secret-2",
        "key-1",
        "key-2",
        &tokens.app1,
        &tokens.app2,
        &tokens.wrong_scope,
    ] {
        assert!(!stored.contains(plain), "{plain} is stored in the clear");
    }
    assert!(stored.contains(&webhooks::oauth::sha256_hex(&tokens.app1)));
    assert!(stored.contains(&webhooks::oauth::sha256_hex("key-1")));
}

/// Ids in a path are parsed at the edge: one that cannot be an id of its kind is the 4xx
/// a well-formed but unknown one gets, never a 5xx (nor a storage key built from it).
#[tokio::test]
async fn path_ids_that_are_not_ids_are_answered_like_unknown_ones() {
    let (api, _) = TestApi::new().await;
    let key = [("x-access-token", "key-1")];
    let mut failures = Vec::new();
    for (case, path, status, code) in [
        (
            "an application id with a character no id has",
            "/application/app%231",
            403,
            "forbidden",
        ),
        (
            "an application id longer than any",
            &format!("/application/{}", "a".repeat(65)),
            403,
            "forbidden",
        ),
        (
            "a sync id that is not one",
            "/application/app-1/webhook/sync/sync_0",
            404,
            "sync_not_found",
        ),
        (
            "a well-formed sync id of no sync",
            "/application/app-1/webhook/sync/sync_0123456789abcdef0123456789abcdef",
            404,
            "sync_not_found",
        ),
    ] {
        let (got_status, got_code, body) = api.call(request("GET", path, &key, "")).await;
        if (got_status, got_code.as_str()) != (status, code) {
            failures.push(format!(
                "{case}: {got_status} {got_code}, expected {status} {code} ({body})"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

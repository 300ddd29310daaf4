//! Malformed input over real HTTP to the running local runner: never a 5xx, never a
//! panic, and a clear JSON error.

use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webhooks_local::{LocalConfig, LocalService, SAMPLE_RECORD};

/// (method, path, headers, body, expected status, expected error code)
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

async fn send(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = http
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_4xx_answers() {
    let service = LocalService::start(LocalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        flush_interval: Duration::from_secs(3600),
        clients: vec![("APP-1".parse().unwrap(), "secret-1".into())],
        applications: vec![("app-1".parse().unwrap(), "key-1".into())],
        ..LocalConfig::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", service.addr);
    let http = reqwest::Client::new();
    let app = [
        ("x-access-token", "key-1"),
        ("content-type", "application/json"),
    ];
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let long_path = format!("/{}", "a".repeat(10_000));
    let seed_cb = "https%3A%2F%2Fnowhere2.com%2F0000-0002-7465-2162%2Fupdated";
    let cases: Vec<Case> = vec![
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            b"{".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            b"[]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            br#""webhook""#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            br#"{"webhook": 5}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            br#"{"webhook": {"url": 5}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            br#"{"webhook": {"requestIntervalMs": -1}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            deep.clone().into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            vec![0xff, 0xfe, 0x00],
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/application/app-1".into(),
            app.to_vec(),
            vec![b' '; 70 * 1024],
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/application/app-1/webhook/test".into(),
            app.to_vec(),
            b"{\"personId\": [1]}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/oauth/token".into(),
            vec![("content-type", "application/json")],
            br#"{"client_id":"APP-1"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/oauth/token".into(),
            vec![],
            vec![0xff, 0x00, 0x26, 0x3d],
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/oauth/token".into(),
            vec![("authorization", "Basic %%%")],
            b"grant_type=client_credentials&scope=%2Fwebhook".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "PUT",
            format!("/{SAMPLE_RECORD}/webhook/%zz"),
            vec![],
            vec![],
            401,
            "invalid_token",
        ),
        (
            "PUT",
            "/%FF%FE00-0002-7465-2162/webhook/x".into(),
            vec![],
            vec![],
            401,
            "invalid_token",
        ),
        ("GET", "/".into(), vec![], vec![], 404, "not_found"),
        ("GET", long_path, vec![], vec![], 404, "not_found"),
        (
            "POST",
            "/application".into(),
            vec![],
            vec![],
            404,
            "not_found",
        ),
        (
            "GET",
            "/application/app-1/webhook/nothing".into(),
            vec![],
            vec![],
            404,
            "not_found",
        ),
        (
            "GET",
            "/oauth/token".into(),
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/application/app-1".into(),
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            format!("/{SAMPLE_RECORD}/webhook/{seed_cb}"),
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/local/records/not%20valid".into(),
            vec![],
            b"{}".to_vec(),
            400,
            "invalid_record_id",
        ),
        (
            "PUT",
            format!("/local/records/{SAMPLE_RECORD}"),
            vec![],
            b"[1,2]".to_vec(),
            400,
            "invalid_person",
        ),
        (
            "PUT",
            format!("/local/records/{SAMPLE_RECORD}"),
            vec![],
            deep.into_bytes(),
            400,
            "invalid_person",
        ),
    ];
    // With a valid token, the path checks come after authentication.
    let token_body =
        "client_id=APP-1&client_secret=secret-1&grant_type=client_credentials&scope=%2Fwebhook";
    let (_, token) = send(
        &http,
        &base,
        "POST",
        "/oauth/token",
        &[],
        token_body.as_bytes().to_vec(),
    )
    .await;
    let auth = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let authed: Vec<(String, u16, &str)> = vec![
        (
            format!("/{SAMPLE_RECORD}/webhook/%zz"),
            400,
            "invalid_callback_url",
        ),
        (
            format!("/{SAMPLE_RECORD}/webhook/https%3A%2F%2Fa.example%2F%FF"),
            400,
            "invalid_callback_url",
        ),
        (
            "/%FF%FE00-0002-7465-2162/webhook/https%3A%2F%2Fa.example".into(),
            400,
            "invalid_record_id",
        ),
        (
            format!("/{SAMPLE_RECORD}/webhook/{}", "%41".repeat(3000)),
            400,
            "invalid_callback_url",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, headers, body, status, code) in cases {
        let (got, json) = send(&http, &base, method, &path, &headers, body).await;
        if got != status || json["error"] != code {
            failures.push(format!(
                "{method} {}: expected {status} {code}, got {got} {json}",
                &path[..path.len().min(80)]
            ));
        }
    }
    for (path, status, code) in authed {
        let (got, json) = send(
            &http,
            &base,
            "PUT",
            &path,
            &[("authorization", &auth)],
            vec![],
        )
        .await;
        if got != status || json["error"] != code {
            failures.push(format!(
                "PUT {}: expected {status} {code}, got {got} {json}",
                &path[..path.len().min(80)]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Bytes that are not even a valid request line: the server answers 400 and lives on.
    let mut socket = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    socket
        .write_all(b"GET /\xff\xfe\x01 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 256];
    let n = socket.read(&mut answer).await.unwrap();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (status, _) = send(&http, &base, "GET", "/local/status", &[], vec![]).await;
    assert_eq!(status, 200, "the server is still up");
    service.stop().await;
}

//! Callback URLs chosen by strangers: each one is refused at registration or at connect.
//! Nothing here sends a packet anywhere but 127.0.0.1: the client refuses non-public
//! addresses before connecting, and the names are resolved from the test's own table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use webhooks::attempts::OutcomeClass;
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::clock::SystemClock;
use webhooks::handlers::outbound::callback_request;
use webhooks::http_client::{AttemptOutcome, CallbackClient, HttpSettings};

/// One delivery attempt to `callback` (no signing): its outcome and whether it was
/// acknowledged.
async fn attempt(client: &CallbackClient, callback: &CallbackUrl) -> (AttemptOutcome, bool) {
    callback_request(
        &webhooks::job::MessageId::derive(&["test"]),
        callback,
        None,
        &SystemClock,
    )
    .send(client)
    .await
}

/// How an unacknowledged attempt's log entry classes it.
fn class_of(outcome: &AttemptOutcome) -> Option<OutcomeClass> {
    outcome
        .failure(false)
        .as_ref()
        .map(OutcomeClass::of_failure)
}

const STRICT: UrlPolicy = UrlPolicy {
    allow_insecure: false,
};

/// Refused by the registration parser.
const AT_REGISTRATION: &[&str] = &[
    "http://example.com/hook",
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "gopher://example.com/",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "https://127.0.0.1/hook",
    "https://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
    "https://127.1/",
    "https://2130706433/",
    "https://0x7f.1/",
    "https://0x7f000001/",
    "https://0177.0.0.1/",
    "https://%31%32%37.0.0.1/",
    "https://0.0.0.0/",
    "https://10.1.2.3/",
    "https://172.16.0.1/",
    "https://172.31.255.254/",
    "https://192.168.0.1/",
    "https://100.64.0.1/",
    "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://198.18.0.1/",
    "https://192.0.2.1/",
    "https://198.51.100.1/",
    "https://203.0.113.1/",
    "https://224.0.0.1/",
    "https://240.0.0.1/",
    "https://255.255.255.255/",
    "https://[::1]/",
    "https://[::]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[0:0:0:0:0:ffff:7f00:1]/",
    "https://[::127.0.0.1]/",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[2002:a9fe:a9fe::1]/",
    "https://[2002:7f00:1::]/",
    "https://[fe80::1]/",
    "https://[fc00::1]/",
    "https://[fd00:ec2::254]/",
    "https://[ff02::1]/",
    "https://[2001:db8::1]/",
    "https://localhost/",
    "https://LOCALHOST./",
    "https://api.localhost/",
    "https://printer.local/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://router.home.arpa/",
    "https://intranet/",
    "https://user:pass@127.0.0.1/",
    "https://a.example/\r\nHost: evil",
    "https://a.example/ hook",
];

/// Names that pass registration but resolve (in this test's table) to addresses the
/// client must never connect to.
const AT_CONNECT: &[(&str, &str)] = &[
    ("https://loopback.example/hook", "127.0.0.1"),
    (
        "https://lambda-runtime.example:9001/2018-06-01/runtime/invocation/next",
        "127.0.0.1",
    ),
    (
        "https://metadata.example/latest/meta-data/",
        "169.254.169.254",
    ),
    ("https://private.example/", "10.0.0.5"),
    ("https://cgnat.example/", "100.64.1.1"),
    ("https://v6loop.example/", "::1"),
    ("https://mapped.example/", "::ffff:192.168.1.1"),
    ("https://nat64.example/", "64:ff9b::7f00:1"),
    ("https://ula.example/", "fd12:3456::1"),
    ("https://linklocal6.example/", "fe80::1"),
];

fn strict_client(hosts: HashMap<String, Vec<IpAddr>>) -> CallbackClient {
    CallbackClient::new(&HttpSettings {
        timeout: Duration::from_secs(2),
        url_policy: STRICT,
        hosts,
        extra_roots: vec![],
    })
}

#[test]
fn hostile_urls_are_refused_at_registration() {
    for url in AT_REGISTRATION {
        assert!(
            CallbackUrl::parse(url, STRICT).is_err(),
            "{url} was accepted"
        );
    }
    let long = format!("https://a.example/{}", "x".repeat(2100));
    assert!(CallbackUrl::parse(&long, STRICT).is_err());
    assert!(AT_REGISTRATION.len() + AT_CONNECT.len() >= 40);
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused_at_connect() {
    let hosts: HashMap<String, Vec<IpAddr>> = AT_CONNECT
        .iter()
        .map(|(url, ip)| {
            (
                url::Url::parse(url).unwrap().host_str().unwrap().to_owned(),
                vec![ip.parse().unwrap()],
            )
        })
        .collect();
    let client = strict_client(hosts);
    for (url, ip) in AT_CONNECT {
        let callback = CallbackUrl::parse(url, STRICT)
            .unwrap_or_else(|e| panic!("{url} should pass registration: {e}"));
        let (outcome, acknowledged) = attempt(&client, &callback).await;
        assert!(!acknowledged, "{url}");
        assert_eq!(outcome.status, None, "{url} -> {ip} must not be reached");
        // Refused by the address guard (nothing sent), not a connection that failed.
        assert_eq!(
            class_of(&outcome),
            Some(OutcomeClass::RefusedByUrlPolicy),
            "{url}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn ip_literals_are_checked_again_at_delivery() {
    // A stored URL bypassing registration (an older policy, a hand-edited item) is still
    // refused by the delivery client itself.
    let client = strict_client(HashMap::new());
    for url in [
        "https://127.0.0.1/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://169.254.169.254/",
        "http://example.com/",
    ] {
        let callback =
            CallbackUrl::try_from(url.to_owned()).unwrap_or_else(|e| panic!("{url}: {e}"));
        let (outcome, _) = attempt(&client, &callback).await;
        assert_eq!(
            class_of(&outcome),
            Some(OutcomeClass::RefusedByUrlPolicy),
            "{url}: {outcome:?}"
        );
    }
}

/// An https receiver (its own certificate) that redirects to a private address.
#[tokio::test]
async fn redirects_are_never_followed() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["redirect.example".to_owned()]).unwrap();
    let cert = certified.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone().into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    // The redirect target: a listener that must never be contacted. Nothing accepts on it:
    // a connection made to it waits in its backlog, where the check below finds it.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let target_addr = target.local_addr().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://{target_addr}/latest/meta-data/\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });

    // Loopback is allowed here only so the https receiver on 127.0.0.1 can be reached.
    let client = CallbackClient::new(&HttpSettings {
        timeout: Duration::from_secs(2),
        url_policy: UrlPolicy {
            allow_insecure: true,
        },
        hosts: HashMap::from([(
            "redirect.example".to_owned(),
            vec!["127.0.0.1".parse().unwrap()],
        )]),
        extra_roots: vec![cert],
    });
    let callback =
        CallbackUrl::parse(&format!("https://redirect.example:{port}/hook"), STRICT).unwrap();
    let (outcome, acknowledged) = attempt(&client, &callback).await;
    assert_eq!(outcome.status, Some(302), "{outcome:?}");
    assert!(!acknowledged, "a redirect is a failed attempt");
    // The attempt is over: a client that followed the redirect would have connected to
    // the target before it returned.
    match target.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the redirect target was contacted (from {from})"),
        Err(e) => panic!("the redirect target's listener failed: {e}"),
    }
}

#[tokio::test]
async fn registration_answers_400_for_every_hostile_url() {
    use webhooks_tests::api::{RECORD, TestApi, encode_component, request};
    let (api, tokens) = TestApi::new().await;
    let auth = format!("Bearer {}", tokens.app1);
    for url in AT_REGISTRATION {
        let path = format!("/{RECORD}/webhook/{}", encode_component(url));
        let (status, code, _) = api
            .call(request("PUT", &path, &[("authorization", &auth)], ""))
            .await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_callback_url"),
            "{url}"
        );
    }
}

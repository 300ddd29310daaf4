//! Which receiver answers acknowledge, over real sockets: a raw TCP receiver writes each
//! status line itself (so `102 Processing`, an interim response, can be sent exactly as a
//! receiver would, with no final response after it).

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use webhooks::application::Application;
use webhooks::attempts::OutcomeClass;
use webhooks::callback::{CallbackUrl, UrlPolicy};
use webhooks::clock::SystemClock;
use webhooks::handlers::outbound::{application_request, callback_request};
use webhooks::http_client::CallbackClient;
use webhooks::job::MessageId;

/// How the raw receiver answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// `102 Processing`, then silence with the connection open.
    ProcessingOnly,
    /// `102 Processing`, then this final status.
    ProcessingThen(u16),
    /// Reads the request and never answers.
    Silence,
}

/// A one-connection-at-a-time raw HTTP/1.1 receiver on 127.0.0.1.
async fn raw_receiver(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head and the declared body.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let status = |code: u16| {
                    format!(
                        "HTTP/1.1 {code} Whatever\r\ncontent-length: 0\r\nlocation: http://127.0.0.1:1/elsewhere\r\n\r\n"
                    )
                };
                let response = match answer {
                    Answer::Status(code) => status(code),
                    Answer::ProcessingOnly => "HTTP/1.1 102 Processing\r\n\r\n".to_owned(),
                    Answer::ProcessingThen(code) => {
                        format!("HTTP/1.1 102 Processing\r\n\r\n{}", status(code))
                    }
                    Answer::Silence => String::new(),
                };
                let _ = socket.write_all(response.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    format!("http://{addr}/hook")
}

fn client() -> CallbackClient {
    webhooks::testing::local_callback_client(Duration::from_millis(800))
}

async fn members_acknowledged(http: &CallbackClient, answer: Answer) -> (bool, Option<u16>) {
    let url = raw_receiver(answer).await;
    let mut app = Application::new(
        &"app-1".parse().unwrap(),
        "key",
        webhooks::clock::Timestamp::UNIX_EPOCH,
    );
    app.webhook.url = Some(url.into());
    app.webhook.signing_key = Some("helloWorld".into());
    let person = webhooks::members::sample_person();
    let request = application_request(
        &MessageId::derive(&["ack-matrix"]),
        &app,
        app.webhook.target().unwrap(),
        &[person.into()],
        webhooks::testing::at("2021-02-26T19:13:55.749Z"),
        &SystemClock,
    );
    let (outcome, acknowledged) = request.send(http).await;
    (acknowledged, outcome.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_ack_codes() {
    let http = client();
    for code in [200, 201, 202, 204] {
        assert_eq!(
            members_acknowledged(&http, Answer::Status(code)).await,
            (true, Some(code)),
            "{code}"
        );
    }
    let (acked, status) = members_acknowledged(&http, Answer::ProcessingOnly).await;
    assert_eq!(
        (acked, status),
        (true, Some(102)),
        "102 Processing alone acknowledges"
    );
    let (acked, status) = members_acknowledged(&http, Answer::ProcessingThen(500)).await;
    assert_eq!(
        (acked, status),
        (true, Some(102)),
        "102 Processing acknowledges at once, whatever follows"
    );
    for code in [
        203, 205, 206, 301, 302, 303, 307, 308, 400, 401, 403, 404, 409, 410, 429, 500, 502, 503,
    ] {
        assert_eq!(
            members_acknowledged(&http, Answer::Status(code)).await,
            (false, Some(code)),
            "{code}"
        );
    }
    let (acked, status) = members_acknowledged(&http, Answer::Silence).await;
    assert_eq!(
        (acked, status),
        (false, None),
        "the ack deadline passing is a negative acknowledgement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orcid_ack_codes() {
    let http = client();
    let clock = Arc::new(SystemClock);
    for (answer, expected) in [
        (Answer::Status(200), true),
        (Answer::Status(203), true),
        (Answer::Status(204), true),
        (Answer::Status(299), true),
        (Answer::Status(302), false),
        (Answer::Status(404), false),
        (Answer::Status(500), false),
        (Answer::ProcessingOnly, false),
        // An interim answer is not the answer: the final one counts.
        (Answer::ProcessingThen(200), true),
        (Answer::ProcessingThen(500), false),
        (Answer::Silence, false),
    ] {
        let url = raw_receiver(answer).await;
        let callback = CallbackUrl::parse(
            &url,
            UrlPolicy {
                allow_insecure: true,
            },
        )
        .unwrap_or_else(|e| panic!("{answer:?}: {url}: {e}"));
        let request = callback_request(
            &webhooks::job::MessageId::derive(&["test"]),
            &callback,
            None,
            clock.as_ref(),
        );
        let (outcome, acknowledged) = request.send(&http).await;
        assert_eq!(acknowledged, expected, "{answer:?}");
        if let Answer::ProcessingThen(code) = answer {
            assert_eq!(
                outcome.status,
                Some(code),
                "the final answer is the one recorded"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_negative_acknowledgement() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let callback = CallbackUrl::parse(
        &url,
        UrlPolicy {
            allow_insecure: true,
        },
    )
    .unwrap();
    let (outcome, acknowledged) = callback_request(
        &MessageId::derive(&["ack-matrix"]),
        &callback,
        None,
        &SystemClock,
    )
    .send(&client())
    .await;
    assert!(!acknowledged);
    assert_eq!(
        outcome
            .failure(false)
            .as_ref()
            .map(OutcomeClass::of_failure),
        Some(OutcomeClass::ConnectionError),
        "{outcome:?}"
    );
}

//! Property tests over every parser that reads a stranger's input: no panic on anything,
//! and round trips where they apply; and the HTTP handler never answers 5xx.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use webhooks::callback::{CallbackUrl, UrlPolicy, decode_path_segment};
use webhooks::oauth::TokenRequest;
use webhooks::ports::SubscriptionStore;
use webhooks::record::{OrcidId, RecordId};
use webhooks::retry::parse_retry_after;
use webhooks::signing::WebhookSecret;
use webhooks_tests::api::{RECORD, TestApi, encode_component, request};

/// `cases` cases from a fixed seed (the same in CI every run); `PROPTEST_RNG_SEED=<n>`
/// replays another, `RANDOM_SEEDS=1` draws one. Proptest prints the failing input.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(webhooks_tests::seed("PROPTEST_RNG_SEED", 20261125)),
        ..ProptestConfig::default()
    }
}

fn orcid_check(digits: &[u32]) -> char {
    let total = digits.iter().fold(0, |t, d| (t + d) * 2);
    match (12 - total % 11) % 11 {
        10 => 'X',
        n => char::from_digit(n, 10).unwrap(),
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn id_parsers_never_panic(s in "\\PC{0,40}") {
        let _ = OrcidId::parse(&s);
        let _ = RecordId::parse(&s);
    }

    #[test]
    fn every_well_formed_orcid_with_its_check_digit_parses(digits in proptest::collection::vec(0u32..10, 15)) {
        let check = orcid_check(&digits);
        let text: String = digits.iter().map(|d| char::from_digit(*d, 10).unwrap()).collect();
        let id = format!("{}-{}-{}-{}{check}", &text[0..4], &text[4..8], &text[8..12], &text[12..15]);
        let parsed = OrcidId::parse(&id).unwrap();
        prop_assert_eq!(parsed.record_id().as_str(), id.as_str());
        let wrong = if check == '0' { '1' } else { '0' };
        let bad = format!("{}{wrong}", &id[..18]);
        prop_assert!(OrcidId::parse(&bad).is_err());
    }

    #[test]
    fn path_segment_decoding_never_panics_and_round_trips(s in "\\PC{0,80}", raw in "[%0-9a-fA-FzZ/:]{0,40}") {
        prop_assert_eq!(decode_path_segment(&encode_component(&s)).unwrap(), s);
        let _ = decode_path_segment(&raw);
    }

    #[test]
    fn callback_parsing_never_panics(raw in "\\PC{0,200}") {
        if let Ok(text) = decode_path_segment(&raw) {
            let _ = CallbackUrl::parse(&text, UrlPolicy::default());
        }
        let _ = CallbackUrl::parse(&raw, UrlPolicy::default());
        let _ = CallbackUrl::parse(&raw, UrlPolicy { allow_insecure: true });
    }

    #[test]
    fn encoded_callbacks_round_trip(url in callback_url()) {
        // Encoded by the client, and as API Gateway hands it over (already decoded).
        for segment in [encode_component(&url), url.clone()] {
            let text = decode_path_segment(&segment).unwrap();
            let parsed = CallbackUrl::parse(&text, UrlPolicy::default()).unwrap();
            prop_assert_eq!(parsed.as_str(), url.as_str(), "segment {}", segment);
        }
    }

    #[test]
    fn form_and_header_parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), header in "\\PC{0,60}") {
        let _ = TokenRequest::from_form(&body, None);
        let _ = parse_retry_after(&header, std::time::SystemTime::now().into());
        let _ = WebhookSecret::parse(&header);
    }
}

/// An https URL with a path and maybe a query, of characters a client may leave unencoded.
fn callback_url() -> impl Strategy<Value = String> {
    (
        "[a-z]{1,12}\\.(com|org|example)",
        "(/[A-Za-z0-9._~!$&'()*+,;=:@-]{0,12}){0,4}",
        proptest::option::of("[a-z0-9=&]{1,20}"),
    )
        .prop_map(|(host, path, query)| match query {
            Some(q) => format!("https://{host}{path}?{q}"),
            None => format!("https://{host}{path}"),
        })
}

proptest! {
    #![proptest_config(config(64))]

    /// Registration itself: the encoded callback in the path is stored exactly as the
    /// client wrote it.
    #[test]
    fn registration_stores_the_callback_the_client_encoded(url in callback_url()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stored = runtime.block_on(async {
            let (api, tokens) = TestApi::new().await;
            let path = format!("/{RECORD}/webhook/{}", encode_component(&url));
            let auth = format!("Bearer {}", tokens.app1);
            let (status, _, body) = api.call(request("PUT", &path, &[("authorization", &auth)], "")).await;
            assert_eq!(status, 201, "{path}: {body}");
            api.store
                .subscriptions_of(&RecordId::parse(RECORD).unwrap())
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.callback.as_str().to_owned())
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(stored, vec![url]);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_api_never_answers_5xx(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        segments in proptest::collection::vec(prop_oneof![
            Just("application".to_owned()), Just("app-1".to_owned()), Just("webhook".to_owned()),
            Just("oauth".to_owned()), Just("token".to_owned()), Just("sync".to_owned()), Just("test".to_owned()),
            Just("secret".to_owned()), Just("0000-0002-7465-2162".to_owned()), "[A-Za-z0-9%._~-]{0,30}",
        ], 0..6),
        key in prop::option::of(prop::sample::select(vec!["key-1", "key-2", "nope", ""])),
        body in "\\PC{0,120}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(async {
            let (api, tokens) = TestApi::new().await;
            let path = format!("/{}", segments.join("/"));
            let auth = format!("Bearer {}", tokens.app1);
            let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
            if let Some(key) = key {
                headers.push(("x-access-token", key));
            }
            api.call(request(method, &path, &headers, &body)).await.0
        });
        prop_assert!(status < 500, "{} /{} -> {}", method, segments.join("/"), status);
    }
}

//! Clients, tokens, subscriptions and applications: keyed items, conditional writes, and
//! updates that never create what is not there.

use super::{Adapters, record};
use crate::application::Application;
use crate::attempts::EndpointKey;
use crate::callback::{CallbackUrl, UrlPolicy};
use crate::health::EndpointHealth;
use crate::oauth::{AccessToken, IssuedToken, OAuthClient, sha256_hex};
use crate::record::RecordId;
use crate::subscription::{Registered, Subscription, Unregistered};

scenarios![
    clients_are_kept_by_id_and_replaced_whole,
    tokens_are_found_by_their_hash_only,
    register_is_a_conditional_write,
    unregister_only_by_the_owner,
    subscriptions_are_listed_per_record_and_per_client,
    subscription_health_is_replaced_never_created,
    applications_by_id_and_by_key_hash,
];

fn client(id: &str) -> OAuthClient {
    OAuthClient::new(
        &id.parse().unwrap(),
        "secret",
        time::OffsetDateTime::UNIX_EPOCH.into(),
    )
}

fn callback(url: &str) -> CallbackUrl {
    CallbackUrl::parse(url, UrlPolicy::default()).expect("a valid callback URL")
}

fn subscription(record_id: &str, url: &str, client_id: &str) -> Subscription {
    Subscription {
        created_at: crate::testing::at_ms(1_700_000_000_000),
        ..crate::testing::subscription(&record(record_id), url, client_id)
    }
}

fn sorted<T: Clone, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort_by_key(key);
    items
}

async fn stored_client(a: &Adapters, id: &str) -> Option<OAuthClient> {
    a.ports
        .clients
        .get_client(&id.parse().unwrap())
        .await
        .unwrap()
}

async fn stored_token(a: &Adapters, hash: &str) -> Option<AccessToken> {
    a.ports.tokens.get_token(hash).await.unwrap()
}

async fn stored_subscription(
    a: &Adapters,
    record: &RecordId,
    callback: &CallbackUrl,
) -> Option<Subscription> {
    a.ports
        .subscriptions
        .get_subscription(record, callback)
        .await
        .unwrap()
}

async fn unregister_as(
    a: &Adapters,
    record: &RecordId,
    callback: &CallbackUrl,
    client_id: &str,
) -> Unregistered {
    a.ports
        .subscriptions
        .unregister(record, callback, &client_id.parse().unwrap())
        .await
        .unwrap()
}

async fn client_webhooks(a: &Adapters, client_id: &str) -> Vec<Subscription> {
    a.ports
        .subscriptions
        .client_webhooks(&client_id.parse().unwrap())
        .await
        .unwrap()
}

async fn client_webhook(a: &Adapters, client_id: &str, key: &EndpointKey) -> Option<Subscription> {
    a.ports
        .subscriptions
        .client_webhook(&client_id.parse().unwrap(), key)
        .await
        .unwrap()
}

async fn stored_application(a: &Adapters, id: &str) -> Option<Application> {
    a.ports
        .applications
        .get_application(&id.parse().unwrap())
        .await
        .unwrap()
}

async fn clients_are_kept_by_id_and_replaced_whole(a: Adapters) {
    let clients = &a.ports.clients;
    let (one, two) = (client("APP-ONE"), client("APP-TWO"));
    clients.put_client(&one).await.unwrap();
    clients.put_client(&two).await.unwrap();
    assert_eq!(stored_client(&a, "APP-ONE").await, Some(one));
    assert_eq!(stored_client(&a, "APP-NONE").await, None);
    let mut disabled = two.clone();
    disabled.disabled = true;
    disabled.scopes.push("/read-limited".into());
    clients.put_client(&disabled).await.unwrap();
    assert_eq!(
        stored_client(&a, "APP-TWO").await,
        Some(disabled.clone()),
        "a put replaces the whole client"
    );
    let listed = clients.list_clients().await.unwrap();
    assert_eq!(
        sorted(&listed, |c| c.client_id.clone())
            .iter()
            .map(|c| (c.client_id.as_str(), c.disabled))
            .collect::<Vec<_>>(),
        [("APP-ONE", false), ("APP-TWO", true)],
        "every client once, as last put"
    );
}

async fn tokens_are_found_by_their_hash_only(a: Adapters) {
    let issued = IssuedToken::new(
        &"APP-ONE".parse().unwrap(),
        "/webhook",
        time::OffsetDateTime::UNIX_EPOCH.into(),
        3600,
    );
    a.ports.tokens.put_token(&issued.stored).await.unwrap();
    assert_eq!(
        stored_token(&a, &sha256_hex(&issued.access_token)).await,
        Some(issued.stored.clone())
    );
    assert_eq!(
        stored_token(&a, &issued.access_token).await,
        None,
        "the token itself is not a key"
    );
    assert_eq!(
        stored_token(&a, &sha256_hex(&issued.refresh_token)).await,
        None,
        "nor is the refresh token's hash"
    );
}

async fn register_is_a_conditional_write(a: Adapters) {
    let subscriptions = &a.ports.subscriptions;
    let mine = subscription("0000-0002-1825-0097", "https://a.example/hook", "APP-ONE");
    assert_eq!(
        subscriptions.register(&mine).await.unwrap(),
        Registered::Created
    );
    assert_eq!(
        subscriptions.register(&mine).await.unwrap(),
        Registered::AlreadyExists,
        "the same client again"
    );
    let theirs = Subscription {
        client_id: "APP-TWO".parse().unwrap(),
        created_at: mine.created_at.plus(std::time::Duration::from_secs(60)),
        ..mine.clone()
    };
    assert_eq!(
        subscriptions.register(&theirs).await.unwrap(),
        Registered::OwnedByOther
    );
    assert_eq!(
        stored_subscription(&a, &mine.record, &mine.callback).await,
        Some(mine.clone()),
        "the owner's subscription is left as it was"
    );
    // The same URL on another record is another subscription.
    let elsewhere = subscription("0000-0002-1825-0098", "https://a.example/hook", "APP-TWO");
    assert_eq!(
        subscriptions.register(&elsewhere).await.unwrap(),
        Registered::Created
    );
}

async fn unregister_only_by_the_owner(a: Adapters) {
    let subscriptions = &a.ports.subscriptions;
    let mine = subscription("0000-0002-1825-0097", "https://a.example/hook", "APP-ONE");
    let (record, callback) = (&mine.record, &mine.callback);
    assert_eq!(
        unregister_as(&a, record, callback, "APP-ONE").await,
        Unregistered::NotFound,
        "never registered"
    );
    subscriptions.register(&mine).await.unwrap();
    assert_eq!(
        unregister_as(&a, record, callback, "APP-TWO").await,
        Unregistered::OwnedByOther
    );
    assert_eq!(
        stored_subscription(&a, record, callback).await,
        Some(mine.clone()),
        "a non-owner removes nothing"
    );
    assert_eq!(
        unregister_as(&a, record, callback, "APP-ONE").await,
        Unregistered::Deleted
    );
    assert_eq!(stored_subscription(&a, record, callback).await, None);
    assert_eq!(
        unregister_as(&a, record, callback, "APP-ONE").await,
        Unregistered::NotFound,
        "removed already"
    );
    assert_eq!(
        subscriptions.register(&mine).await.unwrap(),
        Registered::Created,
        "free to register again"
    );
}

async fn subscriptions_are_listed_per_record_and_per_client(a: Adapters) {
    let subscriptions = &a.ports.subscriptions;
    // r1 and r10: a listing by prefix would mix them up.
    let all = [
        subscription("r1", "https://a.example/1", "APP-ONE"),
        subscription("r1", "https://b.example/1", "APP-TWO"),
        subscription("r10", "https://a.example/10", "APP-ONE"),
        subscription("r2", "https://a.example/2", "APP-ONE"),
    ];
    for s in &all {
        subscriptions.register(s).await.unwrap();
    }
    let by_url = |s: &Subscription| s.callback.as_str().to_owned();
    let of_r1 = subscriptions.subscriptions_of(&record("r1")).await.unwrap();
    assert_eq!(sorted(&of_r1, by_url), all[..2].to_vec());
    let of_r10 = subscriptions
        .subscriptions_of(&record("r10"))
        .await
        .unwrap();
    assert_eq!(of_r10, all[2..3].to_vec());
    assert!(
        subscriptions
            .subscriptions_of(&record("r3"))
            .await
            .unwrap()
            .is_empty()
    );

    let ones = client_webhooks(&a, "APP-ONE").await;
    assert_eq!(
        sorted(&ones, by_url),
        vec![all[0].clone(), all[2].clone(), all[3].clone()],
        "exactly the client's own"
    );
    let key = EndpointKey::subscription(&all[0].record, &all[0].callback);
    assert_eq!(
        client_webhook(&a, "APP-ONE", &key).await,
        Some(all[0].clone())
    );
    assert_eq!(
        client_webhook(&a, "APP-TWO", &key).await,
        None,
        "another client's webhook is not found"
    );
    unregister_as(&a, &all[0].record, &all[0].callback, "APP-ONE").await;
    assert_eq!(
        client_webhook(&a, "APP-ONE", &key).await,
        None,
        "gone with its subscription"
    );
    assert_eq!(
        sorted(&client_webhooks(&a, "APP-ONE").await, by_url),
        vec![all[2].clone(), all[3].clone()]
    );
    assert!(client_webhooks(&a, "APP-NONE").await.is_empty());
}

async fn subscription_health_is_replaced_never_created(a: Adapters) {
    let subscriptions = &a.ports.subscriptions;
    let mine = subscription("0000-0002-1825-0097", "https://a.example/hook", "APP-ONE");
    subscriptions.register(&mine).await.unwrap();
    let mut failing = EndpointHealth::default();
    failing.disable(
        crate::testing::at_ms(1_700_000_100_000),
        "the receiver answered 410 Gone".into(),
    );
    subscriptions
        .set_subscription_health(&mine.record, &mine.callback, &failing)
        .await
        .unwrap();
    assert_eq!(
        stored_subscription(&a, &mine.record, &mine.callback).await,
        Some(Subscription {
            health: failing.clone(),
            ..mine.clone()
        }),
        "the health replaced, the rest kept"
    );
    let missing = callback("https://b.example/hook");
    subscriptions
        .set_subscription_health(&mine.record, &missing, &failing)
        .await
        .unwrap();
    assert_eq!(
        stored_subscription(&a, &mine.record, &missing).await,
        None,
        "no subscription is created by a health update"
    );
}

async fn applications_by_id_and_by_key_hash(a: Adapters) {
    let applications = &a.ports.applications;
    let mut one = Application::new(
        &"app-1".parse().unwrap(),
        "key-1",
        crate::clock::Timestamp::from_epoch_secs(1_700_000_000).unwrap(),
    );
    one.webhook.url = Some("https://example.org/hook".to_owned().into());
    let two = Application::new(
        &"app-2".parse().unwrap(),
        "key-2",
        crate::clock::Timestamp::from_epoch_secs(1_700_000_000).unwrap(),
    );
    applications.put_application(&one).await.unwrap();
    applications.put_application(&two).await.unwrap();
    assert_eq!(stored_application(&a, "app-1").await, Some(one.clone()));
    assert_eq!(stored_application(&a, "app-3").await, None);
    assert_eq!(
        applications
            .application_for_key(&sha256_hex("key-2"))
            .await
            .unwrap()
            .as_ref()
            .map(|id| id.as_str()),
        Some("app-2")
    );
    assert_eq!(
        applications
            .application_for_key(&sha256_hex("key-3"))
            .await
            .unwrap(),
        None
    );
    let listed = applications.list_applications().await.unwrap();
    assert_eq!(
        sorted(&listed, |a| a.id.clone()),
        vec![one.clone(), two.clone()]
    );

    let mut disabled = EndpointHealth::default();
    disabled.disable(
        crate::testing::at_ms(1_700_000_100_000),
        "the receiver answered 410 Gone".into(),
    );
    applications
        .set_application_health(&"app-1".parse().unwrap(), &disabled)
        .await
        .unwrap();
    assert_eq!(
        stored_application(&a, "app-1").await,
        Some(Application {
            health: disabled.clone(),
            ..one.clone()
        }),
        "the health replaced, the rest kept"
    );
    applications
        .set_application_health(&"app-3".parse().unwrap(), &disabled)
        .await
        .unwrap();
    assert_eq!(
        stored_application(&a, "app-3").await,
        None,
        "no application is created by a health update"
    );
}

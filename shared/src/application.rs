//! Members-style applications: one webhook URL, a signing key for `attributes.hash`, a
//! request interval for full syncs, a Standard Webhooks secret, and an API key (stored
//! only as a hash) that authenticates the application's own routes.

use crate::callback::{CallbackUrl, InvalidCallbackUrl, StoredUrl, UrlPolicy};
use crate::clock::Timestamp;
use crate::ids::ApplicationId;
use crate::oauth::sha256_hex;
use crate::signing::{SigningKey, SigningSecrets};
use serde::{Deserialize, Serialize};

/// Longest signing key accepted.
pub const MAX_SIGNING_KEY_LEN: usize = 256;
/// Longest request interval accepted (one hour).
pub const MAX_REQUEST_INTERVAL_MS: u64 = 3_600_000;

/// The webhook settings of an application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookConfig {
    /// Where deliveries go, exactly as given; `None` when no webhook is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<StoredUrl>,
    /// The key of `attributes.hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SigningKey>,
    /// Minimum time between two requests of a full sync (0 = as fast as it scales).
    #[serde(default)]
    pub request_interval_ms: u64,
}

/// Why an application's webhook cannot be sent to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoWebhook {
    /// No URL is set.
    #[error("the application has no webhook URL")]
    Unset,
    /// The stored URL does not parse (see [`StoredUrl`]).
    #[error("the application's stored webhook URL is unusable ({0})")]
    Unusable(InvalidCallbackUrl),
}

impl WebhookConfig {
    /// Where deliveries go, or why there is nowhere to send.
    pub fn target(&self) -> Result<&CallbackUrl, NoWebhook> {
        self.url
            .as_ref()
            .ok_or(NoWebhook::Unset)?
            .usable()
            .map_err(NoWebhook::Unusable)
    }
}

/// A Members-style application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// The application id (path segment of its routes, `subscription` of its envelopes).
    pub id: ApplicationId,
    /// Hex SHA-256 of the API key.
    pub api_key_hash: String,
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// Standard Webhooks secrets.
    pub secrets: SigningSecrets,
    /// Creation time (stored as epoch seconds).
    #[serde(with = "crate::clock::epoch_secs")]
    pub created_at: Timestamp,
    /// Delivery health of the webhook.
    #[serde(default)]
    pub health: crate::health::EndpointHealth,
}

/// The body of `PATCH /application/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationPatch {
    pub webhook: Option<WebhookPatch>,
}

/// Changes to an application's webhook; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookPatch {
    /// A complete URL, or `""` to remove the webhook.
    pub url: Option<String>,
    /// The signing key, or `""` to remove it.
    pub signing_key: Option<String>,
    /// Milliseconds between full-sync requests.
    pub request_interval_ms: Option<u64>,
    /// `true` re-enables a webhook disabled for failing (so does setting a URL).
    pub enabled: Option<bool>,
}

/// Why a patch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPatch {
    /// The URL is refused.
    #[error("webhook.url: {0}")]
    Url(#[from] crate::callback::InvalidCallbackUrl),
    /// The signing key is too long.
    #[error("webhook.signingKey must be at most {MAX_SIGNING_KEY_LEN} characters")]
    SigningKey,
    /// The interval is too long.
    #[error("webhook.requestIntervalMs must be between 0 and {MAX_REQUEST_INTERVAL_MS}")]
    Interval,
}

impl Application {
    /// A new application with API key `api_key` and fresh signing secrets.
    pub fn new(id: &ApplicationId, api_key: &str, now: Timestamp) -> Self {
        Self {
            id: id.clone(),
            api_key_hash: sha256_hex(api_key),
            webhook: WebhookConfig::default(),
            secrets: SigningSecrets::generate(),
            created_at: now.whole_secs(),
            health: Default::default(),
        }
    }

    /// Applies a patch after checking all of it (nothing changes when any part is bad).
    pub fn apply(
        &mut self,
        patch: ApplicationPatch,
        policy: UrlPolicy,
    ) -> Result<(), InvalidPatch> {
        let Some(webhook) = patch.webhook else {
            return Ok(());
        };
        let url = match webhook.url.as_deref() {
            None => self.webhook.url.clone(),
            Some("") => None,
            Some(text) => Some(StoredUrl::Usable(CallbackUrl::parse(text, policy)?)),
        };
        let signing_key = match webhook.signing_key.as_deref() {
            None => self.webhook.signing_key.clone(),
            Some("") => None,
            Some(key) if key.len() > MAX_SIGNING_KEY_LEN => return Err(InvalidPatch::SigningKey),
            Some(key) => Some(SigningKey::from(key)),
        };
        let request_interval_ms = match webhook.request_interval_ms {
            None => self.webhook.request_interval_ms,
            Some(ms) if ms > MAX_REQUEST_INTERVAL_MS => return Err(InvalidPatch::Interval),
            Some(ms) => ms,
        };
        let url_changed = url != self.webhook.url;
        self.webhook = WebhookConfig {
            url,
            signing_key,
            request_interval_ms,
        };
        if webhook.enabled == Some(true) || url_changed {
            self.health.enable();
        }
        Ok(())
    }

    /// The endpoint name used in logs and operational events.
    pub fn endpoint(&self) -> String {
        endpoint_name(&self.id)
    }
}

/// The endpoint name of application `id` in logs and operational events.
pub fn endpoint_name(id: &ApplicationId) -> String {
    format!("application:{id}")
}

/// A secret shown only by its first two characters and its length.
pub fn mask(secret: &str) -> String {
    let shown: String = secret.chars().take(2).collect();
    format!("{shown}… ({} characters)", secret.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const INSECURE: UrlPolicy = UrlPolicy {
        allow_insecure: true,
    };

    fn app_1() -> Application {
        Application::new(
            &ApplicationId::parse("app-1").unwrap(),
            "key",
            crate::clock::Timestamp::UNIX_EPOCH,
        )
    }

    fn patch(json: Value) -> ApplicationPatch {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn patch_sets_and_removes() {
        let mut app = app_1();
        app.apply(
            patch(json!({"webhook": {"url": "https://someurl.com/something"}})),
            UrlPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            app.webhook.url.as_ref().map(StoredUrl::as_str),
            Some("https://someurl.com/something")
        );
        app.apply(
            patch(json!({"webhook": {"signingKey": "helloWorld", "requestIntervalMs": 100}})),
            UrlPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            app.webhook.url.as_ref().map(StoredUrl::as_str),
            Some("https://someurl.com/something"),
            "absent fields stay"
        );
        assert_eq!(
            app.webhook.signing_key.as_ref().map(SigningKey::expose),
            Some("helloWorld")
        );
        assert_eq!(app.webhook.request_interval_ms, 100);
        app.apply(patch(json!({"webhook": {"url": ""}})), UrlPolicy::default())
            .unwrap();
        assert_eq!(app.webhook.url, None);
    }

    #[test]
    fn bad_patches_change_nothing() {
        let mut app = app_1();
        let before = app.clone();
        for bad in [
            json!({"webhook": {"url": "not a url"}}),
            json!({"webhook": {"url": "http://someurl.com/x"}}),
            json!({"webhook": {"url": "https://127.0.0.1/x"}}),
            json!({"webhook": {"url": "https://a.com/x", "signingKey": "k".repeat(300)}}),
            json!({"webhook": {"url": "https://a.com/x", "requestIntervalMs": MAX_REQUEST_INTERVAL_MS + 1}}),
        ] {
            assert!(
                app.apply(patch(bad.clone()), UrlPolicy::default()).is_err(),
                "{bad}"
            );
            assert_eq!(app, before);
        }
        assert!(
            serde_json::from_value::<ApplicationPatch>(json!({"webhook": {"uri": "x"}})).is_err()
        );
        app.apply(
            patch(json!({"webhook": {"url": "http://127.0.0.1:9/x"}})),
            INSECURE,
        )
        .unwrap();
    }
}

//! OAuth clients, the client-credentials token exchange and bearer-token checks.
//!
//! Secrets and tokens are never stored: clients keep a salted SHA-256 of their secret and
//! tokens are looked up by the SHA-256 of their value. Both are 122-bit random values, so
//! a fast hash is enough (a slow KDF protects low-entropy passwords, which these are not).
//! Every comparison of secret material is constant-time.

use crate::clock::Timestamp;
use crate::ids::ClientId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The only scope that allows registering webhooks.
pub const WEBHOOK_SCOPE: &str = "/webhook";

/// A new random secret or token value (UUID v4 text, as the ORCID examples look).
pub fn new_secret() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Hex SHA-256 of a string.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A salted SHA-256 of a client secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash {
    /// Random hex salt.
    pub salt: String,
    /// Hex SHA-256 of salt followed by the secret.
    pub sha256: String,
}

impl SecretHash {
    /// Hashes `secret` under a fresh random salt.
    pub fn of(secret: &str) -> Self {
        let salt = hex::encode(uuid::Uuid::new_v4().as_bytes());
        let sha256 = Self::digest(&salt, secret);
        Self { salt, sha256 }
    }

    fn digest(salt: &str, secret: &str) -> String {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        h.update(secret.as_bytes());
        hex::encode(h.finalize())
    }

    /// Constant-time check of a presented secret.
    pub fn matches(&self, secret: &str) -> bool {
        let presented = Self::digest(&self.salt, secret);
        presented.as_bytes().ct_eq(self.sha256.as_bytes()).into()
    }
}

/// An OAuth client allowed to register ORCID-style webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthClient {
    /// The public client id, e.g. `APP-NPXKK6HFN6TJ4YYI`.
    pub client_id: ClientId,
    /// The hash of the client secret.
    pub secret: SecretHash,
    /// Scopes the client may request, e.g. `["/webhook"]`.
    pub scopes: Vec<String>,
    /// A disabled client can get no tokens and its tokens stop working.
    #[serde(default)]
    pub disabled: bool,
    /// Standard Webhooks secrets that sign the client's callbacks (absent for clients
    /// created before signing existed: their callbacks go unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secrets: Option<crate::signing::SigningSecrets>,
    /// Creation time (stored as epoch seconds).
    #[serde(with = "crate::clock::epoch_secs")]
    pub created_at: Timestamp,
}

impl OAuthClient {
    /// A new client with the `/webhook` scope and the given secret.
    pub fn new(client_id: &ClientId, secret: &str, now: Timestamp) -> Self {
        Self {
            client_id: client_id.clone(),
            secret: SecretHash::of(secret),
            scopes: vec![WEBHOOK_SCOPE.to_owned()],
            disabled: false,
            webhook_secrets: Some(crate::signing::SigningSecrets::generate()),
            created_at: now.whole_secs(),
        }
    }
}

/// A stored access token: only hashes, the owner, the scope and the expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    /// Hex SHA-256 of the bearer token (the lookup key).
    pub token_hash: String,
    /// Hex SHA-256 of the refresh token handed out with it.
    pub refresh_token_hash: String,
    /// The client the token was issued to.
    pub client_id: ClientId,
    /// The granted scope.
    pub scope: String,
    /// Issue time (stored as epoch seconds).
    #[serde(with = "crate::clock::epoch_secs")]
    pub issued_at: Timestamp,
    /// Expiry (stored as epoch seconds, also the storage TTL).
    #[serde(with = "crate::clock::epoch_secs")]
    pub expires_at: Timestamp,
}

/// A token just issued: the only moment its plain values exist.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The bearer token to hand to the client.
    pub access_token: String,
    /// The refresh token to hand to the client.
    pub refresh_token: String,
    /// What gets stored.
    pub stored: AccessToken,
}

impl IssuedToken {
    /// Issues a token for `client_id` with `scope` valid for `lifetime_secs`.
    pub fn new(client_id: &ClientId, scope: &str, now: Timestamp, lifetime_secs: i64) -> Self {
        let access_token = new_secret();
        let refresh_token = new_secret();
        // Kept to the second, as stored.
        let issued_at = now.whole_secs();
        Self {
            stored: AccessToken {
                token_hash: sha256_hex(&access_token),
                refresh_token_hash: sha256_hex(&refresh_token),
                client_id: client_id.clone(),
                scope: scope.to_owned(),
                issued_at,
                expires_at: issued_at.plus(Duration::from_secs(lifetime_secs.max(0) as u64)),
            },
            access_token,
            refresh_token,
        }
    }
}

/// The parameters of a client-credentials token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub client_id: ClientId,
    pub client_secret: String,
    pub scope: String,
}

/// Why a token request or a bearer token is refused (RFC 6749 §5.2 and RFC 6750 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// A parameter is missing, repeated or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// A grant type other than `client_credentials`.
    #[error("only the client_credentials grant type is supported")]
    UnsupportedGrantType,
    /// Unknown client, wrong secret or disabled client.
    #[error("client authentication failed")]
    InvalidClient,
    /// A scope the client may not have.
    #[error("the requested scope is not allowed for this client")]
    InvalidScope,
}

impl TokenRequest {
    /// Reads a form-encoded body, with client credentials optionally from HTTP Basic.
    pub fn from_form(body: &[u8], basic: Option<(String, String)>) -> Result<Self, OAuthError> {
        let mut client_id = None;
        let mut client_secret = None;
        let mut grant_type = None;
        let mut scope = None;
        for (key, value) in form_urlencoded::parse(body) {
            let slot = match key.as_ref() {
                "client_id" => &mut client_id,
                "client_secret" => &mut client_secret,
                "grant_type" => &mut grant_type,
                "scope" => &mut scope,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter {key} is repeated"
                )));
            }
        }
        if let Some((id, secret)) = basic {
            if client_id.as_ref().is_some_and(|c| *c != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the Authorization header".into(),
                ));
            }
            client_id = Some(id);
            client_secret = Some(secret);
        }
        let required = |v: Option<String>, name: &str| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {name}")))
        };
        let grant_type = required(grant_type, "grant_type")?;
        let client_id = required(client_id, "client_id")?;
        let client_secret = required(client_secret, "client_secret")?;
        let scope = required(scope, "scope")?;
        if grant_type != "client_credentials" {
            return Err(OAuthError::UnsupportedGrantType);
        }
        // An id no client can have is unknown: the same answer as a wrong secret.
        let client_id = ClientId::parse(&client_id).map_err(|_| OAuthError::InvalidClient)?;
        Ok(Self {
            client_id,
            client_secret,
            scope,
        })
    }

    /// Checks the request against the stored client (`None` when unknown), in constant
    /// time with respect to the secret, and returns the scope to grant.
    pub fn authorize(&self, client: Option<&OAuthClient>) -> Result<String, OAuthError> {
        // Hash against a dummy when the client is unknown, so both paths cost the same.
        let dummy;
        let hash = match client {
            Some(c) => &c.secret,
            None => {
                dummy = SecretHash {
                    salt: String::new(),
                    sha256: String::new(),
                };
                &dummy
            }
        };
        let secret_ok = hash.matches(&self.client_secret);
        let client = match client {
            Some(c) if secret_ok && !c.disabled => c,
            _ => return Err(OAuthError::InvalidClient),
        };
        if !client.scopes.contains(&self.scope) {
            return Err(OAuthError::InvalidScope);
        }
        Ok(self.scope.clone())
    }
}

/// Why a bearer token does not allow a webhook operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No `Authorization: Bearer` header.
    #[error("an Authorization: Bearer token is required")]
    Missing,
    /// Unknown token, or its client is gone or disabled.
    #[error("the access token is invalid")]
    Invalid,
    /// The token expired.
    #[error("the access token has expired")]
    Expired,
    /// The token lacks the `/webhook` scope.
    #[error("the access token does not have the /webhook scope")]
    InsufficientScope,
}

/// Checks a stored token (looked up by the hash of the presented one) for the webhook
/// scope at `now`, and returns the owning client id.
pub fn authorize_webhook(
    token: Option<&AccessToken>,
    now: Timestamp,
) -> Result<&ClientId, BearerError> {
    let token = token.ok_or(BearerError::Invalid)?;
    if token.expires_at <= now {
        return Err(BearerError::Expired);
    }
    if token.scope != WEBHOOK_SCOPE {
        return Err(BearerError::InsufficientScope);
    }
    Ok(&token.client_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: time::OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

    fn now() -> Timestamp {
        NOW.into()
    }

    fn form(s: &str) -> Result<TokenRequest, OAuthError> {
        TokenRequest::from_form(s.as_bytes(), None)
    }

    fn client_id(id: &str) -> ClientId {
        ClientId::parse(id).unwrap()
    }

    #[test]
    fn generated_client_ids_differ() {
        assert_ne!(ClientId::generate(), ClientId::generate());
    }

    #[test]
    fn a_client_id_no_client_can_have_is_an_unknown_client() {
        assert_eq!(
            form("client_id=a%2Fb&client_secret=b&scope=%2Fwebhook&grant_type=client_credentials"),
            Err(OAuthError::InvalidClient)
        );
    }

    #[test]
    fn secret_hash_is_salted_and_checks() {
        let a = SecretHash::of("s3cret");
        let b = SecretHash::of("s3cret");
        assert_ne!(a, b, "salts differ");
        assert!(a.matches("s3cret"));
        assert!(!a.matches("s3cret "));
        assert!(!a.sha256.contains("s3cret"));
    }

    #[test]
    fn seed_token_request_parses() {
        let r = form("client_id=APP-NPXKK6HFN6TJ4YYI&client_secret=060c36f2-cce2-4f74-bde0-a17d8bb30a97&scope=/webhook&grant_type=client_credentials").unwrap();
        assert_eq!(r.client_id.as_str(), "APP-NPXKK6HFN6TJ4YYI");
        assert_eq!(r.scope, "/webhook");
    }

    #[test]
    fn token_request_errors() {
        let ok = "client_id=a&client_secret=b&scope=%2Fwebhook&grant_type=client_credentials";
        assert!(form(ok).is_ok());
        assert!(matches!(
            form("client_id=a&client_secret=b&scope=%2Fwebhook"),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            form("client_id=a&client_secret=b&grant_type=client_credentials"),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            form(&format!("{ok}&scope=x")),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert_eq!(
            form("client_id=a&client_secret=b&scope=%2Fwebhook&grant_type=password"),
            Err(OAuthError::UnsupportedGrantType)
        );
    }

    #[test]
    fn basic_auth_supplies_credentials() {
        let r = TokenRequest::from_form(
            b"scope=%2Fwebhook&grant_type=client_credentials",
            Some(("a".into(), "b".into())),
        )
        .unwrap();
        assert_eq!((r.client_id.as_str(), r.client_secret.as_str()), ("a", "b"));
    }

    #[test]
    fn authorize_checks_client_secret_and_scope() {
        let client = OAuthClient::new(&client_id("a"), "b", now());
        let req = |secret: &str, scope: &str| TokenRequest {
            client_id: client_id("a"),
            client_secret: secret.into(),
            scope: scope.into(),
        };
        assert_eq!(
            req("b", "/webhook").authorize(Some(&client)).unwrap(),
            "/webhook"
        );
        assert_eq!(
            req("x", "/webhook").authorize(Some(&client)),
            Err(OAuthError::InvalidClient)
        );
        assert_eq!(
            req("b", "/webhook").authorize(None),
            Err(OAuthError::InvalidClient)
        );
        assert_eq!(
            req("b", "/read-limited").authorize(Some(&client)),
            Err(OAuthError::InvalidScope)
        );
        let disabled = OAuthClient {
            disabled: true,
            ..client
        };
        assert_eq!(
            req("b", "/webhook").authorize(Some(&disabled)),
            Err(OAuthError::InvalidClient)
        );
    }

    #[test]
    fn issued_tokens_store_only_hashes() {
        let t = IssuedToken::new(&client_id("a"), "/webhook", now(), 3600);
        assert_eq!(t.stored.token_hash, sha256_hex(&t.access_token));
        assert_eq!(
            t.stored.expires_at.epoch_secs(),
            NOW.unix_timestamp() + 3600
        );
        let stored = serde_json::to_string(&t.stored).unwrap();
        assert!(!stored.contains(&t.access_token));
        assert!(!stored.contains(&t.refresh_token));
    }

    #[test]
    fn bearer_checks() {
        let t = IssuedToken::new(&client_id("a"), "/webhook", now(), 60).stored;
        assert_eq!(authorize_webhook(Some(&t), now()), Ok(&client_id("a")));
        assert_eq!(authorize_webhook(None, now()), Err(BearerError::Invalid));
        assert_eq!(
            authorize_webhook(Some(&t), now().plus(std::time::Duration::from_secs(60))),
            Err(BearerError::Expired)
        );
        let other = IssuedToken::new(&client_id("a"), "/read-limited", now(), 60).stored;
        assert_eq!(
            authorize_webhook(Some(&other), now()),
            Err(BearerError::InsufficientScope)
        );
    }
}

//! Signatures: Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
//! on every delivery of both styles, and the Members-style `attributes.hash`.
//!
//! Both are pure functions over their inputs; the secrets they use are stored with the
//! subscriber (client or application), because signing needs the key itself.

use crate::clock::Timestamp;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP_SECS: i64 = 24 * 3600;

const PREFIX: &str = "whsec_";

/// Why a `whsec_` secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is whsec_ followed by base64 of 24 to 64 bytes")]
pub struct InvalidSecret;

/// A Standard Webhooks secret: `whsec_` and base64 of the key bytes. Its Debug form shows
/// only the prefix, so a secret formatted into a log line or a failed assertion is not given
/// away.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookSecret {
    text: String,
    mac: KeyedHmac,
}

/// The length of the base64 of one HMAC-SHA256 tag (32 bytes, padded).
const TAG_BASE64_LEN: usize = 44;

/// The length of one `v1,<base64 of a tag>` signature.
const SIGNATURE_LEN: usize = 3 + TAG_BASE64_LEN;

/// HMAC-SHA256 keyed once, when its key is read: the inner and outer pads are hashed then,
/// and each tag starts from a copy of that state instead of keying anew (about half of an
/// ORCID-style signature's work: docs/benchmarks.md, figure 2, seventh pass).
#[derive(Clone)]
struct KeyedHmac(Hmac<Sha256>);

impl KeyedHmac {
    fn new(key: &[u8]) -> Self {
        Self(Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"))
    }

    /// The tag of `parts`, one after another.
    fn tag(&self, parts: &[&[u8]]) -> impl AsRef<[u8]> + use<> {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes()
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        // The text holds the key: equal texts are equal keys.
        self.text == other.text
    }
}

impl Eq for WebhookSecret {}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret({PREFIX}…)")
    }
}

impl WebhookSecret {
    /// A new random secret of 32 bytes.
    pub fn generate() -> Self {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self::parse(&format!("{PREFIX}{}", B64.encode(&key)))
            .expect("32 random bytes make a valid secret")
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, InvalidSecret> {
        let encoded = text.strip_prefix(PREFIX).ok_or(InvalidSecret)?;
        let key = B64.decode(encoded).map_err(|_| InvalidSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(InvalidSecret);
        }
        Ok(Self {
            text: text.to_owned(),
            mac: KeyedHmac::new(&key),
        })
    }

    /// The secret as shown to its owner.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut digits = [0; 20];
        let tag = self.mac.tag(&[
            message_id.as_bytes(),
            b".",
            crate::clock::decimal(timestamp, &mut digits).as_bytes(),
            b".",
            body,
        ]);
        // Appended in place: `format!` over a separately encoded string was two more
        // allocations and a copy per message. Sized exactly, so the header value the
        // string becomes takes its buffer as it is.
        let mut signature = String::with_capacity(SIGNATURE_LEN);
        signature.push_str("v1,");
        B64.encode_string(tag, &mut signature);
        signature
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = InvalidSecret;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<WebhookSecret> for String {
    fn from(secret: WebhookSecret) -> Self {
        secret.text
    }
}

/// A subscriber's signing secrets: the current one and, for a day after a rotation, the
/// previous one, so receivers can switch without rejecting messages in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecrets {
    /// Signs every message.
    pub current: WebhookSecret,
    /// Also signs messages until `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<WebhookSecret>,
    /// When the previous secret stops signing (stored as epoch seconds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::clock::epoch_secs_option"
    )]
    pub previous_until: Option<Timestamp>,
}

impl SigningSecrets {
    pub fn generate() -> Self {
        Self {
            current: WebhookSecret::generate(),
            previous: None,
            previous_until: None,
        }
    }

    /// Replaces the current secret with a new one; the old one keeps signing for
    /// [`ROTATION_OVERLAP_SECS`]. Returns the new secret.
    pub fn rotate(&mut self, now: Timestamp) -> WebhookSecret {
        let new = WebhookSecret::generate();
        self.previous = Some(std::mem::replace(&mut self.current, new.clone()));
        let overlap = std::time::Duration::from_secs(ROTATION_OVERLAP_SECS as u64);
        self.previous_until = Some(now.whole_secs().plus(overlap));
        new
    }

    /// The `webhook-signature` header value for a message sent at `timestamp` (epoch
    /// seconds, the `webhook-timestamp` header's): one `v1,` entry per active secret.
    pub fn signature_header(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut header = self.current.sign(message_id, timestamp, body);
        if let (Some(previous), Some(until)) = (&self.previous, self.previous_until)
            && timestamp < until.epoch_secs()
        {
            header.push(' ');
            header.push_str(&previous.sign(message_id, timestamp, body));
        }
        header
    }
}

/// The Members-style `attributes.hash`: base64 of HMAC-SHA256(signing key, data bytes),
/// written out from the definition: the reference the tests hold [`SigningKey::hash`] to.
#[cfg(test)]
pub(crate) fn members_hash(signing_key: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()).expect("any key length");
    mac.update(data);
    B64.encode(mac.finalize().into_bytes())
}

/// An application's Members-style signing key, the key of `attributes.hash`, as its owner
/// set it. Like [`WebhookSecret`] it keeps its keyed HMAC and its Debug form does not show it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct SigningKey {
    text: String,
    mac: KeyedHmac,
}

impl SigningKey {
    /// The key as its owner set it (the masked view shows its last characters).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The Members-style `attributes.hash` of `data`: base64 of HMAC-SHA256 under this key.
    pub fn hash(&self, data: &[u8]) -> String {
        let mut hash = Vec::new();
        self.push_hash(data, &mut hash);
        String::from_utf8(hash).unwrap_or_default()
    }

    /// [`Self::hash`] appended to `out` (the envelope is written around it, with no string
    /// of its own).
    pub fn push_hash(&self, data: &[u8], out: &mut Vec<u8>) {
        let tag = self.mac.tag(&[data]);
        let start = out.len();
        out.resize(start + TAG_BASE64_LEN, 0);
        let written = B64
            .encode_slice(tag, &mut out[start..])
            .expect("room for the base64 of a 32-byte tag was made");
        out.truncate(start + written);
    }
}

impl From<String> for SigningKey {
    fn from(text: String) -> Self {
        let mac = KeyedHmac::new(text.as_bytes());
        Self { text, mac }
    }
}

impl From<&str> for SigningKey {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

impl From<SigningKey> for String {
    fn from(key: SigningKey) -> Self {
        key.text
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_formatted_for_debugging_is_not_given_away() {
        let text = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let secrets = SigningSecrets {
            current: WebhookSecret::parse(text).unwrap(),
            previous: Some(WebhookSecret::generate()),
            previous_until: None,
        };
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(!shown.contains(secrets.previous.as_ref().unwrap().expose()));
        assert!(shown.contains("WebhookSecret(whsec_…)"), "{shown}");
    }

    #[test]
    fn a_signing_key_hashes_as_members_hash_and_is_not_shown() {
        let key = SigningKey::from("helloWorld");
        for data in [&b""[..], b"[]", br#"[{"personID":"p-1"}]"#] {
            assert_eq!(key.hash(data), members_hash("helloWorld", data));
        }
        assert_eq!(format!("{key:?}"), "SigningKey(…)");
        assert_eq!(serde_json::to_string(&key).unwrap(), r#""helloWorld""#);
        let read: SigningKey = serde_json::from_str(r#""helloWorld""#).unwrap();
        assert_eq!(read.expose(), "helloWorld");
        assert_eq!(read, key);
    }

    #[test]
    fn standard_webhooks_test_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_round_trip() {
        let secret = WebhookSecret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(secret.expose()).unwrap(), secret);
        assert_ne!(secret, WebhookSecret::generate());
        for bad in [
            "",
            "whsec_",
            "whsec_!!!",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_AAAA",
        ] {
            assert_eq!(WebhookSecret::parse(bad), Err(InvalidSecret), "{bad}");
        }
    }

    #[test]
    fn rotation_signs_with_both_for_a_day() {
        let mut secrets = SigningSecrets::generate();
        let old = secrets.current.clone();
        let new = secrets.rotate(Timestamp::from_epoch_secs(1000).unwrap());
        assert_eq!(secrets.current, new);
        let header = secrets.signature_header("msg_1", 1000, b"x");
        assert_eq!(
            header,
            format!(
                "{} {}",
                new.sign("msg_1", 1000, b"x"),
                old.sign("msg_1", 1000, b"x")
            )
        );
        let later = 1000 + ROTATION_OVERLAP_SECS;
        assert_eq!(
            secrets.signature_header("msg_1", later, b"x"),
            new.sign("msg_1", later, b"x")
        );
    }

    #[test]
    fn members_hash_is_base64_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            members_hash("Jefe", b"what do ya want for nothing?"),
            B64.encode(
                hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                    .unwrap()
            )
        );
    }
}

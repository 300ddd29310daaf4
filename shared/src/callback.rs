//! Callback URLs: decoded from the path segment of the ORCID-style routes
//! ([`decode_path_segment`]), checked against the [`UrlPolicy`], and kept exactly as the
//! client gave them.

use crate::netguard::is_public_ip;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use url::{Host, Url};

/// Longest callback URL accepted (after percent-decoding).
pub const MAX_CALLBACK_URL_LEN: usize = 2048;

/// What kinds of callback URLs are acceptable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Local development only: allow `http://` and loopback/private hosts.
    pub allow_insecure: bool,
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCallbackUrl {
    /// Longer than [`MAX_CALLBACK_URL_LEN`].
    #[error("the callback URL is longer than {MAX_CALLBACK_URL_LEN} characters")]
    TooLong,
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    #[error("the callback URL is not correctly percent-encoded UTF-8")]
    BadEncoding,
    /// Not an absolute URL.
    #[error("the callback URL is not an absolute URL: {0}")]
    Unparsable(String),
    /// A scheme other than https (or http when insecure callbacks are allowed).
    #[error("the callback URL must use https")]
    Scheme,
    /// No host, or a host that can never be public (IP literal or local name).
    #[error("the callback URL's host is not a public internet host")]
    Host,
}

/// A callback URL a subscriber asked to be notified at, stored and compared exactly as
/// given (not normalised), with the parsed form used for checks and delivery. Shared: a
/// clone (every request a delivery makes holds one) copies a pointer, not the URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CallbackUrl(Arc<Parsed>);

#[derive(Debug)]
struct Parsed {
    text: String,
    /// Parsed once: when the value is made from a request or read from storage, or, for
    /// the URL a delivery job names ([`CallbackUrl::named_by_job`]), when first used.
    url: OnceLock<Result<Url, InvalidCallbackUrl>>,
    /// The request target the HTTP client sends to, made from `url` by the first request
    /// and kept, so the URLs a delivery reuses (a subscriber's, an application's, cached)
    /// are not parsed again at every request.
    uri: OnceLock<http::Uri>,
}

impl PartialEq for CallbackUrl {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for CallbackUrl {}

impl std::hash::Hash for CallbackUrl {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.text.hash(state);
    }
}

impl CallbackUrl {
    /// Checks a URL given as plain text.
    pub fn parse(text: &str, policy: UrlPolicy) -> Result<Self, InvalidCallbackUrl> {
        if text.len() > MAX_CALLBACK_URL_LEN {
            return Err(InvalidCallbackUrl::TooLong);
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(InvalidCallbackUrl::Unparsable(
                "contains whitespace or control characters".into(),
            ));
        }
        let url = syntax(text)?;
        check_url(&url, policy)?;
        Ok(Self::of(text.to_owned(), Ok(url)))
    }

    /// The callback URL a delivery job names, read from the queue or a log: the key of the
    /// subscription the job is for, compared as text. It is parsed only if used as a URL
    /// ([`Self::url`]); a delivery sends to the stored subscription's URL, found by this
    /// text, so reading a batch of jobs parses none (in figure 2's profile, docs/
    /// benchmarks.md, parsing them was two fifths of reading a batch). A job whose text is
    /// not a URL names no subscription, and is dropped as unregistered.
    pub fn named_by_job(text: String) -> Self {
        Self(Arc::new(Parsed {
            text,
            url: OnceLock::new(),
            uri: OnceLock::new(),
        }))
    }

    fn of(text: String, url: Result<Url, InvalidCallbackUrl>) -> Self {
        Self(Arc::new(Parsed {
            text,
            url: OnceLock::from(url),
            uri: OnceLock::new(),
        }))
    }

    /// The URL exactly as the subscriber gave it.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The parsed URL (the delivery client connects to this), or why the text is not one.
    pub fn url(&self) -> Result<&Url, InvalidCallbackUrl> {
        self.0
            .url
            .get_or_init(|| syntax(&self.0.text))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The URL as an HTTP request target: made by the first call, then shared.
    pub fn uri(&self) -> Result<http::Uri, InvalidCallbackUrl> {
        if let Some(uri) = self.0.uri.get() {
            return Ok(uri.clone());
        }
        let uri = http::Uri::try_from(self.url()?.as_str())
            .map_err(|e| InvalidCallbackUrl::Unparsable(e.to_string()))?;
        Ok(self.0.uri.get_or_init(|| uri).clone())
    }

    /// The text, taken out when this is its only holder.
    fn into_text(self) -> String {
        Arc::try_unwrap(self.0).map_or_else(|shared| shared.text.clone(), |parsed| parsed.text)
    }
}

/// A URL read back from storage. It was checked ([`CallbackUrl::parse`]) when it was set;
/// one that no longer parses (an item written by hand or by another version, or damaged)
/// is kept as its text with the reason, so the item still loads, can be shown and
/// replaced, and whoever would send to it gets a clear error instead of a panic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum StoredUrl {
    /// A URL that parses.
    Usable(CallbackUrl),
    /// Stored text that is not a URL.
    Unusable {
        /// The text as stored.
        text: String,
        reason: InvalidCallbackUrl,
    },
}

impl StoredUrl {
    /// The URL as stored.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Usable(url) => url.as_str(),
            Self::Unusable { text, .. } => text,
        }
    }

    /// The URL, or why it cannot be used.
    pub fn usable(&self) -> Result<&CallbackUrl, InvalidCallbackUrl> {
        match self {
            Self::Usable(url) => Ok(url),
            Self::Unusable { reason, .. } => Err(reason.clone()),
        }
    }
}

impl From<String> for StoredUrl {
    fn from(text: String) -> Self {
        match CallbackUrl::try_from(text.clone()) {
            Ok(url) => Self::Usable(url),
            Err(reason) => Self::Unusable { text, reason },
        }
    }
}

impl From<&str> for StoredUrl {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

impl From<CallbackUrl> for StoredUrl {
    fn from(url: CallbackUrl) -> Self {
        Self::Usable(url)
    }
}

impl From<StoredUrl> for String {
    fn from(url: StoredUrl) -> Self {
        match url {
            StoredUrl::Usable(url) => url.into_text(),
            StoredUrl::Unusable { text, .. } => text,
        }
    }
}

/// The URL checks shared by registration and delivery.
pub fn check_url(url: &Url, policy: UrlPolicy) -> Result<(), InvalidCallbackUrl> {
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_insecure => {}
        _ => return Err(InvalidCallbackUrl::Scheme),
    }
    if policy.allow_insecure {
        return url.host().map(|_| ()).ok_or(InvalidCallbackUrl::Host);
    }
    let public = match url.host() {
        None => false,
        Some(Host::Ipv4(ip)) => is_public_ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => is_public_ip(IpAddr::V6(ip)),
        Some(Host::Domain(name)) => is_public_name(name),
    };
    if public {
        Ok(())
    } else {
        Err(InvalidCallbackUrl::Host)
    }
}

/// Names that can only ever resolve locally. Other names are checked again after DNS.
fn is_public_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let local_suffixes = [
        ".localhost",
        ".local",
        ".internal",
        ".localdomain",
        ".home.arpa",
    ];
    !name.is_empty()
        && name.contains('.')
        && name != "localhost"
        && !local_suffixes.iter().any(|s| name.ends_with(s))
}

impl TryFrom<String> for CallbackUrl {
    type Error = InvalidCallbackUrl;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        // Stored values were checked when registered; re-check only the syntax here, the
        // delivery client applies the address policy when it connects.
        let url = syntax(&text)?;
        Ok(Self::of(text, Ok(url)))
    }
}

/// The URL syntax check every callback URL passes.
fn syntax(text: &str) -> Result<Url, InvalidCallbackUrl> {
    Url::parse(text).map_err(|e| InvalidCallbackUrl::Unparsable(e.to_string()))
}

impl From<CallbackUrl> for String {
    fn from(url: CallbackUrl) -> Self {
        url.into_text()
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

/// The callback text of a webhook route's path segment: percent-decoded, unless the
/// gateway already decoded it (API Gateway HTTP APIs hand `%2F` to the function as `/`,
/// so a segment that starts with a scheme is taken as it is).
pub fn decode_path_segment(raw: &str) -> Result<String, InvalidCallbackUrl> {
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        Ok(raw.to_owned())
    } else {
        strict_percent_decode(raw)
    }
}

/// Percent-decodes, refusing malformed escapes and non-UTF-8 results instead of passing
/// them through as lenient decoders do.
fn strict_percent_decode(raw: &str) -> Result<String, InvalidCallbackUrl> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(InvalidCallbackUrl::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| InvalidCallbackUrl::BadEncoding)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| InvalidCallbackUrl::BadEncoding)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| InvalidCallbackUrl::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SEGMENT: &str = "https%3A%2F%2Fnowhere2.com%2F0000-0002-7465-2162%2Fupdated";
    const STRICT: UrlPolicy = UrlPolicy {
        allow_insecure: false,
    };
    const INSECURE: UrlPolicy = UrlPolicy {
        allow_insecure: true,
    };

    #[test]
    fn seed_example_decodes() {
        let text = decode_path_segment(SEED_SEGMENT).unwrap();
        assert_eq!(text, "https://nowhere2.com/0000-0002-7465-2162/updated");
        // As API Gateway hands it over, already decoded: taken as it is.
        assert_eq!(decode_path_segment(&text).unwrap(), text);
        assert_eq!(
            decode_path_segment("HTTPS://nowhere2.com/a%20b").unwrap(),
            "HTTPS://nowhere2.com/a%20b"
        );
    }

    #[test]
    fn url_is_kept_exactly_as_given() {
        let url = CallbackUrl::parse("https://Example.COM:443/a/../b?x=1#f", STRICT).unwrap();
        assert_eq!(url.as_str(), "https://Example.COM:443/a/../b?x=1#f");
    }

    #[test]
    fn bad_encodings_are_refused() {
        for raw in [
            "https%3A%2F%2Fa.com%2",
            "https%3A%2F%2Fa.com%zz",
            "https%3A%2F%2Fa.com%2F%ff",
        ] {
            assert_eq!(
                decode_path_segment(raw),
                Err(InvalidCallbackUrl::BadEncoding),
                "{raw}"
            );
        }
    }

    #[test]
    fn non_public_or_non_https_urls_are_refused() {
        for (url, err) in [
            ("http://nowhere2.com/x", InvalidCallbackUrl::Scheme),
            ("ftp://nowhere2.com/x", InvalidCallbackUrl::Scheme),
            ("https://localhost/x", InvalidCallbackUrl::Host),
            ("https://api.localhost/x", InvalidCallbackUrl::Host),
            ("https://printer.local/x", InvalidCallbackUrl::Host),
            ("https://intranet/x", InvalidCallbackUrl::Host),
            ("https://127.0.0.1/x", InvalidCallbackUrl::Host),
            ("https://2130706433/x", InvalidCallbackUrl::Host),
            ("https://0x7f.1/x", InvalidCallbackUrl::Host),
            (
                "https://169.254.169.254/latest/meta-data",
                InvalidCallbackUrl::Host,
            ),
            ("https://[::1]/x", InvalidCallbackUrl::Host),
            ("https://[::ffff:127.0.0.1]/x", InvalidCallbackUrl::Host),
            ("https://10.0.0.1/x", InvalidCallbackUrl::Host),
        ] {
            assert_eq!(CallbackUrl::parse(url, STRICT), Err(err), "{url}");
        }
        assert!(matches!(
            CallbackUrl::parse("nowhere2.com/x", STRICT),
            Err(InvalidCallbackUrl::Unparsable(_))
        ));
        assert!(matches!(
            CallbackUrl::parse("https://a.com/x y", STRICT),
            Err(InvalidCallbackUrl::Unparsable(_))
        ));
    }

    #[test]
    fn insecure_policy_allows_local_http() {
        assert!(CallbackUrl::parse("http://127.0.0.1:8080/hook", INSECURE).is_ok());
        assert!(CallbackUrl::parse("http://localhost:8080/hook", INSECURE).is_ok());
        assert_eq!(
            CallbackUrl::parse("ftp://localhost/hook", INSECURE),
            Err(InvalidCallbackUrl::Scheme)
        );
    }

    #[test]
    fn a_stored_url_that_no_longer_parses_still_loads() {
        let stored: StoredUrl = serde_json::from_str(r#""https://exa mple.org/x""#).unwrap();
        assert_eq!(stored.as_str(), "https://exa mple.org/x");
        assert!(matches!(
            stored.usable(),
            Err(InvalidCallbackUrl::Unparsable(_))
        ));
        assert_eq!(
            serde_json::to_string(&stored).unwrap(),
            r#""https://exa mple.org/x""#,
            "written back as it was"
        );
        let good: StoredUrl = serde_json::from_str(r#""https://a.com/x""#).unwrap();
        assert_eq!(
            good.usable().unwrap().url().unwrap().host_str(),
            Some("a.com")
        );
    }

    #[test]
    fn length_is_limited() {
        let long = format!("https://a.com/{}", "x".repeat(MAX_CALLBACK_URL_LEN));
        assert_eq!(
            CallbackUrl::parse(&long, STRICT),
            Err(InvalidCallbackUrl::TooLong)
        );
    }

    #[test]
    fn a_url_named_by_a_job_is_its_text_until_used() {
        let text = "https://a.com/0000-0002-7465-2162/updated";
        let named = CallbackUrl::named_by_job(text.to_owned());
        let parsed = CallbackUrl::parse(text, STRICT).unwrap();
        assert_eq!(named, parsed, "compared as text");
        assert_eq!(named.as_str(), text);
        assert_eq!(named.url().unwrap(), parsed.url().unwrap());
        assert_eq!(
            named.uri().unwrap(),
            "https://a.com/0000-0002-7465-2162/updated"
        );
        // The request target is made once and shared by every later request.
        assert_eq!(named.uri().unwrap(), named.uri().unwrap());
        assert_eq!(
            serde_json::to_string(&named).unwrap(),
            format!("\"{text}\"")
        );

        let broken = CallbackUrl::named_by_job("https://exa mple.org/x".to_owned());
        assert_eq!(broken.as_str(), "https://exa mple.org/x");
        assert!(matches!(
            broken.url(),
            Err(InvalidCallbackUrl::Unparsable(_))
        ));
        assert!(matches!(
            broken.uri(),
            Err(InvalidCallbackUrl::Unparsable(_))
        ));
        // Read from storage as a subscription's URL, the same text is refused.
        assert!(serde_json::from_str::<CallbackUrl>("\"https://exa mple.org/x\"").is_err());
    }
}

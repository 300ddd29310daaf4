//! The web console (`GET /console`): one page, its stylesheet and its script, built into
//! the binary, so the registration function (and the local runner, which forwards to it)
//! serves it with nothing extra deployed and nothing fetched at run time.
//!
//! The page only calls the public JSON API with the credentials the user types; it keeps
//! them in memory and `sessionStorage`. Every answer carries a Content-Security-Policy
//! without `unsafe-inline`, so even a rendering bug that let stored data into the markup
//! could not run a script.

use http::{StatusCode, header};
use lambda_http::{Body, Response};

/// One file of the console.
#[derive(Debug)]
pub struct Asset {
    /// The path it is served at.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Scripts, styles, images and API calls from this origin only; no inline code, no
/// plugins, no framing, no `<base>` rewriting, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every file of the console, by path.
pub const ASSETS: [Asset; 3] = [
    Asset {
        path: "/console",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../console/index.html"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/console.css"),
    },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/console.js"),
    },
];

/// The asset served at `path` (`/console/` is the page too).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/console/" {
        "/console"
    } else {
        path
    };
    ASSETS.iter().find(|a| a.path == path)
}

impl Asset {
    /// The `200` answer, with the security headers.
    pub fn response(&self) -> Response<Body> {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::X_FRAME_OPTIONS, "DENY")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header("cross-origin-opener-policy", "same-origin")
            .header("cross-origin-resource-policy", "same-origin")
            .header(
                "permissions-policy",
                "camera=(), microphone=(), geolocation=()",
            )
            // Small and built into the binary: always fetch the one of this version.
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::Text(self.body.to_owned()))
            .expect("static parts are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_by_its_path_and_nothing_else_is() {
        for a in &ASSETS {
            assert_eq!(asset(a.path).map(|x| x.path), Some(a.path), "{}", a.path);
        }
        assert_eq!(asset("/console/").map(|a| a.path), Some("/console"));
        assert!(asset("/console/../oauth/token").is_none());
        assert!(asset("/console/other.js").is_none());
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_code() {
        let page = ASSETS[0].body;
        assert!(page.contains(r#"src="/console/console.js""#));
        assert!(page.contains(r#"href="/console/console.css""#));
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "inline style attribute");
        let handler = page.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "external URL"
        );
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn the_script_never_writes_markup() {
        let script = ASSETS[2].body;
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "{sink} in console.js");
        }
    }
}

//! The HTTPS client of the SDK clients: the one `aws-config` would pick (hyper, rustls with
//! aws-lc), shared by every client of the process, and connecting on its first request
//! rather than when each client is built.
//!
//! The SDK's default builds a TLS connector when a client is constructed, so that the
//! system certificate store is read at start-up; each connector parses every root
//! certificate again, and each client gets its own. Three clients built at start made that
//! most of a function's cold start (docs/benchmarks.md, *Misses*); a function's first
//! invocation builds the one connector its requests use.

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;

/// An HTTP client that builds its connectors on the first request that needs each.
#[derive(Debug)]
pub struct ConnectOnFirstRequest(SharedHttpClient);

impl ConnectOnFirstRequest {
    /// `client`, without its connector built early.
    pub fn new(client: SharedHttpClient) -> Self {
        Self(client)
    }
}

impl HttpClient for ConnectOnFirstRequest {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The wrapped client keeps one connector per settings, built here the first time.
        self.0.http_connector(settings, components)
    }

    // `validate_base_client_config` is left at the trait's default (checks nothing): the
    // wrapped client's builds a connector there only to read the certificates early.

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// The SDK's default HTTPS client (as `aws-smithy-runtime` builds it for the latest
/// behaviour version: rustls with aws-lc, proxies from the environment), connecting on
/// its first request.
pub fn sdk_https_client() -> SharedHttpClient {
    let client = Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    });
    ConnectOnFirstRequest::new(client).into_shared()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::ConfigBag;
    use aws_smithy_runtime_api::box_error::BoxError;
    use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorFuture};
    use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponentsBuilder;
    use aws_smithy_runtime_api::http::StatusCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts what the SDK asks of it; answers every request with an empty 200.
    #[derive(Debug, Default)]
    struct Counting {
        early_connectors: AtomicUsize,
        connectors: AtomicUsize,
    }

    #[derive(Debug)]
    struct EmptyOk;

    impl HttpConnector for EmptyOk {
        fn call(&self, _: HttpRequest) -> HttpConnectorFuture {
            let ok = StatusCode::try_from(200).expect("a status");
            let response: HttpResponse = HttpResponse::new(ok, "{}".into());
            HttpConnectorFuture::ready(Ok(response))
        }
    }

    #[derive(Debug, Clone)]
    struct CountingClient(Arc<Counting>);

    impl HttpClient for CountingClient {
        fn http_connector(
            &self,
            _: &HttpConnectorSettings,
            _: &RuntimeComponents,
        ) -> SharedHttpConnector {
            self.0.connectors.fetch_add(1, Ordering::SeqCst);
            EmptyOk.into_shared()
        }

        fn validate_base_client_config(
            &self,
            _: &RuntimeComponentsBuilder,
            _: &ConfigBag,
        ) -> Result<(), BoxError> {
            // What the SDK's default client does here: build a connector.
            self.0.early_connectors.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn config(http: SharedHttpClient) -> aws_config::SdkConfig {
        use aws_sdk_dynamodb::config::{Credentials, Region, SharedCredentialsProvider};
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            )))
            .endpoint_url("http://127.0.0.1:9")
            .http_client(http)
            .build()
    }

    /// Building the clients asks for no connector; the first request does.
    #[tokio::test]
    async fn clients_connect_on_their_first_request_only() {
        let counts = Arc::new(Counting::default());
        let wrapped = ConnectOnFirstRequest::new(CountingClient(counts.clone()).into_shared());
        let config = config(wrapped.into_shared());
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let _sqs = aws_sdk_sqs::Client::new(&config);
        let _events = aws_sdk_eventbridge::Client::new(&config);
        assert_eq!(counts.early_connectors.load(Ordering::SeqCst), 0);
        assert_eq!(counts.connectors.load(Ordering::SeqCst), 0);

        let answer = dynamodb.list_tables().send().await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(counts.early_connectors.load(Ordering::SeqCst), 0);
        assert!(counts.connectors.load(Ordering::SeqCst) >= 1);
    }

    /// Unwrapped, the same client is asked for a connector by every client built: what
    /// the wrapper takes away.
    #[tokio::test]
    async fn unwrapped_every_client_built_asks_for_a_connector() {
        let counts = Arc::new(Counting::default());
        let config = config(CountingClient(counts.clone()).into_shared());
        let _dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let _sqs = aws_sdk_sqs::Client::new(&config);
        assert_eq!(counts.early_connectors.load(Ordering::SeqCst), 2);
    }
}

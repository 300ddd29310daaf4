//! The `registration` Lambda: the HTTP API behind API Gateway's `$default` route.

use lambda_http::{Error, Request, service_fn};
use webhooks::aws::AwsServices;
use webhooks::config::Settings;

#[global_allocator]
static ALLOCATOR: webhooks::Allocator = webhooks::Allocator;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let registration = AwsServices::load(Settings::from_env()?)
        .await
        .registration();
    lambda_http::run(service_fn(|request: Request| async {
        Ok::<_, Error>(registration.handle(request).await)
    }))
    .await
}

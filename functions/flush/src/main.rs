//! The `flush` Lambda: every flush interval, pending changes -> delivery jobs on SQS.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use webhooks::aws::{AwsServices, stop_before};
use webhooks::config::Settings;
use webhooks::handlers::FlushEvent;

#[global_allocator]
static ALLOCATOR: webhooks::Allocator = webhooks::Allocator;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let flush = AwsServices::load(Settings::from_env()?).await.flush();
    let flush = &flush;
    lambda_runtime::run(service_fn(|event: LambdaEvent<FlushEvent>| async move {
        let deadline = stop_before(event.context.deadline, flush.ports.clock.now());
        Ok::<_, Error>(flush.handle(event.payload, Some(deadline)).await?)
    }))
    .await
}

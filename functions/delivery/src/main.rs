//! The `delivery` Lambda: SQS delivery jobs -> signed POSTs, retried by visibility timeout.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use webhooks::aws::{AwsServices, stop_before};
use webhooks::aws_lambda_events::event::sqs::SqsEvent;
use webhooks::config::Settings;

#[global_allocator]
static ALLOCATOR: webhooks::Allocator = webhooks::Allocator;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let delivery = AwsServices::load(Settings::from_env()?).await.delivery();
    let delivery = &delivery;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let deadline = stop_before(event.context.deadline, delivery.ports.clock.now());
        Ok::<_, Error>(delivery.handle(event.payload, deadline).await)
    }))
    .await
}

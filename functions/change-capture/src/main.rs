//! The `change-capture` Lambda: the records table's DynamoDB stream -> pending changes.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use webhooks::aws::AwsServices;
use webhooks::aws_lambda_events::event::dynamodb::Event;
use webhooks::config::Settings;

#[global_allocator]
static ALLOCATOR: webhooks::Allocator = webhooks::Allocator;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let change_capture = AwsServices::load(Settings::from_env()?)
        .await
        .change_capture();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Event>| async {
        Ok::<_, Error>(change_capture.handle(event.payload).await)
    }))
    .await
}

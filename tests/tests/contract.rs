//! The adapter contract (`webhooks::testing::contract`) on every adapter set: the same
//! scenarios on the in-memory adapters, on the SQLite adapters, and on the DynamoDB and
//! SQS adapters over moto.

use webhooks::testing::contract::{Adapters, run_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_adapters_keep_the_contract() {
    run_all("memory", || async { Adapters::memory() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_adapters_keep_the_contract_on_moto() {
    run_all("aws (moto)", webhooks_tests::moto::contract_adapters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_adapters_keep_the_contract() {
    run_all("sqlite", || async { Adapters::sqlite() }).await;
}

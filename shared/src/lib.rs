//! Person-record webhook notifications.
//!
//! The crate is laid out domain first: pure types and rules ([`ids`], [`record`], [`callback`],
//! [`oauth`], [`subscription`], [`application`], [`members`], [`signing`], [`window`],
//! [`job`], [`attempts`], [`message`], [`poison`], [`retry`], [`ack`], [`health`], [`sync`],
//! [`netguard`], [`events`]), then the ports ([`ports`]) every piece of state and I/O goes
//! through, then adapters ([`memory`] for the local runner and tests, `sqlite` for the durable
//! local runner, [`aws`] for DynamoDB, SQS and EventBridge, [`http_client`] for deliveries),
//! then the Lambda handlers ([`handlers`]), which take the real Lambda event types and run
//! over the ports, so the Lambdas and the local runner run the same code. [`config`] reads
//! the functions' settings; [`metrics`] writes CloudWatch Embedded Metric Format; `testing`
//! (a feature) holds what tests need and production never runs.
//!
//! `missing_docs` applies to [`ports`] only: there every trait, method and field is part of
//! the contract the adapter sets keep, and says what its name cannot. Elsewhere a field's
//! name and type usually say it all, and a doc comment is written where they do not.

pub mod ack;
pub mod application;
pub mod attempts;
pub mod aws;
pub mod callback;
pub mod clock;
pub mod config;
pub mod events;
pub mod handlers;
pub mod health;
pub mod http_client;
pub mod ids;
pub mod job;
pub mod members;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod netguard;
pub mod oauth;
pub mod poison;
#[warn(missing_docs)]
pub mod ports;
pub mod record;
pub mod retry;
pub mod signing;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod subscription;
pub mod sync;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod window;

pub use aws_lambda_events;
pub use lambda_http;

/// The memory allocator every binary of the service declares as its global allocator
/// (`#[global_allocator] static ALLOCATOR: webhooks::Allocator = webhooks::Allocator;`), so
/// the benchmarks measure what runs. mimalloc, not the system's (glibc's) malloc: on the
/// delivery path, where a message's request, signature and log entry are allocated on one
/// thread and freed on another, glibc's malloc and free were a fifth of the process's CPU
/// time, and the delivery handler reached 0.81 of a bare HTTP client's rate with it and
/// 0.88 with mimalloc, ORCID-style (docs/benchmarks.md, figure 2, sixth pass). Built without its
/// transparent huge pages (`no_thp`): on a host that grants them on request, each of its
/// fresh regions was faulted in and zeroed 2 MiB at a time, a tenth of the Members-style
/// delivery's CPU.
pub use mimalloc::MiMalloc as Allocator;

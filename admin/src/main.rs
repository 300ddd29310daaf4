//! `webhooks-admin`: operator commands against the deployed tables (DynamoDB; set
//! `AWS_ENDPOINT_URL` to use an emulator), or against a local runner's data directory
//! (`--data-dir`, [`data_dir`]).

mod data_dir;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use webhooks::application::Application;
use webhooks::aws::dynamodb::DynamoStore;
use webhooks::aws::sqs::SqsQueue;
use webhooks::clock::{Clock, SystemClock};
use webhooks::handlers::ParkedReplayer;
use webhooks::handlers::replay::replay_poison;
use webhooks::ids::{ApplicationId, ClientId};
use webhooks::oauth::{OAuthClient, WEBHOOK_SCOPE, new_secret};
use webhooks::poison::PoisonId;
use webhooks::ports::{
    ApplicationStore, BackendError, ClientStore, DeliveryQueue, ParkedQueue, PendingChanges,
    SubscriptionStore,
};
use webhooks::signing::SigningSecrets;
use webhooks::window::{ClockWindows, FlushWindows};

/// Manage the person webhooks service.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The service table (the stack's ServiceTableName output).
    #[arg(long, env = "SERVICE_TABLE", required_unless_present = "data_dir")]
    service_table: Option<String>,
    /// A local runner's data directory (`webhooks-local --data-dir DIR`) instead of AWS:
    /// the same commands on its SQLite database, beside the running runner or without it.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// OAuth clients that register ORCID-style webhooks.
    #[command(subcommand)]
    Clients(ClientCommand),
    /// Members-style applications.
    #[command(subcommand)]
    Applications(ApplicationCommand),
    /// The delivery dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Changes the flush set aside because they could never be queued as they were.
    #[command(subcommand)]
    Poison(PoisonCommand),
    /// Jobs parked while their endpoint is disabled.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Adds every subscription to its client's webhook index (`GET /webhooks`): once, for
    /// subscriptions registered before the index existed. Safe to run again.
    IndexWebhooks,
}

#[derive(Debug, Subcommand)]
enum PoisonCommand {
    /// List poison items, oldest window first.
    List,
    /// Mark each item's record pending again (fix the record first) so the next flush
    /// rebuilds its notifications, then remove the item.
    Replay {
        /// The poison item id, as `poison list` prints it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every poison item.
        #[arg(long)]
        all: bool,
        /// The flush interval (the stack's FlushIntervalMinutes): the record is marked
        /// pending in the window open now, as a change would be.
        #[arg(long, env = "FLUSH_INTERVAL_MINUTES", default_value_t = 5)]
        flush_interval_minutes: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ParkedCommand {
    /// Send the parked jobs whose endpoint was re-enabled back to the delivery queue; jobs
    /// whose endpoint is still disabled stay parked (listed by endpoint).
    Replay {
        /// Most parked messages looked at.
        #[arg(long, default_value_t = 10_000)]
        max: usize,
        /// The delivery queue (the stack's DeliveryQueueUrl output; not with --data-dir).
        #[arg(long, env = "DELIVERY_QUEUE_URL")]
        queue_url: Option<String>,
        /// The parked queue (the stack's DisabledEndpointQueueUrl output; not with --data-dir).
        #[arg(long, env = "DISABLED_ENDPOINT_QUEUE_URL")]
        parked_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Move dead-lettered deliveries back to the delivery queue (after fixing the receiver).
    Replay {
        /// `move-task`: an SQS message move task (asynchronous, the console's DLQ redrive);
        /// `loop`: receive, send, delete here (synchronous, prints the count);
        /// `auto`: a move task, falling back to the loop where unavailable.
        #[arg(long, default_value = "auto")]
        method: ReplayMethod,
        /// Most messages the loop moves.
        #[arg(long, default_value_t = 10_000)]
        max: usize,
        /// The delivery queue (the stack's DeliveryQueueUrl output; not with --data-dir).
        #[arg(long, env = "DELIVERY_QUEUE_URL")]
        queue_url: Option<String>,
        /// The dead-letter queue (the stack's DeliveryDeadLetterQueueUrl output; not with
        /// --data-dir).
        #[arg(long, env = "DEAD_LETTER_QUEUE_URL")]
        dlq_url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReplayMethod {
    Auto,
    MoveTask,
    Loop,
}

#[derive(Debug, Subcommand)]
enum ApplicationCommand {
    /// Create an application; its API key and webhook secret are printed once.
    Create {
        /// The application id (1-64 of letters, digits, '.', '_', '-').
        #[arg(long)]
        id: ApplicationId,
    },
    /// List applications and their webhook URLs.
    List,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Create a client; its secret is printed once and stored only as a hash.
    Create {
        /// The client id (1-64 of letters, digits, '.', '_', '-'; default: a new
        /// APP-XXXXXXXXXXXXXXXX id).
        #[arg(long)]
        id: Option<ClientId>,
        /// A scope the client may request (repeatable; default /webhook).
        #[arg(long = "scope", default_value = WEBHOOK_SCOPE)]
        scopes: Vec<String>,
    },
    /// List clients.
    List,
    /// Disable a client: it gets no tokens, and its tokens stop working at once.
    Disable {
        /// The client id.
        id: ClientId,
    },
    /// Enable a disabled client again.
    Enable {
        /// The client id.
        id: ClientId,
    },
    /// Rotate the secret that signs a client's callbacks (the old one keeps signing for
    /// 24 hours); the new secret is printed once.
    RotateWebhookSecret {
        /// The client id.
        id: ClientId,
    },
}

#[derive(Debug)]
enum AdminError {
    Usage(String),
    Backend(BackendError),
}

impl From<BackendError> for AdminError {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (args.data_dir, args.service_table) {
        (Some(dir), _) => data_dir::run(&dir, args.command).await,
        (None, Some(table)) => run_aws(&table, args.command).await,
        (None, None) => Err(AdminError::Usage(
            "give --service-table (or SERVICE_TABLE) for AWS, or --data-dir".into(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AdminError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(AdminError::Backend(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A value an AWS command needs, from its option or environment variable.
fn required(value: Option<String>, option: &str) -> Result<String, AdminError> {
    value.ok_or_else(|| AdminError::Usage(format!("{option} is required against AWS")))
}

async fn run_aws(table: &str, command: Command) -> Result<(), AdminError> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        table,
        Arc::new(SystemClock),
    );
    match command {
        Command::Clients(command) => run_clients(&store, command).await,
        Command::Applications(command) => run_applications(&store, command).await,
        Command::Poison(command) => run_poison(&store, command).await,
        Command::IndexWebhooks => {
            let indexed = store.index_client_webhooks().await?;
            println!("{indexed} subscriptions indexed");
            Ok(())
        }
        Command::Dlq(command) => run_dlq(&config, command).await,
        Command::Parked(command) => run_parked(&config, &store, command).await,
    }
}

/// Prints the poison items, oldest window first.
async fn list_poison(pending: &dyn PendingChanges) -> Result<(), AdminError> {
    println!("{:<60} {:<28} REASON", "ID", "ENDPOINT");
    for item in pending.poison_items().await? {
        println!(
            "{:<60} {:<28} {}",
            item.id(),
            item.endpoint.as_deref().unwrap_or("all"),
            item.reason()
        );
    }
    Ok(())
}

async fn run_poison(store: &DynamoStore, command: PoisonCommand) -> Result<(), AdminError> {
    match command {
        PoisonCommand::List => list_poison(store).await?,
        PoisonCommand::Replay {
            id,
            all,
            flush_interval_minutes,
        } => {
            if flush_interval_minutes == 0 {
                return Err(AdminError::Usage(
                    "--flush-interval-minutes must be positive".into(),
                ));
            }
            let windows = ClockWindows::new(
                Arc::new(SystemClock),
                Duration::from_secs(60 * flush_interval_minutes),
                Duration::ZERO,
            );
            let ids: Vec<PoisonId> = if all {
                store.poison_items().await?.iter().map(|i| i.id()).collect()
            } else {
                id.into_iter().map(PoisonId::new).collect()
            };
            for id in ids {
                match replay_poison(store, &id, windows.current()).await? {
                    Some(item) => println!("replayed: {id} (record {})", item.record),
                    None => return Err(AdminError::Usage(format!("no poison item {id}"))),
                }
            }
        }
    }
    Ok(())
}

async fn run_dlq(config: &aws_config::SdkConfig, command: DlqCommand) -> Result<(), AdminError> {
    let DlqCommand::Replay {
        method,
        max,
        queue_url,
        dlq_url,
    } = command;
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(config),
        required(queue_url, "--queue-url (or DELIVERY_QUEUE_URL)")?,
        required(dlq_url, "--dlq-url (or DEAD_LETTER_QUEUE_URL)")?,
    );
    if matches!(method, ReplayMethod::Auto | ReplayMethod::MoveTask) {
        match queue.start_redrive_task().await {
            Ok(handle) => {
                println!("move task started: {handle}");
                eprintln!(
                    "SQS moves the messages in the background; see the queue's redrive status in the console."
                );
                return Ok(());
            }
            Err(e) if matches!(method, ReplayMethod::MoveTask) => return Err(e.into()),
            Err(e) => {
                eprintln!("a move task is not available here ({e}); moving messages one by one")
            }
        }
    }
    let moved = queue.redrive_by_loop(max).await?;
    println!("moved {moved} messages back to the delivery queue");
    Ok(())
}

async fn run_parked(
    config: &aws_config::SdkConfig,
    store: &DynamoStore,
    command: ParkedCommand,
) -> Result<(), AdminError> {
    let ParkedCommand::Replay {
        max,
        queue_url,
        parked_url,
    } = command;
    // The DLQ is not used by a parked replay: jobs go back to the delivery queue only.
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(config),
        required(queue_url, "--queue-url (or DELIVERY_QUEUE_URL)")?,
        "",
    )
    .with_parked_queue(required(
        parked_url,
        "--parked-url (or DISABLED_ENDPOINT_QUEUE_URL)",
    )?);
    replay_parked(store, store, &queue, max).await
}

/// Replays up to `max` parked jobs whose endpoint is enabled again, and tells the operator
/// what it did.
async fn replay_parked(
    subscriptions: &dyn SubscriptionStore,
    applications: &dyn ApplicationStore,
    queue: &(impl DeliveryQueue + ParkedQueue),
    max: usize,
) -> Result<(), AdminError> {
    let report = ParkedReplayer {
        subscriptions,
        applications,
        queue,
        parked: queue,
    }
    .replay(max)
    .await?;
    println!(
        "replayed {} parked jobs to the delivery queue",
        report.replayed
    );
    for (endpoint, jobs) in &report.still_disabled {
        println!("left parked: {jobs} jobs for {endpoint}, which is still disabled");
    }
    if !report.still_disabled.is_empty() {
        eprintln!(
            "Jobs of a disabled endpoint stay parked until its owner re-enables it (PUT the webhook again, or PATCH the application's webhook); replay again then."
        );
    }
    if report.unreadable > 0 {
        eprintln!(
            "{} parked messages are not delivery jobs; they were left in the queue.",
            report.unreadable
        );
    }
    Ok(())
}

async fn run_applications(
    store: &dyn ApplicationStore,
    command: ApplicationCommand,
) -> Result<(), AdminError> {
    match command {
        ApplicationCommand::Create { id } => {
            if store.get_application(&id).await?.is_some() {
                return Err(AdminError::Usage(format!(
                    "application {id} already exists"
                )));
            }
            let api_key = new_secret();
            let application = Application::new(&id, &api_key, SystemClock.now());
            store.put_application(&application).await?;
            println!("application_id: {id}");
            println!("api_key:        {api_key}");
            println!("webhook_secret: {}", application.secrets.current.expose());
            eprintln!(
                "The API key and webhook secret are shown only now; the key is stored as a hash."
            );
        }
        ApplicationCommand::List => {
            println!("{:<24} WEBHOOK", "APPLICATION_ID");
            for app in store.list_applications().await? {
                println!(
                    "{:<24} {}",
                    app.id,
                    app.webhook.url.as_ref().map_or("-", |u| u.as_str())
                );
            }
        }
    }
    Ok(())
}

async fn run_clients(store: &dyn ClientStore, command: ClientCommand) -> Result<(), AdminError> {
    match command {
        ClientCommand::Create { id, scopes } => create_client(store, id, scopes).await,
        ClientCommand::List => list_clients(store).await,
        ClientCommand::Disable { id } => set_disabled(store, &id, true).await,
        ClientCommand::Enable { id } => set_disabled(store, &id, false).await,
        ClientCommand::RotateWebhookSecret { id } => rotate_webhook_secret(store, &id).await,
    }
}

async fn create_client(
    store: &dyn ClientStore,
    id: Option<ClientId>,
    scopes: Vec<String>,
) -> Result<(), AdminError> {
    let id = id.unwrap_or_else(ClientId::generate);
    if store.get_client(&id).await?.is_some() {
        return Err(AdminError::Usage(format!("client {id} already exists")));
    }
    let secret = new_secret();
    let mut client = OAuthClient::new(&id, &secret, SystemClock.now());
    client.scopes = scopes;
    store.put_client(&client).await?;
    println!("client_id:      {id}");
    println!("client_secret:  {secret}");
    println!("scopes:         {}", client.scopes.join(" "));
    if let Some(secrets) = &client.webhook_secrets {
        println!("webhook_secret: {}", secrets.current.expose());
    }
    eprintln!("The secrets are shown only now; the client secret is stored as a salted hash.");
    Ok(())
}

async fn list_clients(store: &dyn ClientStore) -> Result<(), AdminError> {
    println!(
        "{:<24} {:<9} {:<20} SCOPES",
        "CLIENT_ID", "STATUS", "CREATED"
    );
    for client in store.list_clients().await? {
        let created = client
            .created_at
            .rfc3339()
            .get(..19)
            .unwrap_or_default()
            .to_owned();
        let status = if client.disabled {
            "disabled"
        } else {
            "enabled"
        };
        println!(
            "{:<24} {:<9} {:<20} {}",
            client.client_id,
            status,
            created,
            client.scopes.join(" ")
        );
    }
    Ok(())
}

async fn rotate_webhook_secret(store: &dyn ClientStore, id: &ClientId) -> Result<(), AdminError> {
    let mut client = store
        .get_client(id)
        .await?
        .ok_or_else(|| AdminError::Usage(format!("no client {id}")))?;
    let now = SystemClock.now();
    let secret = match client.webhook_secrets.as_mut() {
        Some(secrets) => secrets.rotate(now),
        None => {
            let secrets = SigningSecrets::generate();
            let secret = secrets.current.clone();
            client.webhook_secrets = Some(secrets);
            secret
        }
    };
    store.put_client(&client).await?;
    println!("webhook_secret: {}", secret.expose());
    eprintln!("The previous secret keeps signing beside it for 24 hours.");
    Ok(())
}

async fn set_disabled(
    store: &dyn ClientStore,
    id: &ClientId,
    disabled: bool,
) -> Result<(), AdminError> {
    let mut client = store
        .get_client(id)
        .await?
        .ok_or_else(|| AdminError::Usage(format!("no client {id}")))?;
    client.disabled = disabled;
    store.put_client(&client).await?;
    println!("{id} {}", if disabled { "disabled" } else { "enabled" });
    Ok(())
}

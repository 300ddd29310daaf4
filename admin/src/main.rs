//! `webhooks-admin`: operator commands against the deployed tables (DynamoDB; set
//! `AWS_ENDPOINT_URL` to use an emulator).

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use webhooks::aws::dynamodb::DynamoStore;
use webhooks::oauth::{OAuthClient, WEBHOOK_SCOPE, is_valid_client_id, new_client_id, new_secret};
use webhooks::ports::{BackendError, ClientStore};

/// Manage the person webhooks service.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The service table (the stack's ServiceTableName output).
    #[arg(long, env = "SERVICE_TABLE")]
    service_table: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// OAuth clients that register ORCID-style webhooks.
    #[command(subcommand)]
    Clients(ClientCommand),
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Create a client; its secret is printed once and stored only as a hash.
    Create {
        /// The client id (default: a new APP-XXXXXXXXXXXXXXXX id).
        #[arg(long)]
        id: Option<String>,
        /// A scope the client may request (repeatable; default /webhook).
        #[arg(long = "scope", default_value = WEBHOOK_SCOPE)]
        scopes: Vec<String>,
    },
    /// List clients.
    List,
    /// Disable a client: it gets no tokens, and its tokens stop working at once.
    Disable {
        /// The client id.
        id: String,
    },
    /// Enable a disabled client again.
    Enable {
        /// The client id.
        id: String,
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
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), &args.service_table);
    match run(&store, args.command).await {
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

async fn run(store: &DynamoStore, command: Command) -> Result<(), AdminError> {
    let Command::Clients(command) = command;
    match command {
        ClientCommand::Create { id, scopes } => {
            let id = id.unwrap_or_else(new_client_id);
            if !is_valid_client_id(&id) {
                return Err(AdminError::Usage(format!(
                    "{id:?} is not a valid client id (1-64 of letters, digits, '.', '_', '-')"
                )));
            }
            if store.get_client(&id).await?.is_some() {
                return Err(AdminError::Usage(format!("client {id} already exists")));
            }
            let secret = new_secret();
            let mut client = OAuthClient::new(&id, &secret, time::OffsetDateTime::now_utc());
            client.scopes = scopes;
            store.put_client(&client).await?;
            println!("client_id:     {id}");
            println!("client_secret: {secret}");
            println!("scopes:        {}", client.scopes.join(" "));
            eprintln!("The secret is shown only now; it is stored as a salted hash.");
        }
        ClientCommand::List => {
            println!(
                "{:<24} {:<9} {:<20} SCOPES",
                "CLIENT_ID", "STATUS", "CREATED"
            );
            for client in store.list_clients().await? {
                let created = time::OffsetDateTime::from_unix_timestamp(client.created_at)
                    .map(|t| webhooks::clock::rfc3339_millis(t)[..19].to_owned())
                    .unwrap_or_default();
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
        }
        ClientCommand::Disable { id } => set_disabled(store, &id, true).await?,
        ClientCommand::Enable { id } => set_disabled(store, &id, false).await?,
    }
    Ok(())
}

async fn set_disabled(store: &DynamoStore, id: &str, disabled: bool) -> Result<(), AdminError> {
    let mut client = store
        .get_client(id)
        .await?
        .ok_or_else(|| AdminError::Usage(format!("no client {id}")))?;
    client.disabled = disabled;
    store.put_client(&client).await?;
    println!("{id} {}", if disabled { "disabled" } else { "enabled" });
    Ok(())
}

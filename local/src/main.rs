//! `webhooks-local`: the whole webhook service on one machine, no AWS needed.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;
use webhooks::handlers::FlushSettings;
use webhooks::handlers::registration::encode_uri_component;
use webhooks::ids::{ApplicationId, ClientId, InvalidId};
use webhooks::retry::RetryPolicy;
use webhooks_local::{LocalConfig, LocalService, SAMPLE_RECORD, parse_duration};

/// Runs the webhook service locally: the Lambda handlers over in-memory storage and queue,
/// or, with --data-dir, over a SQLite database that survives restarts.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// How often the flush runs, which is also the coalescing window (e.g. 5m, 30s).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    flush_interval: Duration,
    /// Delay after the first failed attempt; it doubles each attempt, up to 12 h.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    retry_base: Duration,
    /// Attempts before a message moves to the dead-letter queue.
    #[arg(long, default_value_t = 15)]
    max_attempts: u32,
    /// Ack deadline of one delivery attempt.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    delivery_timeout: Duration,
    /// Concurrent requests within one delivery batch.
    #[arg(long, default_value_t = 100)]
    delivery_concurrency: usize,
    /// A flush page with at most this many jobs has their first attempt made by the flush
    /// itself, and only those needing another go on the queue; 0 queues every job.
    #[arg(long, default_value_t = FlushSettings::default().first_attempts_up_to)]
    flush_first_attempts: usize,
    /// Access-token lifetime.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_lifetime: Duration,
    /// LOCAL DEVELOPMENT ONLY: allow plain-http and loopback/private callback URLs.
    #[arg(long)]
    allow_insecure_callbacks: bool,
    /// Create an OAuth client ID:SECRET (repeatable). Without it one is generated.
    #[arg(long = "client", value_name = "ID:SECRET", value_parser = parse_credentials::<ClientId>)]
    clients: Vec<(ClientId, String)>,
    /// Create a Members-style application ID:APIKEY (repeatable).
    #[arg(long = "application", value_name = "ID:APIKEY", value_parser = parse_credentials::<ApplicationId>)]
    applications: Vec<(ApplicationId, String)>,
    /// Disable an endpoint that has failed every attempt for this long (410 Gone disables at once).
    #[arg(long, default_value = "5d", value_parser = parse_duration)]
    endpoint_disable_after: Duration,
    /// Do not create the sample record the seed's examples use.
    #[arg(long)]
    no_sample_record: bool,
    /// Keep everything (clients, subscriptions, records, queues, attempts) in a SQLite
    /// database in this directory, created when missing: a restart, even a kill -9, loses
    /// nothing. Without it everything is in memory. One runner per directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How long a received delivery stays hidden before it is received again (a delivery
    /// in flight when the runner died comes back after it).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    visibility_timeout: Duration,
    /// How long delivery attempts and the messages kept with them are kept (--data-dir).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    attempt_retention: Duration,
}

fn parse_credentials<Id: FromStr<Err = InvalidId>>(text: &str) -> Result<(Id, String), String> {
    let (id, secret) = text.split_once(':').ok_or("expected ID:SECRET")?;
    let id = id.parse().map_err(|e: InvalidId| e.to_string())?;
    if secret.is_empty() {
        return Err("the secret must not be empty".into());
    }
    Ok((id, secret.to_owned()))
}

#[global_allocator]
static ALLOCATOR: webhooks::Allocator = webhooks::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = LocalConfig {
        listen: args.listen,
        flush_interval: args.flush_interval,
        retry: RetryPolicy {
            base: args.retry_base,
            max_attempts: args.max_attempts.max(1),
            ..RetryPolicy::default()
        },
        delivery_timeout: args.delivery_timeout,
        delivery_concurrency: args.delivery_concurrency,
        flush_first_attempts: args.flush_first_attempts,
        token_lifetime: args.token_lifetime,
        allow_insecure_callbacks: args.allow_insecure_callbacks,
        clients: args.clients,
        applications: args.applications,
        sample_record: !args.no_sample_record,
        endpoint_disable_after: args.endpoint_disable_after,
        data_dir: args.data_dir,
        visibility_timeout: args.visibility_timeout,
        attempt_retention: args.attempt_retention,
        ..LocalConfig::default()
    };
    let service = match LocalService::start(config.clone()).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_banner(&service, &config);
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("error: waiting for Ctrl-C: {e}");
    }
    eprintln!("\nstopping…");
    service.stop().await;
    ExitCode::SUCCESS
}

/// Where the state is kept, for the banner.
fn storage_description(config: &LocalConfig) -> String {
    match &config.data_dir {
        Some(dir) => format!("{} (durable: SQLite, survives restarts)", dir.display()),
        None => "in memory (gone when it stops; --data-dir DIR keeps it)".to_owned(),
    }
}

/// One banner line per application created at start.
fn applications_lines(service: &LocalService) -> String {
    service
        .applications
        .iter()
        .map(|a| {
            format!(
                "\n  application   {} / API key {}   (webhooks signed with {})",
                a.id,
                a.secret.as_deref().unwrap_or("-"),
                a.webhook_secret
            )
        })
        .collect()
}

fn print_banner(service: &LocalService, config: &LocalConfig) {
    let base = format!("http://{}", service.addr);
    let client = &service.clients[0];
    // A client a durable runner made on an earlier start: its secret was shown then.
    let secret = client
        .secret
        .as_deref()
        .unwrap_or("<its secret, shown when it was created>");
    let id = &client.id;
    let callback = if config.allow_insecure_callbacks {
        format!("{base}/local/inbox/{SAMPLE_RECORD}")
    } else {
        "https://nowhere2.com/0000-0002-7465-2162/updated".to_owned()
    };
    let encoded = encode_uri_component(&callback);
    let storage = storage_description(config);
    println!(
        r#"
Person webhooks — local runner
  HTTP API      {base}
  storage       {storage}
  web console   {base}/console
  flush every   {flush:?} (POST {base}/local/flush to flush now)
  retries       base {retry:?}, doubling, {attempts} attempts, then the dead-letter queue
  OAuth client  {id} / {secret}   (callbacks signed with {whsec}){apps}
  sample record {SAMPLE_RECORD}{insecure}

Try the seed's examples:
  curl -i -H "Accept: application/json" -d "client_id={id}" -d "client_secret={secret}" \
       -d "scope=/webhook" -d "grant_type=client_credentials" "{base}/oauth/token"
  TOKEN=<access_token from above>
  curl -i -H "Authorization: Bearer $TOKEN" -X PUT "{base}/{SAMPLE_RECORD}/webhook/{encoded}"
  curl -i -X PUT -H "Content-Type: application/json" -d '{{"firstName":"Josiah"}}' "{base}/local/records/{SAMPLE_RECORD}"
  curl -i -X POST "{base}/local/flush"
  curl -s "{base}/local/inbox"      # what the built-in receiver got
  curl -s "{base}/local/status"     # queue, in-flight, dead-letter and parked counts
  curl -i -H "Authorization: Bearer $TOKEN" -X DELETE "{base}/{SAMPLE_RECORD}/webhook/{encoded}"
Ctrl-C stops the service.
"#,
        whsec = client.webhook_secret,
        apps = applications_lines(service),
        flush = config.flush_interval,
        retry = config.retry.base,
        attempts = config.retry.max_attempts,
        insecure = if config.allow_insecure_callbacks {
            "\n  !!! INSECURE CALLBACKS ALLOWED: http:// and loopback/private addresses can be called. Local development only. !!!"
        } else {
            "\n  (callbacks must be public https URLs; add --allow-insecure-callbacks to use the built-in receiver at /local/inbox)"
        },
    );
}

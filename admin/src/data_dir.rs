//! The commands against a local runner's data directory (`--data-dir`): the same clients,
//! applications, dead-letter, parked and poison commands as against AWS, on the SQLite
//! adapters. The directory's lock stays with the runner: these run beside it, and SQLite's
//! own locking keeps their writes and the runner's apart (a replayed job is picked up by
//! the runner's next poll, within a second).

use super::{
    AdminError, Command, DlqCommand, ParkedCommand, PoisonCommand, list_poison, replay_parked,
    run_applications, run_clients,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use webhooks::clock::SystemClock;
use webhooks::poison::PoisonId;
use webhooks::ports::PendingChanges;
use webhooks::sqlite::{Access, Database, SqliteQueue, SqliteStore};

/// Runs `command` on the data directory `dir`.
pub(super) async fn run(dir: &Path, command: Command) -> Result<(), AdminError> {
    if !dir.join(webhooks::sqlite::DATABASE_FILE).exists() {
        return Err(AdminError::Usage(format!(
            "{} holds no database: start webhooks-local --data-dir {} once first",
            dir.display(),
            dir.display()
        )));
    }
    let db = Database::open(dir, Access::Tool).map_err(|e| AdminError::Usage(e.to_string()))?;
    let store = SqliteStore::new(db.clone());
    // The receive settings do not matter here: a tool never receives deliveries.
    let queue = SqliteQueue::new(db.clone(), Arc::new(SystemClock), Duration::ZERO, 1);
    let result = match command {
        Command::Clients(command) => run_clients(&store, command).await,
        Command::Applications(command) => run_applications(&store, command).await,
        Command::Dlq(DlqCommand::Replay { .. }) => {
            let moved = queue.redrive_dead_letters().await?;
            println!("moved {moved} messages back to the delivery queue");
            Ok(())
        }
        Command::Parked(ParkedCommand::Replay { max, .. }) => {
            replay_parked(&store, &store, &queue, max).await
        }
        Command::Poison(PoisonCommand::List) => list_poison(&store).await,
        Command::Poison(PoisonCommand::Replay { id, all, .. }) => {
            replay_poison(&store, id, all).await
        }
        Command::IndexWebhooks => {
            println!("nothing to do: a data directory indexes every subscription by its client");
            Ok(())
        }
    };
    db.close();
    result
}

/// Marks each item's record pending in the window the runner captures changes in now (read
/// and written in one transaction, so the runner's next flush reads it), then removes it.
async fn replay_poison(
    store: &SqliteStore,
    id: Option<String>,
    all: bool,
) -> Result<(), AdminError> {
    let items = store.poison_items().await?;
    let chosen: Vec<_> = if all {
        items
    } else {
        let id = PoisonId::new(id.unwrap_or_default());
        match items.into_iter().find(|item| item.id() == id) {
            Some(item) => vec![item],
            None => return Err(AdminError::Usage(format!("no poison item {id}"))),
        }
    };
    for item in chosen {
        let window = store.mark_in_current_window(&item.record).await?;
        store.remove_poison(&item.id()).await?;
        println!(
            "replayed: {} (record {}, pending in window {})",
            item.id(),
            item.record,
            window.0
        );
    }
    Ok(())
}

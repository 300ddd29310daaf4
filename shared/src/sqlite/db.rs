//! The database file of a data directory: the process lock, the schema, one writer thread
//! that commits in groups, and a pool of readers.
//!
//! Every write runs on one thread that owns the only writing connection (SQLite allows one
//! writer at a time anyway). It takes every write waiting when it wakes, runs each in its
//! own savepoint inside one transaction, and commits them together: one WAL append (and,
//! when one of them must be durable, one fsync) for many callers, who get their answers only
//! after the commit. Reads run on pooled read-only connections on tokio's blocking threads,
//! beside the writer (WAL lets readers and one writer work at once).

use super::schema;
use crate::ports::{BackendError, BackendResult};
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "webhooks.sqlite3";
/// The lock file inside a data directory, held by the running local runner.
pub const LOCK_FILE: &str = "webhooks.lock";

/// Writes one commit takes at most (the rest wait for the next).
const MAX_GROUP: usize = 512;
/// How long a connection waits for another process's write lock (`webhooks-admin`)
/// before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept.
const MAX_IDLE_READERS: usize = 8;
/// Page cache per connection, KiB (SQLite's default is 2 MiB; the indexes of a large
/// attempt log want more).
const CACHE_KIB: i64 = 64 * 1024;
/// Page cache of each read connection, KiB.
const READER_CACHE_KIB: i64 = 8 * 1024;
/// How much of the database file connections read through a memory map.
const MMAP_BYTES: i64 = 4 * 1024 * 1024 * 1024;

/// How far a write must have gone when its caller is told it is done.
///
/// Both are safe against the process being killed (a committed transaction is in the
/// operating system's hands). They differ on power loss: WAL frames carry a running
/// checksum, so after a power loss SQLite recovers a *prefix* of the committed
/// transactions, and a [`Durability::Normal`] commit may be missing from it; a
/// [`Durability::Full`] commit fsyncs the WAL, so it and every commit before it survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: for the pipeline's own steps, whose loss only repeats work
    /// (a flush page enqueued again, a delivery sent again: at least once allows it).
    Normal,
    /// `synchronous=FULL`: for what a caller outside was told is stored (a client,
    /// a token, a subscription, an application, a record change, a sync started).
    Full,
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created or read.
    #[error("data directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error(
        "data directory {dir} is in use by another webhooks-local (its lock file {lock} is held{holder}); stop that one first, or give this one another --data-dir"
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        /// `" by pid N"` when the holder wrote its pid.
        holder: String,
    },
    /// The database was written by a newer version of this program.
    #[error(
        "the database {file} has schema version {found}, newer than this program knows ({known}); run the newer version, or restore a backup"
    )]
    NewerSchema {
        file: PathBuf,
        found: u32,
        /// The newest this program migrates to.
        known: u32,
    },
    /// SQLite refused to open or migrate the database.
    #[error("database {file}: {source}")]
    Sqlite {
        file: PathBuf,
        source: rusqlite::Error,
    },
}

/// Who opens the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The local runner: takes the directory's lock (a second runner is refused), and
    /// frees the leases a killed run left (only a runner takes them, and it is the only one).
    Runner,
    /// An operator tool beside a running runner (`webhooks-admin --data-dir`): no lock;
    /// SQLite's own locking keeps its writes and the runner's apart.
    Tool,
}

type Reply = Box<dyn FnOnce(Option<BackendError>) + Send>;
/// A write's work: given the connection (or why there is none), whether to keep its
/// changes and how to answer once the commit is known.
type Work = Box<dyn FnOnce(Result<&Connection, BackendError>) -> (bool, Reply) + Send>;

/// A write waiting for the writer thread: runs inside the group's transaction and says
/// whether to keep its changes, then hears how the commit went.
struct Job {
    durability: Durability,
    run: Work,
}

/// An open data directory.
pub struct Database {
    dir: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropped to stop the checkpointer (a runner's only).
    checkpointer: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<Readers>,
    /// Held while open; the lock goes with it.
    _lock: Option<File>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("dir", &self.dir).finish()
    }
}

fn sqlite_error(file: &Path) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |source| OpenError::Sqlite {
        file: file.to_owned(),
        source,
    }
}

/// A failure of SQLite as a port error: corruption cannot pass by retrying; anything else
/// (a full disk, a lock held too long) may.
pub(crate) fn backend(e: rusqlite::Error) -> BackendError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            BackendError::Corrupt(e.to_string())
        }
        _ => BackendError::Unavailable(format!("sqlite: {e}")),
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // Pages read through a memory map instead of a read call each: the attempt log's
    // indexes are written at random places, so the writer reads many pages it last saw
    // long ago.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    Ok(())
}

impl Database {
    /// Opens (creating it when needed) the data directory `dir`: takes its lock for a
    /// [`Access::Runner`], migrates the schema to the newest version, and starts the
    /// writer thread.
    pub fn open(dir: &Path, access: Access) -> Result<Arc<Self>, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            dir: dir.to_owned(),
            source,
        })?;
        let lock = match access {
            Access::Runner => Some(lock(dir)?),
            Access::Tool => None,
        };
        let file = dir.join(DATABASE_FILE);
        let mut conn = Connection::open(&file).map_err(sqlite_error(&file))?;
        configure(&conn).map_err(sqlite_error(&file))?;
        // WAL: readers do not block the writer nor it them, and a commit is one append.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite_error(&file))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Sqlite {
                file,
                source: rusqlite::Error::InvalidParameterName(format!(
                    "journal_mode stayed {mode}, not WAL"
                )),
            });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite_error(&file))?;
        schema::migrate(&mut conn, &file)?;
        let checkpointer = match access {
            Access::Runner => {
                schema::free_leases(&conn).map_err(sqlite_error(&file))?;
                // The checkpointer copies the WAL into the database file; the writer does
                // it itself only past this backstop (a checkpointer held back by readers).
                conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                    .map_err(sqlite_error(&file))?;
                // The WAL file is reused from its start once checkpointed; past a busy
                // spell, it is cut back to this size instead of keeping its largest.
                conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
                    .map_err(sqlite_error(&file))?;
                Some(start_checkpointer(&file)?)
            }
            Access::Tool => None,
        };
        let (sender, jobs) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs))
            .map_err(|source| OpenError::Directory {
                dir: dir.to_owned(),
                source,
            })?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(checkpointer),
            readers: Arc::new(Readers {
                file,
                idle: Mutex::new(Vec::new()),
            }),
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self) -> &Path {
        &self.readers.file
    }

    /// Runs `work` in the writer's transaction; its changes are kept when it returns `Ok`
    /// (and rolled back to its savepoint otherwise). Answers after the commit.
    pub(crate) async fn write<T, F>(&self, durability: Durability, work: F) -> BackendResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<T> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job = Job {
            durability,
            run: Box::new(move |conn: Result<&Connection, BackendError>| {
                let result = conn.and_then(work);
                let keep = result.is_ok();
                let reply: Reply = Box::new(move |commit_error| {
                    let _ = answer.send(match commit_error {
                        Some(e) => Err(e),
                        None => result,
                    });
                });
                (keep, reply)
            }),
        };
        let sent = match &*self.writer.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(writer) => writer.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(BackendError::Unavailable(
                "the database is closed".to_owned(),
            ));
        }
        answered.await.unwrap_or_else(|_| {
            Err(BackendError::Unavailable(
                "the database writer failed during this write".to_owned(),
            ))
        })
    }

    /// Runs `work` on a read connection, on a blocking thread.
    pub(crate) async fn read<T, F>(&self, work: F) -> BackendResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> BackendResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.give_back(conn);
            result
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("a database read failed: {e}")))?
    }

    /// Stops the writer after the writes already sent, and waits for it (the last
    /// commit is on disk when this returns).
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = thread.join();
        }
        if let Some((stop, thread)) = self
            .checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.close();
    }
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Bytes the WAL file is cut back to after a checkpoint reset it.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// WAL pages (4 KiB) past which the writer checkpoints itself.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// Starts the thread that checkpoints the WAL beside the writer: copying committed pages
/// into the database file (and syncing it) is most of a busy writer's system time, and
/// SQLite's passive checkpoint runs without blocking writes, so it is done on a second
/// core instead of inside the writer's commits.
fn start_checkpointer(
    file: &Path,
) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>), OpenError> {
    let conn = Connection::open(file).map_err(sqlite_error(file))?;
    configure(&conn).map_err(sqlite_error(file))?;
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the next one tries again");
                }
            }
        })
        .map_err(|source| OpenError::Directory {
            dir: file.to_owned(),
            source,
        })?;
    Ok((stop, thread))
}

/// Takes the directory's lock file (an advisory `flock`, released by the kernel when the
/// process ends however it ends) and writes our pid into it for the next one's error.
fn lock(dir: &Path) -> Result<File, OpenError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let directory_error = |source| OpenError::Directory {
        dir: dir.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(directory_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(OpenError::Locked {
                dir: dir.to_owned(),
                lock: path,
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {pid}")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(directory_error(e)),
    }
    file.set_len(0).map_err(directory_error)?;
    file.rewind().map_err(directory_error)?;
    write!(file, "{}", std::process::id()).map_err(directory_error)?;
    Ok(file)
}

/// The writer thread: one transaction per group of waiting writes.
fn write_loop(conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut synchronous = Durability::Normal;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let wanted = if group.iter().any(|j| j.durability == Durability::Full) {
            Durability::Full
        } else {
            Durability::Normal
        };
        if wanted != synchronous {
            let level = match wanted {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            };
            if let Err(e) = conn.pragma_update(None, "synchronous", level) {
                fail_group(group, &e);
                continue;
            }
            synchronous = wanted;
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            fail_group(group, &e);
            continue;
        }
        let replies: Vec<Reply> = group
            .into_iter()
            .filter_map(|job| run_job(&conn, job))
            .collect();
        match conn.execute_batch("COMMIT") {
            Ok(()) => replies.into_iter().for_each(|reply| reply(None)),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                tracing::error!(error = %e, "sqlite commit failed");
                for reply in replies {
                    reply(Some(backend(clone_error(&e))));
                }
            }
        }
    }
}

/// Runs one write of a group in its own savepoint, rolled back when it fails; returns
/// its reply, to be sent once the group's transaction ends.
fn run_job(conn: &Connection, job: Job) -> Option<Reply> {
    if let Err(e) = conn.execute_batch("SAVEPOINT job") {
        // Not even a savepoint: drop it (its caller hears the writer failed).
        tracing::error!(error = %e, "sqlite savepoint failed");
        return None;
    }
    // A panic in a write loses that write only; its caller hears it failed.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (job.run)(Ok(conn))));
    let keep = matches!(outcome, Ok((true, _)));
    let ended = if keep {
        conn.execute_batch("RELEASE job")
    } else {
        conn.execute_batch("ROLLBACK TO job; RELEASE job")
    };
    if let Err(e) = ended {
        tracing::error!(error = %e, "sqlite savepoint could not be ended");
    }
    outcome.ok().map(|(_, reply)| reply)
}

/// rusqlite's error is not `Clone`; its text and code are what a caller needs.
fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

fn fail_group(group: Vec<Job>, e: &rusqlite::Error) {
    tracing::error!(error = %e, "sqlite could not start a transaction");
    for job in group {
        // Not run: its caller hears why.
        let (_, reply) = (job.run)(Err(backend(clone_error(e))));
        reply(None);
    }
}

/// Read-only connections, opened when needed and kept for the next read.
struct Readers {
    file: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn take(&self) -> BackendResult<Connection> {
        if let Some(conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.file,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(backend)?;
        configure(&conn).map_err(backend)?;
        // Readers read through the memory map; a small cache of their own is enough.
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
            .map_err(backend)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

//! The SQLite side of the embedded store: schema migrations, one writer thread that owns
//! all writes (each call one IMMEDIATE transaction), and a small pool of read connections.
//!
//! Several processes may share a home (the worker and the CLI): SQLite's WAL and locking
//! make their transactions atomic and isolated; `busy_timeout` makes them wait their turn.

use crate::error::{Result, StoreError};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Bump when adding a migration; each entry moves the schema from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: everything of the first release.
    r#"
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        dir TEXT NOT NULL,
        filename TEXT NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        hidden INTEGER NOT NULL DEFAULT 0,
        description TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        blob TEXT,
        annotations_count INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (dataset_id, filename)
    );
    CREATE TABLE annotations (
        id TEXT PRIMARY KEY,
        item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        dataset_id TEXT NOT NULL,
        type TEXT NOT NULL,
        label TEXT NOT NULL,
        coordinates TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    CREATE INDEX annotations_item ON annotations (item_id);
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        configuration TEXT NOT NULL DEFAULT '{}',
        dataset_id TEXT,
        base_model_id TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '[]',
        description TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE artifacts (
        model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (model_id, path)
    );
    CREATE TABLE metrics (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        model_id TEXT NOT NULL,
        dataset_id TEXT,
        figure TEXT NOT NULL,
        legend TEXT NOT NULL,
        x REAL NOT NULL,
        y REAL NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX metrics_model ON metrics (model_id, seq);
    CREATE TABLE pipelines (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        nodes TEXT NOT NULL DEFAULT '[]',
        connections TEXT NOT NULL DEFAULT '[]',
        start_nodes TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE variables (
        id TEXT NOT NULL,
        pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL DEFAULT 'null',
        description TEXT,
        PRIMARY KEY (pipeline_id, name)
    );
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        function_name TEXT NOT NULL,
        service_name TEXT,
        pipeline TEXT,
        pipeline_id TEXT,
        pipeline_execution_id TEXT,
        input TEXT NOT NULL DEFAULT 'null',
        output TEXT NOT NULL DEFAULT 'null',
        status TEXT NOT NULL,
        latest TEXT NOT NULL,
        status_log TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX executions_status ON executions (status);
    CREATE INDEX executions_pipeline ON executions (pipeline_id, pipeline_execution_id);
    CREATE TABLE feature_sets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        entity_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        model_id TEXT UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE vectors (
        id TEXT NOT NULL,
        feature_set_id TEXT NOT NULL REFERENCES feature_sets(id) ON DELETE CASCADE,
        entity_id TEXT NOT NULL,
        dataset_id TEXT NOT NULL,
        value BLOB NOT NULL,
        seq INTEGER NOT NULL,
        UNIQUE (feature_set_id, entity_id)
    );
    CREATE INDEX vectors_seq ON vectors (feature_set_id, seq);
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The database of one home.
pub struct Db {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // FULL: a committed transaction survives power loss, not only a killed process.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// Applies pending migrations in one transaction each, recording the version.
fn migrate(conn: &mut Connection) -> Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this cliptune ({SCHEMA_VERSION}); upgrade cliptune"
            )));
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[version as usize])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version + 1],
        )?;
        tx.commit()?;
    }
}

impl Db {
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = open_conn(path)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("cliptune-store-writer".into())
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Runs `f` on the writer thread inside one IMMEDIATE transaction: committed when `f`
    /// returns `Ok`, rolled back otherwise.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let result = (|| {
                let t = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let r = f(&t)?;
                t.commit()?;
                Ok(r)
            })();
            let _ = tx.send(result);
        });
        let sender = self
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("store writer lock poisoned".into()))?
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        sender
            .send(job)
            .map_err(|_| StoreError::Unavailable("store writer thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer thread stopped".into()))?
    }

    /// Runs `f` on a pooled read connection, on tokio's blocking pool when inside a runtime.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let job = move || -> Result<R> {
            let conn = readers.lock().ok().and_then(|mut p| p.pop());
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&path)?,
            };
            let r = f(&conn);
            if let Ok(mut pool) = readers.lock() {
                if pool.len() < 8 {
                    pool.push(conn);
                }
            }
            r
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(job)
                .await
                .map_err(|e| StoreError::Unavailable(format!("store reader task: {e}")))?,
            Err(_) => job(),
        }
    }

    /// Stops the writer thread after the queued writes; later writes fail `Unavailable`.
    pub fn close(&self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.close();
    }
}

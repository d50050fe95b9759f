//! The SQLite sink.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use omnirelay_replication::{
    Error, ErrorKind, FileIdentity, Format, Health, HealthCell, Record, Sink, SinkError, StreamId,
    Timestamp,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::table::{
    CHECKPOINT_TABLE, DEFAULT_TABLE, create_checkpoint_sql, create_sql, derived_table, insert_sql,
    quoted, validate_table_name,
};

/// SQLite's `synchronous` setting for the sink's connection (in WAL mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is synced: a batch is durable when `apply` returns.
    #[default]
    Full,
    /// Commits are synced at WAL checkpoints: faster, and a power loss can
    /// roll back the newest batches (with their checkpoint, so they are
    /// delivered again from the log, which must still hold them).
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Knobs of a [`SqliteSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteSinkOptions {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// The table of the stream `default`.
    pub table: String,
    /// Tables of other streams, by stream id. A stream not listed writes
    /// `<table>_<stream>` (with `-` and `.` as `_`).
    pub tables: BTreeMap<String, String>,
    /// How commits are synced.
    pub synchronous: Synchronous,
    /// How long a write waits for another connection's lock before it
    /// fails (and is retried by delivery).
    pub busy_timeout: Duration,
}

impl SqliteSinkOptions {
    /// The reference's table in `path`, every commit synced, waiting up to
    /// 5 s for a lock.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            table: DEFAULT_TABLE.to_owned(),
            tables: BTreeMap::new(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// The table `stream` writes.
    pub fn table_for(&self, stream: &str) -> String {
        if let Some(table) = self.tables.get(stream) {
            return table.clone();
        }
        if stream == StreamId::DEFAULT {
            return self.table.clone();
        }
        derived_table(&self.table, stream)
    }

    /// Checks every configured table name, and that no two streams share a
    /// table.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the first problem.
    pub fn validate(&self) -> Result<(), Error> {
        validate_table_name(&self.table)?;
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        owners.insert(
            self.table_for(StreamId::DEFAULT).to_ascii_lowercase(),
            StreamId::DEFAULT,
        );
        for (stream, table) in &self.tables {
            StreamId::new(stream)?;
            validate_table_name(table)?;
            if stream == StreamId::DEFAULT {
                continue;
            }
            // SQLite table names are case-insensitive.
            if let Some(other) = owners.insert(table.to_ascii_lowercase(), stream) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("streams {other:?} and {stream:?} would share the table {table:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// Writes records into SQLite tables in the reference's layout; see the
/// crate documentation.
///
/// The sink opens its connection on first use (not when built), so a
/// database that is locked or on a missing mount is a retryable failure of
/// `apply`, not of start-up. Cloning gives another handle to the same
/// connection.
#[derive(Clone, Debug)]
pub struct SqliteSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: SqliteSinkOptions,
    state: Mutex<State>,
    health: HealthCell,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    connection: Option<Connection>,
    /// The database file the connection opened.
    opened: Option<FileIdentity>,
    /// Streams whose table exists and is registered, with its name and the
    /// SQL that inserts into it.
    ready: HashMap<StreamId, Ready>,
}

#[derive(Debug, Clone)]
struct Ready {
    table: String,
    insert: String,
}

/// One row to insert, owned so that it can go to a blocking thread.
struct Row {
    sequence: i64,
    event_type: i32,
    stamped: Timestamp,
    timestamp: Arc<str>,
    peer: Option<Arc<str>>,
    json: Bytes,
}

fn sqlite_error(context: &str, err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    if let rusqlite::Error::SqliteFailure(failure, _) = &err
        && matches!(
            failure.code,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
        )
    {
        // The whole database, not one record: the sink waits for the
        // operator (a replaced file is picked up) instead of sending every
        // record to the dead letters.
        return Error::new(
            ErrorKind::Unavailable,
            format!(
                "sqlite: {context}: the database file is damaged (restore it, or move it away and its -wal and -shm with it for a new one)"
            ),
        )
        .with_source(err);
    }
    let kind = match &err {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::FileLockingProtocolFailed
            // Permissions an operator fixes: the sink waits for them
            // instead of sending every record to the dead letters.
            | ErrorCode::PermissionDenied => ErrorKind::Unavailable,
            ErrorCode::AuthorizationForStatementDenied => ErrorKind::Config,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    };
    // The source says what failed; the message says where.
    Error::new(kind, format!("sqlite: {context}")).with_source(err)
}

impl SqliteSink {
    /// A sink over `options.path`. No I/O happens until the first use.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for invalid table names or two streams sharing
    /// a table.
    pub fn new(options: SqliteSinkOptions) -> Result<Self, Error> {
        options.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                state: Mutex::default(),
                health: HealthCell::default(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &SqliteSinkOptions {
        &self.inner.options
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, SinkError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| {
                SinkError::new(ErrorKind::Internal, format!("sqlite sink task failed: {e}"))
            })
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the sqlite sink is closed"));
        }
        Ok(())
    }

    /// Closes the connection when its database file is no longer the one
    /// the path names (removed, renamed away or replaced): rows written on
    /// would go where no reader looks, and be lost for good at the next
    /// start. `true` when it closed one.
    fn forget_moved(&self, state: &mut State) -> Result<bool, Error> {
        let Some(opened) = state.opened else {
            return Ok(false);
        };
        let path = &self.options.path;
        let named = opened.named_by(path).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("sqlite: cannot stat {}", path.display()),
            )
            .with_source(e)
        })?;
        if named {
            return Ok(false);
        }
        tracing::warn!(
            database = %path.display(),
            "sqlite sink: the database file was removed or replaced while open; starting on the file the path names now"
        );
        state.opened = None;
        state.ready.clear();
        if let Some(connection) = state.connection.take() {
            // Closing checkpoints the journal into the old file and
            // removes it, so that a new database is not read through it.
            if let Err((_, e)) = connection.close() {
                tracing::warn!(error = %e, "sqlite sink: closing the moved database failed");
            }
        }
        Ok(true)
    }

    /// The connection, opened and set up on first use (and again after
    /// [`Inner::forget_moved`] closed it).
    fn connection<'a>(&self, state: &'a mut State) -> Result<&'a mut Connection, Error> {
        if state.connection.is_none() {
            let path = &self.options.path;
            // SQLite says only "unable to open database file", which
            // retrying never changes.
            if path.is_dir() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "sqlite: {} is a directory: name a database file (in it, say)",
                        path.display()
                    ),
                ));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("cannot create the directory of {}", path.display()),
                    )
                    .with_source(e)
                })?;
            }
            let open = |path: &std::path::Path| -> rusqlite::Result<Connection> {
                let connection = Connection::open(path)?;
                connection.busy_timeout(self.options.busy_timeout)?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", self.options.synchronous.pragma())?;
                connection.execute_batch(&create_checkpoint_sql())?;
                Ok(connection)
            };
            let connection =
                open(path).map_err(|e| sqlite_error(&format!("open {}", path.display()), e))?;
            let opened = FileIdentity::at(path)
                .and_then(|found| found.ok_or_else(|| std::io::ErrorKind::NotFound.into()))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("sqlite: cannot stat {}", path.display()),
                    )
                    .with_source(e)
                })?;
            state.ready.clear();
            state.connection = Some(connection);
            state.opened = Some(opened);
        }
        state
            .connection
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "sqlite connection missing"))
    }

    /// Creates and registers `stream`'s table if needed.
    fn ready(&self, state: &mut State, stream: &StreamId) -> Result<Ready, Error> {
        if let Some(ready) = state.ready.get(stream) {
            return Ok(ready.clone());
        }
        let table = self.options.table_for(stream.as_str());
        validate_table_name(&table)?;
        let connection = self.connection(state)?;
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin", e))?;
        tx.execute_batch(&create_sql(&table))
            .map_err(|e| sqlite_error(&format!("create table {table}"), e))?;
        let owner: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT stream FROM {} WHERE table_name = ?1",
                    quoted(CHECKPOINT_TABLE)
                ),
                [&table],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| sqlite_error("read the stream of a table", e))?;
        match owner {
            Some(owner) if owner != stream.as_str() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("table {table:?} already holds the stream {owner:?}, not {stream:?}"),
                ));
            }
            Some(_) => {}
            None => {
                // A table written before it was registered (by the
                // reference, say) resumes after its highest row.
                let through: i64 = tx
                    .query_row(
                        &format!(
                            "SELECT IFNULL(MAX(sequence_number), 0) FROM {}",
                            quoted(&table)
                        ),
                        [],
                        |row| row.get(0),
                    )
                    .map_err(|e| sqlite_error(&format!("read {table}"), e))?;
                tx.execute(
                    &format!(
                        "INSERT INTO {} (table_name, stream, sequence, updated_at) VALUES (?1, ?2, ?3, ?4)",
                        quoted(CHECKPOINT_TABLE)
                    ),
                    params![
                        table,
                        stream.as_str(),
                        through,
                        Timestamp::now().to_round_trip_string()
                    ],
                )
                .map_err(|e| sqlite_error("register a table", e))?;
            }
        }
        tx.commit().map_err(|e| sqlite_error("commit", e))?;
        let ready = Ready {
            insert: insert_sql(&table),
            table,
        };
        state.ready.insert(stream.clone(), ready.clone());
        Ok(ready)
    }

    /// Inserts `rows` of `stream` in one transaction with the checkpoint;
    /// `refused` (the record after the last row, which the sink will never
    /// take) is returned as the error once the rows are stored, and so is a
    /// row whose sequence the table holds for another event, once the rows
    /// before it are.
    fn write(
        &self,
        stream: &StreamId,
        rows: &[Row],
        refused: Option<SinkError>,
        fill: bool,
    ) -> Result<(), SinkError> {
        let mut state = self.state();
        // A database removed while the rows went in lost them with it: they
        // go to the new one too (a few times at most: then an error, which
        // delivery retries).
        for _ in 0..3 {
            let written = self
                .write_rows(&mut state, stream, rows, fill)
                .and_then(|stored| Ok((stored, self.forget_moved(&mut state)?)));
            match written {
                Ok((_, true)) => {}
                Ok(((through, conflict), false)) => {
                    return match conflict.or(refused) {
                        None => Ok(()),
                        Some(err) => Err(err.applied_through(through)),
                    };
                }
                Err(error) => {
                    if !matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Config) {
                        // Start afresh: a damaged connection is not reused.
                        state.connection = None;
                        state.opened = None;
                    }
                    return Err(SinkError::from(error));
                }
            }
        }
        Err(SinkError::new(
            ErrorKind::Unavailable,
            format!(
                "sqlite: {} keeps being removed as it is written",
                self.options.path.display()
            ),
        ))
    }

    /// The last row of `rows` stored (`None`: none), and the error refusing
    /// the row after it when the table holds another event under that
    /// row's sequence. Rows above the checkpoint are inserted, and with
    /// `fill` rows below it too. A row the table holds already — below the
    /// checkpoint, or met by a conflict on insert — is stored when the
    /// table's row is the same event (the same JSON, or the same type and
    /// timestamp: a re-send, a standby writing its primary's stream), and
    /// refused when it is another log's (another node writing the same
    /// stream to this table, or this node's log lost and numbering from 1
    /// again): taking it for stored would lose it in silence.
    fn write_rows(
        &self,
        state: &mut State,
        stream: &StreamId,
        rows: &[Row],
        fill: bool,
    ) -> Result<(Option<u64>, Option<SinkError>), Error> {
        self.forget_moved(state)?;
        let ready = self.ready(state, stream)?;
        let connection = self.connection(state)?;
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin", e))?;
        let checkpoint_sql = format!(
            "SELECT sequence FROM {} WHERE table_name = ?1",
            quoted(CHECKPOINT_TABLE)
        );
        let mark: i64 = tx
            .query_row(&checkpoint_sql, [&ready.table], |row| row.get(0))
            .map_err(|e| sqlite_error("read the checkpoint", e))?;
        let mut last = mark;
        let mut stored = None;
        let mut conflict = None;
        {
            let mut insert = tx.prepare_cached(&ready.insert).map_err(|e| {
                sqlite_error(&format!("prepare the insert into {}", ready.table), e)
            })?;
            let mut held = tx
                .prepare_cached(&format!(
                    "SELECT event_type, timestamp, event_json FROM {} WHERE sequence_number = ?1",
                    quoted(&ready.table)
                ))
                .map_err(|e| sqlite_error(&format!("prepare a read of {}", ready.table), e))?;
            for row in rows {
                // Checked to be UTF-8 before the batch came here.
                let json = std::str::from_utf8(&row.json).unwrap_or_default();
                if row.sequence > mark || fill {
                    let inserted = insert
                        .execute(params![
                            row.sequence,
                            row.event_type,
                            &*row.timestamp,
                            row.peer.as_deref(),
                            json
                        ])
                        .map_err(|e| sqlite_error(&format!("insert into {}", ready.table), e))?;
                    if inserted == 1 {
                        last = last.max(row.sequence);
                        stored = Some(row.sequence);
                        continue;
                    }
                }
                let found: Option<(i32, String, String)> = held
                    .query_row([row.sequence], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
                    .map_err(|e| sqlite_error(&format!("read {}", ready.table), e))?;
                if let Some((event_type, timestamp, held_json)) = found
                    && held_json != json
                    && (event_type != row.event_type || *timestamp != *row.timestamp)
                {
                    conflict = Some(SinkError::new(
                        ErrorKind::Config,
                        format!(
                            "table {} already holds another event as sequence {}: another log writes this stream to it (another node, or this node before its data was lost); give each node its own table or database",
                            ready.table, row.sequence
                        ),
                    ));
                    break;
                }
                last = last.max(row.sequence);
                stored = Some(row.sequence);
            }
        }
        if last > mark {
            tx.execute(
                &format!(
                    "UPDATE {} SET sequence = ?2, updated_at = ?3 WHERE table_name = ?1",
                    quoted(CHECKPOINT_TABLE)
                ),
                params![ready.table, last, Timestamp::now().to_round_trip_string()],
            )
            .map_err(|e| sqlite_error("write the checkpoint", e))?;
        }
        tx.commit().map_err(|e| sqlite_error("commit", e))?;
        Ok((stored.and_then(|s| u64::try_from(s).ok()), conflict))
    }

    fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, Error> {
        let table = self.options.table_for(stream.as_str());
        validate_table_name(&table)?;
        let mut state = self.state();
        self.forget_moved(&mut state)?;
        let connection = self.connection(&mut state)?;
        let registered: Option<(String, i64)> = connection
            .query_row(
                &format!(
                    "SELECT stream, sequence FROM {} WHERE table_name = ?1",
                    quoted(CHECKPOINT_TABLE)
                ),
                [&table],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| sqlite_error("read the checkpoint", e))?;
        let mark = match registered {
            Some((owner, _)) if owner != stream.as_str() => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("table {table:?} already holds the stream {owner:?}, not {stream:?}"),
                ));
            }
            Some((_, mark)) => Some(mark),
            // Not registered yet: a table written by the reference resumes
            // after its highest row.
            None => connection
                .query_row(
                    &format!("SELECT MAX(sequence_number) FROM {}", quoted(&table)),
                    [],
                    |row| row.get(0),
                )
                .optional()
                .or_else(|e| match e {
                    rusqlite::Error::SqliteFailure(_, Some(ref message))
                        if message.starts_with("no such table") =>
                    {
                        Ok(None)
                    }
                    e => Err(e),
                })
                .map_err(|e| sqlite_error(&format!("read {table}"), e))?
                .flatten(),
        };
        Ok(mark.and_then(|m| u64::try_from(m).ok()).filter(|m| *m > 0))
    }
}

impl SqliteSink {
    /// Stores `batch`: its rows above the checkpoint, and with `fill` those
    /// at or below it that the table lacks (see [`Sink::fill_gaps`]).
    async fn store(&self, batch: &[Record<'_>], fill: bool) -> Result<(), SinkError> {
        self.inner.check_open()?;
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let stream = first.stream().clone();
        let mut rows = Vec::with_capacity(batch.len());
        let mut refused = None;
        for record in batch {
            if record.encoding().format != Format::Json {
                return Err(SinkError::new(
                    ErrorKind::Config,
                    format!(
                        "the sqlite sink stores JSON (event_json), not {}",
                        record.encoding()
                    ),
                ));
            }
            let Ok(sequence) = i64::try_from(record.sequence()) else {
                refused = Some(SinkError::new(
                    ErrorKind::Rejected,
                    format!(
                        "sequence {} does not fit an SQLite integer",
                        record.sequence()
                    ),
                ));
                break;
            };
            if std::str::from_utf8(record.bytes()).is_err() {
                refused = Some(SinkError::new(
                    ErrorKind::Rejected,
                    format!("sequence {} is not UTF-8 JSON text", record.sequence()),
                ));
                break;
            }
            let header = record.header();
            // The events of one publish share a timestamp: format it once.
            let timestamp = match rows.last() {
                Some(Row {
                    stamped, timestamp, ..
                }) if *stamped == header.timestamp => timestamp.clone(),
                _ => header.timestamp.to_round_trip_string().into(),
            };
            rows.push(Row {
                sequence,
                event_type: header.kind.code,
                stamped: header.timestamp,
                timestamp,
                peer: header.peer.clone(),
                json: record.shared_bytes(),
            });
        }
        let result = self
            .blocking(move |inner| inner.write(&stream, &rows, refused, fill))
            .await?;
        self.inner.health.record(&result);
        result
    }
}

impl Sink for SqliteSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        self.store(batch, false).await
    }

    /// Each sequence is a row of its own: one the table lacks is inserted
    /// wherever it lies; one it holds is checked as by `apply`.
    async fn fill_gaps(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        self.store(batch, true).await
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        self.inner.check_open()?;
        let stream = stream.clone();
        Ok(self
            .blocking(move |inner| inner.checkpoint(&stream))
            .await??)
    }

    fn health(&self) -> Health {
        self.inner.health.get()
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.inner.closed.store(true, Ordering::Release);
        let connection = {
            let mut state = self.inner.state();
            state.opened = None;
            state.connection.take()
        };
        if let Some(connection) = connection {
            self.blocking(move |_| {
                connection
                    .close()
                    .map_err(|(_, e)| sqlite_error("close", e))
            })
            .await??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use omnirelay_replication::ErrorKind;

    use super::sqlite_error;

    fn kind_of(code: std::ffi::c_int) -> ErrorKind {
        let failure = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        sqlite_error("write", failure).kind()
    }

    #[test]
    fn what_waiting_or_an_operator_fixes_is_retried_and_the_rest_is_not() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_FULL,
            ffi::SQLITE_READONLY,
            // Was `config`: every record dead-lettered until the
            // permissions were fixed.
            ffi::SQLITE_PERM,
            // Was `corrupt`: the same.
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
        ] {
            assert_eq!(kind_of(code), ErrorKind::Unavailable, "code {code}");
        }
        assert_eq!(kind_of(ffi::SQLITE_AUTH), ErrorKind::Config);
        assert_eq!(kind_of(ffi::SQLITE_MISMATCH), ErrorKind::Internal);
    }
}

//! Reading rows back out of a sink's tables (a replay source).

use std::path::Path;

use omnirelay_replication::{Error, ErrorKind, StreamId};
use rusqlite::{Connection, OpenFlags};

use crate::table::{CHECKPOINT_TABLE, quoted, validate_table_name};

/// One stored event, as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `sequence_number`.
    pub sequence: u64,
    /// `event_type`: the event type's number.
    pub event_type: i64,
    /// `timestamp`, in the round-trip form.
    pub timestamp: String,
    /// `peer_id`.
    pub peer: Option<String>,
    /// `event_json`.
    pub event_json: String,
}

/// Reads a sink's database without writing to it: works beside a running
/// sink (WAL readers do not block the writer).
#[derive(Debug)]
pub struct SqliteReader {
    connection: Connection,
}

/// How many rows one query fetches.
const PAGE: usize = 1024;

impl SqliteReader {
    /// Opens `path` read-only.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] if the file cannot be opened as a
    /// database.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot open {} read-only", path.display()),
            )
            .with_source(e)
        })?;
        Ok(Self { connection })
    }

    /// Every events table a sink registered: its name, the stream it
    /// holds and the sink's checkpoint of it.
    ///
    /// # Errors
    ///
    /// If the database cannot be read.
    pub fn tables(&self) -> Result<Vec<(String, StreamId, u64)>, Error> {
        if !self.has_table(CHECKPOINT_TABLE)? {
            return Ok(Vec::new());
        }
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT table_name, stream, sequence FROM {} ORDER BY stream, table_name",
                quoted(CHECKPOINT_TABLE)
            ))
            .map_err(read_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(read_error)?;
        let mut out = Vec::new();
        for row in rows {
            let (table, stream, sequence) = row.map_err(read_error)?;
            let stream = StreamId::new(&stream)
                .map_err(|e| Error::new(ErrorKind::Corrupt, format!("table {table}: {e}")))?;
            out.push((table, stream, u64::try_from(sequence).unwrap_or(0)));
        }
        Ok(out)
    }

    fn has_table(&self, table: &str) -> Result<bool, Error> {
        self.connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE)",
                [table],
                |row| row.get(0),
            )
            .map_err(read_error)
    }

    /// The rows of `table` from sequence `from` on, in sequence order,
    /// fetched a page at a time.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid table name; a missing table
    /// yields no rows.
    pub fn rows(&self, table: &str, from: u64) -> Result<Rows<'_>, Error> {
        validate_table_name(table)?;
        Ok(Rows {
            reader: self,
            sql: format!(
                "SELECT sequence_number, event_type, timestamp, peer_id, event_json FROM {}
                 WHERE sequence_number >= ?1 ORDER BY sequence_number LIMIT ?2",
                quoted(table)
            ),
            table: table.to_owned(),
            next: i64::try_from(from).unwrap_or(i64::MAX),
            page: Vec::new().into_iter(),
            done: false,
        })
    }
}

fn read_error(err: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Unavailable, "sqlite: read").with_source(err)
}

/// The rows of a table from a sequence on; see [`SqliteReader::rows`].
#[derive(Debug)]
pub struct Rows<'a> {
    reader: &'a SqliteReader,
    sql: String,
    table: String,
    next: i64,
    page: std::vec::IntoIter<Row>,
    done: bool,
}

impl Rows<'_> {
    fn fetch(&mut self) -> Result<Vec<Row>, Error> {
        if !self.reader.has_table(&self.table)? {
            return Ok(Vec::new());
        }
        let mut statement = self
            .reader
            .connection
            .prepare_cached(&self.sql)
            .map_err(read_error)?;
        let rows = statement
            .query_map(rusqlite::params![self.next, PAGE as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })
            .map_err(read_error)?;
        let mut out = Vec::with_capacity(PAGE);
        for row in rows {
            let (sequence, event_type, timestamp, peer, event_json) = row.map_err(read_error)?;
            let sequence = u64::try_from(sequence).map_err(|_| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "table {} holds the negative sequence {sequence}",
                        self.table
                    ),
                )
            })?;
            out.push(Row {
                sequence,
                event_type,
                timestamp,
                peer,
                event_json,
            });
        }
        Ok(out)
    }
}

impl Iterator for Rows<'_> {
    type Item = Result<Row, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(row) = self.page.next() {
            return Some(Ok(row));
        }
        if self.done {
            return None;
        }
        match self.fetch() {
            Ok(page) => {
                match page.last() {
                    Some(last) => {
                        self.next = i64::try_from(last.sequence)
                            .unwrap_or(i64::MAX)
                            .saturating_add(1)
                    }
                    None => self.done = true,
                }
                if page.len() < PAGE {
                    self.done = true;
                }
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

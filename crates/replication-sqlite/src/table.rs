//! Table names and the SQL that uses them.

use omnirelay_replication::{Error, ErrorKind};

/// The table of the stream `default`, as the reference names it.
pub const DEFAULT_TABLE: &str = "ResourceLeaseReplicationEvents";

/// The table that records, for each events table, the stream it holds
/// and the sink's checkpoint of it.
pub const CHECKPOINT_TABLE: &str = "omnirelay_sink_checkpoints";

/// Checks that `name` can be a table name: 1 to 128 ASCII letters, digits
/// and `_`, not starting with a digit, and not in SQLite's reserved
/// `sqlite_` namespace. Names are still quoted wherever they are used in
/// SQL; this check is what makes quoting sufficient.
///
/// # Errors
///
/// [`ErrorKind::Config`] naming the problem.
pub fn validate_table_name(name: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid table name {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > 128 {
        return invalid("longer than 128 characters");
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return invalid("must not start with a digit");
    }
    if name.to_ascii_lowercase().starts_with("sqlite_") {
        return invalid("the sqlite_ prefix is reserved by SQLite");
    }
    if name.eq_ignore_ascii_case(CHECKPOINT_TABLE) {
        return invalid("the sink's checkpoint table has that name");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return invalid(&format!(
            "character {c:?} is not allowed (use ASCII letters, digits and '_')"
        ));
    }
    Ok(())
}

/// The table of a stream that has none configured: the default table's
/// name, `_`, and the stream id with `-` and `.` as `_`.
pub(crate) fn derived_table(base: &str, stream: &str) -> String {
    let suffix: String = stream
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{base}_{suffix}")
}

/// `name` quoted as an SQL identifier (valid names hold no quotes).
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

pub(crate) fn create_sql(table: &str) -> String {
    let (t, index) = (quoted(table), quoted(&format!("IX_{table}_EventType")));
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            sequence_number INTEGER PRIMARY KEY,
            event_type INTEGER NOT NULL,
            timestamp TEXT NOT NULL,
            peer_id TEXT NULL,
            event_json TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {index} ON {t} (event_type);"
    )
}

pub(crate) fn create_checkpoint_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
            table_name TEXT PRIMARY KEY COLLATE NOCASE,
            stream TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );",
        quoted(CHECKPOINT_TABLE)
    )
}

pub(crate) fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {} (sequence_number, event_type, timestamp, peer_id, event_json)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sequence_number) DO NOTHING",
        quoted(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers_and_nothing_else() {
        for good in [DEFAULT_TABLE, "_events", "events_2", "E"] {
            assert!(validate_table_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2events",
            "events; DROP TABLE x",
            "ev\"ents",
            "ev-ents",
            "sqlite_master",
            "SQLITE_x",
            CHECKPOINT_TABLE,
            &"x".repeat(129),
        ] {
            let err = validate_table_name(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn derived_tables_are_valid_names() {
        let name = derived_table(DEFAULT_TABLE, "users.eu-1");
        assert_eq!(name, "ResourceLeaseReplicationEvents_users_eu_1");
        assert!(validate_table_name(&name).is_ok());
    }
}

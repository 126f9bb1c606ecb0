//! The database schema, as append-only migrations tracked in `PRAGMA user_version`.

use phalanx_store::backend::newer_schema;
use rusqlite::{Connection, Transaction};

/// Migration `i` moves the schema from version `i` to `i + 1`. Never edit one that has
/// shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: key-value rows, the lease row per cluster, the epoch history.
    "CREATE TABLE phalanx_kv (
         cluster TEXT NOT NULL,
         primary_ns TEXT NOT NULL,
         secondary_ns TEXT NOT NULL,
         key TEXT NOT NULL,
         value BLOB NOT NULL,
         epoch INTEGER NOT NULL
     );
     CREATE UNIQUE INDEX phalanx_kv_key ON phalanx_kv (cluster, primary_ns, secondary_ns, key);
     CREATE TABLE phalanx_lease (
         cluster TEXT PRIMARY KEY,
         epoch INTEGER NOT NULL,
         holder TEXT NOT NULL,
         acquired_at_ms INTEGER NOT NULL
     );
     CREATE TABLE phalanx_epochs (
         cluster TEXT NOT NULL,
         epoch INTEGER NOT NULL,
         holder TEXT NOT NULL,
         acquired_at_ms INTEGER NOT NULL,
         PRIMARY KEY (cluster, epoch)
     );",
    // 2: the write sequence of the mutation that last changed each key (see
    // `FencingToken::supersedes`).
    "ALTER TABLE phalanx_kv ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;",
    // 3: the file's lineage and commit counter (see `generation`), so that an older or
    // empty main file is never copied over a newer replica.
    "CREATE TABLE phalanx_generation (
         only_row INTEGER PRIMARY KEY CHECK (only_row = 0),
         lineage TEXT NOT NULL,
         commits INTEGER NOT NULL
     );
     INSERT INTO phalanx_generation (only_row, lineage, commits)
         VALUES (0, lower(hex(randomblob(16))), 0);",
];

/// The schema version of the database.
pub fn version(conn: &Connection) -> Result<usize, rusqlite::Error> {
    conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        .map(|v| v as usize)
}

/// Applies the missing migrations inside `tx`. Fails on a database from a newer Phalanx.
pub fn migrate(tx: &Transaction<'_>) -> Result<(), rusqlite::Error> {
    let current = version(tx)?;
    if current > MIGRATIONS.len() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(newer_schema(current, MIGRATIONS.len())),
        ));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    Ok(())
}

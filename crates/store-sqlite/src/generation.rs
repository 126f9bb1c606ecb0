//! Which of the two files, main and replica, is newer: each holds a lineage (random,
//! made with the database and copied into its replicas) and a commit counter that every
//! write transaction, and every won lease, increments in the same transaction.
//!
//! The replica commits each write before the main file does, so after a crash between the
//! two commits it is one commit ahead, with a transaction that was never acknowledged;
//! anything more means the main file went back in time (restored from an older copy, a
//! lost disk replaced by an empty one) and recreating the replica from it would erase the
//! newest state the node has.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::schema;

/// The schema version from which files carry a generation row.
const GENERATION_SCHEMA: usize = 3;

/// A database file's lineage and number of commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    pub(crate) lineage: String,
    pub(crate) commits: i64,
}

/// What a file holds, as far as choosing between main and replica goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FileState {
    /// No file, or a file with no Phalanx schema (empty, just created).
    Empty,
    /// Phalanx data written before generations were kept.
    Untracked,
    Tracked(Generation),
}

/// Reads the state of an open database.
pub(crate) fn read_state(conn: &Connection) -> Result<FileState, rusqlite::Error> {
    let version = schema::version(conn)?;
    if version == 0 {
        return Ok(FileState::Empty);
    }
    if version < GENERATION_SCHEMA {
        return Ok(FileState::Untracked);
    }
    let generation = conn
        .query_row(
            "SELECT lineage, commits FROM phalanx_generation WHERE only_row = 0",
            [],
            |row| {
                Ok(Generation {
                    lineage: row.get(0)?,
                    commits: row.get(1)?,
                })
            },
        )
        .optional()?;
    Ok(generation.map_or(FileState::Untracked, FileState::Tracked))
}

/// Reads the state of the replica file, without creating it.
pub(crate) fn inspect(path: &Path) -> Result<FileState, rusqlite::Error> {
    if !path.exists() {
        return Ok(FileState::Empty);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(200))?;
    // As its writer opened it: a WAL file in exclusive mode has no shared-memory index.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    read_state(&conn)
}

/// Counts one more commit, inside the caller's transaction.
pub(crate) fn count_commit(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE phalanx_generation SET commits = commits + 1 WHERE only_row = 0",
        [],
    )?;
    Ok(())
}

/// Whether the replica may be recreated from the main file; the error says why not and
/// how to recover.
pub(crate) fn may_recreate_replica(
    main_path: &Path,
    main: &FileState,
    replica_path: &Path,
    replica: &FileState,
) -> Result<(), String> {
    let (main_name, replica_name) = (main_path.display(), replica_path.display());
    let copy_back = format!(
        "with every instance stopped, copy {replica_name} to {main_name} (keep the old \
         {main_name} aside) and start again"
    );
    match (main, replica) {
        (_, FileState::Empty) => Ok(()),
        (FileState::Empty, _) => Err(format!(
            "{main_name} holds no Phalanx data but its replica {replica_name} does: the main \
             file was lost or replaced, and starting would erase the replica; {copy_back}. \
             (To start a new node instead, move the replica away.)"
        )),
        (FileState::Tracked(main), FileState::Tracked(replica)) => {
            if main.lineage != replica.lineage {
                return Err(format!(
                    "{replica_name} is the replica of another database (lineage {}, while \
                     {main_name} is {}); move it away to have it recreated from {main_name}",
                    replica.lineage, main.lineage
                ));
            }
            // One ahead: the unacknowledged transaction of a crash between the commits.
            if replica.commits > main.commits + 1 {
                return Err(format!(
                    "{replica_name} is newer than {main_name} ({} commits against {}): \
                     {main_name} was restored from an older copy or lost writes, and \
                     starting would erase the newer replica; {copy_back}",
                    replica.commits, main.commits
                ));
            }
            Ok(())
        }
        // Files from before generations were kept: nothing to compare.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tracked(lineage: &str, commits: i64) -> FileState {
        FileState::Tracked(Generation {
            lineage: lineage.into(),
            commits,
        })
    }

    fn check(main: FileState, replica: FileState) -> Result<(), String> {
        may_recreate_replica(
            &PathBuf::from("/a/node.db"),
            &main,
            &PathBuf::from("/b/node.db"),
            &replica,
        )
    }

    #[test]
    fn the_replica_is_recreated_unless_it_is_newer_or_foreign() {
        assert_eq!(check(FileState::Empty, FileState::Empty), Ok(()));
        assert_eq!(check(tracked("x", 5), FileState::Empty), Ok(()));
        assert_eq!(check(tracked("x", 5), tracked("x", 5)), Ok(()));
        assert_eq!(check(tracked("x", 5), tracked("x", 2)), Ok(()));
        assert_eq!(check(tracked("x", 5), tracked("x", 6)), Ok(()), "a crash");
        assert_eq!(check(FileState::Untracked, FileState::Untracked), Ok(()));

        let err = check(tracked("x", 5), tracked("x", 9)).unwrap_err();
        assert!(err.contains("/b/node.db is newer than /a/node.db (9 commits against 5)"));
        assert!(err.contains("copy /b/node.db to /a/node.db"), "{err}");
        let err = check(FileState::Empty, tracked("x", 1)).unwrap_err();
        assert!(err.contains("/a/node.db holds no Phalanx data"), "{err}");
        let err = check(FileState::Empty, FileState::Untracked).unwrap_err();
        assert!(err.contains("holds no Phalanx data"), "{err}");
        let err = check(tracked("x", 5), tracked("y", 5)).unwrap_err();
        assert!(err.contains("replica of another database"), "{err}");
    }
}

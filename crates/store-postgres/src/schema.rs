//! The database schema, as append-only migrations applied in order exactly once.

use tokio_postgres::Client;

/// The advisory lock that serializes migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x7068_616c_616e_7801; // "phalanx" + 1

/// Migration `i` is version `i + 1`. Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: key-value rows, the lease row per cluster, the epoch history.
    "CREATE TABLE phalanx_kv (
         cluster text NOT NULL,
         primary_ns text NOT NULL,
         secondary_ns text NOT NULL,
         key text NOT NULL,
         value bytea NOT NULL,
         epoch bigint NOT NULL,
         PRIMARY KEY (cluster, primary_ns, secondary_ns, key)
     );
     -- Values are mostly incompressible serialized state: store them out of line, uncompressed.
     ALTER TABLE phalanx_kv ALTER COLUMN value SET STORAGE EXTERNAL;
     CREATE TABLE phalanx_lease (
         cluster text PRIMARY KEY,
         epoch bigint NOT NULL,
         holder text,
         holder_pid integer,
         holder_backend_start timestamptz,
         acquired_at timestamptz,
         expires_at timestamptz NOT NULL
     );
     CREATE TABLE phalanx_epochs (
         cluster text NOT NULL,
         epoch bigint NOT NULL,
         holder text NOT NULL,
         acquired_at timestamptz NOT NULL,
         PRIMARY KEY (cluster, epoch)
     );",
];

/// Applies missing migrations, one transaction each, under an advisory lock.
pub async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS phalanx_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM phalanx_schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let applied = applied as usize;
    if applied > MIGRATIONS.len() {
        // The transaction rolls back on drop.
        return Err(newer_schema_error(&tx, applied).await);
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(migration).await?;
        tx.execute(
            "INSERT INTO phalanx_schema_migrations (version) VALUES ($1)",
            &[&(index as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await
}

async fn newer_schema_error(
    tx: &tokio_postgres::Transaction<'_>,
    applied: usize,
) -> tokio_postgres::Error {
    // Raise a real server error so the caller's error mapping applies.
    tx.batch_execute(&format!(
        "DO $$ BEGIN RAISE EXCEPTION 'schema version {applied} was written by a newer Phalanx (this one knows {})' USING ERRCODE = 'feature_not_supported'; END $$",
        MIGRATIONS.len()
    ))
    .await
    .expect_err("RAISE EXCEPTION always fails")
}

//! The database schema, as append-only migrations applied in order exactly once.

use phalanx_store::backend::newer_schema;
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
    // 2: fencing without tuple locks. Writers take a per-cluster advisory lock in shared
    // mode, then read the lease row with a fresh snapshot (each statement of a VOLATILE
    // function takes one); a takeover takes the same lock exclusively. So a takeover waits
    // for every write in flight, and a write that follows it sees its epoch. Unlike a
    // `FOR KEY SHARE` row lock, nothing is written to the lease row or the WAL per write,
    // and concurrent writers share the lock without MultiXacts.
    "CREATE FUNCTION phalanx_fence(p_cluster text, p_epoch bigint) RETURNS boolean
         LANGUAGE plpgsql VOLATILE AS $$
     BEGIN
         PERFORM pg_advisory_xact_lock_shared(1886152824, hashtext(p_cluster));
         RETURN EXISTS (
             SELECT 1 FROM phalanx_lease
             WHERE cluster = p_cluster AND epoch = p_epoch AND holder IS NOT NULL
               AND expires_at > clock_timestamp());
     END $$;

     CREATE FUNCTION phalanx_lease_is_free(l phalanx_lease) RETURNS boolean
         LANGUAGE sql VOLATILE AS $$
         SELECT l.holder IS NULL
             OR l.expires_at <= clock_timestamp()
             OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.pid = l.holder_pid
                              AND a.backend_start = l.holder_backend_start)
     $$;

     CREATE FUNCTION phalanx_acquire(p_cluster text, p_holder text, p_ttl_ms bigint)
         RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
     DECLARE
         won bigint;
     BEGIN
         -- Cheap check first, so waiting campaigners never block the writers.
         IF NOT EXISTS (SELECT 1 FROM phalanx_lease l
                        WHERE l.cluster = p_cluster AND phalanx_lease_is_free(l)) THEN
             RETURN NULL;
         END IF;
         -- Waits for every write in flight; writes that come later see the new epoch.
         PERFORM pg_advisory_xact_lock(1886152824, hashtext(p_cluster));
         UPDATE phalanx_lease l
         SET epoch = l.epoch + 1,
             holder = p_holder,
             holder_pid = pg_backend_pid(),
             holder_backend_start = (SELECT backend_start FROM pg_stat_activity
                                     WHERE pid = pg_backend_pid()),
             acquired_at = now(),
             expires_at = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
         WHERE l.cluster = p_cluster AND phalanx_lease_is_free(l)
         RETURNING l.epoch INTO won;
         IF won IS NOT NULL THEN
             INSERT INTO phalanx_epochs (cluster, epoch, holder, acquired_at)
             VALUES (p_cluster, won, p_holder, now());
         END IF;
         RETURN won;
     END $$;",
    // 3: the write sequence of the mutation that last changed each key, so that a write
    // whose bytes reach the server late cannot overwrite a newer one (see `FencingToken`).
    "ALTER TABLE phalanx_kv ADD COLUMN sequence bigint NOT NULL DEFAULT 0;",
    // 4: a holder whose session another role cannot see in detail is alive while its pid
    // is. `pg_stat_activity` hides other roles' `backend_start` (NULL) from a role that
    // is neither superuser nor `pg_read_all_stats`; matching on it made every live
    // holder of another role look gone, and each campaign took the lease from it. By pid
    // alone, a holder whose pid was reused by another session meanwhile is waited for
    // until its lease expires: a slower takeover, never a second leader.
    "CREATE OR REPLACE FUNCTION phalanx_lease_is_free(l phalanx_lease) RETURNS boolean
         LANGUAGE sql VOLATILE AS $$
         SELECT l.holder IS NULL
             OR l.expires_at <= clock_timestamp()
             OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                            WHERE a.pid = l.holder_pid
                              AND (a.backend_start = l.holder_backend_start
                                   OR a.backend_start IS NULL))
     $$;",
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
        "DO $$ BEGIN RAISE EXCEPTION '{}' USING ERRCODE = 'feature_not_supported'; END $$",
        newer_schema(applied, MIGRATIONS.len())
    ))
    .await
    .expect_err("RAISE EXCEPTION always fails")
}

//! The SQL statements of the store: the lease's, and the fenced writes that carry the
//! epoch check (`phalanx_fence`, see the migrations) and the write-order check
//! (`newer_than!`) in the same statement.

pub(crate) const ENSURE_LEASE_ROW: &str = "INSERT INTO phalanx_lease (cluster, epoch, expires_at)
     VALUES ($1, 0, '-infinity') ON CONFLICT (cluster) DO NOTHING";

pub(crate) const ACQUIRE: &str = "SELECT phalanx_acquire($1, $2, $3)";

pub(crate) const RENEW: &str = "UPDATE phalanx_lease
     SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
     WHERE cluster = $1 AND epoch = $2 AND holder IS NOT NULL
       AND expires_at > clock_timestamp() AND holder_pid = pg_backend_pid()
     RETURNING 1";

pub(crate) const RESIGN: &str = "UPDATE phalanx_lease
     SET holder = NULL, holder_pid = NULL, holder_backend_start = NULL, expires_at = now()
     WHERE cluster = $1 AND epoch = $2 AND holder IS NOT NULL";

pub(crate) const CURRENT_LEASE: &str = "SELECT holder, epoch,
         (extract(epoch FROM expires_at - now()) * 1000)::bigint
     FROM phalanx_lease l
     WHERE cluster = $1 AND holder IS NOT NULL AND expires_at > now()
       AND EXISTS (SELECT 1 FROM pg_stat_activity a
                   WHERE a.pid = l.holder_pid
                     AND (a.backend_start = l.holder_backend_start OR a.backend_start IS NULL))";

pub(crate) const LEASE_ROW: &str =
    "SELECT epoch, holder, expires_at > now() FROM phalanx_lease WHERE cluster = $1";

/// Whether the mutation (epoch `$2`, sequence `$10` or `$7`) is newer than the one that
/// last changed row `k`: `FencingToken::supersedes`, in SQL. A retry that finds its own
/// write in place changes nothing, yet still locks the row (`ON CONFLICT … DO UPDATE …
/// WHERE` does), so its commit waits for the synchronous standby like the first one:
/// `a_cancelled_wait_for_the_standby_is_an_unknown_outcome` checks that.
macro_rules! newer_than {
    ($row:literal, $sequence:literal) => {
        concat!(
            "(",
            $row,
            ".epoch < $2 OR (",
            $row,
            ".epoch = $2 AND (",
            $sequence,
            "::bigint = 0 OR ",
            $row,
            ".sequence < ",
            $sequence,
            "::bigint)))"
        )
    };
}

pub(crate) const APPLY: &str = concat!(
    "WITH fence AS (
         SELECT phalanx_fence($1, $2) AS current
     ),
     deleted AS (
         DELETE FROM phalanx_kv k
         USING fence, unnest($3::text[], $4::text[], $5::text[]) AS d(p, s, k)
         WHERE fence.current
           AND k.cluster = $1 AND k.primary_ns = d.p AND k.secondary_ns = d.s AND k.key = d.k
           AND ",
    newer_than!("k", "$10"),
    "
         RETURNING 1
     ),
     written AS (
         INSERT INTO phalanx_kv (cluster, primary_ns, secondary_ns, key, value, epoch, sequence)
         SELECT $1, u.p, u.s, u.k, u.v, $2, $10
         FROM fence, unnest($6::text[], $7::text[], $8::text[], $9::bytea[]) AS u(p, s, k, v)
         WHERE fence.current
         ON CONFLICT (cluster, primary_ns, secondary_ns, key)
         DO UPDATE SET value = excluded.value, epoch = excluded.epoch, sequence = excluded.sequence
         WHERE ",
    newer_than!("phalanx_kv", "$10"),
    "
         RETURNING 1
     )
     SELECT current FROM fence"
);

/// The hot path (one value, as LDK writes): true means written (or superseded by a newer
/// write already in place), false fenced.
pub(crate) const PUT_ONE: &str = concat!(
    "WITH fence AS (
         SELECT phalanx_fence($1, $2) AS current
     ),
     written AS (
         INSERT INTO phalanx_kv (cluster, primary_ns, secondary_ns, key, value, epoch, sequence)
         SELECT $1, $3, $4, $5, $6, $2, $7 FROM fence WHERE fence.current
         ON CONFLICT (cluster, primary_ns, secondary_ns, key)
         DO UPDATE SET value = excluded.value, epoch = excluded.epoch, sequence = excluded.sequence
         WHERE ",
    newer_than!("phalanx_kv", "$7"),
    "
         RETURNING 1
     )
     SELECT current FROM fence"
);

pub(crate) const READ: &str = "SELECT value FROM phalanx_kv
     WHERE cluster = $1 AND primary_ns = $2 AND secondary_ns = $3 AND key = $4";

pub(crate) const LIST: &str = "SELECT key FROM phalanx_kv
     WHERE cluster = $1 AND primary_ns = $2 AND secondary_ns = $3";

/// One statement: PostgreSQL reads it from one snapshot.
pub(crate) const SNAPSHOT: &str = "SELECT primary_ns, secondary_ns, key, value FROM phalanx_kv
     WHERE cluster = $1";

pub(crate) const EPOCH_HISTORY: &str =
    "SELECT epoch, holder, (extract(epoch FROM acquired_at) * 1000)::bigint
     FROM phalanx_epochs WHERE cluster = $1 ORDER BY epoch DESC LIMIT $2";

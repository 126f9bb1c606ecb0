//! The etcd backend of Phalanx's fenced state store.
//!
//! URL: `etcd://[user:password@]host:port[,host:port...][/prefix]`, or `etcds://` for TLS
//! (see [`EtcdUrl::parse`] for the options).
//!
//! # Keys
//! Everything of cluster `C` lives under `/{prefix}/{C}/`:
//!
//! | key | value |
//! |---|---|
//! | `lease/leader` | the current epoch, decimal; bound to the holder's etcd lease |
//! | `lease/epoch` | the last epoch granted, decimal |
//! | `epochs/{epoch:020}` | `holder\nunix_ms` of each leadership |
//! | `kv/{primary}/{secondary}/{key}` | a value |
//! | `ver/{primary}/{secondary}/{key}` | the version (epoch, write sequence) that last changed it |
//!
//! Namespaces and keys never contain `/` (LDK's alphabet), so the layout is unambiguous.
//!
//! # Lease and fencing
//! Winning is one `Txn`: if the leader key does not exist and the epoch counter is
//! unchanged since read, put the leader key (bound to a fresh etcd lease), the next epoch
//! and its history record. The next epoch is past both the counter and the store's
//! revision as read: epochs increase, not by one, and a snapshot restored with
//! `--bump-revision` (see docs/operations.md) never issues an epoch again. The etcd lease expires by the etcd leader's clock a TTL after
//! the last keep-alive, which deletes the leader key; resigning revokes it at once.
//! Campaigners watch the leader key and try again when it is deleted.
//!
//! Every mutation is one `Txn` whose only comparison is "the leader key's value is my
//! epoch", with the puts and deletes in its success branch. etcd applies a `Txn`
//! atomically in its serialized log, so a write either commits while the epoch is
//! current or writes nothing. The check rides in the write's own request.
//!
//! # Write order
//! Inside that success branch, each operation is a nested `Txn` that compares the key's
//! version key with the mutation's (epoch, write sequence), written as fixed-width hex
//! so that etcd's byte-wise comparison orders them, and changes the value and its
//! version only if the stored version is older or absent. A request that reaches a
//! member late (its client timed out and wrote again since, perhaps through another
//! member) changes nothing.
//!
//! # Server flags
//! etcd's defaults refuse requests over 1.5 MiB and `Txn`s over 128 operations. Phalanx
//! stores values up to 64 MiB, so run etcd with at least:
//!
//! ```text
//! --max-request-bytes=73400320 --max-txn-ops=10000 --quota-backend-bytes=8589934592
//! --auto-compaction-mode=revision --auto-compaction-retention=1000
//! ```
//!
//! A request the server refuses for its size fails with a permanent error naming the
//! flag.

#![warn(missing_docs)]

mod error;
mod keys;
mod url;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KvClient, LeaseKeepAliveStream, LeaseKeeper, SortOrder, SortTarget, TlsOptions, Txn, TxnOp,
    WatchOptions,
};
use phalanx_store::backend::{
    now_unix_ms, read_config_file, refused_epoch, stale_epoch, within, write_sequence,
};
use phalanx_store::{
    Acquisition, BatchOp, Epoch, EpochRecord, FencingToken, HeldLease, HolderId, LeaseExpiry,
    LeaseInfo, LeaseStore, MAX_VALUE_BYTES, Namespace, StateStore, StoreError, StoreKey,
    StoreOptions, check_batch,
};

use crate::error::{BACKEND, etcd_error};
use crate::keys::{KeyLayout, epoch_value, parse_epoch, versioned_op};
pub use crate::url::{EtcdTlsFiles, EtcdUrl};

/// Leave room above the largest value for the request's framing.
const MAX_MESSAGE_BYTES: usize = MAX_VALUE_BYTES + 8 * 1024 * 1024;

/// Values per page of a snapshot. A page must fit in [`MAX_MESSAGE_BYTES`]: LDK's values
/// are monitors (kilobytes) and one manager (megabytes at most), far from 16 large ones.
const SNAPSHOT_PAGE: i64 = 16;

/// An etcd state store for one cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: EtcdUrl,
    redacted: String,
    options: StoreOptions,
    client: Client,
    kv: KvClient,
    keys: KeyLayout,
    /// The store revision at which this handle last saw the leader key, so a watch can
    /// start right after it and miss no deletion.
    leader_seen_at: AtomicI64,
}

/// Reads a file an `etcds://` URL names.
fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, StoreError> {
    read_config_file(path, &format!("etcd {what}"))
}

impl EtcdStore {
    /// Connects to the etcd cluster at `url` and returns a handle for `options.cluster`.
    /// Fails within `options.connect_timeout` (plus one operation) when no member answers.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let url = EtcdUrl::parse(url)?;
        let redacted = url.redacted();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_tcp_keepalive(Duration::from_secs(5))
            // Fail fast when the member has lost quorum, rather than block.
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        if let Some((user, password)) = &url.credentials {
            connect = connect.with_user(user, password);
        }
        if let Some(files) = &url.tls {
            let mut tls = TlsOptions::new();
            tls = match &files.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read_file(ca, "cacert")?)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &files.client {
                tls = tls.identity(Identity::from_pem(
                    read_file(cert, "cert")?,
                    read_file(key, "key")?,
                ));
            }
            if let Some(domain) = &files.domain {
                tls = tls.domain_name(domain);
            }
            connect = connect.with_tls(tls);
        }
        let limit = options.connect_timeout + options.operation_timeout;
        let connecting = Client::connect(url.endpoints(), Some(connect));
        let client = within(BACKEND, "connect", &redacted, limit, connecting)
            .await?
            .map_err(|e| etcd_error("connect", &redacted, e))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let keys = KeyLayout::new(&url.prefix, options.cluster.as_str());
        let store = Self {
            inner: Arc::new(Inner {
                url,
                redacted,
                options,
                client,
                kv,
                keys,
                leader_seen_at: AtomicI64::new(0),
            }),
        };
        // The client connects lazily: make one request so a wrong address, a wrong
        // password or missing permissions show up now, within the connect timeout.
        let leader = store.inner.keys.leader();
        store
            .call("connect", store.inner.kv.clone().get(leader, None))
            .await?;
        tracing::info!(url = %store.inner.redacted, "connected to etcd");
        Ok(store)
    }

    /// The parsed URL.
    pub fn url(&self) -> &EtcdUrl {
        &self.inner.url
    }

    /// Runs one etcd request under the operation timeout, mapping its error.
    async fn call<T>(
        &self,
        op: &'static str,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let (target, limit) = (&self.inner.redacted, self.inner.options.operation_timeout);
        within(BACKEND, op, target, limit, request)
            .await?
            .map_err(|e| etcd_error(op, target, e))
    }

    /// The leader key's epoch and the holder recorded for it, read in one request.
    async fn leader_info(&self) -> Result<Option<(Epoch, String, i64)>, StoreError> {
        let keys = &self.inner.keys;
        let response = self
            .call("read lease", self.inner.kv.clone().get(keys.leader(), None))
            .await?;
        if let Some(header) = response.header() {
            self.inner
                .leader_seen_at
                .store(header.revision(), Ordering::SeqCst);
        }
        let Some(leader) = response.kvs().first() else {
            return Ok(None);
        };
        let epoch = parse_epoch(leader.value()).ok_or_else(|| {
            StoreError::permanent(
                "read lease",
                format!("{}: the leader key holds no epoch", self.inner.redacted),
                None,
            )
        })?;
        let lease_id = leader.lease();
        let history = self
            .call(
                "read lease",
                self.inner.kv.clone().get(keys.history(epoch), None),
            )
            .await?;
        let holder = history
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok())
            .and_then(|value| value.split('\n').next())
            .unwrap_or("unknown")
            .to_owned();
        Ok(Some((epoch, holder, lease_id)))
    }

    /// The fenced error for a refused token, saying why as far as the leader key tells.
    async fn fenced_error(&self, token: FencingToken) -> StoreError {
        match self.leader_info().await {
            Ok(Some((epoch, holder, _))) => stale_epoch(token, epoch, Some(&holder)),
            Ok(None) => StoreError::fenced(format!(
                "the lease of epoch {} expired or was resigned (no leader key)",
                token.epoch()
            )),
            Err(err) => refused_epoch(token, Some(&err)),
        }
    }
}

#[async_trait]
impl StateStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.inner.redacted)
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        let mut response = self
            .call(
                "read",
                self.inner.kv.clone().get(self.inner.keys.value(key), None),
            )
            .await?;
        response
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1)
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        let prefix = self.inner.keys.namespace(namespace);
        let response = self
            .call(
                "list",
                self.inner.kv.clone().get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| std::str::from_utf8(kv.key()).ok())
            .filter_map(|key| key.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
            .collect())
    }

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        // Pages of values, every page read at the revision of the first: one state.
        let keys = &self.inner.keys;
        let prefix = keys.values_prefix();
        // The key just past every key that starts with the prefix ('/' + 1 is '0').
        let range_end = format!("{}0", prefix.trim_end_matches('/'));
        let mut from = prefix.clone();
        let mut revision = 0;
        let mut entries = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_sort(SortTarget::Key, SortOrder::Ascend)
                .with_limit(SNAPSHOT_PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let response = self
                .call(
                    "snapshot",
                    self.inner.kv.clone().get(from.clone(), Some(options)),
                )
                .await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let more = response.more();
            let mut last = None;
            for kv in response.kvs() {
                let path = std::str::from_utf8(kv.key()).unwrap_or_default();
                last = Some(kv.key().to_vec());
                match keys.parse_value(path) {
                    Some(key) => entries.push((key, kv.value().to_vec())),
                    None => {
                        tracing::warn!(key = path, "a value key Phalanx did not write; skipped")
                    }
                }
            }
            match (more, last) {
                (true, Some(mut last)) => {
                    last.push(0);
                    from = String::from_utf8(last).unwrap_or_default();
                }
                _ => {
                    // etcd's order is the paths' bytes ('-' before '/'): sort by key.
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    return Ok(entries);
                }
            }
        }
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let ops = check_batch(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        // etcd compares the whole 64 bits, but every backend refuses what SQL cannot store.
        write_sequence(token)?;
        let keys = &self.inner.keys;
        let mutations: Vec<TxnOp> = ops
            .into_iter()
            .flat_map(|op| versioned_op(keys, token, op))
            .collect();
        let txn = Txn::new()
            .when([Compare::value(
                keys.leader(),
                CompareOp::Equal,
                epoch_value(token.epoch()),
            )])
            .and_then(mutations);
        let response = self.call("write", self.inner.kv.clone().txn(txn)).await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(self.fenced_error(token).await)
        }
    }
}

#[async_trait]
impl LeaseStore for EtcdStore {
    fn lease_expiry(&self) -> LeaseExpiry {
        LeaseExpiry::Ttl
    }

    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        if let Some((epoch, holder, _)) = self.leader_info().await? {
            return Ok(Acquisition::Held(Some(LeaseInfo {
                holder,
                epoch,
                expires_in: None,
            })));
        }
        let keys = &self.inner.keys;
        let ttl_secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
        let mut leases = self.inner.client.lease_client();
        let grant = self
            .call("acquire", leases.grant(ttl_secs.max(1), None))
            .await?;
        let lease_id = grant.id();
        let granted_ttl = Duration::from_secs(grant.ttl().max(1) as u64);

        let attempt = async {
            let counter = self
                .call(
                    "acquire",
                    self.inner.kv.clone().get(keys.epoch_counter(), None),
                )
                .await?;
            let (last_epoch, counter_revision) = match counter.kvs().first() {
                Some(kv) => (
                    parse_epoch(kv.value()).ok_or_else(|| {
                        StoreError::permanent(
                            "acquire",
                            format!("{}: the epoch counter is corrupt", self.inner.redacted),
                            None,
                        )
                    })?,
                    kv.mod_revision(),
                ),
                None => (Epoch(0), 0),
            };
            // Past the store's revision, not only past the counter: a snapshot restore
            // rolls the counter back, but restored with `--bump-revision` the revision
            // moves past every revision (and so every epoch) issued before, so an epoch
            // granted after a restore can never be one an old holder still has.
            let store_revision = counter.header().map_or(0, |header| header.revision());
            let epoch = Epoch((last_epoch.0 + 1).max(store_revision.max(0) as u64 + 1));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(keys.leader(), CompareOp::Equal, 0),
                    Compare::mod_revision(keys.epoch_counter(), CompareOp::Equal, counter_revision),
                ])
                .and_then([
                    TxnOp::put(
                        keys.leader(),
                        epoch_value(epoch),
                        Some(etcd_client::PutOptions::new().with_lease(lease_id)),
                    ),
                    TxnOp::put(keys.epoch_counter(), epoch_value(epoch), None),
                    TxnOp::put(
                        keys.history(epoch),
                        format!("{holder}\n{}", now_unix_ms()),
                        None,
                    ),
                ])
                .or_else([TxnOp::get(keys.leader(), None)]);
            let response = self.call("acquire", self.inner.kv.clone().txn(txn)).await?;
            Ok::<_, StoreError>((response.succeeded(), epoch))
        };
        match attempt.await {
            Ok((true, epoch)) => {
                tracing::info!(cluster = %self.inner.options.cluster, %epoch, holder = %holder, url = %self.inner.redacted, "won the etcd lease");
                Ok(Acquisition::Won(Box::new(EtcdLease {
                    store: self.clone(),
                    lease_id,
                    token: FencingToken::new(epoch),
                    granted_ttl,
                    keep_alive: None,
                })))
            }
            outcome => {
                // Lost the race (or failed): give the unused etcd lease back.
                let _ = self.call("acquire", leases.revoke(lease_id)).await;
                outcome?;
                let info = self
                    .leader_info()
                    .await?
                    .map(|(epoch, holder, _)| LeaseInfo {
                        holder,
                        epoch,
                        expires_in: None,
                    });
                Ok(Acquisition::Held(info))
            }
        }
    }

    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        let Some((epoch, holder, lease_id)) = self.leader_info().await? else {
            return Ok(None);
        };
        let remaining = self
            .call(
                "read lease",
                self.inner
                    .client
                    .lease_client()
                    .time_to_live(lease_id, None),
            )
            .await?;
        Ok(Some(LeaseInfo {
            holder,
            epoch,
            expires_in: Some(Duration::from_secs(remaining.ttl().max(0) as u64)),
        }))
    }

    async fn wait_for_change(&self, max_wait: Duration) {
        let seen = self.inner.leader_seen_at.load(Ordering::SeqCst);
        let mut options = WatchOptions::new();
        if seen > 0 {
            // Start right after the revision the caller last looked at, so a deletion in
            // between is delivered at once.
            options = options.with_start_revision(seen + 1);
        }
        let leader = self.inner.keys.leader();
        let mut watch_client = self.inner.client.watch_client();
        let wait = async {
            let Ok(mut stream) = watch_client.watch(leader, Some(options)).await else {
                return;
            };
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled() {
                    return;
                }
                if response
                    .events()
                    .iter()
                    .any(|event| event.event_type() == EventType::Delete)
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(max_wait, wait).await;
    }

    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        let prefix = self.inner.keys.history_prefix();
        let response = self
            .call(
                "read epoch history",
                self.inner.kv.clone().get(
                    prefix.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(limit.min(i64::MAX as usize) as i64),
                    ),
                ),
            )
            .await?;
        let mut records = Vec::with_capacity(response.kvs().len());
        for kv in response.kvs() {
            let epoch = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|key| key.strip_prefix(prefix.as_str()))
                .and_then(|epoch| epoch.parse::<u64>().ok());
            let value = std::str::from_utf8(kv.value()).ok();
            let (Some(epoch), Some(value)) = (epoch, value) else {
                continue;
            };
            let (holder, at) = value.split_once('\n').unwrap_or((value, "0"));
            records.push(EpochRecord {
                epoch: Epoch(epoch),
                holder: holder.to_owned(),
                acquired_at_unix_ms: at.parse().unwrap_or(0),
            });
        }
        Ok(records)
    }
}

/// A won etcd lease, kept alive over one keep-alive stream.
struct EtcdLease {
    store: EtcdStore,
    lease_id: i64,
    token: FencingToken,
    granted_ttl: Duration,
    keep_alive: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

#[async_trait]
impl HeldLease for EtcdLease {
    fn token(&self) -> FencingToken {
        self.token
    }

    fn granted_ttl(&self) -> Duration {
        self.granted_ttl
    }

    async fn renew(&mut self) -> Result<(), StoreError> {
        let redacted = self.store.inner.redacted.clone();
        let limit = self.store.inner.options.operation_timeout;
        let lease_id = self.lease_id;
        let mut lease_client = self.store.inner.client.lease_client();
        let keep_alive = &mut self.keep_alive;
        let attempt = async {
            if keep_alive.is_none() {
                // Opening the stream sends a first keep-alive and reads its answer: that
                // is this renewal. A lease the server no longer has is refused here.
                return match lease_client.keep_alive(lease_id).await {
                    Ok(opened) => {
                        *keep_alive = Some(opened);
                        Ok(1)
                    }
                    Err(etcd_client::Error::LeaseKeepAliveError(message))
                        if message.contains("not found") =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(etcd_error("renew", &redacted, e)),
                };
            }
            let (keeper, stream) = keep_alive.as_mut().expect("opened above");
            keeper
                .keep_alive()
                .await
                .map_err(|e| etcd_error("renew", &redacted, e))?;
            match stream.message().await {
                Ok(Some(response)) => Ok(response.ttl()),
                Ok(None) => Err(StoreError::transient(
                    "renew",
                    format!("{redacted}: the keep-alive stream ended"),
                    None,
                )),
                Err(e) => Err(etcd_error("renew", &redacted, e)),
            }
        };
        let outcome = within(BACKEND, "renew", &redacted, limit, attempt)
            .await
            .and_then(|answered| answered);
        match outcome {
            Ok(ttl) if ttl > 0 => Ok(()),
            Ok(_) => Err(StoreError::fenced(format!(
                "the etcd lease of epoch {} expired",
                self.token.epoch()
            ))),
            Err(err) => {
                // Start a fresh stream next time: a late answer on this one would be
                // mistaken for the next renewal's.
                self.keep_alive = None;
                Err(err)
            }
        }
    }

    async fn resign(self: Box<Self>) -> Result<(), StoreError> {
        let mut leases = self.store.inner.client.lease_client();
        self.store
            .call("resign", leases.revoke(self.lease_id))
            .await
            .map(|_| ())?;
        tracing::info!(epoch = %self.token.epoch(), "resigned the etcd lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Snapshot backups: one consistent snapshot of a node's store, encrypted with a key
//! derived from its seed, in a directory of two files.
//!
//! - `phalanx-backup.json`, the header, in clear: the format, the node id and network,
//!   the cluster, the time, and the nonce. It names the node, holds nothing secret, and
//!   is authenticated with the payload (any change fails decryption).
//! - `backup.bin`: the payload sealed with XChaCha20-Poly1305 under
//!   [`Seed::backup_key`]. Inside: `PHXBKUP1`, the manifest (JSON: node id, network,
//!   cluster, the epoch the store was at, the time, the schema and software versions,
//!   and every key with its length and SHA-256), then every key and value.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::identity::{self, NodeIdentity};
use bitcoin::hashes::{Hash, sha256};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use phalanx_secrets::Seed;
use phalanx_store::StoreKey;
use serde::{Deserialize, Serialize};

/// The header's file name.
pub const HEADER_FILE: &str = "phalanx-backup.json";
/// The payload's file name.
pub const PAYLOAD_FILE: &str = "backup.bin";
const MAGIC: &[u8; 8] = b"PHXBKUP1";
const FORMAT: u32 = 1;

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The backup is not a whole, untouched backup of this seed's node.
    #[error("backup {dir}: {reason}")]
    Invalid {
        /// The backup's directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The header, in clear.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// The format version.
    pub format: u32,
    /// The node's id.
    pub node_id: String,
    /// Its network.
    pub network: String,
    /// The cluster (the node's name in its store).
    pub cluster: String,
    /// When the snapshot was taken, Unix seconds.
    pub created_at_unix: u64,
    /// The AEAD's nonce, hex.
    pub nonce: String,
    /// The payload's length in bytes.
    pub payload_bytes: u64,
}

/// What the payload says of itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The node's id.
    pub node_id: String,
    /// Its network.
    pub network: String,
    /// The cluster.
    pub cluster: String,
    /// The latest epoch of the store when the snapshot was taken.
    pub epoch: u64,
    /// When, Unix seconds.
    pub created_at_unix: u64,
    /// The identity record's schema version.
    pub identity_schema_version: u32,
    /// The Phalanx that wrote it.
    pub software_version: String,
    /// Every key, in order.
    pub entries: Vec<ManifestEntry>,
}

/// One key of the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    /// `primary/secondary/key`.
    pub key: String,
    /// The value's length.
    pub bytes: u64,
    /// The value's SHA-256, hex.
    pub sha256: String,
}

/// A backup, read and checked.
#[derive(Debug)]
pub struct Archive {
    /// The header.
    pub header: Header,
    /// The manifest.
    pub manifest: Manifest,
    /// Every key and value, sorted by key.
    pub entries: Vec<(StoreKey, Vec<u8>)>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Writes the backup of `entries` (a snapshot of `cluster` at `epoch`, holding
/// `identity`'s record) into `dir`, which must not exist or be empty. Both files are
/// made durable before this returns.
pub fn write(
    dir: &Path,
    seed: &Seed,
    identity: &NodeIdentity,
    cluster: &str,
    epoch: u64,
    entries: &[(StoreKey, Vec<u8>)],
) -> Result<Header, ArchiveError> {
    write_sealed(dir, &seed.backup_key(), identity, cluster, epoch, entries)
}

/// [`write`] with the backup key ([`Seed::backup_key`]) instead of the seed: what a
/// running node, which keeps that key and not the seed, writes with.
pub fn write_sealed(
    dir: &Path,
    key: &[u8; 32],
    identity: &NodeIdentity,
    cluster: &str,
    epoch: u64,
    entries: &[(StoreKey, Vec<u8>)],
) -> Result<Header, ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(ArchiveError::Invalid {
            dir: dir.to_owned(),
            reason: "the directory is not empty: a backup never overwrites another".to_owned(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let created_at_unix = now_unix();
    let manifest = Manifest {
        node_id: identity.node_id.to_string(),
        network: identity.network.to_string(),
        cluster: cluster.to_owned(),
        epoch,
        created_at_unix,
        identity_schema_version: identity.schema_version,
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        entries: entries
            .iter()
            .map(|(key, value)| ManifestEntry {
                key: key.to_string(),
                bytes: value.len() as u64,
                sha256: sha256::Hash::hash(value).to_string(),
            })
            .collect(),
    };
    let manifest_json = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let mut payload = Vec::with_capacity(
        entries.iter().map(|(_, v)| v.len() + 64).sum::<usize>() + manifest_json.len() + 16,
    );
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&(manifest_json.len() as u32).to_be_bytes());
    payload.extend_from_slice(&manifest_json);
    for (key, value) in entries {
        let text = key.to_string();
        payload.extend_from_slice(&(text.len() as u16).to_be_bytes());
        payload.extend_from_slice(text.as_bytes());
        payload.extend_from_slice(&(value.len() as u64).to_be_bytes());
        payload.extend_from_slice(value);
    }

    let mut nonce = [0u8; 24];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut nonce)
        .map_err(|e| io(dir)(std::io::Error::other(e)))?;
    let header = Header {
        format: FORMAT,
        node_id: identity.node_id.to_string(),
        network: identity.network.to_string(),
        cluster: cluster.to_owned(),
        created_at_unix,
        nonce: hex::encode(nonce),
        payload_bytes: (payload.len() + 16) as u64,
    };
    let header_json = serde_json::to_vec_pretty(&header).expect("a header serializes");
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &payload,
                aad: &header_json,
            },
        )
        .map_err(|_| ArchiveError::Invalid {
            dir: dir.to_owned(),
            reason: "sealing failed".to_owned(),
        })?;
    write_durably(&dir.join(PAYLOAD_FILE), &sealed)?;
    write_durably(&dir.join(HEADER_FILE), &header_json)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(header)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    use std::io::Write;
    let io = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads the backup in `dir` with `seed`: checks that it is this seed's node's,
/// decrypts it, and checks every key against the manifest. (What the state means is
/// [`crate::offline::check_state`]'s to check.)
pub fn read(dir: &Path, seed: &Seed) -> Result<Archive, ArchiveError> {
    let invalid = |reason: String| ArchiveError::Invalid {
        dir: dir.to_owned(),
        reason,
    };
    let header_path = dir.join(HEADER_FILE);
    let header_json = std::fs::read(&header_path).map_err(|source| ArchiveError::Io {
        path: header_path.clone(),
        source,
    })?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|e| {
        invalid(format!(
            "{HEADER_FILE} is not a Phalanx backup header ({e})"
        ))
    })?;
    if header.format != FORMAT {
        return Err(invalid(format!(
            "format {} is not one this Phalanx reads ({FORMAT})",
            header.format
        )));
    }
    let seed_node = identity::node_id_of(seed).to_string();
    if header.node_id != seed_node {
        return Err(invalid(format!(
            "it is node {}'s backup, and this seed is node {seed_node}'s",
            header.node_id
        )));
    }
    let payload_path = dir.join(PAYLOAD_FILE);
    let sealed = std::fs::read(&payload_path).map_err(|source| ArchiveError::Io {
        path: payload_path,
        source,
    })?;
    if sealed.len() as u64 != header.payload_bytes {
        return Err(invalid(format!(
            "{PAYLOAD_FILE} is {} bytes, the header says {}: truncated or not this backup's",
            sealed.len(),
            header.payload_bytes
        )));
    }
    let nonce = hex::decode(&header.nonce)
        .ok()
        .filter(|n| n.len() == 24)
        .ok_or_else(|| invalid("the header's nonce is not 24 bytes of hex".to_owned()))?;
    let key = seed.backup_key();
    let payload = XChaCha20Poly1305::new((&*key).into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: &header_json,
            },
        )
        .map_err(|_| invalid("it does not decrypt: a byte of it was changed".to_owned()))?;
    let (manifest, entries) = parse_payload(&payload).map_err(invalid)?;
    if manifest.node_id != header.node_id || manifest.cluster != header.cluster {
        return Err(invalid("the manifest and the header disagree".to_owned()));
    }
    match entries
        .iter()
        .find(|(key, _)| *key == identity::identity_key())
        .map(|(_, value)| NodeIdentity::decode(value))
    {
        Some(Ok(record)) if record.node_id.to_string() == header.node_id => {}
        Some(Ok(record)) => {
            return Err(invalid(format!(
                "its identity record names node {}",
                record.node_id
            )));
        }
        Some(Err(e)) => return Err(invalid(format!("its identity record is corrupt: {e}"))),
        None => return Err(invalid("it holds no identity record".to_owned())),
    }
    Ok(Archive {
        header,
        manifest,
        entries,
    })
}

type Parsed = (Manifest, Vec<(StoreKey, Vec<u8>)>);

fn parse_payload(payload: &[u8]) -> Result<Parsed, String> {
    let mut rest = payload
        .strip_prefix(MAGIC.as_slice())
        .ok_or("the payload has no PHXBKUP1 mark")?;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("the payload ends early".to_owned());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let manifest_len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    let manifest: Manifest = serde_json::from_slice(take(manifest_len)?)
        .map_err(|e| format!("the manifest does not parse: {e}"))?;
    let mut entries = Vec::with_capacity(manifest.entries.len());
    for listed in &manifest.entries {
        let key_len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let key_text = std::str::from_utf8(take(key_len)?).map_err(|_| "a key is not text")?;
        if key_text != listed.key {
            return Err(format!(
                "{key_text} is where the manifest lists {}",
                listed.key
            ));
        }
        let key: StoreKey = key_text
            .parse()
            .map_err(|_| format!("{key_text} is not a key"))?;
        let value_len = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let value = take(usize::try_from(value_len).map_err(|_| "a value is too long")?)?;
        if value_len != listed.bytes || sha256::Hash::hash(value).to_string() != listed.sha256 {
            return Err(format!("{key_text} does not match its checksum"));
        }
        entries.push((key, value.to_vec()));
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes follow the last entry", rest.len()));
    }
    Ok((manifest, entries))
}

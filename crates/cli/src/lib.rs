//! The library half of the `phalanx` command: `phalanx node`'s process logic (signals,
//! the API, exit statuses), so that other binaries can run the very same node process
//! (the failover benchmark re-executes itself as one).

pub mod backup_cmd;
pub mod front_cmd;
pub mod link_certs_cmd;
pub mod migrate_cmd;
pub mod node_cmd;
pub mod seed_cmd;

//! The store's own runtime, and tasks that end with the future that awaits them.

use super::*;

/// The runtime that runs all store I/O and the lease renewals.
///
/// LDK calls the store synchronously (`KVStoreSync`) while it holds its own locks, and
/// the node's runtime workers may be blocked on those same locks (a peer message being
/// handled, say). A store future that needed one of those workers would never finish:
/// a deadlock. On its own runtime, store I/O and the lease always make progress, whatever
/// the node's workers are doing.
pub(super) struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    pub(super) fn new() -> Result<Self, NodeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("phalanx-store")
            .enable_all()
            .build()
            .map_err(|err| {
                NodeError::Persist(io::Error::new(
                    io::ErrorKind::Other,
                    format!("cannot start the store runtime: {err}"),
                ))
            })?;
        Ok(Self(Some(runtime)))
    }

    pub(super) fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the store runtime lives until drop")
            .handle()
            .clone()
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one would block; this does not.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task aborted when its handle is dropped (when `Node::start` is cancelled, say).
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> AbortOnDrop<Result<T, NodeError>> {
    pub(super) async fn join(mut self) -> Result<T, NodeError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(err) => Err(NodeError::Persist(io::Error::new(
                io::ErrorKind::Other,
                format!("the store task failed: {err}"),
            ))),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

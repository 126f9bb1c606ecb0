//! The store's own runtime.

use super::*;

/// The runtime that runs all store I/O and the lease renewals.
///
/// LDK calls the store synchronously (`KVStoreSync`) while it holds its own locks, and
/// the node's runtime workers may be blocked on those same locks (a peer message being
/// handled, say). A store future that needed one of those workers would never finish:
/// a deadlock. On its own runtime, store I/O and the lease always make progress, whatever
/// the node's workers are doing.
///
/// An instance opens the store and campaigns on it ([`Self::run`]), then hands it to
/// [`NodeBuilder::build`], which keeps it for the node's life.
pub struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    /// A runtime of two worker threads, `phalanx-store`.
    pub fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("phalanx-store")
            .enable_all()
            .build()
            .map_err(|err| {
                std::io::Error::other(format!("cannot start the store runtime: {err}"))
            })?;
        Ok(Self(Some(runtime)))
    }

    /// A handle to spawn on it.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the store runtime lives until drop")
            .handle()
            .clone()
    }

    /// Runs `work` on this runtime and waits for it. Cancelling the wait (dropping the
    /// future) aborts the work. An error is a panic of `work`.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> std::io::Result<T> {
        let mut task = AbortOnDrop(self.handle().spawn(work));
        (&mut task.0)
            .await
            .map_err(|err| std::io::Error::other(format!("the store task failed: {err}")))
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

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

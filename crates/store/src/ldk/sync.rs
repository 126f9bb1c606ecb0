//! [`KVStoreSync`]: each operation runs on the store's runtime while the calling thread
//! blocks (see "Blocking use" on [`LdkKvStore`]).

use std::future::Future;

use lightning::io;
use lightning::util::persist::{KVStore, KVStoreSync};

use super::LdkKvStore;

impl LdkKvStore {
    fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, io::Error>> + Send + 'static,
    ) -> Result<T, io::Error> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.inner.runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        let wait = move || {
            receiver.recv().unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::Other,
                    "the store's runtime stopped before the operation finished",
                ))
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl KVStoreSync for LdkKvStore {
    fn read(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
    ) -> Result<Vec<u8>, io::Error> {
        self.block_on(KVStore::read(
            self,
            primary_namespace,
            secondary_namespace,
            key,
        ))
    }

    fn write(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        self.block_on(KVStore::write(
            self,
            primary_namespace,
            secondary_namespace,
            key,
            buf,
        ))
    }

    fn remove(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        lazy: bool,
    ) -> Result<(), io::Error> {
        self.block_on(KVStore::remove(
            self,
            primary_namespace,
            secondary_namespace,
            key,
            lazy,
        ))
    }

    fn list(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
    ) -> Result<Vec<String>, io::Error> {
        self.block_on(KVStore::list(self, primary_namespace, secondary_namespace))
    }
}

//! A runtime of the link's own, shut down without blocking when dropped.

/// A multi-thread runtime that is shut down in the background when dropped: a front
/// (or a backend's link, in a benchmark) may be dropped on an async thread, or its
/// start cancelled while it waits, and dropping a runtime there would panic.
pub struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    /// A runtime of `threads` workers named `name`.
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self::from(runtime))
    }
}

impl From<tokio::runtime::Runtime> for OwnRuntime {
    /// A runtime built otherwise, shut down in the background when dropped.
    fn from(runtime: tokio::runtime::Runtime) -> Self {
        Self(Some(runtime))
    }
}

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

//! The node's background tasks under supervision: a task that dies stops the node.

use futures::FutureExt;
use lightning::io;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::persist::FailStop;

/// Whether a supervised task is meant to run until the node shuts down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runs {
    /// A loop: its end before shutdown is a failure.
    UntilShutdown,
    /// A job that may finish.
    Once,
}

/// Stops the node when one of its tasks dies: a panic, or an early end of a task meant
/// to run until shutdown. (The `phalanx` binary also exits on any panic, in any thread;
/// this covers a node embedded in another program, and tells which task it was.)
#[derive(Clone)]
pub(crate) struct Supervisor {
    pub(crate) fail_stop: FailStop,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Supervisor {
    pub(crate) fn spawn(
        &self,
        name: &'static str,
        runs: Runs,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let supervisor = self.clone();
        tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(task).catch_unwind().await;
            supervisor.ended(name, runs, outcome.map_err(|panic| panic_message(&*panic)));
        })
    }

    /// Runs LDK's background processor: it returns early when a write of the manager,
    /// the graph or the scorer failed, after which nothing would be persisted.
    pub(crate) async fn background_processor(
        self,
        processor: impl std::future::Future<Output = Result<(), io::Error>>,
    ) -> Result<(), io::Error> {
        let outcome = std::panic::AssertUnwindSafe(processor).catch_unwind().await;
        let result = match outcome {
            Ok(result) => result,
            Err(panic) => Err(io::Error::new(io::ErrorKind::Other, panic_message(&*panic))),
        };
        let ended = match &result {
            Ok(()) => Ok(()),
            Err(err) => Err(format!("failed: {err}")),
        };
        self.ended("the background processor", Runs::UntilShutdown, ended);
        result
    }

    fn ended(&self, name: &str, runs: Runs, outcome: Result<(), String>) {
        if *self.shutdown.borrow() {
            return;
        }
        match (outcome, runs) {
            (Ok(()), Runs::Once) => {}
            (Ok(()), Runs::UntilShutdown) => self.fail_stop.trigger(format!("{name} ended")),
            (Err(why), _) => self.fail_stop.trigger(format!("{name} {why}")),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn supervisor() -> (Supervisor, FailStop, watch::Sender<bool>) {
        let fail_stop = FailStop::new();
        let (shutdown, receiver) = watch::channel(false);
        let supervisor = Supervisor {
            fail_stop: fail_stop.clone(),
            shutdown: receiver,
        };
        (supervisor, fail_stop, shutdown)
    }

    async fn reason(fail_stop: &FailStop) -> String {
        tokio::time::timeout(Duration::from_secs(5), fail_stop.triggered())
            .await
            .expect("the node was stopped")
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_node() {
        let (supervisor, fail_stop, _shutdown) = supervisor();
        let task = supervisor.spawn("the block poller", Runs::UntilShutdown, async {
            panic!("boom");
        });
        task.await.unwrap();
        let reason = reason(&fail_stop).await;
        assert!(
            reason.contains("the block poller panicked: boom"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_loop_that_ends_before_shutdown_stops_the_node_and_a_job_does_not() {
        let (supervisor, fail_stop, shutdown) = supervisor();
        supervisor
            .spawn("the clean-up", Runs::Once, async {})
            .await
            .unwrap();
        assert_eq!(fail_stop.reason(), None);
        shutdown.send_replace(true);
        supervisor
            .spawn("the listener", Runs::UntilShutdown, async {})
            .await
            .unwrap();
        assert_eq!(fail_stop.reason(), None, "ending on shutdown is the plan");
        shutdown.send_replace(false);
        supervisor
            .spawn("the listener", Runs::UntilShutdown, async {})
            .await
            .unwrap();
        assert_eq!(fail_stop.reason().as_deref(), Some("the listener ended"));
    }

    #[tokio::test]
    async fn a_background_processor_that_fails_stops_the_node() {
        let (supervisor, fail_stop, _shutdown) = supervisor();
        let result = supervisor
            .background_processor(async {
                Err(io::Error::new(
                    io::ErrorKind::Other,
                    "manager write refused",
                ))
            })
            .await;
        assert!(result.is_err(), "the processor's own result is kept");
        let reason = reason(&fail_stop).await;
        assert!(
            reason.starts_with("the background processor failed")
                && reason.contains("manager write refused"),
            "{reason}"
        );
    }
}

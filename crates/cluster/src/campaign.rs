//! The I/O driver around [`LeaseMachine`]: campaigning, renewing, self-fencing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phalanx_store::{
    Acquisition, Epoch, FenceSource, FencingToken, HeldLease, HolderId, LeaseInfo, LeaseStore,
    StoreError,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::LeaseTimings;
use crate::machine::{Command, Event, LeaseMachine, LossReason};

/// Longest a campaigner waits for the store to signal a change before trying again.
const MAX_CAMPAIGN_WAIT: Duration = Duration::from_secs(1);

/// Where an instance stands in the election (for the state endpoint and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionState {
    /// Not campaigning.
    Idle,
    /// Campaigning; `leader` is who holds the lease, when the store said.
    Campaigning {
        /// The current holder, if known.
        leader: Option<LeaseInfo>,
    },
    /// Holding the lease.
    Leading {
        /// The epoch held.
        epoch: Epoch,
    },
    /// The leadership of `epoch` ended.
    Lost {
        /// The epoch that ended.
        epoch: Epoch,
        /// Why.
        reason: LossReason,
    },
}

/// Whether a [`Leadership`] still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeadershipStatus {
    /// The holder may act.
    Leading,
    /// It may not, ever again.
    Lost(LossReason),
}

/// Told of every renewal a leadership sends: how long the store took to answer, and
/// its answer. Called on the renewal driver's task, so it must be quick (a metric).
pub type RenewalObserver = Arc<dyn Fn(Duration, Result<(), &StoreError>) + Send + Sync>;

/// Campaigns for one cluster's lease on behalf of one instance.
pub struct Campaigner {
    store: Arc<dyn LeaseStore>,
    holder: HolderId,
    timings: LeaseTimings,
    state: Arc<watch::Sender<ElectionState>>,
    renewal_observer: Option<RenewalObserver>,
}

impl Campaigner {
    /// A campaigner for `holder` on `store`, with checked `timings`.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        holder: HolderId,
        timings: LeaseTimings,
    ) -> Result<Self, StoreError> {
        timings.validate()?;
        Ok(Self {
            store,
            holder,
            timings,
            state: Arc::new(watch::channel(ElectionState::Idle).0),
            renewal_observer: None,
        })
    }

    /// Reports every renewal of the leaderships this campaigner wins to `observer`.
    pub fn observe_renewals(mut self, observer: RenewalObserver) -> Self {
        self.renewal_observer = Some(observer);
        self
    }

    /// The instance's election state, updated as it changes.
    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.state.subscribe()
    }

    /// The instance id this campaigner stands for.
    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    /// Campaigns until this instance holds the lease. Transient store errors are retried
    /// forever (an unreachable store just delays the win); permanent ones are returned.
    /// Cancel by dropping the future.
    pub async fn campaign(&self) -> Result<Leadership, StoreError> {
        loop {
            let sent_at = Instant::now();
            match self.store.try_acquire(&self.holder, self.timings.ttl).await {
                Ok(Acquisition::Won(lease)) => {
                    let epoch = lease.token().epoch();
                    let (machine, commands) = LeaseMachine::new(
                        self.timings,
                        epoch,
                        sent_at,
                        lease.granted_ttl(),
                        Instant::now(),
                    );
                    if !machine.is_leading() {
                        let reason = machine.loss_reason().cloned();
                        tracing::warn!(holder = %self.holder, %epoch, ?reason, ?commands, "won a lease that is already unusable; campaigning again");
                        release_in_background(lease);
                        tokio::time::sleep(self.timings.retry_interval).await;
                        continue;
                    }
                    tracing::info!(holder = %self.holder, %epoch, granted_ttl = ?lease.granted_ttl(), "won the lease");
                    self.state.send_replace(ElectionState::Leading { epoch });
                    return Ok(Leadership::start(
                        machine,
                        lease,
                        self.holder.clone(),
                        Arc::clone(&self.state),
                        self.renewal_observer.clone(),
                    ));
                }
                Ok(Acquisition::Held(leader)) => {
                    self.state.send_if_modified(|state| {
                        let next = ElectionState::Campaigning {
                            leader: leader.clone(),
                        };
                        // Ignore the remaining TTL when comparing, or every poll notifies.
                        let same = matches!(state, ElectionState::Campaigning { leader: Some(old) }
                            if leader.as_ref().is_some_and(|new| new.holder == old.holder && new.epoch == old.epoch));
                        *state = next;
                        !same
                    });
                    self.store.wait_for_change(MAX_CAMPAIGN_WAIT).await;
                }
                Err(err) if err.is_transient() => {
                    tracing::warn!(holder = %self.holder, error = %err.report(), "campaign attempt failed; retrying");
                    tokio::time::sleep(self.timings.retry_interval).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

enum DriverRequest {
    Resign(oneshot::Sender<Result<(), StoreError>>),
    Fenced(String),
    Dropped,
}

/// What a [`Leadership`] and the writers using it share.
struct Shared {
    epoch: Epoch,
    holder: HolderId,
    valid_until: Mutex<Instant>,
    status: watch::Sender<LeadershipStatus>,
    /// Serializes [`Shared::lose`].
    losing: Mutex<()>,
    requests: mpsc::UnboundedSender<DriverRequest>,
    election: Arc<watch::Sender<ElectionState>>,
    renewal_observer: Option<RenewalObserver>,
}

impl Shared {
    /// Marks the leadership lost (once); later reasons are ignored. The election state
    /// is updated before the status, so whoever sees the status change also finds the
    /// election state current.
    fn lose(&self, reason: LossReason) {
        let _once = self.losing.lock().unwrap_or_else(|e| e.into_inner());
        if *self.status.borrow() != LeadershipStatus::Leading {
            return;
        }
        if reason == LossReason::Resigned {
            tracing::info!(holder = %self.holder, epoch = %self.epoch, "resigned the leadership");
        } else {
            tracing::error!(holder = %self.holder, epoch = %self.epoch, %reason, "leadership lost: stop acting");
        }
        self.election.send_replace(ElectionState::Lost {
            epoch: self.epoch,
            reason: reason.clone(),
        });
        self.status.send_replace(LeadershipStatus::Lost(reason));
    }

    fn lost_error(&self, reason: &LossReason) -> StoreError {
        StoreError::fenced(format!(
            "the leadership of epoch {} ended: {reason}",
            self.epoch
        ))
    }
}

impl FenceSource for Shared {
    fn current_token(&self) -> Result<FencingToken, StoreError> {
        if let LeadershipStatus::Lost(reason) = &*self.status.borrow() {
            return Err(self.lost_error(reason));
        }
        // Checked on the caller's clock, now: the driver task may not have run (the
        // process was stopped, or the runtime is busy) and must not be trusted to.
        let valid_until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= valid_until {
            let reason = LossReason::DeadlinePassed {
                overdue: now - valid_until,
            };
            let error = self.lost_error(&reason);
            self.lose(reason);
            return Err(error);
        }
        Ok(FencingToken::new(self.epoch))
    }

    fn report_fenced(&self, token: FencingToken, reason: &str) {
        if token.epoch() == self.epoch {
            self.lose(LossReason::Fenced(reason.to_owned()));
            let _ = self.requests.send(DriverRequest::Fenced(reason.to_owned()));
        }
    }
}

/// A leadership won by a [`Campaigner`]: the fencing token's source, renewed in the
/// background, and a signal when it ends. Dropping it resigns.
pub struct Leadership {
    shared: Arc<Shared>,
}

type Renewal =
    Pin<Box<dyn Future<Output = (Box<dyn HeldLease>, Instant, Result<(), StoreError>)> + Send>>;

impl Leadership {
    fn start(
        machine: LeaseMachine,
        lease: Box<dyn HeldLease>,
        holder: HolderId,
        election: Arc<watch::Sender<ElectionState>>,
        renewal_observer: Option<RenewalObserver>,
    ) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            epoch: machine.epoch(),
            holder,
            valid_until: Mutex::new(machine.valid_until()),
            status: watch::channel(LeadershipStatus::Leading).0,
            losing: Mutex::new(()),
            requests,
            election,
            renewal_observer,
        });
        tokio::spawn(drive(machine, lease, Arc::clone(&shared), receiver));
        Self { shared }
    }

    /// The epoch held.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    /// The token to write with now, or a fenced error once the leadership ended or its
    /// local deadline passed.
    pub fn token(&self) -> Result<FencingToken, StoreError> {
        self.shared.current_token()
    }

    /// The source writers take their tokens from (for [`phalanx_store::LdkKvStore`]).
    pub fn fence(&self) -> Arc<dyn FenceSource> {
        Arc::clone(&self.shared) as Arc<dyn FenceSource>
    }

    /// The instant until which the holder may act, unless it lost otherwise.
    pub fn valid_until(&self) -> Instant {
        *self
            .shared
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The leadership's status, updated when it ends.
    pub fn status(&self) -> watch::Receiver<LeadershipStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until the leadership ends, and says why.
    pub async fn lost(&self) -> LossReason {
        let mut status = self.status();
        loop {
            if let LeadershipStatus::Lost(reason) = &*status.borrow_and_update() {
                return reason.clone();
            }
            // The local deadline passes without any event if the driver cannot run;
            // wake for it too.
            let deadline = tokio::time::Instant::from_std(self.valid_until());
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        return LossReason::Resigned;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = self.token();
                }
            }
        }
    }

    /// Stops acting and gives the lease back, so another campaigner wins at once. The
    /// caller must have persisted everything it needs first: writes fail from now on.
    pub async fn resign(self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        if self
            .shared
            .requests
            .send(DriverRequest::Resign(reply))
            .is_err()
        {
            return Ok(());
        }
        // The driver is gone if the leadership was already lost: nothing to give back.
        answer.await.unwrap_or(Ok(()))
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let _ = self.shared.requests.send(DriverRequest::Dropped);
    }
}

/// Resolves when the backend signals that the lease's session ended.
async fn session_ended(signal: &mut Option<watch::Receiver<bool>>) {
    if let Some(receiver) = signal {
        if receiver.wait_for(|ended| *ended).await.is_ok() {
            return;
        }
        // The backend dropped its sender: no more news from there.
        *signal = None;
    }
    std::future::pending::<()>().await
}

async fn next_renewal(
    renewal: &mut Option<Renewal>,
) -> (Box<dyn HeldLease>, Instant, Result<(), StoreError>) {
    match renewal {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

fn release_in_background(lease: Box<dyn HeldLease>) {
    tokio::spawn(async move {
        let epoch = lease.token().epoch();
        if let Err(err) = lease.resign().await {
            tracing::warn!(%epoch, error = %err.report(), "could not hand the lease back; it will expire");
        }
    });
}

async fn drive(
    mut machine: LeaseMachine,
    lease: Box<dyn HeldLease>,
    shared: Arc<Shared>,
    mut requests: mpsc::UnboundedReceiver<DriverRequest>,
) {
    let mut session_signal = lease.session_lost();
    let mut lease = Some(lease);
    let mut renewal: Option<Renewal> = None;
    let mut resign_reply: Option<oneshot::Sender<Result<(), StoreError>>> = None;
    let mut release = false;
    while let Some(wake) = machine.next_wakeup() {
        let event = tokio::select! {
            biased;
            request = requests.recv() => match request {
                Some(DriverRequest::Resign(reply)) => {
                    resign_reply = Some(reply);
                    Event::ResignRequested
                }
                Some(DriverRequest::Fenced(reason)) => Event::Fenced(reason),
                Some(DriverRequest::Dropped) | None => Event::ResignRequested,
            },
            _ = session_ended(&mut session_signal) => Event::SessionLost,
            (returned, sent_at, result) = next_renewal(&mut renewal) => {
                renewal = None;
                let granted_ttl = returned.granted_ttl();
                lease = Some(returned);
                if let Some(observer) = &shared.renewal_observer {
                    observer(sent_at.elapsed(), result.as_ref().map(|_| ()));
                }
                match result {
                    Ok(()) => Event::RenewalSucceeded { sent_at, granted_ttl },
                    Err(err) if err.is_fenced() => Event::Fenced(err.to_string()),
                    Err(err) => {
                        tracing::warn!(holder = %shared.holder, epoch = %shared.epoch, error = %err.report(), "lease renewal failed; retrying");
                        Event::RenewalFailed
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => Event::Tick,
        };
        let commands = machine.handle(Instant::now(), event);
        *shared.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = machine.valid_until();
        for command in commands {
            match command {
                Command::SendRenewal => {
                    if let Some(mut held) = lease.take() {
                        renewal = Some(Box::pin(async move {
                            let sent_at = Instant::now();
                            let result = held.renew().await;
                            (held, sent_at, result)
                        }));
                    }
                }
                Command::StopActing(reason) => shared.lose(reason),
                Command::ReleaseLease => release = true,
            }
        }
    }
    // Leadership is over. Give the lease back if asked to, waiting for a renewal that is
    // still out, since it holds the lease; but only while there is a lease to give back:
    // the store lets it lapse about a safety margin after the local deadline, and a store
    // that hangs would otherwise hold the exit of a cut-off instance for a whole TTL.
    let held = match (lease, renewal) {
        (Some(held), _) => Some(held),
        (None, Some(future)) if release || resign_reply.is_some() => {
            let lapses_at = machine.valid_until() + machine.timings().safety_margin;
            let worth_waiting = lapses_at.saturating_duration_since(Instant::now());
            match tokio::time::timeout(worth_waiting, future).await {
                Ok((held, _, _)) => Some(held),
                Err(_) => {
                    tracing::warn!(holder = %shared.holder, epoch = %shared.epoch, "the last renewal never returned; the lease will expire instead of being handed back");
                    None
                }
            }
        }
        _ => None,
    };
    let result = match held {
        Some(held) if release => {
            let epoch = held.token().epoch();
            let result = held.resign().await;
            match &result {
                Ok(()) => tracing::info!(holder = %shared.holder, %epoch, "lease handed back"),
                Err(err) => {
                    tracing::warn!(holder = %shared.holder, %epoch, error = %err.report(), "could not hand the lease back; it will expire")
                }
            }
            result
        }
        _ => Ok(()),
    };
    if let Some(reply) = resign_reply {
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests;

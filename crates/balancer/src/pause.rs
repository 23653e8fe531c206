//! The pause gate of a service (spec §5): running, paused (requests wait, up to max-pause) or
//! stopped (requests are turned away with the stop message).
//!
//! The state is one atomic byte, so a running service costs each request a single load. Only
//! requests that find the service paused take the control lock, to join a FIFO queue of
//! waiters; `resume` and `stop` release that queue front to back, so held requests are woken
//! in the order they arrived.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use kamal_balancer::{Admission, PauseController};
//!
//! let gate = PauseController::new();
//! assert_eq!(gate.admit().await, Admission::Proceed);
//! gate.pause(Duration::ZERO); // max-pause 0: every request is rejected at once
//! assert_eq!(gate.admit().await, Admission::TimedOut);
//! gate.stop("back soon");
//! assert_eq!(gate.admit().await, Admission::Stopped { message: "back soon".into() });
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// Whether a service accepts requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PauseState {
    /// Serving normally.
    #[default]
    Running,
    /// Holding new requests until resumed, stopped, or max-pause passes.
    Paused,
    /// Answering every request with 503 and the stop message.
    Stopped,
}

impl PauseState {
    /// The name `list` shows: `running`, `paused` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseState::Running => "running",
            PauseState::Paused => "paused",
            PauseState::Stopped => "stopped",
        }
    }

    /// The state file's code (`pause_controller.state`): 0, 1 or 2.
    pub fn code(self) -> u8 {
        match self {
            PauseState::Running => 0,
            PauseState::Paused => 1,
            PauseState::Stopped => 2,
        }
    }

    /// The state for a state-file code; unknown codes mean running.
    pub fn from_code(code: u8) -> PauseState {
        match code {
            1 => PauseState::Paused,
            2 => PauseState::Stopped,
            _ => PauseState::Running,
        }
    }
}

/// What the gate decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Serve the request.
    Proceed,
    /// The service is stopped: answer 503 with this message (empty for the default page).
    Stopped {
        /// The stop message.
        message: Arc<str>,
    },
    /// The request waited max-pause without the service resuming: answer 504.
    TimedOut,
}

/// The persisted part of the gate (state file `pause_controller`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PauseSnapshot {
    /// Current state.
    pub state: PauseState,
    /// The stop message (empty unless stopped).
    pub message: String,
    /// How long a request may wait while paused.
    pub max_pause: Duration,
}

/// How a held request is let go.
#[derive(Debug)]
enum Release {
    Proceed,
    Stopped(Arc<str>),
}

#[derive(Debug, Default)]
struct Control {
    message: Arc<str>,
    max_pause: Duration,
    /// Requests waiting while paused, oldest first.
    waiters: VecDeque<oneshot::Sender<Release>>,
}

/// A service's pause controller. See the module docs.
#[derive(Debug, Default)]
pub struct PauseController {
    /// The [`PauseState`] code; written only with `control` held, read without it.
    state: AtomicU8,
    control: Mutex<Control>,
}

impl PauseController {
    /// A running gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// A gate in a saved state, behaving exactly as if `pause`/`stop` had just been called
    /// (upstream crashes on a restored paused gate; spec §13.3).
    pub fn restored(snapshot: &PauseSnapshot) -> Self {
        let gate = Self::new();
        gate.apply(snapshot);
        gate
    }

    /// Moves the gate into a saved state through the same transitions `pause`, `stop` and
    /// `resume` use, so waiters and later commands see no difference.
    pub fn apply(&self, snapshot: &PauseSnapshot) {
        match snapshot.state {
            PauseState::Running => self.resume(),
            PauseState::Paused => self.pause(snapshot.max_pause),
            PauseState::Stopped => self.stop(&snapshot.message),
        }
    }

    /// The current state (one atomic load).
    pub fn state(&self) -> PauseState {
        PauseState::from_code(self.state.load(Ordering::Acquire))
    }

    /// Whether requests pass straight through (one atomic load, the hot-path check).
    #[inline]
    pub fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) == PauseState::Running.code()
    }

    /// The state, stop message and max-pause, for the state file and `list`.
    pub fn snapshot(&self) -> PauseSnapshot {
        let control = self.lock();
        PauseSnapshot {
            state: self.state(),
            message: control.message.to_string(),
            max_pause: control.max_pause,
        }
    }

    /// Enters `paused` with a new max-pause and clears the stop message. Requests already
    /// waiting keep waiting (their own deadline does not change).
    pub fn pause(&self, max_pause: Duration) {
        let mut control = self.lock();
        control.message = Arc::from("");
        control.max_pause = max_pause;
        self.set_state(PauseState::Paused);
    }

    /// Enters `stopped` with `message`; waiting requests get the stop answer now.
    pub fn stop(&self, message: &str) {
        let mut control = self.lock();
        let message: Arc<str> = Arc::from(message);
        control.message = Arc::clone(&message);
        self.set_state(PauseState::Stopped);
        release(&mut control, || Release::Stopped(Arc::clone(&message)));
    }

    /// Enters `running` and clears the message; waiting requests proceed, oldest first.
    pub fn resume(&self) {
        let mut control = self.lock();
        control.message = Arc::from("");
        self.set_state(PauseState::Running);
        release(&mut control, || Release::Proceed);
    }

    /// Decides whether a request may proceed; while paused it waits for `resume`, `stop` or
    /// its max-pause, whichever comes first. Costs one atomic load when running.
    pub async fn admit(&self) -> Admission {
        if self.is_running() {
            return Admission::Proceed;
        }
        let (waiting, max_pause) = {
            let mut control = self.lock();
            // Re-read under the lock: state changes happen with it held.
            match self.state() {
                PauseState::Running => return Admission::Proceed,
                PauseState::Stopped => {
                    return Admission::Stopped {
                        message: Arc::clone(&control.message),
                    }
                }
                PauseState::Paused if control.max_pause.is_zero() => return Admission::TimedOut,
                PauseState::Paused => {}
            }
            // Requests that gave up (timed out or left) leave closed senders behind; they time
            // out roughly in arrival order, so trimming the front keeps the queue bounded.
            while control.waiters.front().is_some_and(|tx| tx.is_closed()) {
                control.waiters.pop_front();
            }
            let (tx, rx) = oneshot::channel();
            control.waiters.push_back(tx);
            (rx, control.max_pause)
        };
        match tokio::time::timeout(max_pause, waiting).await {
            Ok(Ok(Release::Proceed)) => Admission::Proceed,
            Ok(Ok(Release::Stopped(message))) => Admission::Stopped { message },
            Err(_) => Admission::TimedOut,
            // Only a dropped controller drops senders; answer from the state as it stands.
            Ok(Err(_)) => match self.state() {
                PauseState::Running => Admission::Proceed,
                PauseState::Paused => Admission::TimedOut,
                PauseState::Stopped => Admission::Stopped {
                    message: Arc::clone(&self.lock().message),
                },
            },
        }
    }

    /// Number of requests currently held.
    pub fn waiting(&self) -> usize {
        self.lock()
            .waiters
            .iter()
            .filter(|tx| !tx.is_closed())
            .count()
    }

    fn set_state(&self, state: PauseState) {
        self.state.store(state.code(), Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        // Every update leaves `Control` consistent, so a poisoned lock is still usable.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lets every waiter go, oldest first.
fn release(control: &mut Control, mut how: impl FnMut() -> Release) {
    for tx in control.waiters.drain(..) {
        // A waiter that already gave up has dropped its receiver; nothing to do for it.
        let _ = tx.send(how());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use tokio::time::Instant;

    const LONG: Duration = Duration::from_secs(30);

    /// Polls until `n` requests are queued (bounded).
    async fn wait_for_waiters(gate: &PauseController, n: usize) {
        for _ in 0..1000 {
            if gate.waiting() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("only {} of {n} requests queued", gate.waiting());
    }

    #[tokio::test]
    async fn running_gate_admits_at_once() {
        let gate = PauseController::new();
        assert!(gate.is_running());
        assert_eq!(gate.state(), PauseState::Running);
        assert_eq!(gate.admit().await, Admission::Proceed);
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn resume_releases_waiters_in_arrival_order() {
        let gate = Arc::new(PauseController::new());
        gate.pause(LONG);
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (held, order) = (Arc::clone(&gate), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let admission = held.admit().await;
                order.lock().unwrap().push(i);
                admission
            }));
            // Each request joins the queue before the next one arrives.
            wait_for_waiters(&gate, i + 1).await;
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "nothing passes while paused"
        );
        gate.resume();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Admission::Proceed);
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_pause_expires_per_request() {
        let gate = Arc::new(PauseController::new());
        gate.pause(Duration::from_secs(1));
        let started = Instant::now();
        assert_eq!(gate.admit().await, Admission::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // A later re-pause changes max-pause for new requests only.
        let first = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { (gate.admit().await, Instant::now()) })
        };
        wait_for_waiters(&gate, 1).await;
        let repaused = Instant::now();
        gate.pause(Duration::from_secs(5));
        assert_eq!(gate.state(), PauseState::Paused);
        let (admission, at) = first.await.unwrap();
        assert_eq!(admission, Admission::TimedOut);
        assert_eq!(at - repaused, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn zero_max_pause_rejects_immediately() {
        let gate = PauseController::new();
        gate.pause(Duration::ZERO);
        assert_eq!(gate.admit().await, Admission::TimedOut);
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn stop_releases_waiters_with_the_message() {
        let gate = Arc::new(PauseController::new());
        gate.pause(LONG);
        let held = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit().await })
        };
        wait_for_waiters(&gate, 1).await;
        gate.stop("Back <soon>");
        let expected = Admission::Stopped {
            message: "Back <soon>".into(),
        };
        assert_eq!(held.await.unwrap(), expected);
        assert_eq!(gate.admit().await, expected);
        let snapshot = gate.snapshot();
        assert_eq!(snapshot.state, PauseState::Stopped);
        assert_eq!(snapshot.message, "Back <soon>");
        gate.resume();
        assert_eq!(gate.admit().await, Admission::Proceed);
        let snapshot = gate.snapshot();
        assert_eq!(
            (snapshot.state, snapshot.message.as_str()),
            (PauseState::Running, "")
        );
    }

    #[tokio::test]
    async fn pause_after_stop_clears_the_message() {
        let gate = PauseController::new();
        gate.stop("gone");
        gate.pause(Duration::from_millis(250));
        let snapshot = gate.snapshot();
        assert_eq!(snapshot.state, PauseState::Paused);
        assert_eq!(snapshot.message, "");
        assert_eq!(snapshot.max_pause, Duration::from_millis(250));
    }

    #[tokio::test]
    async fn restored_paused_gate_behaves_like_a_fresh_one() {
        let gate = Arc::new(PauseController::restored(&PauseSnapshot {
            state: PauseState::Paused,
            message: String::new(),
            max_pause: LONG,
        }));
        assert!(!gate.is_running());
        let held = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit().await })
        };
        wait_for_waiters(&gate, 1).await;
        gate.resume();
        assert_eq!(held.await.unwrap(), Admission::Proceed);

        let stopped = PauseController::restored(&PauseSnapshot {
            state: PauseState::Stopped,
            message: "m".into(),
            max_pause: Duration::ZERO,
        });
        assert_eq!(
            stopped.admit().await,
            Admission::Stopped {
                message: "m".into()
            }
        );
        stopped.resume();
        assert!(stopped.is_running());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_waiters_are_trimmed() {
        let gate = Arc::new(PauseController::new());
        gate.pause(Duration::from_millis(10));
        for _ in 0..100 {
            assert_eq!(gate.admit().await, Admission::TimedOut);
        }
        // Each new waiter trims the expired ones ahead of it.
        let kept = gate.lock().waiters.len();
        assert!(kept <= 1, "{kept} entries kept");
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn state_codes_round_trip() {
        for state in [PauseState::Running, PauseState::Paused, PauseState::Stopped] {
            assert_eq!(PauseState::from_code(state.code()), state);
        }
        assert_eq!(PauseState::from_code(9), PauseState::Running);
        assert_eq!(PauseState::Paused.as_str(), "paused");
    }
}

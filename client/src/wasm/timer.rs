//! The one wake-up timer, armed for the machine's next deadline: a `gloo_timers`
//! `Timeout` the client owns, so that replacing or dropping it cancels it.

use gloo_timers::callback::Timeout;

use super::js::now;
use super::Inner;

/// The armed `setTimeout` and the deadline it is for.
pub(super) struct Timer {
    /// Held only to be dropped: dropping clears it.
    _timeout: Timeout,
    /// When it fires, so an unchanged deadline keeps the timer already armed.
    at: f64,
}

impl Inner {
    /// The timer fired: let the machine act on whatever is due.
    pub(super) fn on_timer(&self) {
        self.sweep();
        if let Some(fired) = self.timer.take() {
            self.bury(fired); // its closure is running
        }
        self.machine.borrow_mut().tick(now());
        self.pump();
    }

    /// Keeps exactly one timer armed for the machine's next deadline.
    pub(super) fn arm_timer(&self) {
        let next = self.machine.borrow().next_deadline();
        let mut timer = self.timer.borrow_mut();
        if timer.as_ref().map(|t| t.at) == next {
            return;
        }
        // The old `Timeout`, if any, is cleared as it is dropped here.
        *timer = next.map(|at| {
            let weak = self.me.clone();
            // `setTimeout` drops a fraction of a ms just as this cast does; a timer that
            // fires a little early finds nothing due and is armed again.
            let delay = (at - now()).max(0.0) as u32;
            let timeout = Timeout::new(delay, move || {
                if let Some(inner) = weak.upgrade() {
                    inner.on_timer();
                }
            });
            Timer {
                _timeout: timeout,
                at,
            }
        });
    }
}

//! The one wake-up timer, armed for the machine's next deadline.

use wasm_bindgen::JsCast;

use super::js::{self, now};
use super::Inner;

impl Inner {
    /// The timer fired: let the machine act on whatever is due.
    pub(super) fn on_timer(&self) {
        self.sweep();
        self.timer.replace(None);
        self.machine.borrow_mut().tick(now());
        self.pump();
    }

    /// Keeps exactly one `setTimeout` armed for the machine's next deadline.
    pub(super) fn arm_timer(&self) {
        let next = self.machine.borrow().next_deadline();
        let mut timer = self.timer.borrow_mut();
        if timer.as_ref().map(|(_, at)| *at) == next {
            return;
        }
        if let Some((id, _)) = timer.take() {
            js::clear_timeout(&id);
        }
        if let Some(at) = next {
            let delay = (at - now()).max(0.0);
            let id = js::set_timeout(self.timer_callback.as_ref().unchecked_ref(), delay);
            *timer = Some((id, at));
        }
    }
}

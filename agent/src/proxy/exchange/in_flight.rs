//! What a request holds while it is in flight: its endpoint's active count,
//! its cluster's request slot and its kept body.
//! Each is given back when dropped — on completion, or whenever the request
//! ends otherwise — so no path can leak one.

use super::super::tap::Tap;
use crate::model::live::{ActiveRequest, Slot};

/// The request's in-flight resources.
#[derive(Default)]
pub struct InFlight {
    active: Option<ActiveRequest>,
    request_slot: Option<Slot>,
    tap: Option<Tap>,
}

impl InFlight {
    /// The current attempt's endpoint counts the request as active (the
    /// previous attempt's count is given back).
    pub fn hold_endpoint(&mut self, active: ActiveRequest) {
        self.active = Some(active);
    }

    /// The current attempt's cluster request slot.
    pub fn hold_request_slot(&mut self, slot: Slot) {
        self.request_slot = Some(slot);
    }

    /// The kept request body, released to waiting mirrors at the end.
    pub fn hold_tap(&mut self, tap: Option<Tap>) {
        self.tap = tap;
    }

    /// The request is over: everything is given back.
    pub fn release(&mut self) {
        drop(std::mem::take(self));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Mirrors still waiting for a body that will not come are woken.
        if let Some(tap) = self.tap.take() {
            tap.release();
        }
    }
}

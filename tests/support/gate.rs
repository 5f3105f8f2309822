//! Holds the next N requests at the API server until the test releases
//! them, so a test can change the server's state (revoke a token) while a
//! known number of requests is in flight.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Where the API server parks requests while a [`Hold`] is armed.
#[derive(Default)]
pub struct Gate {
    hold: Mutex<Option<Arc<HoldState>>>,
}

struct HoldState {
    /// How many more requests to hold.
    slots: Mutex<usize>,
    arrived: watch::Sender<usize>,
    released: watch::Sender<bool>,
}

impl Gate {
    /// Returns at once, or, for a request the armed hold claims, once the
    /// hold is released.
    pub async fn pass(&self) {
        let Some(hold) = self.hold.lock().unwrap().clone() else {
            return;
        };
        {
            let mut slots = hold.slots.lock().unwrap();
            if *slots == 0 {
                return;
            }
            *slots -= 1;
        }
        let mut released = hold.released.subscribe();
        hold.arrived.send_modify(|n| *n += 1);
        let _ = released.wait_for(|released| *released).await;
    }

    /// Holds the next `n` requests.
    pub fn hold_next(&self, n: usize) -> Hold {
        let state = Arc::new(HoldState {
            slots: Mutex::new(n),
            arrived: watch::channel(0).0,
            released: watch::channel(false).0,
        });
        *self.hold.lock().unwrap() = Some(Arc::clone(&state));
        Hold { state }
    }
}

/// The test's side of an armed gate. Dropping it releases the requests.
pub struct Hold {
    state: Arc<HoldState>,
}

impl Hold {
    /// Waits until `n` requests are held.
    pub async fn arrived(&self, n: usize) {
        let mut arrived = self.state.arrived.subscribe();
        let _ = arrived.wait_for(|&count| count >= n).await;
    }

    /// Lets every held request (and every later one) through.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

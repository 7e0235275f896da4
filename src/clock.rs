//! Time, injected: the Spin edge reads the host's clocks; tests use a clock they drive.

pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

#[cfg(test)]
pub(crate) mod manual {
    use super::Clock;
    use std::cell::Cell;

    /// A clock that moves only when slept on (or set).
    pub struct ManualClock(pub Cell<u64>);

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
    }
}

//! Messages an at-most-once backend drops because a subscriber cannot keep up (Redis
//! pub/sub's per-subscription queues, NATS core's client): each one counted
//! (`transport_dropped_total`), and a warning due on the first and then at most every
//! [`WARNING_INTERVAL`], saying how many since the last one.

use std::time::{Duration, Instant};

/// Shortest time between two warnings about one source's dropped messages.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What one source (a subscription's queue, a client) has dropped.
pub(crate) struct Drops {
    backend: &'static str,
    total: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

/// A warning due: messages dropped since the last one, and in all.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Due {
    pub dropped: u64,
    pub total: u64,
}

impl Drops {
    pub(crate) fn new(backend: &'static str) -> Self {
        Drops {
            backend,
            total: 0,
            unreported: 0,
            last_warning: None,
        }
    }

    /// One more message dropped: counted, and `Some` when a warning is due.
    pub(crate) fn one(&mut self) -> Option<Due> {
        crate::metrics::dropped(self.backend);
        self.one_at(Instant::now)
    }

    /// [`Drops::one`] without the metric, `now` read only when a warning may be due.
    fn one_at(&mut self, now: impl FnOnce() -> Instant) -> Option<Due> {
        self.total += 1;
        self.unreported += 1;
        let now = match self.last_warning {
            None => now(),
            Some(last) => {
                let now = now();
                if now.duration_since(last) < WARNING_INTERVAL {
                    return None;
                }
                now
            }
        };
        let due = Due {
            dropped: self.unreported,
            total: self.total,
        };
        self.unreported = 0;
        self.last_warning = Some(now);
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_drop_is_reported_then_the_rest_once_per_interval() {
        let start = Instant::now();
        let mut drops = Drops::new("test");
        assert_eq!(
            drops.one_at(|| start),
            Some(Due {
                dropped: 1,
                total: 1
            })
        );
        for second in 1..10 {
            let at = start + Duration::from_secs(second);
            assert_eq!(drops.one_at(|| at), None, "at {second} s");
        }
        let later = start + WARNING_INTERVAL;
        assert_eq!(
            drops.one_at(|| later),
            Some(Due {
                dropped: 10,
                total: 11
            })
        );
        assert_eq!(drops.one_at(|| later), None);
    }
}

//! The one reconnect/restart backoff of the agent: exponential from `first`
//! to `longest`, each wait jittered into its upper half so a fleet that lost
//! its relay together does not come back in step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, longest: Duration) -> Self {
        let longest = longest.max(first);
        Backoff {
            first,
            longest,
            next: first,
        }
    }

    /// After a success: the next wait is the shortest again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// After a refusal that retrying soon will not fix.
    pub fn to_longest(&mut self) {
        self.next = self.longest;
    }

    /// The wait that [`Backoff::wait`] draws from (without jitter).
    pub fn current(&self) -> Duration {
        self.next
    }

    /// How long to wait now: in `[current/2, current]`. Doubles the next.
    pub fn wait(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.longest);
        rand::rng().random_range(now / 2..=now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_longest_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1_000));
        let expected = [100, 200, 400, 800, 1_000, 1_000];
        for upper in expected {
            assert_eq!(backoff.current(), ms(upper));
            let wait = backoff.wait();
            assert!(
                wait >= ms(upper) / 2 && wait <= ms(upper),
                "{wait:?} of {upper}"
            );
        }
        backoff.reset();
        assert_eq!(backoff.current(), ms(100));
        backoff.to_longest();
        assert_eq!(backoff.current(), ms(1_000));
        // A longest below the first is the first.
        let mut odd = Backoff::new(ms(500), ms(10));
        odd.wait();
        assert_eq!(odd.current(), ms(500));
    }
}

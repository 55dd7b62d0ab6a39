//! Circuit breaker, for browser launches and for each target of a job.
//!
//! `threshold` consecutive failures open the circuit: nothing is attempted until the backoff has
//! passed, then one trial is allowed (half-open). Its success closes the circuit; its failure
//! opens it again with the backoff doubled (up to `max_backoff`). Time is passed in, so the
//! state machine is a pure function of events and the clock.
//!
//! A trial handed out must end in [`Breaker::success`], [`Breaker::trial_failed`] or
//! [`Breaker::release_trial`]: a trial that is never reported keeps every later caller waiting.
//! The pool wraps it in a guard that reports a failure when dropped (`pool::TargetPermit`).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// Value of `leakwarden_runner_circuit_state`.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Launch now. `trial` is true for the single half-open attempt.
    Go { trial: bool },
    /// Try again after this long.
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    consecutive_failures: u32,
    backoff: Duration,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    pub fn new(threshold: u32, base_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base_backoff,
            max_backoff,
            consecutive_failures: 0,
            backoff: base_backoff,
            open_until: None,
            trial_in_flight: false,
        }
    }

    pub fn state(&self, now: Instant) -> State {
        match self.open_until {
            None => State::Closed,
            Some(t) if now >= t => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// A half-open trial has been handed out and not reported yet.
    pub fn trial_in_flight(&self) -> bool {
        self.trial_in_flight
    }

    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.open_until {
            None => Permit::Go { trial: false },
            Some(t) if now < t => Permit::Wait(t - now),
            Some(_) if self.trial_in_flight => Permit::Wait(self.base_backoff),
            Some(_) => {
                self.trial_in_flight = true;
                Permit::Go { trial: true }
            }
        }
    }

    pub fn success(&mut self) {
        self.consecutive_failures = 0;
        self.backoff = self.base_backoff;
        self.open_until = None;
        self.trial_in_flight = false;
    }

    /// The failure of an attempt let through by a permit: `trial` says whether it was the
    /// half-open trial. A failure of an attempt that started before the circuit opened counts,
    /// but does not decide a trial that is still running.
    pub fn failure_of(&mut self, trial: bool, now: Instant) {
        if trial && self.open_until.is_some() {
            self.trial_failed(now);
        } else if !trial && self.trial_in_flight {
            self.consecutive_failures += 1;
        } else {
            self.failure(now);
        }
    }

    /// The half-open trial failed: open again, for longer.
    pub fn trial_failed(&mut self, now: Instant) {
        self.trial_in_flight = true;
        self.failure(now);
    }

    /// The trial ended without saying anything about what the breaker guards (an injected
    /// fault, a shutdown, a browser lost to a neighbour): the next caller gets the trial.
    pub fn release_trial(&mut self) {
        self.trial_in_flight = false;
    }

    pub fn failure(&mut self, now: Instant) {
        self.consecutive_failures += 1;
        if self.trial_in_flight {
            // The half-open trial failed: open again, for longer.
            self.trial_in_flight = false;
            self.backoff = (self.backoff * 2).min(self.max_backoff);
            self.open_until = Some(now + self.backoff);
        } else if self.open_until.is_none() && self.consecutive_failures >= self.threshold {
            self.backoff = self.base_backoff;
            self.open_until = Some(now + self.backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Breaker {
        Breaker::new(3, Duration::from_secs(1), Duration::from_secs(8))
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut br = b();
        br.failure(t0);
        br.failure(t0);
        assert_eq!(br.state(t0), State::Closed);
        assert_eq!(br.permit(t0), Permit::Go { trial: false });
        br.failure(t0);
        assert_eq!(br.state(t0), State::Open);
        assert_eq!(br.permit(t0), Permit::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut br = b();
        br.failure(t0);
        br.failure(t0);
        br.success();
        br.failure(t0);
        br.failure(t0);
        assert_eq!(br.state(t0), State::Closed);
    }

    #[test]
    fn half_open_allows_one_trial_and_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut br = b();
        for _ in 0..3 {
            br.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(br.state(t1), State::HalfOpen);
        assert_eq!(br.permit(t1), Permit::Go { trial: true });
        // A second caller waits while the trial runs.
        assert!(matches!(br.permit(t1), Permit::Wait(_)));
        br.failure(t1);
        assert_eq!(br.state(t1), State::Open);
        assert_eq!(br.permit(t1), Permit::Wait(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(br.permit(t2), Permit::Go { trial: true });
        br.failure(t2);
        assert_eq!(br.permit(t2), Permit::Wait(Duration::from_secs(4)));
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(br.permit(t3), Permit::Go { trial: true });
        br.failure(t3);
        let t4 = t3 + Duration::from_secs(8);
        assert_eq!(br.permit(t4), Permit::Go { trial: true });
        br.failure(t4);
        // Capped at max_backoff.
        assert_eq!(br.permit(t4), Permit::Wait(Duration::from_secs(8)));
    }

    #[test]
    fn a_released_trial_goes_to_the_next_caller() {
        let t0 = Instant::now();
        let mut br = b();
        for _ in 0..3 {
            br.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(br.permit(t1), Permit::Go { trial: true });
        br.release_trial();
        assert_eq!(br.state(t1), State::HalfOpen);
        assert_eq!(br.permit(t1), Permit::Go { trial: true });
    }

    #[test]
    fn a_late_failure_from_before_the_opening_does_not_decide_the_trial() {
        let t0 = Instant::now();
        let mut br = b();
        for _ in 0..3 {
            br.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(br.permit(t1), Permit::Go { trial: true });
        br.failure_of(false, t1);
        // Still half-open, the trial still running: nobody else gets one.
        assert_eq!(br.state(t1), State::HalfOpen);
        assert!(matches!(br.permit(t1), Permit::Wait(_)));
        br.failure_of(true, t1);
        assert_eq!(br.permit(t1), Permit::Wait(Duration::from_secs(2)));
    }

    #[test]
    fn trial_success_closes() {
        let t0 = Instant::now();
        let mut br = b();
        for _ in 0..3 {
            br.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(br.permit(t1), Permit::Go { trial: true });
        br.success();
        assert_eq!(br.state(t1), State::Closed);
        assert_eq!(br.state(t1).gauge(), 0);
    }
}

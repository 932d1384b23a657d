//! How many requests had each outcome.

use super::Outcome;

/// How many requests had each outcome.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: usize,
    /// Answered 200.
    pub served: usize,
    pub refused: usize,
    pub reset: usize,
    pub unanswered: usize,
    /// Answered 502 Bad Gateway (by a proxy).
    pub bad_gateway: usize,
    /// Answered 503 Service Unavailable (by a proxy).
    pub unavailable: usize,
    /// Anything else, other statuses included.
    pub other: usize,
    /// The first of the `other` outcomes, to say what it was.
    pub first_other: Option<String>,
}

impl Tally {
    /// Counts one request.
    pub fn add(&mut self, outcome: &Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Response { status: 200, .. } => self.served += 1,
            Outcome::Response { status: 502, .. } => self.bad_gateway += 1,
            Outcome::Response { status: 503, .. } => self.unavailable += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Unanswered => self.unanswered += 1,
            Outcome::Response { status, .. } => self.add_other(format!("status {status}")),
            Outcome::Other(what) => self.add_other(what.clone()),
        }
    }

    fn add_other(&mut self, what: String) {
        self.other += 1;
        self.first_other.get_or_insert(what);
    }

    /// Adds another tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.served += other.served;
        self.refused += other.refused;
        self.reset += other.reset;
        self.unanswered += other.unanswered;
        self.bad_gateway += other.bad_gateway;
        self.unavailable += other.unavailable;
        self.other += other.other;
        if self.first_other.is_none() {
            self.first_other = other.first_other;
        }
    }
}

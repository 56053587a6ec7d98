//! Why requests failed, kept small enough to travel with every interval: per
//! error class, the HTTP statuses and underlying causes (OS error, DNS
//! failure...) with counts, and a few distinct example messages. Merging is
//! order-preserving and bounded, so an agent's total equals the merge of its
//! intervals on the controller.

use std::collections::BTreeMap;

use barrage_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::metrics::ErrorClass;

/// Distinct example messages kept per class.
pub const MAX_EXAMPLES: usize = 3;
/// Distinct causes counted per class; further ones count under `OTHER_CAUSES`.
pub const MAX_CAUSES: usize = 8;
/// Longest example or cause kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 400;
/// The cause key that collects causes beyond `MAX_CAUSES`.
pub const OTHER_CAUSES: &str = "(other causes)";

/// One failed request as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub class: ErrorClass,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The innermost cause: an OS error, a DNS failure, a stream fault.
    pub cause: Option<String>,
    /// Everything known: status, `Location`, the body's first bytes, the
    /// error chain.
    pub message: String,
}

impl RequestError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            status: None,
            cause: None,
            message: message.into(),
        }
    }

    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.name(), self.message)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What one error class's failures looked like.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassDetail {
    /// HTTP status → requests.
    pub statuses: BTreeMap<u16, u64>,
    /// Underlying cause → requests.
    pub causes: BTreeMap<String, u64>,
    /// A few distinct messages, first seen first.
    pub examples: Vec<String>,
}

impl ClassDetail {
    fn count_cause(&mut self, cause: &str, n: u64) {
        let key = if self.causes.contains_key(cause) || self.causes.len() < MAX_CAUSES {
            cause
        } else {
            OTHER_CAUSES
        };
        *self.causes.entry(key.to_owned()).or_default() += n;
    }

    fn keep_example(&mut self, message: &str) {
        if self.examples.len() < MAX_EXAMPLES && !self.examples.iter().any(|e| e == message) {
            self.examples.push(message.to_owned());
        }
    }

    fn add(&mut self, o: &ClassDetail) {
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        for (c, n) in &o.causes {
            self.count_cause(c, *n);
        }
        for e in &o.examples {
            self.keep_example(e);
        }
    }
}

/// Error detail of an interval or a total, by class. In JSON a map keyed
/// by the class names of METRICS.md (`http_5xx`, `connect`...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BTreeMap<String, ClassDetail>")]
#[serde(from = "BTreeMap<String, ClassDetail>")]
pub struct ErrorDetails(pub BTreeMap<ErrorClass, ClassDetail>);

impl From<ErrorDetails> for BTreeMap<String, ClassDetail> {
    fn from(d: ErrorDetails) -> Self {
        d.0.into_iter()
            .map(|(c, v)| (c.name().to_owned(), v))
            .collect()
    }
}

impl From<BTreeMap<String, ClassDetail>> for ErrorDetails {
    fn from(m: BTreeMap<String, ClassDetail>) -> Self {
        let mut out = ErrorDetails::default();
        for (name, d) in m {
            let class = ErrorClass::from_name(&name).unwrap_or(ErrorClass::Other);
            out.0.entry(class).or_default().add(&d);
        }
        out
    }
}

impl ErrorDetails {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, c: ErrorClass) -> Option<&ClassDetail> {
        self.0.get(&c)
    }

    /// Notes one failed request.
    pub fn note(&mut self, e: &RequestError) {
        let d = self.0.entry(e.class).or_default();
        if let Some(s) = e.status {
            *d.statuses.entry(s).or_default() += 1;
        }
        if let Some(c) = &e.cause {
            d.count_cause(&truncate(c, MAX_MESSAGE_BYTES), 1);
        }
        d.keep_example(&truncate(&e.message, MAX_MESSAGE_BYTES));
    }

    pub fn add(&mut self, o: &ErrorDetails) {
        for (class, d) in &o.0 {
            self.0.entry(*class).or_default().add(d);
        }
    }

    pub fn to_proto(&self) -> Vec<pb::ErrorDetail> {
        self.0
            .iter()
            .map(|(class, d)| pb::ErrorDetail {
                class: class.name().to_owned(),
                statuses: d
                    .statuses
                    .iter()
                    .map(|(s, n)| pb::ErrorStatusCount {
                        status: u32::from(*s),
                        count: *n,
                    })
                    .collect(),
                causes: d
                    .causes
                    .iter()
                    .map(|(c, n)| pb::ErrorCauseCount {
                        cause: c.clone(),
                        count: *n,
                    })
                    .collect(),
                examples: d.examples.clone(),
            })
            .collect()
    }

    /// Re-applies the bounds: a peer cannot make the controller keep more.
    pub fn from_proto(msgs: &[pb::ErrorDetail]) -> Self {
        let mut out = ErrorDetails::default();
        for m in msgs {
            let class = ErrorClass::from_name(&m.class).unwrap_or(ErrorClass::Other);
            let mut d = ClassDetail::default();
            for s in &m.statuses {
                let status = u16::try_from(s.status).unwrap_or(0);
                *d.statuses.entry(status).or_default() += s.count;
            }
            for c in &m.causes {
                d.count_cause(&truncate(&c.cause, MAX_MESSAGE_BYTES), c.count);
            }
            for e in &m.examples {
                d.keep_example(&truncate(e, MAX_MESSAGE_BYTES));
            }
            out.0.entry(class).or_default().add(&d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(n: u32) -> RequestError {
        RequestError::new(
            ErrorClass::Connect,
            format!("error sending request to port {n}"),
        )
        .with_cause("Connection refused (os error 111)")
    }

    #[test]
    fn examples_are_distinct_and_bounded_and_counts_exact() {
        let mut d = ErrorDetails::default();
        for i in 0..10 {
            d.note(&refused(i % 5));
        }
        let c = d.get(ErrorClass::Connect).expect("class");
        assert_eq!(c.causes["Connection refused (os error 111)"], 10);
        assert_eq!(c.examples.len(), MAX_EXAMPLES);
        assert!(c.statuses.is_empty());
    }

    #[test]
    fn causes_beyond_the_bound_are_counted_together() {
        let mut d = ErrorDetails::default();
        for i in 0..(MAX_CAUSES + 3) {
            d.note(&RequestError::new(ErrorClass::Other, "x").with_cause(format!("cause {i}")));
        }
        let c = d.get(ErrorClass::Other).expect("class");
        assert_eq!(c.causes.len(), MAX_CAUSES + 1);
        assert_eq!(c.causes[OTHER_CAUSES], 3);
    }

    #[test]
    fn proto_round_trip_and_merge_keep_order_and_bounds() {
        let mut a = ErrorDetails::default();
        let mut e = RequestError::new(ErrorClass::Http5xx, "HTTP 503: overloaded");
        e.status = Some(503);
        a.note(&e);
        a.note(&refused(1));
        let back = ErrorDetails::from_proto(&a.to_proto());
        assert_eq!(back, a);
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(json["http_5xx"]["statuses"]["503"], 1);
        let mut sum = back.clone();
        sum.add(&a);
        let c = sum.get(ErrorClass::Http5xx).expect("class");
        assert_eq!(c.statuses[&503], 2);
        assert_eq!(c.examples, vec!["HTTP 503: overloaded".to_owned()]);
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        assert!(truncate(&long, MAX_MESSAGE_BYTES).len() <= MAX_MESSAGE_BYTES + 3);
    }
}

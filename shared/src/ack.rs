//! Which receiver status codes acknowledge a delivery. Everything else, a timeout or a
//! connection error is a negative acknowledgement and the delivery is retried.

/// The acknowledgement rule of a subscriber style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// ORCID style: any 2xx.
    AnySuccess,
    /// Members style: exactly 102, 200, 201, 202 and 204.
    MembersCodes,
}

impl AckPolicy {
    /// True when `status` acknowledges the delivery.
    pub fn acknowledges(self, status: u16) -> bool {
        match self {
            Self::AnySuccess => (200..300).contains(&status),
            Self::MembersCodes => matches!(status, 102 | 200 | 201 | 202 | 204),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orcid_acknowledges_any_2xx() {
        for s in 200..300 {
            assert!(AckPolicy::AnySuccess.acknowledges(s), "{s}");
        }
        for s in [
            100, 102, 199, 300, 301, 302, 304, 400, 404, 410, 429, 500, 503,
        ] {
            assert!(!AckPolicy::AnySuccess.acknowledges(s), "{s}");
        }
    }

    #[test]
    fn members_acknowledges_exactly_its_codes() {
        let acked: Vec<u16> = (100..600)
            .filter(|&s| AckPolicy::MembersCodes.acknowledges(s))
            .collect();
        assert_eq!(acked, vec![102, 200, 201, 202, 204]);
    }
}

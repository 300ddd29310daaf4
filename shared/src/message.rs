//! The body of a delivery-queue message, and the limits SQS puts on it. The SQS adapter
//! and the in-memory queue both go through here, so the local runner refuses exactly
//! what AWS would, and a job that can never be sent is known before it is sent.
//!
//! A body is the job's JSON with every character SQS does not accept written as a JSON
//! `\uXXXX` escape (see [`encode`]): it is still plain JSON, decodes to the same job with
//! any JSON parser, and bodies written before this rule existed decode unchanged.

use crate::job::DeliveryJob;
use std::ops::Range;

/// The largest message body sent, in bytes. SQS's own limit was 256 KiB until 2025 and is
/// now up to 1 MiB per queue (`MaximumMessageSize`); the template pins the delivery queues
/// to this value so both sides agree, and a job this large is far past any real person.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The largest SendMessageBatch payload (the sum of its bodies), in bytes.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The most entries in one SendMessageBatch.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Why a queue refused a message for good: sending it again cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// The body is over the queue's size limit.
    #[error("message of {bytes} bytes is over the {limit}-byte queue limit")]
    TooLarge {
        /// The body's size.
        bytes: usize,
        limit: usize,
    },
    /// The queue refused the content (SQS `InvalidMessageContents` and the like).
    #[error("the queue refused the message: {reason}")]
    Rejected {
        /// The queue's error code and message.
        reason: String,
    },
}

/// True for the characters SQS accepts in a message body:
/// `#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF`.
pub fn sqs_allows(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The message body of a job: its JSON, with every character SQS would refuse escaped.
///
/// Such a character can only occur inside a JSON string (the JSON structure is ASCII),
/// where `\uXXXX` means the same character, so the body decodes to the same job.
/// serde_json already escapes the control characters; what is left to escape here are
/// U+FFFE and U+FFFF, both in the Basic Multilingual Plane, so one escape each.
pub fn encode(job: &DeliveryJob) -> String {
    let json = serde_json::to_string(job).expect("a job is plain data and always serializes");
    if json.chars().all(sqs_allows) {
        return json;
    }
    let mut body = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if sqs_allows(c) {
            body.push(c);
        } else {
            body.push_str(&format!("\\u{:04X}", u32::from(c)));
        }
    }
    body
}

/// The job a message body holds (any body [`encode`] wrote, and the plain JSON bodies
/// written before it).
pub fn decode(body: &str) -> Result<DeliveryJob, serde_json::Error> {
    serde_json::from_str(body)
}

/// Whether a queue with SQS's rules takes this body.
pub fn check(body: &str) -> Result<(), Refusal> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Refusal::TooLarge {
            bytes: body.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    if let Some(c) = body.chars().find(|c| !sqs_allows(*c)) {
        return Err(Refusal::Rejected {
            reason: format!(
                "InvalidMessageContents: character U+{:04X} is not allowed",
                u32::from(c)
            ),
        });
    }
    Ok(())
}

/// Splits bodies of these sizes, in order, into SendMessageBatch calls of at most
/// [`MAX_BATCH_ENTRIES`] entries and [`MAX_BATCH_BYTES`] bytes (each body is at most
/// [`MAX_MESSAGE_BYTES`], so it always fits a batch of its own).
pub fn batches(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordId;
    use crate::window::WindowId;

    fn job_with(name: &str) -> DeliveryJob {
        let person = serde_json::json!({"personID": "p1", "firstName": name});
        DeliveryJob::for_application(
            &"app-1".parse().unwrap(),
            &RecordId::parse("p1").unwrap(),
            person.as_object().unwrap().clone(),
            WindowId(3),
            crate::testing::at("2026-11-26T00:00:00.000Z"),
        )
    }

    #[test]
    fn the_allowed_set_is_sqs_s() {
        for c in [
            '\t', '\n', '\r', ' ', 'é', '\u{D7FF}', '\u{E000}', '\u{FFFD}', '😀',
        ] {
            assert!(sqs_allows(c), "{c:?}");
        }
        for c in [
            '\0', '\u{1}', '\u{B}', '\u{C}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
        ] {
            assert!(!sqs_allows(c), "{c:?}");
        }
    }

    #[test]
    fn every_person_encodes_to_a_body_sqs_accepts_and_decodes_back() {
        for name in [
            "plain",
            "a\u{FFFF}b",
            "\u{FFFE}",
            "ctl\u{1}\u{B}\u{1F}",
            "tab\tnl\ncr\r",
            "astral 😀",
            "\\u{FFFF} written out",
        ] {
            let job = job_with(name);
            let body = encode(&job);
            assert_eq!(check(&body), Ok(()), "{name:?} -> {body}");
            assert_eq!(decode(&body).ok(), Some(job), "{name:?}");
        }
        assert!(encode(&job_with("a\u{FFFF}b")).contains(r"a\uFFFFb"));
    }

    #[test]
    fn old_plain_json_bodies_still_decode() {
        let job = job_with("a\u{FFFF}b");
        let old = serde_json::to_string(&job).unwrap();
        assert!(check(&old).is_err(), "the old format SQS refuses");
        assert_eq!(decode(&old).unwrap(), job);
    }

    #[test]
    fn size_and_characters_are_checked() {
        assert_eq!(check(&"x".repeat(MAX_MESSAGE_BYTES)), Ok(()));
        assert_eq!(
            check(&"x".repeat(MAX_MESSAGE_BYTES + 1)),
            Err(Refusal::TooLarge {
                bytes: MAX_MESSAGE_BYTES + 1,
                limit: MAX_MESSAGE_BYTES
            })
        );
        // Bytes, not characters: 'é' is two bytes.
        assert!(check(&"é".repeat(MAX_MESSAGE_BYTES / 2 + 1)).is_err());
        assert!(matches!(check("a\u{FFFF}"), Err(Refusal::Rejected { .. })));
    }

    #[test]
    fn batches_respect_entries_and_bytes() {
        assert!(batches(&[]).is_empty());
        assert_eq!(batches(&[100; 25]), vec![0..10, 10..20, 20..25]);
        let big = MAX_BATCH_BYTES / 3;
        // Three big bodies fit (exactly at the limit is allowed), a fourth does not.
        assert_eq!(
            batches(&[big, big, big, 2, big]),
            vec![0..3, 3..5],
            "limit {MAX_BATCH_BYTES}"
        );
        assert_eq!(
            batches(&[MAX_MESSAGE_BYTES, 1, MAX_MESSAGE_BYTES]),
            vec![0..1, 1..2, 2..3]
        );
        // Every batch within both limits, every body in exactly one, in order.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let scale = rng.usize(1..=40);
            let sizes: Vec<usize> = (0..rng.usize(0..40))
                .map(|_| rng.usize(1..=MAX_MESSAGE_BYTES / scale))
                .collect();
            let split = batches(&sizes);
            let mut next = 0;
            for range in &split {
                assert_eq!(range.start, next, "{range:?} of {sizes:?}");
                assert!(
                    !range.is_empty() && range.len() <= MAX_BATCH_ENTRIES,
                    "{range:?} of {sizes:?}"
                );
                assert!(
                    sizes[range.clone()].iter().sum::<usize>() <= MAX_BATCH_BYTES,
                    "{range:?} of {sizes:?}"
                );
                next = range.end;
            }
            assert_eq!(next, sizes.len(), "{sizes:?}");
        }
    }
}

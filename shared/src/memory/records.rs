//! The records table in memory, with the stream it would have: every put and delete
//! returns the DynamoDB stream record the real table's KEYS_ONLY stream would emit (change
//! capture reads only the key, so the stream carries no item images).

use super::Gate;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::members::consenting;
use crate::ports::{BackendResult, Page, Person, RecordStore};
use crate::record::RecordId;
use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::{EventRecord, StreamRecord, StreamViewType};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// Persons keyed by id, plus the stream sequence counter.
#[derive(Debug)]
pub struct MemoryRecords {
    state: Arc<Mutex<(BTreeMap<RecordId, Person>, u64)>>,
    gate: Gate,
    /// Stamps the stream records.
    clock: Arc<dyn Clock>,
}

impl Default for MemoryRecords {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            gate: Gate::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl MemoryRecords {
    /// These records with their stream records stamped by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// These records through a fault plan: every port operation of the handle returned
    /// goes through `faults`; this handle stays as it is (the registry's writes use it).
    #[cfg(any(test, feature = "testing"))]
    pub fn with_faults(&self, faults: Arc<crate::testing::faults::Faults>) -> Self {
        Self {
            state: self.state.clone(),
            gate: Gate::with(faults),
            clock: self.clock.clone(),
        }
    }

    /// Creates or replaces a person (its `id` field is set to `id`) and returns the
    /// INSERT or MODIFY stream record.
    pub fn put_person(&self, id: &RecordId, mut person: Person) -> EventRecord {
        person.insert("id".into(), id.as_str().into());
        let mut state = self.state.lock().expect("records lock");
        let old = state.0.insert(id.clone(), person.clone());
        state.1 += 1;
        let name = if old.is_some() { "MODIFY" } else { "INSERT" };
        stream_record(name, id, state.1, self.clock.now())
    }

    /// Deletes a person and returns the REMOVE stream record, if it existed.
    pub fn delete_person(&self, id: &RecordId) -> Option<EventRecord> {
        let mut state = self.state.lock().expect("records lock");
        state.0.remove(id)?;
        state.1 += 1;
        Some(stream_record("REMOVE", id, state.1, self.clock.now()))
    }
}

fn to_item(person: &Person) -> serde_dynamo::Item {
    serde_dynamo::to_item(person).expect("a JSON object is a DynamoDB item")
}

/// The KEYS_ONLY stream record of a change (`INSERT`, `MODIFY` or `REMOVE`) of `id` with
/// stream sequence `sequence` made at `at`, as DynamoDB emits it (the SQLite records table
/// emits the same).
pub(crate) fn stream_record(
    name: &str,
    id: &RecordId,
    sequence: u64,
    at: Timestamp,
) -> EventRecord {
    let mut keys = Person::new();
    keys.insert("id".into(), id.as_str().into());
    let mut change = StreamRecord::default();
    change.approximate_creation_date_time =
        chrono::DateTime::from_timestamp_millis(at.epoch_ms()).unwrap_or_default();
    change.keys = to_item(&keys);
    change.sequence_number = Some(format!("{sequence:021}"));
    change.size_bytes = serde_json::to_vec(&keys).map_or(0, |b| b.len() as i64);
    change.stream_view_type = Some(StreamViewType::KeysOnly);
    let mut record = EventRecord::default();
    record.aws_region = "local".into();
    record.change = change;
    record.event_id = format!("local-{sequence}");
    record.event_name = name.into();
    record.event_source = Some("aws:dynamodb".into());
    record.event_version = Some("1.1".into());
    record.event_source_arn =
        Some("arn:aws:dynamodb:local:000000000000:table/records/stream/local".into());
    record
}

#[async_trait]
impl RecordStore for MemoryRecords {
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>> {
        self.gate.check_record(id)?;
        self.gate
            .run("get_person", async {
                Ok(self.state.lock().expect("records lock").0.get(id).cloned())
            })
            .await
    }

    async fn scan_consented(
        &self,
        application: &crate::ids::ApplicationId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>> {
        self.gate
            .run("scan_consented", async {
                let state = self.state.lock().expect("records lock");
                let start = after.map_or(Bound::Unbounded, Bound::Excluded);
                let examined: Vec<(RecordId, Person)> = state
                    .0
                    .range::<str, _>((start, Bound::Unbounded))
                    .take(limit + 1)
                    .map(|(id, person)| (id.clone(), person.clone()))
                    .collect();
                let scanned = Page::from_overfetch(examined, limit, |(id, _)| id.to_string());
                Ok(consenting(scanned, application))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn puts_and_deletes_emit_stream_records() {
        let records = MemoryRecords::default();
        let id = RecordId::parse("0000-0002-1825-0097").unwrap();
        let person = json!({"firstName": "Josiah"}).as_object().unwrap().clone();
        let insert = records.put_person(&id, person.clone());
        assert_eq!(insert.event_name, "INSERT");
        assert_eq!(
            crate::handlers::change_capture::changed_record(&insert),
            Some(id.clone())
        );
        assert!(insert.change.new_image.is_empty() && insert.change.old_image.is_empty());
        let modify = records.put_person(&id, person);
        assert_eq!(modify.event_name, "MODIFY");
        assert!(modify.change.sequence_number > insert.change.sequence_number);
        let remove = records.delete_person(&id).unwrap();
        assert_eq!(remove.event_name, "REMOVE");
        assert_eq!(
            crate::handlers::change_capture::changed_record(&remove),
            Some(id.clone())
        );
        assert!(records.delete_person(&id).is_none());
    }
}

//! The records table (persons, key `id`).

use super::unavailable;
use super::{from_item, s, to_item};
use crate::ports::{BackendError, BackendResult, Page, Person, RecordStore};
use crate::record::RecordId;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;

/// The records table (persons, key `id`).
#[derive(Debug, Clone)]
pub struct DynamoRecords {
    client: Client,
    table: String,
}

impl DynamoRecords {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Writes a person (tests and tools; the registry owns this table in production).
    pub async fn put_person(&self, id: &RecordId, person: &Person) -> BackendResult<()> {
        let mut person = person.clone();
        person.insert("id".into(), id.as_str().into());
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(&person)?))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn delete_person(&self, id: &RecordId) -> BackendResult<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("id", s(id.as_str()))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl RecordStore for DynamoRecords {
    async fn get_person(&self, id: &RecordId) -> BackendResult<Option<Person>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id.as_str()))
            .send()
            .await
            .map_err(unavailable)?;
        out.item.map(from_item).transpose()
    }

    async fn scan_consented(
        &self,
        application: &crate::ids::ApplicationId,
        after: Option<&str>,
        limit: usize,
    ) -> BackendResult<Page<(RecordId, Person)>> {
        let start = after.map(|id| HashMap::from([("id".to_owned(), s(id))]));
        let out = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("attribute_exists(consents.#app)")
            .expression_attribute_names("#app", application.as_str())
            .set_exclusive_start_key(start)
            .limit(limit as i32)
            .send()
            .await
            .map_err(unavailable)?;
        let next = out
            .last_evaluated_key
            .and_then(|key| key.get("id").and_then(|v| v.as_s().ok()).cloned());
        let mut items = Vec::new();
        for item in out.items.unwrap_or_default() {
            let person: Person = from_item(item)?;
            let id = person
                .get("id")
                .and_then(|v| v.as_str())
                .and_then(|id| RecordId::parse(id).ok())
                .ok_or_else(|| BackendError::Corrupt("a person without a valid id".into()))?;
            items.push((id, person));
        }
        Ok(Page { items, next })
    }
}

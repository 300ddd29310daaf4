//! Members-style applications (one partition, `APPS`) and their API key index in the
//! service table.

use super::{DynamoStore, Keyed, from_item};
use crate::application::Application;
use crate::health::EndpointHealth;
use crate::ids::ApplicationId;
use crate::ports::{ApplicationStore, BackendResult};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

const APPS_PK: &str = "APPS";

fn api_key_pk(hash: &str) -> String {
    format!("APIKEY#{hash}")
}

#[derive(Serialize, Deserialize)]
struct ApiKeyIndex {
    application_id: ApplicationId,
}

#[async_trait]
impl ApplicationStore for DynamoStore {
    async fn set_application_health(
        &self,
        id: &ApplicationId,
        health: &EndpointHealth,
    ) -> BackendResult<()> {
        self.set_health(APPS_PK, id.as_str(), health).await
    }

    async fn get_application(&self, id: &ApplicationId) -> BackendResult<Option<Application>> {
        self.get(APPS_PK, id.as_str()).await
    }

    async fn put_application(&self, application: &Application) -> BackendResult<()> {
        // The index first: an application is never reachable by a key without its item.
        let index = ApiKeyIndex {
            application_id: application.id.clone(),
        };
        self.put(
            api_key_pk(&application.api_key_hash),
            "APIKEY".into(),
            &index,
        )
        .await?;
        self.put(APPS_PK.into(), application.id.to_string(), application)
            .await
    }

    async fn application_for_key(
        &self,
        api_key_hash: &str,
    ) -> BackendResult<Option<ApplicationId>> {
        let index: Option<ApiKeyIndex> = self.get(&api_key_pk(api_key_hash), "APIKEY").await?;
        Ok(index.map(|i| i.application_id))
    }

    async fn list_applications(&self) -> BackendResult<Vec<Application>> {
        self.query_all(APPS_PK)
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<Application>>(item).map(|k| k.value))
            .collect()
    }
}

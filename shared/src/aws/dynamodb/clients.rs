//! OAuth clients (one partition, `CLIENTS`) and access tokens in the service table.

use super::{DynamoStore, Keyed, from_item};
use crate::ids::ClientId;
use crate::oauth::{AccessToken, OAuthClient};
use crate::ports::{BackendResult, ClientStore, TokenStore};
use async_trait::async_trait;

const CLIENTS_PK: &str = "CLIENTS";

fn token_pk(token_hash: &str) -> String {
    format!("TOKEN#{token_hash}")
}

#[async_trait]
impl ClientStore for DynamoStore {
    async fn get_client(&self, client_id: &ClientId) -> BackendResult<Option<OAuthClient>> {
        self.get(CLIENTS_PK, client_id.as_str()).await
    }

    async fn put_client(&self, client: &OAuthClient) -> BackendResult<()> {
        self.put(CLIENTS_PK.into(), client.client_id.to_string(), client)
            .await
    }

    async fn list_clients(&self) -> BackendResult<Vec<OAuthClient>> {
        self.query_all(CLIENTS_PK)
            .await?
            .into_iter()
            .map(|item| from_item::<Keyed<OAuthClient>>(item).map(|k| k.value))
            .collect()
    }
}

#[async_trait]
impl TokenStore for DynamoStore {
    async fn put_token(&self, token: &AccessToken) -> BackendResult<()> {
        // The token's own `expires_at` attribute is the table's TTL attribute.
        self.put(token_pk(&token.token_hash), "TOKEN".into(), token)
            .await
    }

    async fn get_token(&self, token_hash: &str) -> BackendResult<Option<AccessToken>> {
        self.get(&token_pk(token_hash), "TOKEN").await
    }
}

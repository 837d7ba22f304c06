//! [`BrokerClient`]: the four calls of the wire protocol over HTTP.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_wire::{
    AUTHORIZATION_HEADER, Ack, BEARER_PREFIX, CLAIM_PATH, COMPLETE_PATH, ClaimRequest,
    ClaimResponse, CompleteRequest, ErrorBody, FAIL_PATH, FailRequest, HEARTBEAT_PATH,
    HeartbeatRequest, HeartbeatResponse,
};

use crate::config::Config;
use crate::error::Error;

/// A thin HTTP client of the broker: one method per endpoint, no retries (the worker loop retries).
///
/// Every request re-reads the token file, because the kubelet rotates projected tokens.
#[derive(Clone, Debug)]
pub struct BrokerClient {
    http: reqwest::Client,
    base_url: String,
    token_path: Option<PathBuf>,
    request_timeout: Duration,
}

impl BrokerClient {
    /// A client for the broker and token of `config`.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            http,
            base_url: config.broker_url.trim_end_matches('/').to_owned(),
            token_path: config.token_path.clone(),
            request_timeout: config.request_timeout,
        })
    }

    /// `POST /v1/claim`: waits up to `request.wait_seconds` for tasks.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<ClaimResponse, Error> {
        let timeout = self.request_timeout + Duration::from_secs(request.wait_seconds.into());
        self.post(CLAIM_PATH, request, timeout).await
    }

    /// `POST /v1/tasks/heartbeat`: the answer says whether to cancel; the broker may hold it up to
    /// `request.wait_seconds`.
    pub async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse, Error> {
        let timeout = self.request_timeout + Duration::from_secs(request.wait_seconds.into());
        self.post(HEARTBEAT_PATH, request, timeout).await
    }

    /// `POST /v1/tasks/complete`: answered only once the output is persisted.
    pub async fn complete(&self, request: &CompleteRequest) -> Result<Ack, Error> {
        self.post(COMPLETE_PATH, request, self.request_timeout)
            .await
    }

    /// `POST /v1/tasks/fail`: answered only once the failure is persisted.
    pub async fn fail(&self, request: &FailRequest) -> Result<Ack, Error> {
        self.post(FAIL_PATH, request, self.request_timeout).await
    }

    async fn post<Req, Resp>(
        &self,
        path: &'static str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .timeout(timeout)
            .json(body);
        if let Some(token) = self.token().await? {
            request = request.header(AUTHORIZATION_HEADER, format!("{BEARER_PREFIX}{token}"));
        }
        let transport = |source| Error::Transport { path, source };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(transport);
        }
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (Some(body.code), body.message),
            Err(_) => (None, text),
        };
        Err(Error::Broker {
            path,
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn token(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.token_path else {
            return Ok(None);
        };
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| Error::Token {
                path: path.clone(),
                source,
            })?;
        Ok(Some(token.trim().to_owned()))
    }
}

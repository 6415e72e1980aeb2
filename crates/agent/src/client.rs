//! A client of the agent's API, used by the CLI (and by tests).

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    AgentInfo, CheckpointRequest, ContainerInfo, ErrorBody, Event, RestoreRequest, RunRequest, StopReport,
    StopRequest,
};

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {socket} (is it running? `migrate lab up` starts the lab's agents)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{}", body.message)]
    Api { status: u16, body: ErrorBody },
    #[error("talking to the agent at {socket}: {reason}")]
    Protocol { socket: PathBuf, reason: String },
}

impl ClientError {
    /// The API's error kind (`not_found`, `conflict`, …), if the agent answered.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.kind),
            _ => None,
        }
    }
}

/// A connection target: one agent's socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into() }
    }

    fn protocol(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol { socket: self.socket.clone(), reason: reason.to_string() }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { socket: self.socket.clone(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.protocol(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| self.protocol(e))?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            kind: if status == StatusCode::NOT_FOUND { "not_found".into() } else { "internal".into() },
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
        });
        Err(ClientError::Api { status: status.as_u16(), body })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(serde_json::to_vec).transpose().map_err(|e| self.protocol(e))?;
        let resp = self.send(method, path, body).await?;
        let bytes = resp.into_body().collect().await.map_err(|e| self.protocol(e))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("bad answer: {e}")))
    }

    pub async fn info(&self) -> Result<AgentInfo, ClientError> {
        self.call(Method::GET, "/v1/info", None::<&()>).await
    }

    pub async fn list(&self) -> Result<Vec<ContainerInfo>, ClientError> {
        self.call(Method::GET, "/v1/containers", None::<&()>).await
    }

    pub async fn get(&self, name: &str) -> Result<ContainerInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/containers/{}", encode(name)), None::<&()>).await
    }

    pub async fn run(&self, req: &RunRequest) -> Result<ContainerInfo, ClientError> {
        self.call(Method::POST, "/v1/containers", Some(req)).await
    }

    pub async fn stop(&self, name: &str, timeout_s: Option<u64>) -> Result<StopReport, ClientError> {
        let path = format!("/v1/containers/{}/stop", encode(name));
        self.call(Method::POST, &path, Some(&StopRequest { timeout_s })).await
    }

    pub async fn remove(&self, name: &str, force: bool) -> Result<ContainerInfo, ClientError> {
        self.call(Method::DELETE, &format!("/v1/containers/{}?force={force}", encode(name)), None::<&()>)
            .await
    }

    /// Checkpoints container `name`; `on_progress` sees each progress event.
    pub async fn checkpoint(
        &self,
        name: &str,
        req: &CheckpointRequest,
        on_progress: impl FnMut(&Event),
    ) -> Result<Event, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        self.events(&format!("/v1/containers/{}/checkpoint", encode(name)), body, on_progress).await
    }

    /// Restores an image on this agent's host.
    pub async fn restore(
        &self,
        req: &RestoreRequest,
        on_progress: impl FnMut(&Event),
    ) -> Result<Event, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| self.protocol(e))?;
        self.events("/v1/restore", body, on_progress).await
    }

    /// Reads an NDJSON event stream up to its final event.
    async fn events(
        &self,
        path: &str,
        body: Vec<u8>,
        mut on_progress: impl FnMut(&Event),
    ) -> Result<Event, ClientError> {
        let mut stream = self.send(Method::POST, path, Some(body)).await?.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = stream.frame().await {
            let frame = frame
                .map_err(|e| self.protocol(format!("the agent stopped answering mid-operation: {e}")))?;
            let Some(data) = frame.data_ref() else { continue };
            buf.extend_from_slice(data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let ev: Event =
                    serde_json::from_slice(&line).map_err(|e| self.protocol(format!("bad event: {e}")))?;
                match ev {
                    Event::Phase { .. } | Event::Bytes { .. } => on_progress(&ev),
                    Event::Error { error } => return Err(ClientError::Api { status: 200, body: error }),
                    done => return Ok(done),
                }
            }
        }
        Err(self.protocol("the agent stopped answering mid-operation (see its log)"))
    }

    /// Streams the container's log into `sink`; with `follow`, until the container ends.
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/containers/{}/logs?follow={follow}", encode(name));
        let mut body = self.send(Method::GET, &path, None).await?.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(e))?;
            if let Some(data) = frame.data_ref() {
                sink(data).map_err(|e| self.protocol(format!("writing the log: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Percent-encodes a path segment (names are validated by the agent, but a user may
/// type anything).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

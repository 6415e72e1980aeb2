//! The agent's HTTP API on its unix socket (routes in `docs/api.md`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::agent::{Agent, Config};
use crate::api::{CheckpointRequest, ErrorBody, Event, RestoreRequest, RunRequest, StopRequest};
use crate::error::{AgentError, io_err};

/// The error as the API reports it: its kind and its whole chain of causes.
fn error_body(err: &AgentError) -> ErrorBody {
    let message = migrate_sys::error_chain(err);
    if err.kind() == "internal" {
        tracing::error!("{message}");
    }
    ErrorBody { kind: err.kind().to_string(), message }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match self.kind() {
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" => StatusCode::CONFLICT,
            "invalid" => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(error_body(&self))).into_response()
    }
}

/// Answers with a stream of NDJSON [`Event`]s: progress, then one final event (the
/// result, or the error). The work goes on even if the client disconnects.
fn event_stream<F>(work: impl FnOnce(mpsc::Sender<Event>) -> F + Send + 'static) -> Response
where
    F: std::future::Future<Output = Result<Event, AgentError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let last = match work(tx.clone()).await {
            Ok(ev) => ev,
            Err(e) => Event::Error { error: error_body(&e) },
        };
        let _ = tx.send(last).await;
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(line), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn checkpoint(
    State(a): Shared,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<CheckpointRequest>,
) -> Response {
    event_stream(move |tx| async move { a.checkpoint(&name, req, tx).await })
}

async fn restore(State(a): Shared, Json(req): Json<RestoreRequest>) -> Response {
    event_stream(move |tx| async move { a.restore(req, tx).await })
}

type Shared = State<Arc<Agent>>;

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/info", get(|State(a): Shared| async move { Json(a.info().await) }))
        .route("/v1/containers", get(|State(a): Shared| async move { Json(a.list().await) }).post(run))
        .route("/v1/containers/{name}", get(container).delete(remove))
        .route("/v1/containers/{name}/stop", post(stop))
        .route("/v1/containers/{name}/logs", get(logs))
        .route("/v1/containers/{name}/checkpoint", post(checkpoint))
        .route("/v1/restore", post(restore))
        .with_state(agent)
}

async fn run(State(a): Shared, Json(req): Json<RunRequest>) -> Result<impl IntoResponse, AgentError> {
    Ok((StatusCode::CREATED, Json(a.run(req).await?)))
}

async fn container(
    State(a): Shared,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, AgentError> {
    Ok(Json(a.get(&name).await?))
}

async fn stop(
    State(a): Shared,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<StopRequest>,
) -> Result<impl IntoResponse, AgentError> {
    Ok(Json(a.stop(&name, req.timeout_s.unwrap_or(10)).await?))
}

#[derive(Debug, Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(a): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<impl IntoResponse, AgentError> {
    Ok(Json(a.remove(&name, q.force).await?))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The log as it is; with `follow`, then whatever is appended until the container ends.
async fn logs(
    State(a): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, AgentError> {
    let info = a.get(&name).await?;
    let file = tokio::fs::File::open(&info.log).await.map_err(io_err("open", &info.log))?;
    let stream =
        futures::stream::unfold((file, a, name, false), move |(mut file, a, name, done)| async move {
            if done {
                return None;
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) if !q.follow => return None,
                    Ok(0) => {
                        // Ends once the container has ended and everything it wrote is sent.
                        let running = a
                            .get(&name)
                            .await
                            .map(|i| i.state == crate::api::State::Running)
                            .unwrap_or(false);
                        if !running {
                            let pos = file.stream_position().await.unwrap_or(0);
                            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
                            if pos >= len {
                                return None;
                            }
                            continue;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok::<_, std::io::Error>(buf), (file, a, name, false)));
                    }
                    Err(e) => return Some((Err(e), (file, a, name, true))),
                }
            }
        });
    Ok(Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), AgentError> {
    let socket = config.socket.clone();
    let agent = Agent::open(config)?;
    let listener = bind(&socket).await?;
    tracing::info!(host = %agent.config.host, socket = %socket.display(), "agent listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("agent stopping; containers keep running");
    };
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(io_err("serve on", &socket))?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Binds the socket, replacing a stale one left by an agent that died, but never
/// stealing it from a live agent.
async fn bind(socket: &Path) -> Result<tokio::net::UnixListener, AgentError> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(AgentError::Conflict(format!("another agent already serves {}", socket.display())));
        }
        std::fs::remove_file(socket).map_err(io_err("remove stale socket", socket))?;
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(io_err("bind", socket))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", socket))?;
    Ok(listener)
}

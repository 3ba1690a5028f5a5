//! A typed client for `bangerd`'s HTTP API over its unix socket. The CLI
//! and the tests use it; so can any Rust program.

mod events;
mod files;
pub mod stream;

use std::path::{Path, PathBuf};

use banger_api::{
    ApiError, CatalogListing, DiskResizeRequest, DoctorReport, Forward, ForwardRequest, GuestPort, Health, Image,
    ImageBuildRequest, ImagePruneReport, ImageRegisterRequest, Kernel, KernelImportRequest, KernelPullRequest,
    Operation, Session, SessionExit, SessionStartRequest, SessionStopRequest, Signal, SshInfo, SshKeyRequest, Vm,
    VmCreateRequest, VmSetRequest, VmStats,
};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

pub use events::EventStream;
pub use files::CopyDirection;
pub use stream::{ExecOutput, StreamEvent, StreamEvents, StreamSender};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach bangerd at {}", socket.display())]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// The exchange itself failed.
    #[error("talking to bangerd failed")]
    Http(#[source] hyper::Error),
    /// A WebSocket stream (exec, attach, logs) failed.
    #[error("the stream to bangerd failed")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    /// The daemon answered something this client does not understand.
    #[error("unexpected answer from bangerd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error, when the daemon sent one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A client bound to one socket. Cheap to clone; each call opens its own
/// connection, so calls may run concurrently.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into() }
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health> {
        self.get("/v1/health").await
    }

    /// `GET /v1/doctor`.
    pub async fn doctor(&self) -> Result<DoctorReport> {
        self.get("/v1/doctor").await
    }

    /// `GET /v1/openapi.json`, as untyped JSON.
    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.get("/v1/openapi.json").await
    }

    /// `GET /v1/kernels`.
    pub async fn kernels(&self) -> Result<Vec<Kernel>> {
        self.get("/v1/kernels").await
    }

    /// `GET /v1/kernels/{name}`.
    pub async fn kernel(&self, name: &str) -> Result<Kernel> {
        self.get(&format!("/v1/kernels/{}", segment(name))).await
    }

    /// `GET /v1/kernels/catalog`.
    pub async fn kernel_catalog(&self) -> Result<Vec<CatalogListing>> {
        self.get("/v1/kernels/catalog").await
    }

    /// `POST /v1/kernels/pull`: starts a pull and returns its operation.
    pub async fn pull_kernel(&self, request: &KernelPullRequest) -> Result<Operation> {
        self.send_json(Method::POST, "/v1/kernels/pull", Some(request)).await
    }

    /// `POST /v1/kernels/import`: starts an import and returns its operation.
    pub async fn import_kernel(&self, request: &KernelImportRequest) -> Result<Operation> {
        self.send_json(Method::POST, "/v1/kernels/import", Some(request)).await
    }

    /// `DELETE /v1/kernels/{name}`; `force` removes it even if images or VMs boot it.
    pub async fn remove_kernel(&self, name: &str, force: bool) -> Result<()> {
        let path = format!("/v1/kernels/{}?force={force}", segment(name));
        let response = self.request(Method::DELETE, &path, None).await?;
        expect_success(response).await.map(drop)
    }

    /// `GET /v1/kernels/{name}/bundle`: the bundle's body, to be read in chunks.
    pub async fn kernel_bundle(&self, name: &str) -> Result<Incoming> {
        let response = self.request(Method::GET, &format!("/v1/kernels/{}/bundle", segment(name)), None).await?;
        let response = check_status(response).await?;
        Ok(response.into_body())
    }

    /// `GET /v1/images`.
    pub async fn images(&self) -> Result<Vec<Image>> {
        self.get("/v1/images").await
    }

    /// `GET /v1/images/{name}`.
    pub async fn image(&self, name: &str) -> Result<Image> {
        self.get(&format!("/v1/images/{}", segment(name))).await
    }

    /// `POST /v1/images/build`: starts a build and returns its operation.
    pub async fn build_image(&self, request: &ImageBuildRequest) -> Result<Operation> {
        self.send_json(Method::POST, "/v1/images/build", Some(request)).await
    }

    /// `POST /v1/images/register`: starts a registration and returns its operation.
    pub async fn register_image(&self, request: &ImageRegisterRequest) -> Result<Operation> {
        self.send_json(Method::POST, "/v1/images/register", Some(request)).await
    }

    /// `POST /v1/images/prune`: removes the cached work-disk seeds no VM uses.
    pub async fn prune_images(&self) -> Result<ImagePruneReport> {
        self.send_json(Method::POST, "/v1/images/prune", None::<&()>).await
    }

    /// `DELETE /v1/images/{name}`.
    pub async fn remove_image(&self, name: &str, force: bool) -> Result<()> {
        let path = format!("/v1/images/{}?force={force}", segment(name));
        expect_success(self.request(Method::DELETE, &path, None).await?).await.map(drop)
    }

    /// `GET /v1/vms`.
    pub async fn vms(&self) -> Result<Vec<Vm>> {
        self.get("/v1/vms").await
    }

    /// `GET /v1/vms/{name}`.
    pub async fn vm(&self, name: &str) -> Result<Vm> {
        self.get(&format!("/v1/vms/{}", segment(name))).await
    }

    /// `POST /v1/vms`: starts creating a VM and returns the operation.
    pub async fn create_vm(&self, request: &VmCreateRequest) -> Result<Operation> {
        self.send_json(Method::POST, "/v1/vms", Some(request)).await
    }

    /// `POST /v1/vms/{name}/start` or `/restart`: returns the operation.
    pub async fn start_vm(&self, name: &str, restart: bool) -> Result<Operation> {
        let verb = if restart { "restart" } else { "start" };
        self.send_json::<(), _>(Method::POST, &format!("/v1/vms/{}/{verb}", segment(name)), None).await
    }

    /// `POST /v1/vms/{name}/stop` or `/kill`: an operation whose result is the VM.
    pub async fn stop_vm(&self, name: &str, kill: bool) -> Result<Operation> {
        let verb = if kill { "kill" } else { "stop" };
        self.send_json::<(), _>(Method::POST, &format!("/v1/vms/{}/{verb}", segment(name)), None).await
    }

    /// `DELETE /v1/vms/{name}`: an operation.
    pub async fn remove_vm(&self, name: &str, force: bool) -> Result<Operation> {
        let path = format!("/v1/vms/{}?force={force}", segment(name));
        self.send_json::<(), _>(Method::DELETE, &path, None).await
    }

    /// `PATCH /v1/vms/{name}`.
    pub async fn set_vm(&self, name: &str, request: &VmSetRequest) -> Result<Vm> {
        self.send_json(Method::PATCH, &format!("/v1/vms/{}", segment(name)), Some(request)).await
    }

    /// `POST /v1/vms/{name}/disk/resize`.
    pub async fn resize_vm_disk(&self, name: &str, size_bytes: u64) -> Result<Vm> {
        let path = format!("/v1/vms/{}/disk/resize", segment(name));
        self.send_json(Method::POST, &path, Some(&DiskResizeRequest { size_bytes })).await
    }

    /// `GET /v1/vms/{name}/logs`: the console output, to be read in chunks.
    pub async fn vm_logs(&self, name: &str, follow: bool) -> Result<Incoming> {
        let path = format!("/v1/vms/{}/logs?follow={follow}", segment(name));
        Ok(check_status(self.request(Method::GET, &path, None).await?).await?.into_body())
    }

    /// `GET /v1/vms/{name}/stats`: the guest's figures and its VMM's (the
    /// daemon samples for a quarter of a second).
    pub async fn vm_stats(&self, name: &str) -> Result<VmStats> {
        self.get(&format!("/v1/vms/{}/stats", segment(name))).await
    }

    /// `GET /v1/vms/{name}/ports`: the guest's listening sockets.
    pub async fn vm_ports(&self, name: &str) -> Result<Vec<GuestPort>> {
        self.get(&format!("/v1/vms/{}/ports", segment(name))).await
    }

    /// `GET /v1/ssh`: banger's key pair and the VMs' host keys.
    pub async fn ssh_info(&self) -> Result<SshInfo> {
        self.get("/v1/ssh").await
    }

    /// `POST /v1/ssh/authorized-keys`: lets `public_key` into the VMs from their next boot.
    pub async fn register_ssh_key(&self, public_key: &str) -> Result<()> {
        let body = serde_json::to_vec(&SshKeyRequest { public_key: public_key.to_owned() })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        expect_success(self.request(Method::POST, "/v1/ssh/authorized-keys", Some(body)).await?).await.map(drop)
    }

    /// `GET /v1/vms/{name}/forwards`.
    pub async fn forwards(&self, vm: &str) -> Result<Vec<Forward>> {
        self.get(&format!("/v1/vms/{}/forwards", segment(vm))).await
    }

    /// `POST /v1/vms/{name}/forwards`: forwards a host loopback port to a guest port.
    pub async fn add_forward(&self, vm: &str, request: &ForwardRequest) -> Result<Forward> {
        self.send_json(Method::POST, &format!("/v1/vms/{}/forwards", segment(vm)), Some(request)).await
    }

    /// `DELETE /v1/vms/{name}/forwards/{host_port}`.
    pub async fn remove_forward(&self, vm: &str, host_port: u16) -> Result<()> {
        let path = format!("/v1/vms/{}/forwards/{host_port}", segment(vm));
        expect_success(self.request(Method::DELETE, &path, None).await?).await.map(drop)
    }

    /// `POST /v1/vms/{name}/sessions`: starts a session.
    pub async fn start_session(&self, vm: &str, request: &SessionStartRequest) -> Result<Session> {
        self.send_json(Method::POST, &format!("/v1/vms/{}/sessions", segment(vm)), Some(request)).await
    }

    /// `GET /v1/vms/{name}/sessions`.
    pub async fn sessions(&self, vm: &str) -> Result<Vec<Session>> {
        self.get(&format!("/v1/vms/{}/sessions", segment(vm))).await
    }

    /// `GET /v1/vms/{name}/sessions/{session}`.
    pub async fn session(&self, vm: &str, session: &str) -> Result<Session> {
        self.get(&session_path(vm, session, "")).await
    }

    /// `POST .../sessions/{session}/send`: types `input` into the session, as is.
    pub async fn send_to_session(&self, vm: &str, session: &str, input: impl Into<Bytes>) -> Result<()> {
        let body = Full::new(input.into()).map_err(|never| match never {});
        self.send_raw(&session_path(vm, session, "/send"), body).await
    }

    /// `POST .../sessions/{session}/send` with what `reader` yields until
    /// its end, streamed (the daemon takes at most 16 MiB at a time).
    pub async fn send_to_session_from<R>(&self, vm: &str, session: &str, reader: R) -> Result<()>
    where
        R: tokio::io::AsyncRead + Send + 'static,
    {
        let chunks = tokio_util::io::ReaderStream::new(reader).map_ok(Frame::data);
        self.send_raw(&session_path(vm, session, "/send"), StreamBody::new(chunks)).await
    }

    /// `POST .../sessions/{session}/stop`: signals it (SIGTERM by default).
    pub async fn stop_session(&self, vm: &str, session: &str, signal: Option<Signal>) -> Result<()> {
        let body =
            serde_json::to_vec(&SessionStopRequest { signal }).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = self.request(Method::POST, &session_path(vm, session, "/stop"), Some(body)).await?;
        expect_success(response).await.map(drop)
    }

    /// `POST .../sessions/{session}/wait`: returns once the session ended.
    pub async fn wait_session(&self, vm: &str, session: &str) -> Result<SessionExit> {
        self.send_json::<(), _>(Method::POST, &session_path(vm, session, "/wait"), None).await
    }

    /// `DELETE .../sessions/{session}`: forgets an ended session.
    pub async fn remove_session(&self, vm: &str, session: &str) -> Result<()> {
        expect_success(self.request(Method::DELETE, &session_path(vm, session, ""), None).await?).await.map(drop)
    }

    /// `GET /v1/operations`.
    pub async fn operations(&self) -> Result<Vec<Operation>> {
        self.get("/v1/operations").await
    }

    /// `GET /v1/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation> {
        self.get(&format!("/v1/operations/{}", segment(id))).await
    }

    /// `GET /v1/events`, optionally only about one operation.
    pub async fn events(&self, operation: Option<&str>) -> Result<EventStream> {
        let path = match operation {
            Some(id) => format!("/v1/events?operation={}", segment(id)),
            None => "/v1/events".to_owned(),
        };
        let response = check_status(self.request(Method::GET, &path, None).await?).await?;
        Ok(EventStream::new(response.into_body()))
    }

    /// Follows an operation until it ends, calling `on_update` with each
    /// state it passes through, and returns its final state (which may be
    /// a failure: check `state`).
    pub async fn wait(&self, id: &str, mut on_update: impl FnMut(&Operation)) -> Result<Operation> {
        // Subscribe first, then read: no update can fall between the two.
        let mut events = self.events(Some(id)).await?;
        let current = self.operation(id).await?;
        on_update(&current);
        if current.state.is_terminal() {
            return Ok(current);
        }
        while let Some(event) = events.next().await? {
            if let banger_api::Event::Operation { operation } = event {
                on_update(&operation);
                if operation.state.is_terminal() {
                    return Ok(operation);
                }
            }
        }
        Err(ClientError::Protocol(format!("event stream ended before operation {id} finished (did bangerd stop?)")))
    }

    /// `GET` any API path, as untyped JSON (for tools and tests that walk the API).
    pub async fn openapi_get(&self, path: &str) -> Result<serde_json::Value> {
        self.get(path).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send_json::<(), T>(Method::GET, path, None).await
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))).transpose()?;
        let bytes = expect_success(self.request(method, path, body).await?).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Response<Incoming>> {
        let content_type = body.is_some().then_some("application/json");
        let body = Full::new(Bytes::from(body.unwrap_or_default())).map_err(|never| match never {});
        self.request_with(method, path, content_type, body).await
    }

    /// POSTs `body` as `application/octet-stream` and expects no answer but success.
    async fn send_raw<B>(&self, path: &str, body: B) -> Result<()>
    where
        B: hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
    {
        let response = self.request_with(Method::POST, path, Some("application/octet-stream"), body).await?;
        expect_success(response).await.map(drop)
    }

    async fn request_with<B>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: B,
    ) -> Result<Response<Incoming>>
    where
        B: hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
    {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable { socket: self.socket.clone(), source })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ClientError::Http)?;
        tokio::spawn(async move {
            // Errors surface on the request side; the connection just ends.
            let _ = connection.await;
        });
        let mut request = Request::builder().method(method).uri(path).header("host", "bangerd");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        sender.send_request(request).await.map_err(ClientError::Http)
    }
}

/// The path of a session, or of one of its actions (`suffix` `/send`).
fn session_path(vm: &str, session: &str, suffix: &str) -> String {
    format!("/v1/vms/{}/sessions/{}{suffix}", segment(vm), segment(session))
}

/// Percent-encodes what could break a path segment; names are DNS-like, so
/// this rarely changes anything.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn check_status(response: Response<Incoming>) -> Result<Response<Incoming>> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(ClientError::Http)?.to_bytes();
    Err(api_error(status, &bytes))
}

async fn expect_success(response: Response<Incoming>) -> Result<Bytes> {
    let response = check_status(response).await?;
    Ok(response.into_body().collect().await.map_err(ClientError::Http)?.to_bytes())
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => ClientError::Api(error),
        Err(_) => ClientError::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim())),
    }
}

//! Firecracker's API description (`firecracker-v1.16.1.yaml`, Swagger 2.0)
//! as a request validator, and a fake Firecracker API server that checks
//! every request against it. Shared by the firecracker_* tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Where the API description is: `$BANGER_FIRECRACKER_SPEC`, else the
/// copy kept in the repository (`tests/data`), taken from Firecracker v1.16.1.
pub fn spec_path() -> PathBuf {
    if let Some(path) = std::env::var_os("BANGER_FIRECRACKER_SPEC") {
        return path.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/firecracker-v1.16.1.yaml")
}

/// Firecracker's API description.
pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    /// Loads the API description; panics (failing the test) if it is missing.
    pub fn load() -> Self {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read Firecracker's API description {}: {e}", path.display()));
        Self::from_yaml(&text)
    }

    /// Parses a Swagger 2.0 document.
    pub fn from_yaml(text: &str) -> Self {
        let yaml: serde_norway::Value = serde_norway::from_str(text).expect("the API description is YAML");
        let doc = yaml_to_json(yaml);
        assert_eq!(doc["swagger"], "2.0", "not a Swagger 2.0 document");
        OpenApi { doc }
    }

    /// Checks a request: the path and method exist, and the body matches
    /// the body parameter's schema.
    pub fn validate_request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(), String> {
        let operation = self.operation(method, path)?;
        let params = operation["parameters"].as_array().map(Vec::as_slice).unwrap_or_default();
        let body_param = params.iter().find(|p| p["in"] == "body");
        match (body_param, body) {
            (Some(param), Some(body)) => self.validate(body, &param["schema"]),
            (Some(param), None) if param["required"] == true => Err(format!("{method} {path} needs a body")),
            (None, Some(_)) => Err(format!("{method} {path} takes no body")),
            _ => Ok(()),
        }
    }

    /// The operation for `method` on the concrete `path` (templates such as
    /// `/drives/{drive_id}` match one non-empty segment per parameter).
    pub fn operation(&self, method: &str, path: &str) -> Result<&Value, String> {
        let paths = self.doc["paths"].as_object().ok_or("the document has no paths")?;
        let (_, item) = paths
            .iter()
            .find(|(template, _)| path_matches(template, path))
            .ok_or_else(|| format!("no path {path} in the API"))?;
        item.get(method.to_ascii_lowercase()).ok_or_else(|| format!("{path} has no {method}"))
    }

    /// The definition `name` (`#/definitions/<name>`).
    pub fn definition(&self, name: &str) -> &Value {
        &self.doc["definitions"][name]
    }

    /// Validates `value` against `schema`.
    pub fn validate(&self, value: &Value, schema: &Value) -> Result<(), String> {
        self.check(value, schema, "body")
    }

    fn check(&self, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
        if let Some(reference) = schema.get("$ref") {
            let name = reference
                .as_str()
                .and_then(|r| r.strip_prefix("#/definitions/"))
                .ok_or_else(|| format!("{at}: unsupported $ref {reference}"))?;
            let target = self.definition(name);
            if target.is_null() {
                return Err(format!("{at}: $ref to a missing definition {name}"));
            }
            return self.check(value, target, at);
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                return Err(format!("{at}: {value} is not one of {}", Value::Array(allowed.clone())));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let ty = ty.or(schema.get("properties").map(|_| "object"));
        let type_ok = match ty {
            None => true,
            Some("object") => value.is_object(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some("array") => value.is_array(),
            Some(other) => return Err(format!("{at}: the validator does not know type {other}")),
        };
        if !type_ok {
            return Err(format!("{at}: {value} is not of type {}", ty.unwrap_or_default()));
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    return Err(format!("{at}: {n} is below the minimum {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    return Err(format!("{at}: {n} is above the maximum {max}"));
                }
            }
        }
        match value {
            Value::Object(fields) => self.check_object(fields, schema, at),
            Value::Array(items) => match schema.get("items") {
                Some(item_schema) => {
                    items.iter().enumerate().try_for_each(|(i, v)| self.check(v, item_schema, &format!("{at}[{i}]")))
                }
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn check_object(&self, fields: &Map<String, Value>, schema: &Value, at: &str) -> Result<(), String> {
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                return Err(format!("{at}: missing required field {name}"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (name, field) in fields {
            let here = format!("{at}.{name}");
            match (properties.and_then(|p| p.get(name)), additional) {
                (Some(field_schema), _) => self.check(field, field_schema, &here)?,
                // Firecracker's serde structs deny unknown fields.
                (None, None | Some(Value::Bool(false))) if properties.is_some() => {
                    return Err(format!("{at}: unknown field {name}"));
                }
                (None, Some(extra)) if extra.is_object() => self.check(field, extra, &here)?,
                (None, _) => {}
            }
        }
        Ok(())
    }
}

fn path_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| if t.starts_with('{') && t.ends_with('}') { !p.is_empty() } else { t == p })
}

/// YAML to JSON; mapping keys that are not strings (HTTP status codes)
/// become strings.
fn yaml_to_json(value: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64())
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

/// A request the fake server received.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// JSON body (null if none).
    pub body: Value,
}

/// How the fake server behaves beyond validating.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Behaviour {
    /// Answer 400 to requests on this path, as Firecracker does when it
    /// cannot apply them (say, a missing kernel file).
    #[serde(default)]
    pub fail_path: Option<String>,
    /// Exit the process after answering `SendCtrlAltDel`, as Firecracker
    /// does when the guest reboots with `reboot=k`.
    #[serde(default)]
    pub exit_on_ctrl_alt_del: bool,
    /// The directory Firecracker is jailed in: the paths in requests are
    /// resolved under it, as the jailer's chroot would (the fake emulates
    /// the chroot rather than entering one).
    #[serde(default)]
    pub chroot: Option<PathBuf>,
}

impl Behaviour {
    /// Where a path from a request is for this process.
    pub fn resolve(&self, path: &str) -> PathBuf {
        match &self.chroot {
            Some(root) => root.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }
}

/// Body fields naming a file Firecracker opens when it applies the
/// request, and so refuses when it does not exist.
const FILE_FIELDS: [&str; 5] = ["log_path", "metrics_path", "kernel_image_path", "initrd_path", "path_on_host"];

/// Refuses a request naming a file that does not exist (seen from the
/// process's root, which is the jail's under the jailer).
fn check_files(behaviour: &Behaviour, body: Option<&Value>) -> Result<(), String> {
    for field in FILE_FIELDS {
        if let Some(path) = body.and_then(|b| b[field].as_str()) {
            if !behaviour.resolve(path).is_file() {
                return Err(format!("{field}: cannot open {path}: No such file or directory"));
            }
        }
    }
    Ok(())
}

/// Serves Firecracker's API on `listener` until the task is dropped:
/// every request is recorded, validated against `api`, and answered 204,
/// or 400 with a `fault_message` (also when a file it names is missing).
/// `PUT /vsock` binds `uds_path`, as Firecracker does.
pub async fn serve(
    listener: UnixListener,
    api: Arc<OpenApi>,
    behaviour: Behaviour,
    record: Arc<dyn Fn(Received) + Send + Sync>,
) {
    let vsock_listeners = Arc::new(std::sync::Mutex::new(Vec::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (api, behaviour, record, vsock) = (api.clone(), behaviour.clone(), record.clone(), vsock_listeners.clone());
        tokio::spawn(async move {
            let _ = connection(stream, &api, &behaviour, &*record, &vsock).await;
        });
    }
}

async fn connection(
    mut stream: UnixStream,
    api: &OpenApi,
    behaviour: &Behaviour,
    record: &(dyn Fn(Received) + Send + Sync),
    vsock: &std::sync::Mutex<Vec<UnixListener>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    // Firecracker keeps connections alive: serve requests until EOF.
    while let Some(request) = read_request(&mut stream, &mut buf).await? {
        let body = if request.body.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(&request.body) {
                Ok(v) => Some(v),
                Err(e) => {
                    respond(&mut stream, 400, Some(&format!("body is not JSON: {e}"))).await?;
                    continue;
                }
            }
        };
        record(Received {
            method: request.method.clone(),
            path: request.path.clone(),
            body: body.clone().unwrap_or(Value::Null),
        });
        let verdict = api.validate_request(&request.method, &request.path, body.as_ref());
        let verdict = verdict.and_then(|()| check_files(behaviour, body.as_ref()));
        let verdict = verdict.and_then(|()| match &behaviour.fail_path {
            Some(fail) if *fail == request.path => Err(format!("injected failure on {fail}")),
            _ => Ok(()),
        });
        if let (Ok(()), "/vsock", Some(uds)) = (&verdict, request.path.as_str(), body.as_ref()) {
            if let Ok(listener) = UnixListener::bind(behaviour.resolve(uds["uds_path"].as_str().unwrap_or_default())) {
                vsock.lock().unwrap().push(listener);
            }
        }
        match verdict {
            Ok(()) => respond(&mut stream, 204, None).await?,
            Err(fault) => respond(&mut stream, 400, Some(&fault)).await?,
        }
        let ctrl_alt_del = body.as_ref().is_some_and(|b| b["action_type"] == "SendCtrlAltDel");
        if ctrl_alt_del && behaviour.exit_on_ctrl_alt_del {
            stream.flush().await?;
            std::process::exit(0);
        }
    }
    Ok(())
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Reads one request; `None` at a clean EOF between requests.
async fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..head_end].to_vec()).map_err(|_| bad("head not UTF-8"))?;
            let mut lines = head.split("\r\n");
            let mut request_line = lines.next().unwrap_or_default().split(' ');
            let (method, path) = (request_line.next().unwrap_or_default(), request_line.next().unwrap_or_default());
            let length: usize = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().map_err(|_| bad("bad Content-Length")))
                .transpose()?
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                let body = buf[head_end + 4..head_end + 4 + length].to_vec();
                let request = Request { method: method.into(), path: path.into(), body };
                buf.drain(..head_end + 4 + length);
                return Ok(Some(request));
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(bad("EOF inside a request")) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(stream: &mut UnixStream, status: u16, fault: Option<&str>) -> std::io::Result<()> {
    let response = match fault {
        // Firecracker's 204 carries no Content-Length.
        None => format!("HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"),
        Some(message) => {
            let body = json!({ "fault_message": message }).to_string();
            format!(
                "HTTP/1.1 {status} \r\nServer: Firecracker API\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
    };
    stream.write_all(response.as_bytes()).await
}

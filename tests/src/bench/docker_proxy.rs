//! A counting proxy for the Docker Engine API: listens on a unix socket,
//! forwards every connection to the engine's socket, and records each HTTP/1.1
//! request it sees on the way (when, which client, method, path pattern).
//!
//! Only the client side is parsed: request heads are read one after the other
//! on a keep-alive connection, each body of `Content-Length` bytes is
//! forwarded as it is, and responses flow back untouched, so long-lived
//! answers (`/events`, logs) simply stay open. A request whose body is chunked
//! or that upgrades the connection (attach, exec) ends the parsing of that
//! connection: the rest is forwarded raw, and only that request is counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

/// A request head larger than this is refused (the connection is closed).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    /// Who asked, from the `User-Agent` header ([`client_kind`]).
    pub client: String,
    /// The process on the other end of the socket (`SO_PEERCRED`), which
    /// confirms the `User-Agent`'s word.
    pub peer_pid: Option<i32>,
    pub method: String,
    /// The path without query and API version, ids replaced by `{id}` ([`path_pattern`]).
    pub pattern: String,
}

/// The proxy, stopped (every connection with it) when dropped.
pub struct DockerProxy {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DockerProxy {
    /// Listens on `socket` and forwards to the engine at `upstream`.
    pub fn start(socket: &Path, upstream: &Path) -> std::io::Result<DockerProxy> {
        let listener = UnixListener::bind(socket)?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(listener, upstream.to_owned(), requests.clone()));
        Ok(DockerProxy {
            socket: socket.to_owned(),
            requests,
            task,
        })
    }

    /// The value of `DOCKER_HOST` that points a client at the proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// When the latest request was made.
    pub fn last_request(&self) -> Option<Instant> {
        let requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        requests.last().map(|request| request.at)
    }

    /// The requests made from `start` on, in order.
    pub fn requests_since(&self, start: Instant) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|request| request.at >= start)
            .cloned()
            .collect()
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it ends them all.
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept(listener: UnixListener, upstream: PathBuf, requests: Arc<Mutex<Vec<Request>>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let (upstream, requests) = (upstream.clone(), requests.clone());
                    connections.spawn(async move {
                        if let Err(error) = relay(client, &upstream, &requests).await {
                            eprintln!("docker proxy: a connection ended with an error: {error}");
                        }
                    });
                }
                Err(error) => {
                    eprintln!("docker proxy: cannot accept: {error}");
                    return;
                }
            },
            // Finished connections are reaped so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one client connection, recording each request head it reads.
async fn relay(client: UnixStream, upstream: &Path, requests: &Mutex<Vec<Request>>) -> std::io::Result<()> {
    let peer_pid = client.peer_cred().ok().and_then(|credentials| credentials.pid());
    let engine = UnixStream::connect(upstream).await?;
    let (client_read, mut client_write) = client.into_split();
    let (mut engine_read, mut engine_write) = engine.into_split();
    let responses = tokio::spawn(async move {
        let copied = tokio::io::copy(&mut engine_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        copied
    });
    let mut reader = BufReader::new(client_read);
    while let Some(head) = read_head(&mut reader).await? {
        let parsed =
            parse_head(&head).map_err(|reason| std::io::Error::new(std::io::ErrorKind::InvalidData, reason))?;
        requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Request {
                at: Instant::now(),
                client: client_kind(parsed.user_agent.as_deref()),
                peer_pid,
                method: parsed.method.clone(),
                pattern: path_pattern(&parsed.target),
            });
        engine_write.write_all(&head).await?;
        match parsed.body {
            Body::Empty => {}
            Body::Length(length) => {
                let copied = tokio::io::copy(&mut (&mut reader).take(length), &mut engine_write).await?;
                if copied < length {
                    break;
                }
            }
            Body::Unparsed => {
                tokio::io::copy(&mut reader, &mut engine_write).await?;
                break;
            }
        }
    }
    let _ = engine_write.shutdown().await;
    responses.await.map_err(std::io::Error::other)?.map(|_| ())
}

/// Reads one request head (up to and including the empty line); `None` when
/// the client closed the connection between requests.
async fn read_head<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let read = reader.read_until(b'\n', &mut head).await?;
        if read == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed the connection inside a request head",
                ))
            };
        }
        let line = &head[before..];
        // A head ends with an empty line; a blank line before the request line
        // is tolerated (RFC 9112, 2.2).
        if (line == b"\r\n" || line == b"\n") && before > 0 {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a request head over 64 KiB",
            ));
        }
    }
}

/// What follows a request head on the connection.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    /// Chunked, or an upgraded connection: forwarded raw from here on.
    Unparsed,
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    user_agent: Option<String>,
    body: Body,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .skip_while(|line| line.is_empty());
    let request_line = lines.next().ok_or("an empty request head")?;
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(_version)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("not an HTTP request line: {request_line:?}"));
    };
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        user_agent: None,
        body: Body::Empty,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "user-agent" => head.user_agent = Some(value.to_owned()),
            "content-length" if head.body == Body::Empty => {
                let length = value.parse().map_err(|_| format!("a bad Content-Length: {value:?}"))?;
                head.body = if length == 0 { Body::Empty } else { Body::Length(length) };
            }
            "transfer-encoding" if value.to_ascii_lowercase().contains("chunked") => head.body = Body::Unparsed,
            "upgrade" => head.body = Body::Unparsed,
            _ => {}
        }
    }
    Ok(head)
}

/// The kind of client: bollard (the agent's library) sends no `User-Agent`,
/// the docker CLI (run by abra, here by its test double) sends
/// `Docker-Client/<version> (<os>)`.
pub fn client_kind(user_agent: Option<&str>) -> String {
    match user_agent {
        None => "agent".into(),
        Some(agent) if agent.starts_with("Docker-Client/") => "docker CLI".into(),
        Some(other) => other.to_owned(),
    }
}

/// Resources whose second path segment names one object (an id or a name).
const COLLECTIONS: &[&str] = &[
    "configs",
    "containers",
    "exec",
    "images",
    "networks",
    "nodes",
    "plugins",
    "secrets",
    "services",
    "tasks",
    "volumes",
];

/// Second segments that are actions on the collection, not objects.
const COLLECTION_ACTIONS: &[&str] = &["create", "json", "prune", "load", "search", "get"];

/// `/v1.41/containers/4f2a.../json?all=1` -> `/containers/{id}/json`.
pub fn path_pattern(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<&str> = path.split('/').skip(1).collect();
    let versioned = segments.first().is_some_and(|first| {
        first
            .strip_prefix('v')
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
    });
    if versioned {
        segments.remove(0);
    }
    let mut pattern = String::new();
    for (index, segment) in segments.iter().enumerate() {
        pattern.push('/');
        let names_object = index == 1
            && COLLECTIONS.contains(&segments[0])
            && !COLLECTION_ACTIONS.contains(segment)
            && !segment.is_empty();
        pattern.push_str(if names_object { "{id}" } else { segment });
    }
    if pattern.is_empty() {
        pattern.push('/');
    }
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_drop_the_query_and_version_and_hide_ids() {
        let check = |target: &str, expected: &str| assert_eq!(path_pattern(target), expected, "{target}");
        check("/v1.41/containers/json?all=1&filters=x", "/containers/json");
        check("/v1.41/containers/4f2a9c/json", "/containers/{id}/json");
        check("/v1.41/services?status=true&filters=%7B%7D", "/services");
        check("/v1.41/services/create", "/services/create");
        check("/v1.41/services/blog_example_org_app", "/services/{id}");
        check("/v1.41/services/abc/update?version=12", "/services/{id}/update");
        check("/v1.41/tasks?filters=x", "/tasks");
        check("/_ping", "/_ping");
        check("/v1.41/version", "/version");
        check("/v1.41/volumes/blog_data", "/volumes/{id}");
        check("/", "/");
    }

    #[test]
    fn heads_give_method_target_client_and_body() {
        let head = parse_head(b"POST /v1.41/secrets/create HTTP/1.1\r\nHost: docker\r\nUser-Agent: Docker-Client/28.2.2 (linux)\r\nContent-Length: 42\r\n\r\n").unwrap();
        assert_eq!(
            head,
            Head {
                method: "POST".into(),
                target: "/v1.41/secrets/create".into(),
                user_agent: Some("Docker-Client/28.2.2 (linux)".into()),
                body: Body::Length(42),
            }
        );
        let head = parse_head(b"GET /v1.41/services HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
        assert_eq!((head.user_agent, head.body), (None, Body::Empty));
        let head = parse_head(b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(head.body, Body::Unparsed);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert_eq!(client_kind(None), "agent");
        assert_eq!(client_kind(Some("Docker-Client/20.10.24 (linux)")), "docker CLI");
    }

    #[tokio::test]
    async fn heads_are_read_one_after_the_other_on_a_connection() {
        let bytes: &[u8] =
            b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\n\r\n";
        let mut reader = BufReader::new(bytes);
        let first = read_head(&mut reader).await.unwrap().unwrap();
        assert_eq!(parse_head(&first).unwrap().target, "/a");
        let second = read_head(&mut reader).await.unwrap().unwrap();
        assert_eq!(parse_head(&second).unwrap().body, Body::Length(3));
        let mut body = [0u8; 3];
        reader.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"xyz");
        let third = read_head(&mut reader).await.unwrap().unwrap();
        assert_eq!(parse_head(&third).unwrap().target, "/c");
        assert!(read_head(&mut reader).await.unwrap().is_none());
    }
}

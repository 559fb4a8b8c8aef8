//! Image lookups for the launcher's `start`, answered by the group's
//! running daemon.
//!
//! `start` must know a container's image before it can route it, and the
//! launcher is a new process every time: looking the image up itself costs
//! a gRPC connection to containerd (measured: 0.9 ms of CPU, two thirds of
//! it containerd's, and 0.7 ms). The group's daemon, when it is up, keeps
//! one connection ([`crate::image::Resolver`]) and answers on
//! [`ROUTE_SOCKET`] in the group's directory (root only): one JSON line
//! each way. For a container whose creation it saw on containerd's event
//! stream it answers without calling containerd at all ([`crate::watch`]).
//! When the daemon is not up or does not answer, the launcher looks the
//! image up itself.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
#[cfg(test)]
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dispatch::ImageMeta;
use crate::group::Group;

/// The daemon's lookup socket, in its group's directory.
pub const ROUTE_SOCKET: &str = "route.sock";
/// How long the launcher waits for the daemon's answer before it looks
/// the image up itself.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Meta(Option<ImageMeta>),
    /// Answered from containerd's event stream, with no call to
    /// containerd (an older launcher reads this as no answer and looks
    /// the image up itself).
    Known(Option<ImageMeta>),
    /// containerd's answer was an error (the launcher's own lookup would
    /// get the same).
    Error(String),
}

/// [`ROUTE_SOCKET`] in the open directory `dir`, by a path short enough
/// for a socket address (a group directory's own path is not).
fn socket_path(dir: &std::fs::File) -> std::path::PathBuf {
    use std::os::fd::AsRawFd as _;
    std::path::PathBuf::from(format!("/proc/self/fd/{}/{ROUTE_SOCKET}", dir.as_raw_fd()))
}

/// How the daemon came by its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// It asked containerd.
    Containerd,
    /// It knew the answer from containerd's events ([`crate::watch`]).
    Events,
}

/// The launcher's side: container `id`'s image facts from the group's
/// daemon, or `None` if it cannot answer (the caller then looks them up).
pub fn ask(group: &Group, id: &str) -> Option<(Result<Option<ImageMeta>, String>, Source)> {
    if !group.daemon_running() {
        return None;
    }
    let dir = std::fs::File::open(group.dir()).ok()?;
    let mut stream = UnixStream::connect(socket_path(&dir)).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    let mut line = serde_json::to_vec(&Request { id: id.to_string() }).ok()?;
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).ok()?;
    match serde_json::from_str(&answer).ok()? {
        Answer::Meta(meta) => Some((Ok(meta), Source::Containerd)),
        Answer::Known(meta) => Some((Ok(meta), Source::Events)),
        Answer::Error(e) => Some((Err(e), Source::Containerd)),
    }
}

/// The daemon's side: serves lookups for `namespace` on `dir`'s
/// [`ROUTE_SOCKET`] with one containerd connection (made on the first
/// lookup, made again after a failed one), and with `follow_events`, from
/// containerd's events where they tell ([`crate::watch`]).
#[cfg(feature = "daemon")]
pub async fn serve(
    dir: &std::path::Path,
    containerd_address: String,
    namespace: String,
    follow_events: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;
    let path = dir.join(ROUTE_SOCKET);
    let _ = std::fs::remove_file(&path);
    let dir = std::fs::File::open(dir)?;
    let listener = tokio::net::UnixListener::bind(socket_path(&dir))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let resolver: Arc<tokio::sync::Mutex<Option<Arc<crate::image::Resolver>>>> = Arc::default();
    let watch = Arc::new(crate::watch::Watch::default());
    if follow_events {
        tokio::spawn(
            watch
                .clone()
                .follow(containerd_address.clone(), namespace.clone()),
        );
    }
    let (address, namespace) = (Arc::new(containerd_address), Arc::new(namespace));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Transient (e.g. EMFILE): the launcher looks the
                    // image up itself meanwhile.
                    log::warn!("image lookups for start: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (resolver, watch, address, namespace) = (
                resolver.clone(),
                watch.clone(),
                address.clone(),
                namespace.clone(),
            );
            tokio::spawn(async move {
                let _ = answer(stream, &resolver, &watch, &address, &namespace).await;
            });
        }
    });
    Ok(())
}

#[cfg(feature = "daemon")]
use containerd_client::tonic::Code as tonic_code;

#[cfg(feature = "daemon")]
async fn answer(
    stream: tokio::net::UnixStream,
    resolver: &tokio::sync::Mutex<Option<std::sync::Arc<crate::image::Resolver>>>,
    watch: &crate::watch::Watch,
    address: &str,
    namespace: &str,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    let mut answer = Answer::Error("no lookup made".into());
    // A connection that broke (containerd restarted) is made again, once.
    for _ in 0..2 {
        let client = {
            let mut slot = resolver.lock().await;
            match slot.as_ref() {
                Some(r) => r.clone(),
                None => match crate::image::Resolver::connect(address).await {
                    Ok(r) => slot.insert(std::sync::Arc::new(r)).clone(),
                    Err(e) => {
                        answer = Answer::Error(e.to_string());
                        break;
                    }
                },
            }
        };
        match client.lookup_knowing(namespace, &request.id, watch).await {
            Ok((meta, asked_containerd)) => {
                answer = if asked_containerd {
                    Answer::Meta(meta)
                } else {
                    Answer::Known(meta)
                };
                break;
            }
            Err(e) => {
                let broken = matches!(&e, crate::image::ImageError::Call { status, .. }
                    if matches!(status.code(), tonic_code::Unavailable | tonic_code::Unknown));
                answer = Answer::Error(e.to_string());
                if !broken {
                    break;
                }
                resolver.lock().await.take();
            }
        }
    }
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A group whose daemon is this process, answering with `answer`.
    fn fake_daemon(dir: &Path, answer: &'static str) -> (Group, UnixListener) {
        let group = Group::at(dir, "k");
        std::fs::create_dir_all(group.dir()).expect("dir");
        let alive = UnixListener::bind(group.socket()).expect("daemon socket");
        group
            .record_daemon(std::process::id() as i32)
            .expect("record");
        let route = UnixListener::bind(group.dir().join(ROUTE_SOCKET)).expect("route socket");
        std::thread::spawn(move || {
            for stream in route.incoming().flatten() {
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                let _ = reader.read_line(&mut line);
                let request: Request = serde_json::from_str(&line).expect("request");
                assert_eq!(request.id, "c1");
                let _ = (&stream).write_all(answer.as_bytes());
            }
        });
        (group, alive)
    }

    #[test]
    fn the_daemons_answer_is_used_and_anything_else_is_no_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (group, _alive) = fake_daemon(
            dir.path(),
            "{\"Meta\":{\"name\":\"img\",\"os\":\"wasi\",\"architecture\":\"wasm\",\
             \"config_labels\":{},\"manifest_annotations\":{},\"wasm_layers\":[]}}\n",
        );
        let (meta, source) = ask(&group, "c1").expect("answered");
        let meta = meta.expect("no error").expect("image");
        assert_eq!((meta.name.as_str(), meta.os.as_str()), ("img", "wasi"));
        assert_eq!(source, Source::Containerd);

        let dir = tempfile::tempdir().expect("tempdir");
        let (group, _alive) = fake_daemon(dir.path(), "{\"Known\":null}\n");
        assert_eq!(ask(&group, "c1"), Some((Ok(None), Source::Events)));

        let dir = tempfile::tempdir().expect("tempdir");
        let (group, _alive) = fake_daemon(dir.path(), "{\"Error\":\"not found\"}\n");
        assert_eq!(
            ask(&group, "c1"),
            Some((Err("not found".to_string()), Source::Containerd))
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let (group, _alive) = fake_daemon(dir.path(), "garbage\n");
        assert_eq!(ask(&group, "c1"), None, "garbage is no answer");

        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(ask(&Group::at(dir.path(), "k"), "c1"), None, "no daemon");
    }
}

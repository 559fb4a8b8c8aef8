//! Drives containerd through its gRPC API (the `containerd-client` crate),
//! as the kubelet's CRI plugin or `ctr` would: unpack an image into
//! snapshots, create a container with an OCI spec, create and start its
//! task with FIFOs for stdio, wait, kill and delete.
//!
//! The Debian containerd 1.6.20 cannot unpack OCI Wasm artifacts itself
//! (non-tar layers), so [`Ctrd::unpack`] applies only the tar layers and an
//! artifact gets an empty rootfs; the shim reads the Wasm layer from the
//! content store.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CheckpointTaskRequest, CloseIoRequest, Container, CreateContainerRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest,
    ExecProcessRequest, GetImageRequest, GetRequest, Info, KillRequest, ListPidsRequest,
    MetricsRequest, PauseTaskRequest, ReadContentRequest, ResizePtyRequest, ResumeTaskRequest,
    StartRequest, UpdateRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_client::services::v1::{
    CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest,
};
use containerd_client::tonic::Request;
use containerd_client::types::{Descriptor, Mount};
use containerd_client::{Client, with_namespace};
use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec,
};
use prost_types::Any;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::image::TAR_LAYER;

/// The runtime type of the wasmhybrid shim.
pub const WASMHYBRID_RUNTIME: &str = "io.containerd.wasmhybrid.v1";
/// containerd's default runtime.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const SNAPSHOTTER: &str = "overlayfs";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Ctrd {
    client: Arc<Client>,
    ns: String,
    /// Where containers' stdio FIFOs are made (default: the temp dir).
    fifo_dir: Option<Arc<PathBuf>>,
}

/// Task exit events, from [`Ctrd::task_exits`].
pub struct TaskExits {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<(String, u32)>>,
}

impl TaskExits {
    /// The next exit: the container's id and its exit status.
    pub async fn next(&mut self, timeout: Duration) -> Result<(String, u32)> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .map_err(|_| anyhow!("no task exit event within {timeout:?}"))?
            .ok_or_else(|| anyhow!("the event stream ended"))?
    }
}

/// An image as containerd stores it, with its config parsed.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub name: String,
    pub manifest: serde_json::Value,
    pub config_digest: String,
    pub config: serde_json::Value,
}

impl ImageInfo {
    /// Entrypoint + Cmd from the image config.
    pub fn default_args(&self) -> Vec<String> {
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut args = strings(&self.config["config"]["Entrypoint"]);
        args.extend(strings(&self.config["config"]["Cmd"]));
        args
    }

    pub fn env(&self) -> Vec<String> {
        self.config["config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How to run one container.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub id: String,
    pub image: String,
    pub runtime: String,
    /// Process args; `None` uses the image's Entrypoint + Cmd.
    pub args: Option<Vec<String>>,
    /// Extra `KEY=VALUE` variables, after the image's.
    pub env: Vec<String>,
    /// Extra mounts, appended to the default spec's.
    pub mounts: Vec<oci_spec::runtime::Mount>,
    /// Join this network namespace instead of getting a new one.
    pub netns: Option<PathBuf>,
    /// Join this PID namespace instead of getting a new one.
    pub pidns: Option<PathBuf>,
    pub annotations: HashMap<String, String>,
    /// cgroup memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Give the task a stdin FIFO ([`Running::write_stdin`]).
    pub stdin: bool,
    /// A terminal (`ctr run -t`): the spec's `process.terminal` and the
    /// task's `terminal`; stdout carries both streams, stderr is not given.
    pub terminal: bool,
    /// A logging URI for stdout and stderr instead of FIFOs (`ctr run
    /// --log-uri`: `file:///path`, `binary:///path?args`).
    pub log_uri: Option<String>,
}

impl RunOpts {
    pub fn new(id: &str, image: &str, runtime: &str) -> Self {
        Self {
            id: id.to_string(),
            image: image.to_string(),
            runtime: runtime.to_string(),
            args: None,
            env: vec![],
            mounts: vec![],
            netns: None,
            pidns: None,
            annotations: HashMap::new(),
            memory_limit: None,
            stdin: false,
            terminal: false,
            log_uri: None,
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn env(mut self, env: &[&str]) -> Self {
        self.env.extend(env.iter().map(|s| s.to_string()));
        self
    }
}

/// Time spent in each phase of a container's life, as the client saw it.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    /// Container record and snapshot created.
    pub container_created: Duration,
    /// `Tasks.Create` (shim start + container create).
    pub task_created: Duration,
    /// `Tasks.Start`.
    pub task_started: Duration,
    /// Start returned -> task exited.
    pub ran: Duration,
    /// Exit -> task, container and snapshot deleted.
    pub deleted: Duration,
}

impl Phases {
    pub fn total(&self) -> Duration {
        self.container_created + self.task_created + self.task_started + self.ran + self.deleted
    }
}

/// The result of a finished container.
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: u32,
    pub stdout: String,
    pub stderr: String,
    pub phases: Phases,
}

/// A FIFO whose read side collects everything written to it.
struct Fifo {
    path: PathBuf,
    keeper: Option<std::fs::File>,
    buf: Arc<Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Fifo {
    fn create(path: PathBuf) -> Result<Self> {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {}", path.display()))?;
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?;
        // Held until the shim has opened its end, so the reader does not
        // see end-of-file before the container even started.
        let keeper = std::fs::OpenOptions::new().write(true).open(&path)?;
        let mut rx = tokio::net::unix::pipe::Receiver::from_file(read)?;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 8192];
            loop {
                match rx.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .expect("fifo buffer")
                        .extend_from_slice(&chunk[..n]),
                }
            }
        });
        Ok(Self {
            path,
            keeper: Some(keeper),
            buf,
            reader,
        })
    }

    fn release(&mut self) {
        self.keeper = None;
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().expect("fifo buffer")).into_owned()
    }

    /// Waits (bounded) for the writers to close, then returns the text.
    async fn finish(mut self, timeout: Duration) -> String {
        self.release();
        let _ = tokio::time::timeout(timeout, &mut self.reader).await;
        self.reader.abort();
        let _ = std::fs::remove_file(&self.path);
        self.text()
    }
}

/// A created (and maybe started) container with its task.
pub struct Running {
    ctrd: Ctrd,
    pub id: String,
    pub pid: u32,
    stdin: Option<PathBuf>,
    stdout: Fifo,
    stderr: Fifo,
    phases: Phases,
    started_at: Instant,
    _io_dir: tempfile::TempDir,
}

impl Ctrd {
    pub async fn connect(address: &Path, namespace: &str) -> Result<Self> {
        let channel = containerd_client::connect(address)
            .await
            .with_context(|| format!("connect to containerd at {}", address.display()))?;
        Ok(Self {
            client: Arc::new(Client::from(channel)),
            ns: namespace.to_string(),
            fifo_dir: None,
        })
    }

    /// Makes containers' stdio FIFOs under `dir` (as `ctr` does under
    /// `/run/containerd/fifo`) instead of the temp dir.
    pub fn with_fifo_dir(mut self, dir: PathBuf) -> Self {
        self.fifo_dir = Some(Arc::new(dir));
        self
    }

    /// A new directory for one process's stdio FIFOs.
    fn io_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let mut b = tempfile::Builder::new();
        b.prefix(prefix);
        Ok(match &self.fifo_dir {
            Some(dir) => b.tempdir_in(dir.as_path())?,
            None => b.tempdir()?,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Follows the task exit events containerd forwards for this namespace
    /// from now on. (containerd answers a subscription only with its first
    /// event, so the stream is read by a task of its own; the request is
    /// on its way when this returns, ahead of any later request.)
    pub fn task_exits(&self) -> TaskExits {
        let req = containerd_client::services::v1::SubscribeRequest {
            filters: vec![format!("namespace=={},topic==\"/tasks/exit\"", self.ns)],
        };
        let client = self.client.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let decode = |envelope: containerd_client::types::Envelope| -> Result<(String, u32)> {
                let event = envelope
                    .event
                    .ok_or_else(|| anyhow!("an envelope without its event"))?;
                let exit = <containerd_client::events::TaskExit as prost::Message>::decode(
                    event.value.as_slice(),
                )
                .context("decode TaskExit")?;
                Ok((exit.container_id, exit.exit_status))
            };
            let mut stream = match client.events().subscribe(req).await {
                Ok(response) => response.into_inner(),
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("subscribe to task exit events: {e}")));
                    return;
                }
            };
            loop {
                let next = match stream.message().await {
                    Ok(Some(envelope)) => decode(envelope),
                    Ok(None) => Err(anyhow!("the event stream ended")),
                    Err(e) => Err(anyhow!("event stream: {e}")),
                };
                let end = next.is_err();
                if tx.send(next).is_err() || end {
                    return;
                }
            }
        });
        TaskExits { rx }
    }

    /// A request in our namespace, optionally under a lease that keeps the
    /// resources it creates from garbage collection.
    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = with_namespace!(msg, self.ns);
        if let Some(lease) = lease {
            req.metadata_mut().insert(
                "containerd-lease",
                lease.parse().expect("lease id is ASCII"),
            );
        }
        req
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let req = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = self
            .client
            .content()
            .read(with_namespace!(req, self.ns))
            .await
            .with_context(|| format!("read content {digest}"))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// Image `name`'s target descriptor.
    async fn image_target(&self, name: &str) -> Result<Descriptor> {
        let req = GetImageRequest {
            name: name.to_string(),
        };
        self.client
            .images()
            .get(with_namespace!(req, self.ns))
            .await
            .with_context(|| format!("image {name} not found in namespace {}", self.ns))?
            .into_inner()
            .image
            .ok_or_else(|| anyhow!("image {name} has no record"))?
            .target
            .ok_or_else(|| anyhow!("image {name} has no target"))
    }

    /// Points image name `name` at `source`'s target (a re-tag, as
    /// `ctr images tag --force` does), creating the name if it is new.
    pub async fn tag(&self, name: &str, source: &str) -> Result<()> {
        use containerd_client::services::v1::{CreateImageRequest, Image, UpdateImageRequest};
        let target = self.image_target(source).await?;
        let image = Image {
            name: name.to_string(),
            target: Some(target),
            ..Default::default()
        };
        let req = UpdateImageRequest {
            image: Some(image.clone()),
            update_mask: None,
            source_date_epoch: None,
        };
        match self
            .client
            .images()
            .update(with_namespace!(req, self.ns))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == containerd_client::tonic::Code::NotFound => {
                let req = CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                };
                self.client
                    .images()
                    .create(with_namespace!(req, self.ns))
                    .await
                    .with_context(|| format!("create image {name}"))?;
                Ok(())
            }
            Err(e) => Err(anyhow!("update image {name}: {e}")),
        }
    }

    /// Looks up an image and parses its manifest (for this platform or
    /// `wasi/wasm`) and config.
    pub async fn image(&self, name: &str) -> Result<ImageInfo> {
        let target = self.image_target(name).await?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&target.digest).await?)?;
        if doc["manifests"].is_array() {
            let arch = crate::image::host_arch();
            let chosen = doc["manifests"]
                .as_array()
                .and_then(|m| {
                    m.iter()
                        .find(|d| d["platform"]["architecture"] == "wasm")
                        .or_else(|| m.iter().find(|d| d["platform"]["architecture"] == arch))
                })
                .ok_or_else(|| anyhow!("image {name} has no wasm or {arch} manifest"))?;
            let digest = chosen["digest"].as_str().unwrap_or_default().to_string();
            doc = serde_json::from_slice(&self.read_blob(&digest).await?)?;
        }
        let config_digest = doc["config"]["digest"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest of {name} has no config"))?
            .to_string();
        let config = serde_json::from_slice(&self.read_blob(&config_digest).await?)?;
        Ok(ImageInfo {
            name: name.to_string(),
            manifest: doc,
            config_digest,
            config,
        })
    }

    /// Applies the image's tar layers as snapshots (skipping non-tar Wasm
    /// layers) and returns the chain ID to use as the rootfs parent, or ""
    /// for an image with no tar layer.
    pub async fn unpack(&self, image: &ImageInfo) -> Result<String> {
        // As containerd's own unpacker does: a lease keeps the snapshots
        // being extracted from the garbage collector (which runs, e.g., after
        // another container was deleted). It expires by itself if we crash.
        let lease_id = format!("wasmhybrid-unpack-{}-{}", std::process::id(), unique());
        let req = LeaseCreateRequest {
            id: lease_id.clone(),
            labels: HashMap::from([(
                "containerd.io/gc.expire".to_string(),
                expiry_rfc3339(Duration::from_secs(600)),
            )]),
        };
        self.client
            .leases()
            .create(self.req(req, None))
            .await
            .context("create lease")?;
        let result = self.unpack_leased(image, &lease_id).await;
        let req = LeaseDeleteRequest {
            id: lease_id,
            sync: false,
        };
        let _ = self.client.leases().delete(self.req(req, None)).await;
        result
    }

    async fn unpack_leased(&self, image: &ImageInfo, lease: &str) -> Result<String> {
        let lease = Some(lease);
        let layers = image.manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut parent = String::new();
        let mut unpacked = false;
        for layer in layers {
            let media_type = layer["mediaType"].as_str().unwrap_or_default();
            if media_type != TAR_LAYER
                && media_type != "application/vnd.docker.image.rootfs.diff.tar"
            {
                continue;
            }
            let digest = layer["digest"].as_str().unwrap_or_default().to_string();
            // Uncompressed layers: the diff ID is the layer digest.
            let chain = if parent.is_empty() {
                digest.clone()
            } else {
                format!(
                    "sha256:{:x}",
                    Sha256::digest(format!("{parent} {digest}").as_bytes())
                )
            };
            let stat = StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: chain.clone(),
            };
            if self
                .client
                .snapshots()
                .stat(with_namespace!(stat, self.ns))
                .await
                .is_err()
            {
                let key = format!("extract-{}-{} {chain}", std::process::id(), unique());
                let prep = PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                };
                let mounts = self
                    .client
                    .snapshots()
                    .prepare(self.req(prep, lease))
                    .await
                    .context("prepare snapshot for unpack")?
                    .into_inner()
                    .mounts;
                let apply = ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: media_type.to_string(),
                        digest: digest.clone(),
                        size: layer["size"].as_i64().unwrap_or_default(),
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                };
                self.client
                    .diff()
                    .apply(self.req(apply, lease))
                    .await
                    .context("apply layer")?;
                unpacked = true;
                let commit = CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                };
                let committed = self
                    .client
                    .snapshots()
                    .commit(self.req(commit, lease))
                    .await;
                match committed {
                    Ok(_) => {}
                    // A concurrent unpack of the same image won the race:
                    // its snapshot is the same content.
                    Err(status)
                        if status.code() == containerd_client::tonic::Code::AlreadyExists =>
                    {
                        let remove = RemoveSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key,
                        };
                        let _ = self
                            .client
                            .snapshots()
                            .remove(with_namespace!(remove, self.ns))
                            .await;
                    }
                    Err(status) => return Err(status).context("commit snapshot"),
                }
            }
            parent = chain;
        }
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        if !parent.is_empty()
            && (unpacked || !self.has_label(&image.config_digest, &label, &parent).await)
        {
            // Keep the unpacked snapshots from garbage collection, as
            // containerd's own unpacker does: once, when it unpacks (a
            // label written for every container would cost containerd a
            // metadata commit, with its disk flush, per container).
            let update = UpdateRequest {
                info: Some(Info {
                    digest: image.config_digest.clone(),
                    labels: HashMap::from([(label.clone(), parent.clone())]),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("labels.{label}")],
                }),
            };
            self.client
                .content()
                .update(self.req(update, lease))
                .await
                .context("label image config")?;
        }
        Ok(parent)
    }

    /// Whether blob `digest` carries label `key` = `value` (a read).
    async fn has_label(&self, digest: &str, key: &str, value: &str) -> bool {
        let req = containerd_client::services::v1::InfoRequest {
            digest: digest.to_string(),
        };
        match self
            .client
            .content()
            .info(with_namespace!(req, self.ns))
            .await
        {
            Ok(r) => r
                .into_inner()
                .info
                .is_some_and(|i| i.labels.get(key).map(String::as_str) == Some(value)),
            Err(_) => false,
        }
    }

    fn spec(&self, opts: &RunOpts, image: &ImageInfo) -> Result<Spec> {
        let args = opts.args.clone().unwrap_or_else(|| image.default_args());
        let mut env = vec![DEFAULT_PATH.to_string()];
        for e in image.env().into_iter().chain(opts.env.iter().cloned()) {
            let key = e.split('=').next().unwrap_or_default().to_string();
            env.retain(|x| x.split('=').next() != Some(key.as_str()));
            env.push(e);
        }
        let mut spec = Spec::default();
        let default_process = spec.process().clone().unwrap_or_default();
        let process = ProcessBuilder::default()
            .terminal(opts.terminal)
            .user(default_process.user().clone())
            .args(args)
            .env(env)
            .cwd("/")
            .capabilities(default_process.capabilities().clone().unwrap_or_default())
            .rlimits(default_process.rlimits().clone().unwrap_or_default())
            .no_new_privileges(true)
            .build()?;
        spec.set_process(Some(process));
        spec.set_hostname(Some(opts.id.clone()));
        spec.set_root(Some(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        ));
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(opts.mounts.iter().cloned());
        spec.set_mounts(Some(mounts));
        let default_linux = spec.linux().clone().unwrap_or_default();
        let namespaces = default_linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Cgroup)
            .map(|n| {
                let path = match n.typ() {
                    LinuxNamespaceType::Network => opts.netns.as_ref(),
                    LinuxNamespaceType::Pid => opts.pidns.as_ref(),
                    _ => None,
                };
                match path {
                    Some(path) => LinuxNamespaceBuilder::default()
                        .typ(n.typ())
                        .path(path.clone())
                        .build()
                        .expect("namespace"),
                    None => n,
                }
            })
            .collect::<Vec<_>>();
        let mut resources = default_linux.resources().clone().unwrap_or_default();
        if let Some(limit) = opts.memory_limit {
            resources.set_memory(Some(
                oci_spec::runtime::LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(limit)
                    .build()?,
            ));
        }
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
            .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
            .resources(resources)
            .cgroups_path(PathBuf::from(format!("/{}/{}", self.ns, opts.id)))
            .build()?;
        spec.set_linux(Some(linux));
        if !opts.annotations.is_empty() {
            spec.set_annotations(Some(opts.annotations.clone()));
        }
        Ok(spec)
    }

    /// Creates the container, its snapshot and its task; does not start it.
    pub async fn create(&self, opts: &RunOpts) -> Result<Running> {
        let t0 = Instant::now();
        let image = self.image(&opts.image).await?;
        let parent = self.unpack(&image).await?;
        let spec = self.spec(opts, &image)?;
        let container = Container {
            id: opts.id.clone(),
            image: opts.image.clone(),
            runtime: Some(Runtime {
                name: opts.runtime.clone(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: serde_json::to_vec(&spec)?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: opts.id.clone(),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            container: Some(container),
        };
        self.client
            .containers()
            .create(with_namespace!(req, self.ns))
            .await
            .with_context(|| format!("create container {}", opts.id))?;
        let prep = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: opts.id.clone(),
            parent,
            labels: HashMap::new(),
        };
        let rootfs: Vec<Mount> = match self
            .client
            .snapshots()
            .prepare(with_namespace!(prep, self.ns))
            .await
        {
            Ok(r) => r.into_inner().mounts,
            Err(e) => {
                self.cleanup(&opts.id).await;
                bail!("prepare snapshot for {}: {e}", opts.id);
            }
        };
        let container_created = t0.elapsed();

        let io_dir = self.io_dir("wasmhybrid-io-")?;
        let mut stdout = Fifo::create(io_dir.path().join("stdout"))?;
        let mut stderr = Fifo::create(io_dir.path().join("stderr"))?;
        let stdin = if opts.stdin {
            let path = io_dir.path().join("stdin");
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("mkfifo {}", path.display()))?;
            Some(path)
        } else {
            None
        };
        let t1 = Instant::now();
        let req = CreateTaskRequest {
            container_id: opts.id.clone(),
            rootfs,
            stdin: stdin
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            stdout: match &opts.log_uri {
                Some(uri) => uri.clone(),
                None => stdout.path.display().to_string(),
            },
            stderr: match &opts.log_uri {
                Some(uri) => uri.clone(),
                None if opts.terminal => String::new(),
                None => stderr.path.display().to_string(),
            },
            terminal: opts.terminal,
            ..Default::default()
        };
        let created = self
            .client
            .tasks()
            .create(with_namespace!(req, self.ns))
            .await;
        stdout.release();
        stderr.release();
        let pid = match created {
            Ok(r) => r.into_inner().pid,
            Err(e) => {
                let err_text = stderr.finish(Duration::from_secs(2)).await;
                self.cleanup(&opts.id).await;
                let mut msg = format!("create task {}: {}", opts.id, e.message());
                if !err_text.is_empty() {
                    msg.push_str(&format!("; container stderr: {err_text}"));
                }
                return Err(TaskCreateError(msg).into());
            }
        };
        let task_created = t1.elapsed();
        Ok(Running {
            ctrd: self.clone(),
            id: opts.id.clone(),
            pid,
            stdin,
            stdout,
            stderr,
            phases: Phases {
                container_created,
                task_created,
                ..Default::default()
            },
            started_at: Instant::now(),
            _io_dir: io_dir,
        })
    }

    /// Creates and starts a container.
    pub async fn start(&self, opts: &RunOpts) -> Result<Running> {
        let mut running = self.create(opts).await?;
        let t = Instant::now();
        let req = StartRequest {
            container_id: opts.id.clone(),
            exec_id: String::new(),
        };
        match self
            .client
            .tasks()
            .start(with_namespace!(req, self.ns))
            .await
        {
            Ok(r) => running.pid = r.into_inner().pid,
            Err(e) => {
                let _ = running.delete().await;
                bail!("start task {}: {}", opts.id, e.message());
            }
        }
        running.phases.task_started = t.elapsed();
        running.started_at = Instant::now();
        Ok(running)
    }

    /// Runs a container to completion and deletes it.
    pub async fn run(&self, opts: &RunOpts) -> Result<Finished> {
        let running = self.start(opts).await?;
        running.wait_and_delete().await
    }

    /// Best-effort removal of a container's task, snapshot and record.
    pub async fn cleanup(&self, id: &str) {
        let req = DeleteTaskRequest {
            container_id: id.to_string(),
        };
        let _ = self
            .client
            .tasks()
            .delete(with_namespace!(req, self.ns))
            .await;
        let req = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_string(),
        };
        let _ = self
            .client
            .snapshots()
            .remove(with_namespace!(req, self.ns))
            .await;
        let req = DeleteContainerRequest { id: id.to_string() };
        let _ = self
            .client
            .containers()
            .delete(with_namespace!(req, self.ns))
            .await;
    }
}

/// `Tasks.Create` failed: the shim refused or could not create the container.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskCreateError(pub String);

impl Running {
    /// What the container wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.text()
    }

    /// Polls stdout until it contains `needle` (bounded).
    pub async fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.stdout.text().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "container {} did not print {needle:?} within {timeout:?}; stdout: {:?} stderr: {:?}",
                    self.id,
                    self.stdout.text(),
                    self.stderr.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Points this handle at a new connection (after a containerd restart).
    pub fn reconnect(&mut self, ctrd: &Ctrd) {
        self.ctrd = ctrd.clone();
    }

    /// The task's status as containerd reports it (`RUNNING`, `PAUSED`...).
    pub async fn status(&self) -> Result<String> {
        let req = GetRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
        };
        let process = self
            .ctrd
            .client
            .tasks()
            .get(with_namespace!(req, self.ctrd.ns))
            .await
            .with_context(|| format!("get task {}", self.id))?
            .into_inner()
            .process
            .ok_or_else(|| anyhow!("task {} has no process", self.id))?;
        let status = containerd_client::types::v1::Status::try_from(process.status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| format!("status {}", process.status));
        Ok(status)
    }

    pub async fn pause(&self) -> Result<()> {
        let req = PauseTaskRequest {
            container_id: self.id.clone(),
        };
        self.ctrd
            .client
            .tasks()
            .pause(with_namespace!(req, self.ctrd.ns))
            .await?;
        Ok(())
    }

    /// Writes `data` to the task's stdin and closes this writer (the task
    /// sees end-of-file after [`Running::close_stdin`], as under runc).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        let path = self
            .stdin
            .clone()
            .ok_or_else(|| anyhow!("{} was created without stdin", self.id))?;
        let data = data.to_vec();
        // The shim holds the FIFO's read end since Tasks.Create: no wait.
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            std::io::Write::write_all(&mut f, &data)?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// `Tasks.ListPids` (`ctr task ps`): the task's processes.
    pub async fn pids(&self) -> Result<Vec<u32>> {
        let req = ListPidsRequest {
            container_id: self.id.clone(),
        };
        let resp = self
            .ctrd
            .client
            .tasks()
            .list_pids(with_namespace!(req, self.ctrd.ns))
            .await
            .map_err(|e| anyhow!("list pids of {}: {}", self.id, e.message()))?;
        Ok(resp.into_inner().processes.iter().map(|p| p.pid).collect())
    }

    /// `Tasks.ResizePty` (what `ctr` sends for its terminal's size).
    pub async fn resize_pty(&self, width: u32, height: u32) -> Result<()> {
        let req = ResizePtyRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
            width,
            height,
        };
        self.ctrd
            .client
            .tasks()
            .resize_pty(with_namespace!(req, self.ctrd.ns))
            .await
            .map_err(|e| anyhow!("resize the terminal of {}: {}", self.id, e.message()))?;
        Ok(())
    }

    /// `Tasks.CloseIO` for stdin (what the CRI sends when a `stdinOnce` attach ends).
    pub async fn close_stdin(&self) -> Result<()> {
        let req = CloseIoRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
            stdin: true,
        };
        self.ctrd
            .client
            .tasks()
            .close_io(with_namespace!(req, self.ctrd.ns))
            .await
            .map_err(|e| anyhow!("close stdin of {}: {}", self.id, e.message()))?;
        Ok(())
    }

    /// `Tasks.Update` with `resources`, a runtime-spec `LinuxResources`
    /// (as `nerdctl update` and the CRI's `UpdateContainerResources` send).
    pub async fn update(&self, resources: serde_json::Value) -> Result<()> {
        let req = UpdateTaskRequest {
            container_id: self.id.clone(),
            resources: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources)?,
            }),
            annotations: HashMap::new(),
        };
        self.ctrd
            .client
            .tasks()
            .update(with_namespace!(req, self.ctrd.ns))
            .await
            .map_err(|e| anyhow!("update {}: {}", self.id, e.message()))?;
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        let req = ResumeTaskRequest {
            container_id: self.id.clone(),
        };
        self.ctrd
            .client
            .tasks()
            .resume(with_namespace!(req, self.ctrd.ns))
            .await?;
        Ok(())
    }

    /// The type URL of the task's metrics (cgroup statistics).
    pub async fn metrics_type(&self) -> Result<String> {
        let req = MetricsRequest {
            filters: vec![format!("id=={}", self.id)],
        };
        let metrics = self
            .ctrd
            .client
            .tasks()
            .metrics(with_namespace!(req, self.ctrd.ns))
            .await
            .with_context(|| format!("metrics of {}", self.id))?
            .into_inner()
            .metrics;
        let data = metrics
            .into_iter()
            .find_map(|m| m.data)
            .ok_or_else(|| anyhow!("no metrics for {}", self.id))?;
        if data.value.is_empty() {
            bail!("empty metrics for {}", self.id);
        }
        Ok(data.type_url)
    }

    /// Asks containerd to checkpoint the task.
    pub async fn checkpoint(&self) -> Result<()> {
        let req = CheckpointTaskRequest {
            container_id: self.id.clone(),
            ..Default::default()
        };
        self.ctrd
            .client
            .tasks()
            .checkpoint(with_namespace!(req, self.ctrd.ns))
            .await
            .context("checkpoint")?;
        Ok(())
    }

    /// Runs `args` in the running container; returns (exit code, stdout).
    pub async fn exec(&self, exec_id: &str, args: &[&str]) -> Result<(u32, String)> {
        let io_dir = self.ctrd.io_dir("wasmhybrid-exec-")?;
        let mut stdout = Fifo::create(io_dir.path().join("stdout"))?;
        let mut stderr = Fifo::create(io_dir.path().join("stderr"))?;
        let process = serde_json::json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [DEFAULT_PATH, "PATH=/bin"],
            "cwd": "/",
        });
        let req = ExecProcessRequest {
            container_id: self.id.clone(),
            stdout: stdout.path.display().to_string(),
            stderr: stderr.path.display().to_string(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process)?,
            }),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let tasks = || self.ctrd.client.tasks();
        tasks()
            .exec(with_namespace!(req, self.ctrd.ns))
            .await
            .context("exec")?;
        let start = StartRequest {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
        };
        // The shim opens an exec's FIFOs at start, so keep ours open until then.
        let started = tasks().start(with_namespace!(start, self.ctrd.ns)).await;
        stdout.release();
        stderr.release();
        started.context("start exec")?;
        let wait = WaitRequest {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
        };
        let code = tasks()
            .wait(with_namespace!(wait, self.ctrd.ns))
            .await
            .context("wait exec")?
            .into_inner()
            .exit_status;
        let del = DeleteProcessRequest {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
        };
        tasks()
            .delete_process(with_namespace!(del, self.ctrd.ns))
            .await
            .context("delete exec")?;
        let _ = stderr.finish(Duration::from_secs(5)).await;
        Ok((code, stdout.finish(Duration::from_secs(5)).await))
    }

    pub async fn kill(&self, signal: u32) -> Result<()> {
        let req = KillRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
            signal,
            all: false,
        };
        self.ctrd
            .client
            .tasks()
            .kill(with_namespace!(req, self.ctrd.ns))
            .await
            .with_context(|| format!("kill {} with {signal}", self.id))?;
        Ok(())
    }

    /// Waits for the task to exit; returns its exit status.
    pub async fn wait(&mut self) -> Result<u32> {
        let req = WaitRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
        };
        let status = self
            .ctrd
            .client
            .tasks()
            .wait(with_namespace!(req, self.ctrd.ns))
            .await
            .with_context(|| format!("wait for {}", self.id))?
            .into_inner()
            .exit_status;
        self.phases.ran = self.started_at.elapsed();
        Ok(status)
    }

    /// Deletes the task, the snapshot and the container, in the order
    /// containerd's own client uses (the snapshot first: once the container
    /// record is gone the garbage collector may take the snapshot).
    pub async fn delete(self) -> Result<(String, String, Phases)> {
        let t = Instant::now();
        let req = DeleteTaskRequest {
            container_id: self.id.clone(),
        };
        let deleted = self
            .ctrd
            .client
            .tasks()
            .delete(with_namespace!(req, self.ctrd.ns))
            .await;
        let req = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: self.id.clone(),
        };
        let snapshot_removed = match self
            .ctrd
            .client
            .snapshots()
            .remove(with_namespace!(req, self.ctrd.ns))
            .await
        {
            Err(e) if e.code() == containerd_client::tonic::Code::NotFound => Ok(()),
            other => other.map(|_| ()),
        };
        let req = DeleteContainerRequest {
            id: self.id.clone(),
        };
        let container_deleted = self
            .ctrd
            .client
            .containers()
            .delete(with_namespace!(req, self.ctrd.ns))
            .await;
        let mut phases = self.phases.clone();
        phases.deleted = t.elapsed();
        let stdout = self.stdout.finish(Duration::from_secs(5)).await;
        let stderr = self.stderr.finish(Duration::from_secs(5)).await;
        deleted.map_err(|e| anyhow!("delete task {}: {}", self.id, e.message()))?;
        snapshot_removed.map_err(|e| anyhow!("remove snapshot {}: {}", self.id, e.message()))?;
        container_deleted.map_err(|e| anyhow!("delete container {}: {}", self.id, e.message()))?;
        Ok((stdout, stderr, phases))
    }

    pub async fn wait_and_delete(mut self) -> Result<Finished> {
        let exit_code = self.wait().await?;
        let (stdout, stderr, phases) = self.delete().await?;
        Ok(Finished {
            exit_code,
            stdout,
            stderr,
            phases,
        })
    }
}

/// A process-wide counter for unique names.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `now + after` as RFC 3339 (UTC), for containerd's `gc.expire` label.
fn expiry_rfc3339(after: Duration) -> String {
    let t = std::time::SystemTime::now() + after;
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_expiry_is_well_formed() {
        let s = super::expiry_rfc3339(std::time::Duration::ZERO);
        assert_eq!(s.len(), 20, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
}

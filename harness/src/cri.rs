//! The kubelet's path: containerd's CRI plugin on the private containerd
//! ([`crate::daemon`] with `with_cri: true`), a CNI bridge network the
//! harness owns, a locally built pause image, and a thin CRI client
//! (`k8s-cri`, over containerd's unix socket) with the helpers tests need.
//!
//! # Why pod sandboxes failed with "can't get final child's PID from pipe: EOF"
//!
//! The CRI plugin gives every pod sandbox (pause) container
//! `process.oomScoreAdj = -998`. runc's `nsexec` writes that value to
//! `/proc/self/oom_score_adj` before it forks the container's init; lowering
//! a process's OOM score below its current value needs `CAP_SYS_RESOURCE`
//! (the kernel answers `EACCES` without it). Some VMs and CI sandboxes start
//! their init with `CAP_SYS_RESOURCE` removed from the bounding set (here:
//! `CapBnd: 000001fffeffffff`, bit 24 cleared), so even root cannot lower it
//! (`echo -998 > /proc/self/oom_score_adj` fails). `nsexec` then dies with
//! `failed to update /proc/self/oom_score_adj: Permission denied`, which goes
//! only to runc's `log.json` in the bundle (removed with the failed task);
//! what reaches containerd, and the CRI caller, is the parent's symptom,
//! `can't get final child's PID from pipe: EOF`. It happens with the plain
//! `runc` handler and with host networking alike, since it has nothing to do
//! with networking, cgroups, seccomp or the shim.
//!
//! The fix is containerd's own setting for such hosts:
//! `restrict_oom_score_adj = true` (meant for rootless containerd) clamps
//! every OOM score the CRI plugin asks for to no lower than containerd's
//! own. [`config_toml`] always sets it: pods then get the daemon's score
//! (0) instead of -998, which only matters to the kernel's OOM victim choice
//! on a machine under memory pressure, never to what a test observes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use containerd_client::tonic;
use containerd_client::tonic::transport::Channel;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec as CriImageSpec, ImageStatusRequest, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};

/// The CRI API types (`k8s-cri`'s `runtime.v1`).
pub use k8s_cri::v1 as api;

use crate::daemon::{DaemonOptions, PrivateContainerd};
use crate::image::{BUSYBOX, ImageSpec, SYMLINK};

/// The containerd namespace of the CRI plugin (fixed by containerd).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The CRI handler (RuntimeClass handler) of the shim.
pub const WASMHYBRID_HANDLER: &str = "wasmhybrid";
/// The CRI handler of containerd's plain runc runtime.
pub const RUNC_HANDLER: &str = "runc";
/// The locally built pause image every pod sandbox runs.
pub const PAUSE_IMAGE: &str = "localhost/wasmhybrid/pause:cri";
/// Where Debian's `containernetworking-plugins` installs the CNI plugins;
/// the upstream default is the second.
const CNI_BIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

/// How the generated config sets up the CRI plugin.
#[derive(Debug, Clone, Default)]
pub struct CriSettings {
    /// The CNI config directory (`None`: an empty one in the daemon's dir,
    /// so only host-network pods can start).
    pub cni_conf_dir: Option<PathBuf>,
    /// The sandbox (pause) image (`None`: [`PAUSE_IMAGE`]).
    pub sandbox_image: Option<String>,
}

impl CriSettings {
    /// The CNI config directory for a daemon in `daemon_dir`.
    pub fn conf_dir(&self, daemon_dir: &Path) -> PathBuf {
        self.cni_conf_dir
            .clone()
            .unwrap_or_else(|| daemon_dir.join("cni-conf"))
    }
}

/// The directory holding the CNI plugins, if they are installed.
pub fn cni_bin_dir() -> Option<PathBuf> {
    CNI_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| CNI_PLUGINS.iter().all(|p| d.join(p).is_file()))
}

/// The CRI plugin's part of a containerd 1.6/1.7 (`version = 2`) config:
/// the `runc` and `wasmhybrid` handlers, the local pause image, the CNI
/// directories, and what this kind of host needs (see the module docs for
/// `restrict_oom_score_adj`). cgroupfs is the cgroup driver (containerd's
/// default, `SystemdCgroup = false`): the tests' hosts need not run
/// systemd. The plugin's own root and state live under the daemon's
/// private `--root` and `--state`, and so do the pods' network namespaces
/// (`netns_mounts_under_state_dir`), so nothing is shared with another
/// containerd on the host.
pub fn config_toml(settings: &CriSettings, daemon_dir: &Path) -> String {
    let conf_dir = settings.conf_dir(daemon_dir);
    let bin_dir = cni_bin_dir().unwrap_or_else(|| PathBuf::from(CNI_BIN_DIRS[0]));
    let sandbox_image = settings.sandbox_image.as_deref().unwrap_or(PAUSE_IMAGE);
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"
[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{RUNC_HANDLER}"
    [{cri}.containerd.runtimes.{RUNC_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.{RUNC_HANDLER}.options]
        SystemdCgroup = false
    [{cri}.containerd.runtimes.{WASMHYBRID_HANDLER}]
      runtime_type = "io.containerd.wasmhybrid.v1"
      pod_annotations = ["wasmhybrid.io/*"]
      container_annotations = ["wasmhybrid.io/*"]
  [{cri}.cni]
    bin_dir = "{}"
    conf_dir = "{}"
    max_conf_num = 1
"#,
        bin_dir.display(),
        conf_dir.display(),
    )
}

/// The pause image: the host's static busybox running `sleep infinity`.
/// (containerd stops sandboxes with SIGKILL, so no signal handling is
/// needed.)
pub fn pause_image_spec() -> Result<ImageSpec> {
    let bin = std::fs::read(BUSYBOX).with_context(|| {
        format!("read {BUSYBOX}: install it with `apt-get install busybox-static`")
    })?;
    let files = vec![
        ("bin/busybox".to_string(), bin, 0o755),
        ("bin/sleep".to_string(), b"busybox".to_vec(), SYMLINK),
    ];
    Ok(ImageSpec::native(
        PAUSE_IMAGE,
        files,
        &["/bin/sleep", "infinity"],
    ))
}

/// Writes `spec` as an OCI archive in `workdir` and imports it into the
/// CRI namespace, unpacked into overlayfs snapshots as the CRI plugin
/// expects of a pulled image.
pub fn import_for_cri(address: &Path, workdir: &Path, spec: &ImageSpec) -> Result<()> {
    crate::fixtures::import_archive(address, workdir, CRI_NAMESPACE, spec, true)
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run `ip` (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    addr: u32,
    len: u32,
}

impl Prefix {
    fn parse(s: &str) -> Option<Self> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: std::net::Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
        Some(Self {
            addr: u32::from(addr),
            len,
        })
    }

    fn mask(len: u32) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }

    fn overlaps(&self, other: &Prefix) -> bool {
        let m = Self::mask(self.len.min(other.len));
        self.addr & m == other.addr & m
    }
}

/// The IPv4 destinations of every route of the host (all tables), which
/// include the subnets of its addresses.
fn host_prefixes() -> Result<Vec<Prefix>> {
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    const TYPES: [&str; 8] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "throw",
        "unreachable",
        "prohibit",
        "blackhole",
    ];
    Ok(routes
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            let dest = if TYPES.contains(&first) {
                words.next()?
            } else {
                first
            };
            Prefix::parse(dest)
        })
        .collect())
}

/// A CNI network of the test's own: a Linux bridge `whcri<N>` created (and
/// so claimed) by the harness with a /24 no route of the host overlaps,
/// and a `bridge` + `host-local` + `loopback` conflist pointing at it with
/// the IPAM state in a temp dir. The bridge is deleted on drop; nothing
/// else of the host's network is touched (no masquerading, no iptables).
pub struct CniNetwork {
    bridge: String,
    subnet: String,
    gateway: String,
    name: String,
    dir: tempfile::TempDir,
}

impl CniNetwork {
    /// Claims a free bridge name and subnet and writes the conflist.
    pub fn create() -> Result<Self> {
        if cni_bin_dir().is_none() {
            bail!(
                "CNI plugins {CNI_PLUGINS:?} not found in {CNI_BIN_DIRS:?}: \
                 apt-get install containernetworking-plugins"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("wasmhybrid-cni-")
            .tempdir()
            .context("create CNI temp dir")?;
        let taken = host_prefixes()?;
        let candidates = (100..200u32)
            .map(|n| (n - 100, format!("10.88.{n}")))
            .chain((100..200u32).map(|n| (n, format!("172.30.{n}"))));
        let mut why = Vec::new();
        for (index, net) in candidates {
            let subnet = format!("{net}.0/24");
            let prefix = Prefix::parse(&subnet).expect("well-formed subnet");
            if let Some(t) = taken.iter().find(|t| t.len > 0 && t.overlaps(&prefix)) {
                why.push(format!("{subnet} overlaps a host route ({t:?})"));
                continue;
            }
            let bridge = format!("whcri{index}");
            // Creating it is the claim: a concurrent test gets EEXIST.
            if let Err(e) = ip(&["link", "add", "name", &bridge, "type", "bridge"]) {
                why.push(format!("{bridge}: {e}"));
                continue;
            }
            let name = format!("wasmhybrid-cri-{index}");
            let network = Self {
                bridge,
                gateway: format!("{net}.1"),
                subnet,
                name,
                dir,
            };
            network.write_conflist()?;
            return Ok(network);
        }
        bail!(
            "no free bridge name and subnet for the CRI tests:\n{}",
            why.join("\n")
        )
    }

    fn write_conflist(&self) -> Result<()> {
        std::fs::create_dir_all(self.conf_dir())?;
        std::fs::create_dir_all(self.ipam_dir())?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir(),
                    },
                },
                {"type": "loopback"},
            ],
        });
        std::fs::write(
            self.conf_dir().join("10-wasmhybrid-cri.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )
        .context("write CNI conflist")
    }

    /// The directory to give the CRI plugin as `conf_dir`.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// host-local's `dataDir`: one file per reserved address.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// What is still attached to or reserved in this network: bridge ports
    /// (pods' veths) and host-local address reservations.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let brif = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        for port in std::fs::read_dir(&brif).into_iter().flatten().flatten() {
            left.push(format!(
                "port {} on bridge {}",
                port.file_name().to_string_lossy(),
                self.bridge
            ));
        }
        let reserved = self.ipam_dir().join(&self.name);
        for entry in std::fs::read_dir(&reserved).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "lock" && !name.starts_with("last_reserved_ip") {
                left.push(format!("address {name} still reserved in {}", self.name));
            }
        }
        left
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A pod sandbox made by [`Cri::run_pod_sandbox`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub config: PodSandboxConfig,
    /// The pod's log directory; container logs are files in it.
    pub log_dir: PathBuf,
}

/// A container to create in a pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The entrypoint (CRI `command`); empty: the image's.
    pub command: Vec<String>,
    /// CRI `args`; empty: the image's Cmd (when `command` is empty too).
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub annotations: HashMap<String, String>,
    /// The memory limit (the kubelet's `resources.limits.memory`), bytes.
    pub memory_limit: Option<i64>,
    /// A terminal (the pod spec's `tty: true`).
    pub tty: bool,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str, command: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    pub fn tty(mut self) -> Self {
        self.tty = true;
        self
    }
}

/// One line of a CRI container log: `<RFC 3339 time> <stream> <P|F> <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLogLine {
    pub time: String,
    pub stream: String,
    /// `P`: a partial line, continued by the next one of the stream.
    pub partial: bool,
    pub text: String,
}

/// A container's CRI log, parsed.
#[derive(Debug, Clone, Default)]
pub struct CriLog {
    pub lines: Vec<CriLogLine>,
}

impl CriLog {
    /// Parses a CRI log (the kubelet's format); any malformed line is an
    /// error.
    pub fn parse(raw: &str) -> Result<Self> {
        let mut lines = Vec::new();
        for line in raw.lines().filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(4, ' ');
            let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("malformed CRI log line: {line:?}");
            };
            if !(time.len() > 20 && time.as_bytes()[10] == b'T') {
                bail!("CRI log line without an RFC 3339 time: {line:?}");
            }
            if stream != "stdout" && stream != "stderr" {
                bail!("CRI log line of unknown stream {stream:?}: {line:?}");
            }
            let partial = match tag.split(':').next() {
                Some("F") => false,
                Some("P") => true,
                _ => bail!("CRI log line with unknown tag {tag:?}: {line:?}"),
            };
            lines.push(CriLogLine {
                time: time.to_string(),
                stream: stream.to_string(),
                partial,
                text: parts.next().unwrap_or_default().to_string(),
            });
        }
        Ok(Self { lines })
    }

    /// Reads and parses the log file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let raw = std::fs::read_to_string(path)
            .with_context(|| format!("read CRI log {}", path.display()))?;
        Self::parse(&raw)
    }

    /// What the container wrote to `stream` (`stdout` or `stderr`), with
    /// partial lines joined and a newline after each full one.
    pub fn text(&self, stream: &str) -> String {
        let mut out = String::new();
        for l in self.lines.iter().filter(|l| l.stream == stream) {
            out.push_str(&l.text);
            if !l.partial {
                out.push('\n');
            }
        }
        out
    }
}

/// A CRI client (RuntimeService and ImageService) on containerd's socket,
/// remembering the sandboxes and containers it made for the leftover
/// checks.
#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Sandbox and container IDs made through this client.
    ids: Arc<Mutex<Vec<String>>>,
    log_root: PathBuf,
}

/// The namespaces the kubelet asks for a pod without `hostNetwork` or
/// `shareProcessNamespace`: network and IPC shared by the pod, a PID
/// namespace per container. (The protobuf default, all zero, would be
/// `POD` for PID too: one PID namespace for the whole pod.)
fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The namespaces of a pod with `shareProcessNamespace: true`: one PID
/// namespace for the whole pod (the pause process is its PID 1).
pub fn shared_pid_namespaces() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..kubelet_namespaces()
    }
}

fn status_error(what: &str, e: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {} ({:?})", e.message(), e.code())
}

impl Cri {
    /// Connects to the CRI service on containerd's socket; pod logs go
    /// under `log_root`.
    pub async fn connect(address: &Path, log_root: &Path) -> Result<Self> {
        let channel = containerd_client::connect(address)
            .await
            .with_context(|| format!("connect to {}", address.display()))?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            ids: Arc::new(Mutex::new(Vec::new())),
            log_root: log_root.to_path_buf(),
        })
    }

    /// The runtime's name and version (`containerd`, `1.6.20...`).
    pub async fn version(&mut self) -> Result<(String, String)> {
        let v = self
            .runtime
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|e| status_error("CRI Version", e))?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`) as
    /// `(type, ready, reason: message)`.
    pub async fn conditions(&mut self) -> Result<Vec<(String, bool, String)>> {
        let status = self
            .runtime
            .status(StatusRequest { verbose: false })
            .await
            .map_err(|e| status_error("CRI Status", e))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("CRI Status without status"))?;
        Ok(status
            .conditions
            .into_iter()
            .map(|c| (c.r#type, c.status, format!("{}: {}", c.reason, c.message)))
            .collect())
    }

    /// Waits (bounded) until the runtime and the network are ready.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let conditions = self.conditions().await?;
            if conditions.len() >= 2 && conditions.iter().all(|c| c.1) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRI runtime not ready within {timeout:?}: {conditions:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until the CRI plugin knows image `name` (it learns
    /// of imports from containerd's events).
    pub async fn wait_image(&mut self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .images
                .image_status(ImageStatusRequest {
                    image: Some(CriImageSpec {
                        image: name.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .map_err(|e| status_error("CRI ImageStatus", e))?
                .into_inner()
                .image
                .is_some();
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the CRI plugin did not list image {name} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn remember(&self, id: &str) {
        self.ids.lock().expect("ids").push(id.to_string());
    }

    /// Every sandbox and container ID this client made.
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().expect("ids").clone()
    }

    /// `RunPodSandbox` of pod `name` (pod network, CRI namespace
    /// `default`) under `handler`, with `annotations`.
    pub async fn run_pod_sandbox(
        &mut self,
        name: &str,
        handler: &str,
        annotations: &[(&str, &str)],
    ) -> Result<Pod> {
        self.run_pod_sandbox_with(name, handler, annotations, kubelet_namespaces())
            .await
    }

    /// [`Cri::run_pod_sandbox`] with other namespace options (e.g.
    /// [`shared_pid_namespaces`]); the pod's containers get the same.
    pub async fn run_pod_sandbox_with(
        &mut self,
        name: &str,
        handler: &str,
        annotations: &[(&str, &str)],
        namespaces: NamespaceOption,
    ) -> Result<Pod> {
        let log_dir = self.log_root.join(name);
        std::fs::create_dir_all(&log_dir)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_dir.display().to_string(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            })
            .await
            .map_err(|e| status_error(&format!("RunPodSandbox {name} ({handler})"), e))?
            .into_inner()
            .pod_sandbox_id;
        self.remember(&id);
        Ok(Pod {
            id,
            name: name.to_string(),
            config,
            log_dir,
        })
    }

    /// The pod's IP address on its CNI network.
    pub async fn pod_ip(&mut self, pod: &Pod) -> Result<String> {
        let status = self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await
            .map_err(|e| status_error("PodSandboxStatus", e))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus of {} without status", pod.name))?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            bail!("pod {} has no IP", pod.name);
        }
        Ok(ip)
    }

    /// `CreateContainer` in `pod`; its log goes to [`Cri::log_path`].
    pub async fn create_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(CriImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            annotations: spec.annotations.clone(),
            tty: spec.tty,
            log_path: format!("{}.log", spec.name),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    // As the kubelet does: the pod's namespace options.
                    namespace_options: Some(
                        pod.config
                            .linux
                            .as_ref()
                            .and_then(|l| l.security_context.as_ref())
                            .and_then(|c| c.namespace_options.clone())
                            .unwrap_or_else(kubelet_namespaces),
                    ),
                    ..Default::default()
                }),
                resources: spec.memory_limit.map(|limit| LinuxContainerResources {
                    memory_limit_in_bytes: limit,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .map_err(|e| status_error(&format!("CreateContainer {}", spec.name), e))?
            .into_inner()
            .container_id;
        self.remember(&id);
        Ok(id)
    }

    /// Where container `name` of `pod` logs.
    pub fn log_path(pod: &Pod, name: &str) -> PathBuf {
        pod.log_dir.join(format!("{name}.log"))
    }

    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map_err(|e| status_error(&format!("StartContainer {id}"), e))?;
        Ok(())
    }

    /// `CreateContainer` + `StartContainer`.
    pub async fn run_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.create_container(pod, spec).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    pub async fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        self.runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .map_err(|e| status_error(&format!("ContainerStatus {id}"), e))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("ContainerStatus of {id} without status"))
    }

    /// Polls `ContainerStatus` until the container exited (bounded);
    /// returns the final status (`exit_code`, `reason`, `message`).
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id).await?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("container {id} did not exit within {timeout:?}: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `StopContainer` with a grace period of `timeout_secs` (SIGTERM, then
    /// SIGKILL).
    pub async fn stop_container(&mut self, id: &str, timeout_secs: i64) -> Result<()> {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_secs,
            })
            .await
            .map_err(|e| status_error(&format!("StopContainer {id}"), e))?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .map_err(|e| status_error(&format!("RemoveContainer {id}"), e))?;
        Ok(())
    }

    /// `StopPodSandbox` then `RemovePodSandbox` (which removes the pod's
    /// containers too), as the kubelet does when a pod is deleted.
    pub async fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .map_err(|e| status_error(&format!("StopPodSandbox {}", pod.name), e))?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .map_err(|e| status_error(&format!("RemovePodSandbox {}", pod.name), e))?;
        Ok(())
    }

    /// IDs of every sandbox and container the CRI plugin lists.
    pub async fn listed(&mut self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|e| status_error("ListPodSandbox", e))?
            .into_inner()
            .items
            .into_iter()
            .map(|s| format!("sandbox {}", s.id))
            .collect();
        ids.extend(
            self.runtime
                .list_containers(ListContainersRequest { filter: None })
                .await
                .map_err(|e| status_error("ListContainers", e))?
                .into_inner()
                .containers
                .into_iter()
                .map(|c| format!("container {}", c.id)),
        );
        Ok(ids)
    }
}

/// A private containerd with its CRI plugin, a CNI network and the pause
/// image imported: what a kubelet's node has, for one test. Torn down on
/// drop (containerd and its shims first, then the bridge).
pub struct CriEnv {
    pub cri: Cri,
    pub daemon: PrivateContainerd,
    pub network: CniNetwork,
}

impl CriEnv {
    /// Starts it all; every failure says what is missing, with
    /// containerd's log when containerd or its CRI plugin is at fault.
    pub async fn start(shim_dir: &Path) -> Result<Self> {
        Self::start_with(shim_dir, None).await
    }

    /// Like [`CriEnv::start`], with containerd's config in `config_file`
    /// (see [`DaemonOptions::config_file`]).
    pub async fn start_with(shim_dir: &Path, config_file: Option<PathBuf>) -> Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("the CRI tests need root (run scripts/test.sh as root)");
        }
        let network = CniNetwork::create()?;
        let daemon = PrivateContainerd::start(DaemonOptions {
            shim_dir: shim_dir.to_path_buf(),
            with_cri: true,
            cri: CriSettings {
                cni_conf_dir: Some(network.conf_dir()),
                sandbox_image: None,
            },
            config_file,
            ..Default::default()
        })
        .context("containerd did not start")?;
        let with_log = |e: anyhow::Error, daemon: &PrivateContainerd| {
            anyhow!("{e:#}\ncontainerd's log:\n{}", daemon.log())
        };
        let mut cri = match Cri::connect(&daemon.address(), &daemon.dir().join("pod-logs")).await {
            Ok(c) => c,
            Err(e) => return Err(with_log(e, &daemon)),
        };
        if let Err(e) = cri.version().await {
            return Err(with_log(
                e.context("containerd's CRI plugin does not answer (did it fail to load?)"),
                &daemon,
            ));
        }
        if let Err(e) = cri.wait_ready(Duration::from_secs(30)).await {
            return Err(with_log(e, &daemon));
        }
        let pause = pause_image_spec()?;
        import_for_cri(&daemon.address(), daemon.dir(), &pause)?;
        if let Err(e) = cri.wait_image(PAUSE_IMAGE, Duration::from_secs(30)).await {
            return Err(with_log(e, &daemon));
        }
        Ok(Self {
            cri,
            daemon,
            network,
        })
    }

    /// Restarts containerd (which rereads its config file), reconnects and
    /// waits for the CRI plugin to be ready again.
    pub async fn restart(&mut self) -> Result<()> {
        self.daemon.restart()?;
        let channel = containerd_client::connect(self.daemon.address())
            .await
            .context("reconnect after the restart")?;
        self.cri.runtime = RuntimeServiceClient::new(channel.clone());
        self.cri.images = ImageServiceClient::new(channel);
        self.cri.wait_ready(Duration::from_secs(30)).await
    }

    /// Imports `spec` for the CRI plugin and waits until it lists it.
    pub async fn import(&mut self, spec: &ImageSpec) -> Result<()> {
        import_for_cri(&self.daemon.address(), self.daemon.dir(), spec)?;
        self.cri
            .wait_image(&spec.name, Duration::from_secs(30))
            .await
    }

    /// The CRI plugin's state directory in the private containerd.
    pub fn cri_state_dir(&self) -> PathBuf {
        self.daemon.state().join("io.containerd.grpc.v1.cri")
    }

    /// What is left once every pod was removed, polled for a few seconds
    /// (shims exit asynchronously): sandboxes and containers the CRI plugin
    /// still lists, shim processes, pod network namespaces, mounts, runc
    /// and shim state and cgroups of any ID this client made, and ports
    /// or addresses of the CNI network.
    pub async fn leftovers(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = match self.cri.listed().await {
                Ok(listed) => listed,
                Err(e) => vec![format!("cannot list: {e:#}")],
            };
            for pid in self.daemon.shim_pids() {
                let cmdline =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                left.push(format!(
                    "shim process {pid}: {}",
                    cmdline.replace('\0', " ")
                ));
            }
            let netns_dir = self.cri_state_dir().join("netns");
            for ns in std::fs::read_dir(&netns_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                left.push(format!("network namespace {}", ns.path().display()));
            }
            let ids = self.cri.ids();
            let ours = self.daemon.dir().to_string_lossy().into_owned();
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            for line in mounts.lines() {
                let pod_netns = line.contains(ours.as_str()) && line.contains("/netns/");
                if pod_netns || ids.iter().any(|id| line.contains(id.as_str())) {
                    left.push(format!("mount {line}"));
                }
            }
            for id in &ids {
                let mut places = vec![
                    Path::new(crate::daemon::SHIM_STATE_ROOT)
                        .join(CRI_NAMESPACE)
                        .join(id),
                    Path::new("/run/containerd/runc")
                        .join(CRI_NAMESPACE)
                        .join(id),
                    Path::new("/sys/fs/cgroup").join(CRI_NAMESPACE).join(id),
                ];
                for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
                    places.push(
                        Path::new("/sys/fs/cgroup")
                            .join(controller)
                            .join(CRI_NAMESPACE)
                            .join(id),
                    );
                }
                for p in places.into_iter().filter(|p| p.exists()) {
                    left.push(format!("{}", p.display()));
                }
            }
            left.extend(self.network.leftovers());
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lines of containerd's log that report the shim's routing of
    /// container `id` (`dispatch: wasm: ...` / `dispatch: runc: ...`).
    pub fn dispatch_lines(&self, id: &str) -> Vec<String> {
        self.daemon
            .log()
            .lines()
            .filter(|l| l.contains("dispatch: ") && l.contains(&format!("id={id} ")))
            .map(String::from)
            .collect()
    }
}

impl Drop for CriEnv {
    /// After a failed test: removes the pods still listed through the CRI
    /// (so no pause or container process outlives the test), then lets the
    /// daemon and the network go.
    fn drop(&mut self) {
        let address = self.daemon.address();
        let log_root = self.daemon.dir().join("pod-logs");
        // A fresh runtime on its own thread: this may run inside the
        // test's runtime, which must not be blocked on.
        let _ = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut cri = Cri::connect(&address, &log_root).await?;
                let sandboxes = cri
                    .runtime
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await?
                    .into_inner()
                    .items;
                for s in sandboxes {
                    let _ = cri
                        .runtime
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: s.id.clone(),
                        })
                        .await;
                    let _ = cri
                        .runtime
                        .remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: s.id,
                        })
                        .await;
                }
                Ok(())
            })
        })
        .join();
        for id in self.cri.ids() {
            let _ = std::fs::remove_dir_all(
                Path::new(crate::daemon::SHIM_STATE_ROOT)
                    .join(CRI_NAMESPACE)
                    .join(id),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_joined() {
        let raw = "2024-01-02T03:04:05.123456789Z stdout F hello from wasm\n\
                   2024-01-02T03:04:05.2Z stderr P to-\n\
                   2024-01-02T03:04:05.3Z stderr F stderr\n\
                   2024-01-02T03:04:05.4Z stdout F \n";
        let log = CriLog::parse(raw).expect("parse");
        assert_eq!(log.lines.len(), 4);
        assert_eq!(log.text("stdout"), "hello from wasm\n\n");
        assert_eq!(log.text("stderr"), "to-stderr\n");
        assert!(CriLog::parse("garbage\n").is_err());
        assert!(CriLog::parse("2024-01-02T03:04:05Z stdout X hi\n").is_err());
    }

    #[test]
    fn prefixes_overlap_as_subnets_do() {
        let p = |s| Prefix::parse(s).expect("prefix");
        assert!(p("10.88.0.0/16").overlaps(&p("10.88.100.0/24")));
        assert!(p("10.88.100.7").overlaps(&p("10.88.100.0/24")));
        assert!(!p("10.88.101.0/24").overlaps(&p("10.88.100.0/24")));
        assert!(!p("192.168.0.0/16").overlaps(&p("10.88.100.0/24")));
        assert!(Prefix::parse("default").is_none());
    }

    #[test]
    fn config_declares_both_handlers_and_this_hosts_needs() {
        let toml = config_toml(
            &CriSettings {
                cni_conf_dir: Some("/tmp/x/net.d".into()),
                sandbox_image: None,
            },
            Path::new("/tmp/d"),
        );
        for needle in [
            "restrict_oom_score_adj = true",
            "netns_mounts_under_state_dir = true",
            &format!("sandbox_image = \"{PAUSE_IMAGE}\""),
            "runtimes.runc]\n      runtime_type = \"io.containerd.runc.v2\"",
            "runtimes.wasmhybrid]\n      runtime_type = \"io.containerd.wasmhybrid.v1\"",
            "pod_annotations = [\"wasmhybrid.io/*\"]",
            "container_annotations = [\"wasmhybrid.io/*\"]",
            "conf_dir = \"/tmp/x/net.d\"",
        ] {
            assert!(toml.contains(needle), "{needle:?} missing from:\n{toml}");
        }
    }
}

//! The node the installer works on: which containerd it runs (plain
//! containerd, or the one embedded in k3s, rke2, MicroK8s or k0s), where its
//! config, socket and service are, and the host root the installer sees it
//! under (`/` on the host, `/host` in the DaemonSet).

use std::path::{Path, PathBuf};

/// How containerd is run on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// containerd with `/etc/containerd/config.toml`, systemd unit `containerd`.
    Containerd,
    /// k3s: generated config; the installer edits `config.toml.tmpl`.
    K3s,
    /// rke2: generated config; the installer edits `config.toml.tmpl`.
    Rke2,
    /// MicroK8s: `args/containerd-template.toml` of the snap.
    Microk8s,
    /// k0s: a drop-in under `/etc/k0s/containerd.d/`.
    K0s,
}

/// Where things are on the node, as the installer sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub flavor: Flavor,
    /// The host's `/` as seen by the installer.
    pub root: PathBuf,
    /// The file the installer edits (or creates).
    pub config: PathBuf,
    /// For a file the installer creates (template, drop-in): its first
    /// content, before the registration is added.
    pub seed: Option<String>,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The systemd unit to restart.
    pub service: &'static str,
}

/// Why the node cannot be set up. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "no containerd found under {root}: looked for {looked}; install containerd \
         (e.g. `apt-get install containerd`), or pass --flavor/--config"
    )]
    NoContainerd { root: String, looked: String },
    #[error("{flavor:?}: {path} does not exist, is {flavor:?} installed on this node?")]
    MissingFile { flavor: Flavor, path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

const K3S_DIR: &str = "var/lib/rancher/k3s/agent/etc/containerd";
const RKE2_DIR: &str = "var/lib/rancher/rke2/agent/etc/containerd";
const MICROK8S_TEMPLATE: &str = "var/snap/microk8s/current/args/containerd-template.toml";
const K0S_DIR: &str = "etc/k0s";
const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";
const CONTAINERD_BINARIES: [&str; 3] = [
    "usr/bin/containerd",
    "usr/local/bin/containerd",
    "usr/sbin/containerd",
];

/// The file whose presence identifies each flavor, in detection order
/// (the Kubernetes distributions first: they may also have a containerd
/// package installed but unused).
fn marker(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::K3s => "var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        Flavor::Rke2 => "var/lib/rancher/rke2/agent/etc/containerd/config.toml",
        Flavor::Microk8s => MICROK8S_TEMPLATE,
        Flavor::K0s => "etc/k0s",
        Flavor::Containerd => CONTAINERD_CONFIG,
    }
}

const DETECTION_ORDER: [Flavor; 5] = [
    Flavor::K3s,
    Flavor::Rke2,
    Flavor::Microk8s,
    Flavor::K0s,
    Flavor::Containerd,
];

impl Node {
    /// Finds the node's containerd under `root`, or uses `flavor`.
    pub fn detect(root: &Path, flavor: Option<Flavor>) -> Result<Self, NodeError> {
        let flavor = match flavor {
            Some(f) => f,
            None => DETECTION_ORDER
                .into_iter()
                .find(|f| root.join(marker(*f)).exists())
                .or_else(|| {
                    // containerd without a config file: `install` then asks
                    // for one (see files::FileError::Missing).
                    CONTAINERD_BINARIES
                        .iter()
                        .any(|b| root.join(b).exists())
                        .then_some(Flavor::Containerd)
                })
                .ok_or_else(|| NodeError::NoContainerd {
                    root: root.display().to_string(),
                    looked: DETECTION_ORDER
                        .iter()
                        .map(|f| marker(*f))
                        .chain(CONTAINERD_BINARIES)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };
        let exists = |rel: &str| root.join(rel).exists();
        let node = match flavor {
            Flavor::Containerd => Node {
                flavor,
                root: root.to_path_buf(),
                config: root.join(CONTAINERD_CONFIG),
                seed: None,
                socket: root.join("run/containerd/containerd.sock"),
                service: "containerd",
            },
            Flavor::K3s | Flavor::Rke2 => {
                let (dir, server, agent, server_dir) = if flavor == Flavor::K3s {
                    (K3S_DIR, "k3s", "k3s-agent", "var/lib/rancher/k3s/server")
                } else {
                    (
                        RKE2_DIR,
                        "rke2-server",
                        "rke2-agent",
                        "var/lib/rancher/rke2/server",
                    )
                };
                // k3s and rke2 rewrite config.toml at every start from
                // config.toml.tmpl when it exists: edit (or create) that.
                let generated = root.join(dir).join("config.toml");
                let template = root.join(dir).join("config.toml.tmpl");
                let seed = if template.exists() {
                    None
                } else {
                    Some(std::fs::read_to_string(&generated).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            NodeError::MissingFile {
                                flavor,
                                path: generated.display().to_string(),
                            }
                        } else {
                            NodeError::Read {
                                path: generated.display().to_string(),
                                source: e,
                            }
                        }
                    })?)
                };
                Node {
                    flavor,
                    root: root.to_path_buf(),
                    config: template,
                    seed,
                    socket: root.join("run/k3s/containerd/containerd.sock"),
                    service: if exists(server_dir) { server } else { agent },
                }
            }
            Flavor::Microk8s => Node {
                flavor,
                root: root.to_path_buf(),
                config: root.join(MICROK8S_TEMPLATE),
                seed: None,
                socket: root.join("var/snap/microk8s/common/run/containerd.sock"),
                service: "snap.microk8s.daemon-containerd",
            },
            Flavor::K0s => Node {
                flavor,
                root: root.to_path_buf(),
                // k0s merges CRI runtime tables from its drop-in directory.
                config: root.join(K0S_DIR).join("containerd.d/wasmhybrid.toml"),
                seed: Some("version = 2\n".to_string()),
                socket: root.join("run/k0s/containerd.sock"),
                service: if exists("etc/systemd/system/k0scontroller.service") {
                    "k0scontroller"
                } else {
                    "k0sworker"
                },
            },
        };
        Ok(node)
    }

    /// Whether the installer runs in the host's namespaces (root `/`) or
    /// in a container with the host's root mounted elsewhere.
    pub fn on_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The command that restarts containerd: `systemctl restart UNIT`, run
    /// in the host's namespaces (through `nsenter` into PID 1's from a
    /// DaemonSet pod with `hostPID: true`).
    pub fn restart_command(&self) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if !self.on_host() {
            argv.extend(
                [
                    "nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
                ]
                .map(String::from),
            );
        }
        argv.extend(["systemctl", "restart", self.service].map(String::from));
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        dir
    }

    #[test]
    fn plain_containerd_is_found_by_its_config_or_binary() {
        let root = root_with(&[(CONTAINERD_CONFIG, "version = 2\n")]);
        let node = Node::detect(root.path(), None).expect("detect");
        assert_eq!(node.flavor, Flavor::Containerd);
        assert_eq!(node.config, root.path().join("etc/containerd/config.toml"));
        assert_eq!(
            node.socket,
            root.path().join("run/containerd/containerd.sock")
        );
        assert_eq!(
            node.restart_command(),
            [
                "nsenter",
                "--target",
                "1",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--",
                "systemctl",
                "restart",
                "containerd"
            ]
        );
        let root = root_with(&[("usr/bin/containerd", "")]);
        assert_eq!(
            Node::detect(root.path(), None).expect("detect").flavor,
            Flavor::Containerd
        );
    }

    #[test]
    fn k3s_and_rke2_edit_a_template_seeded_from_the_generated_config() {
        let generated = "version = 2\n# generated by k3s\n";
        let root = root_with(&[
            (&format!("{K3S_DIR}/config.toml"), generated),
            ("var/lib/rancher/k3s/server/token", "x"),
            (CONTAINERD_CONFIG, "version = 2\n"),
        ]);
        let node = Node::detect(root.path(), None).expect("detect");
        assert_eq!(node.flavor, Flavor::K3s);
        assert_eq!(
            node.config,
            root.path().join(K3S_DIR).join("config.toml.tmpl")
        );
        assert_eq!(node.seed.as_deref(), Some(generated));
        assert_eq!(node.service, "k3s");
        assert_eq!(
            node.socket,
            root.path().join("run/k3s/containerd/containerd.sock")
        );

        let root = root_with(&[
            (&format!("{RKE2_DIR}/config.toml"), generated),
            (&format!("{RKE2_DIR}/config.toml.tmpl"), "version = 2\n"),
        ]);
        let node = Node::detect(root.path(), None).expect("detect");
        assert_eq!(node.flavor, Flavor::Rke2);
        assert_eq!(node.seed, None, "an existing template is edited");
        assert_eq!(node.service, "rke2-agent");
    }

    #[test]
    fn microk8s_and_k0s() {
        let root = root_with(&[(MICROK8S_TEMPLATE, "version = 2\n")]);
        let node = Node::detect(root.path(), None).expect("detect");
        assert_eq!(node.flavor, Flavor::Microk8s);
        assert_eq!(node.service, "snap.microk8s.daemon-containerd");

        let root = root_with(&[("etc/k0s/k0s.yaml", "")]);
        let node = Node::detect(root.path(), None).expect("detect");
        assert_eq!(node.flavor, Flavor::K0s);
        assert_eq!(
            node.config,
            root.path().join("etc/k0s/containerd.d/wasmhybrid.toml")
        );
        assert_eq!(node.service, "k0sworker");
        assert!(node.seed.is_some());
    }

    #[test]
    fn no_containerd_is_a_clear_error() {
        let root = root_with(&[]);
        let err = Node::detect(root.path(), None).unwrap_err();
        assert!(err.to_string().contains("no containerd found"), "{err}");
        let err = Node::detect(root.path(), Some(Flavor::K3s)).unwrap_err();
        assert!(err.to_string().contains("is K3s installed"), "{err}");
    }
}

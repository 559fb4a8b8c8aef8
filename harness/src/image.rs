//! Builds OCI image layout tarballs from the repo's fixtures, ready for
//! `ctr images import --all-platforms`.
//!
//! Two shapes of Wasm image are supported:
//! - [`ImageSpec::rootfs`]: platform `wasi/wasm`, one tar layer holding the
//!   `.wasm` file; the entrypoint names it;
//! - [`ImageSpec::artifact`]: an OCI Wasm artifact whose single layer is the
//!   raw Wasm binary with a Wasm media type.
//!
//! and native images ([`ImageSpec::native`]) of the host platform.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Media type of an uncompressed tar layer.
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The Wasm layer media types of OCI Wasm artifacts.
pub const WASM_COMPONENT_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
pub const WASM_CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
pub const APPLICATION_WASM: &str = "application/wasm";

/// Mode marking a [`Layer::Files`] entry as a symlink whose bytes are the
/// link target.
pub const SYMLINK: u32 = 0o120777;

/// One layer of an image.
#[derive(Debug, Clone)]
pub enum Layer {
    /// Files `(path in image, bytes, mode)` packed as a tar layer
    /// (`mode == SYMLINK`: a symlink to `bytes`).
    Files(Vec<(String, Vec<u8>, u32)>),
    /// A raw blob with the given media type (e.g. a Wasm binary).
    Blob { media_type: String, bytes: Vec<u8> },
}

/// What to put into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, e.g. `localhost/wasmhybrid/hello:latest`.
    pub name: String,
    pub os: String,
    pub architecture: String,
    pub layers: Vec<Layer>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub manifest_annotations: Vec<(String, String)>,
}

impl ImageSpec {
    /// A `wasi/wasm` image with `wasm` at `/<file_name>` as its entrypoint.
    pub fn rootfs(name: &str, file_name: &str, wasm: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            os: "wasi".into(),
            architecture: "wasm".into(),
            layers: vec![Layer::Files(vec![(file_name.to_string(), wasm, 0o755)])],
            entrypoint: vec![format!("/{file_name}")],
            cmd: vec![],
            env: vec![],
            labels: vec![],
            manifest_annotations: vec![],
        }
    }

    /// An OCI Wasm artifact: one raw Wasm layer of `media_type`.
    pub fn artifact(name: &str, media_type: &str, wasm: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            os: "wasi".into(),
            architecture: "wasm".into(),
            layers: vec![Layer::Blob {
                media_type: media_type.to_string(),
                bytes: wasm,
            }],
            entrypoint: vec!["/main.wasm".into()],
            cmd: vec![],
            env: vec![],
            labels: vec![],
            manifest_annotations: vec![],
        }
    }

    /// A native image of the host's platform with the given files.
    pub fn native(name: &str, files: Vec<(String, Vec<u8>, u32)>, entrypoint: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            os: "linux".into(),
            architecture: host_arch().into(),
            layers: vec![Layer::Files(files)],
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: vec![],
            env: vec![],
            labels: vec![],
            manifest_annotations: vec![],
        }
    }

    /// A native image holding the host's static busybox at `/bin/busybox`
    /// with its applets linked in `/bin` (Debian: busybox-static).
    pub fn busybox(name: &str) -> anyhow::Result<Self> {
        let bin = std::fs::read(BUSYBOX).with_context(|| {
            format!("read {BUSYBOX}: install it with `apt-get install busybox-static`")
        })?;
        let mut files = vec![("bin/busybox".to_string(), bin, 0o755)];
        for applet in BUSYBOX_APPLETS {
            files.push((format!("bin/{applet}"), b"busybox".to_vec(), SYMLINK));
        }
        files.push(("tmp/.keep".to_string(), vec![], 0o644));
        let mut spec = Self::native(name, files, &["/bin/sh"]);
        spec.env = vec!["PATH=/bin".to_string()];
        Ok(spec)
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    pub fn with_manifest_annotation(mut self, key: &str, value: &str) -> Self {
        self.manifest_annotations
            .push((key.to_string(), value.to_string()));
        self
    }

    pub fn with_cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn with_env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Where Debian's busybox-static installs its static binary.
pub const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "dd", "head", "ls", "env",
];

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A content-addressed blob set being assembled into an OCI layout.
struct Blobs(Vec<(String, Vec<u8>)>);

impl Blobs {
    fn add(&mut self, bytes: Vec<u8>) -> (String, usize) {
        let digest = sha256(&bytes);
        let size = bytes.len();
        if !self.0.iter().any(|(d, _)| d == &digest) {
            self.0.push((digest.clone(), bytes));
        }
        (digest, size)
    }
}

fn tar_layer(files: &[(String, Vec<u8>, u32)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let mut p = Path::new(path.trim_start_matches('/')).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for dir in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        builder.append_data(&mut h, &dir, std::io::empty())?;
    }
    for (path, bytes, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        let path = path.trim_start_matches('/');
        if *mode == SYMLINK {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            let target = String::from_utf8_lossy(bytes).into_owned();
            builder.append_link(&mut h, path, target)?;
        } else {
            h.set_mode(*mode);
            h.set_size(bytes.len() as u64);
            builder.append_data(&mut h, path, bytes.as_slice())?;
        }
    }
    Ok(builder.into_inner()?)
}

/// Writes `spec` as an OCI layout tarball at `out`.
pub fn write_oci_archive(spec: &ImageSpec, out: &Path) -> Result<()> {
    let mut blobs = Blobs(Vec::new());
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in &spec.layers {
        match layer {
            Layer::Files(files) => {
                let tar = tar_layer(files)?;
                let (digest, size) = blobs.add(tar);
                diff_ids.push(json!(digest));
                layer_descs.push(json!({"mediaType": TAR_LAYER, "digest": digest, "size": size}));
            }
            Layer::Blob { media_type, bytes } => {
                let (digest, size) = blobs.add(bytes.clone());
                // Artifacts list their layers as diff IDs too (as runwasi's
                // oci-tar-builder does); the layer is not a tar.
                diff_ids.push(json!(digest));
                layer_descs.push(json!({"mediaType": media_type, "digest": digest, "size": size}));
            }
        }
    }
    let labels: serde_json::Map<String, Value> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut config = json!({
        "architecture": spec.architecture,
        "os": spec.os,
        "config": {
            "Env": spec.env,
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if spec.cmd.is_empty() {
        config["config"]["Cmd"] = Value::Null;
    }
    let (config_digest, config_size) = blobs.add(serde_json::to_vec(&config)?);
    let annotations: serde_json::Map<String, Value> = spec
        .manifest_annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layer_descs,
        "annotations": annotations,
    });
    let (manifest_digest, manifest_size) = blobs.add(serde_json::to_vec(&manifest)?);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": spec.architecture, "os": spec.os},
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": spec.name.rsplit(':').next().unwrap_or("latest"),
            },
        }],
    });

    let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, bytes: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, path, bytes)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &serde_json::to_vec(&index)?)?;
    for (digest, bytes) in &blobs.0 {
        let hex = digest.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), bytes)?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

//! Reads a container's image metadata from containerd at shim `start`:
//! platform, config labels and manifest annotations, for [`crate::dispatch`].
//!
//! One short-lived gRPC connection on containerd's socket; every call is in
//! this module. What is read from the content store (index, manifest,
//! config) is addressed by digest and so never changes: it is cached per
//! image target digest in [`CACHE_DIR`] (root-only tmpfs), so that a start
//! costs two calls (`Containers.Get`, `Images.Get`) once an image was seen,
//! and none when the group's daemon answers from containerd's event stream
//! (`crate::watch`).

use std::collections::HashMap;
use std::path::Path;

use containerd_client::Client;
use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, ListImagesRequest, ReadContentRequest,
};
use containerd_client::tonic::Request;
use serde::{Deserialize, Serialize};

use crate::dispatch::{ImageMeta, LayerInfo, WASM_ARCH, WASM_LAYER_MEDIA_TYPES};

/// Why image metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot connect to containerd at {address}: {source}")]
    Connect {
        address: String,
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd {call} failed: {status}")]
    Call {
        call: &'static str,
        status: Box<containerd_client::tonic::Status>,
    },
    #[error("malformed {what} {digest}: {source}")]
    Parse {
        what: &'static str,
        digest: String,
        source: serde_json::Error,
    },
    #[error("image {image} has no manifest for {arch} or {WASM_ARCH}")]
    NoManifest { image: String, arch: &'static str },
    #[error("cannot start a runtime for the containerd client: {0}")]
    Runtime(std::io::Error),
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<LayerDescriptor>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct LayerDescriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize)]
struct ConfigInner {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

/// Where [`lookup`] caches image metadata, keyed by target digest (beside,
/// not inside, `/run/containerd/wasmhybrid`, whose subdirectories are
/// containerd namespaces).
pub const CACHE_DIR: &str = "/run/containerd/wasmhybrid-image-meta";

/// The cached, digest-addressed part of [`ImageMeta`].
#[derive(Serialize, Deserialize)]
struct Cached {
    os: String,
    architecture: String,
    config_labels: HashMap<String, String>,
    manifest_annotations: HashMap<String, String>,
    /// Required: records written before layers were kept are re-read.
    wasm_layers: Vec<LayerInfo>,
}

fn cache_path(digest: &str) -> Option<std::path::PathBuf> {
    // Only well-formed digests name files: nothing from containerd can
    // point outside the cache directory.
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Path::new(CACHE_DIR).join(hex))
}

fn cache_get(digest: &str, name: &str) -> Option<ImageMeta> {
    let bytes = std::fs::read(cache_path(digest)?).ok()?;
    let c: Cached = serde_json::from_slice(&bytes).ok()?;
    Some(ImageMeta {
        name: name.to_string(),
        os: c.os,
        architecture: c.architecture,
        config_labels: c.config_labels,
        manifest_annotations: c.manifest_annotations,
        wasm_layers: c.wasm_layers,
    })
}

/// Best effort: a failed write only costs the next start a few reads.
fn cache_put(digest: &str, meta: &ImageMeta) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let Some(path) = cache_path(digest) else {
        return;
    };
    let c = Cached {
        os: meta.os.clone(),
        architecture: meta.architecture.clone(),
        config_labels: meta.config_labels.clone(),
        manifest_annotations: meta.manifest_annotations.clone(),
        wasm_layers: meta.wasm_layers.clone(),
    };
    let Ok(json) = serde_json::to_vec(&c) else {
        return;
    };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(CACHE_DIR);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &json));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The OCI name of this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn request<T>(msg: T, namespace: &str) -> Result<Request<T>, ImageError> {
    let mut req = Request::new(msg);
    let ns = namespace.parse().map_err(|_| ImageError::Call {
        call: "namespace",
        status: Box::new(containerd_client::tonic::Status::invalid_argument(format!(
            "namespace {namespace:?} is not valid metadata"
        ))),
    })?;
    req.metadata_mut().insert("containerd-namespace", ns);
    Ok(req)
}

/// Looks up container `id`'s image; `Ok(None)` if it has none.
pub fn lookup(address: &str, namespace: &str, id: &str) -> Result<Option<ImageMeta>, ImageError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ImageError::Runtime)?;
    rt.block_on(lookup_async(address, namespace, id))
}

async fn connect(address: &str) -> Result<Client, ImageError> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let channel = containerd_client::connect(Path::new(path))
        .await
        .map_err(|source| ImageError::Connect {
            address: address.to_string(),
            source,
        })?;
    Ok(Client::from(channel))
}

/// Reads a blob (e.g. an OCI Wasm layer) from containerd's content store.
pub async fn read_blob(
    address: &str,
    namespace: &str,
    digest: &str,
) -> Result<Vec<u8>, ImageError> {
    let client = connect(address).await?;
    read_content(&client, namespace, digest).await
}

async fn read_content(
    client: &Client,
    namespace: &str,
    digest: &str,
) -> Result<Vec<u8>, ImageError> {
    let call = |status| ImageError::Call {
        call: "Content.Read",
        status: Box::new(status),
    };
    let req = request(
        ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        },
        namespace,
    )?;
    let mut stream = client.content().read(req).await.map_err(call)?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(call)? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

/// [`lookup`], from async code.
pub async fn lookup_async(
    address: &str,
    namespace: &str,
    id: &str,
) -> Result<Option<ImageMeta>, ImageError> {
    Resolver::connect(address)
        .await?
        .lookup(namespace, id)
        .await
}

/// What a lookup's caller already knows of containerd's records.
pub trait Known {
    /// Container `id`'s image name ("" for none), if known.
    fn container_image(&self, id: &str) -> Option<String>;
    /// Image `name`'s target, if known.
    fn image_target(&self, name: &str) -> Option<containerd_client::types::Descriptor>;
    /// A token for [`Known::remember_image`], taken before `Images.Get`.
    fn epoch(&self) -> u64;
    /// An `Images.Get` answer, to keep if still current.
    fn remember_image(&self, name: &str, target: &containerd_client::types::Descriptor, epoch: u64);
}

/// Knows nothing: every lookup asks containerd.
struct Unknown;

impl Known for Unknown {
    fn container_image(&self, _: &str) -> Option<String> {
        None
    }
    fn image_target(&self, _: &str) -> Option<containerd_client::types::Descriptor> {
        None
    }
    fn epoch(&self) -> u64 {
        0
    }
    fn remember_image(&self, _: &str, _: &containerd_client::types::Descriptor, _: u64) {}
}

/// A containerd connection kept for many lookups (the shim daemon's: a
/// lookup on it costs containerd two calls, not a new gRPC connection).
pub struct Resolver {
    client: Client,
}

impl Resolver {
    pub async fn connect(address: &str) -> Result<Self, ImageError> {
        Ok(Self {
            client: connect(address).await?,
        })
    }

    /// Looks up container `id`'s image; `Ok(None)` if it has none.
    pub async fn lookup(&self, namespace: &str, id: &str) -> Result<Option<ImageMeta>, ImageError> {
        Ok(self.lookup_knowing(namespace, id, &Unknown).await?.0)
    }

    /// [`Resolver::lookup`], asking containerd only what `known` cannot
    /// answer (the daemon's event stream, `crate::watch`); also says
    /// whether it had to ask containerd at all.
    pub async fn lookup_knowing(
        &self,
        namespace: &str,
        id: &str,
        known: &(dyn Known + Sync),
    ) -> Result<(Option<ImageMeta>, bool), ImageError> {
        let client = &self.client;
        let call = |call: &'static str| {
            move |status| ImageError::Call {
                call,
                status: Box::new(status),
            }
        };

        // An image name is answered from `known` only for a container it
        // knows: see `crate::watch` for why that answer is fresh.
        let (image_name, knows_container) = match known.container_image(id) {
            Some(name) => (name, true),
            None => {
                let container = client
                    .containers()
                    .get(request(
                        GetContainerRequest { id: id.to_string() },
                        namespace,
                    )?)
                    .await
                    .map_err(call("Containers.Get"))?
                    .into_inner()
                    .container;
                (container.map(|c| c.image).unwrap_or_default(), false)
            }
        };
        if image_name.is_empty() {
            return Ok((None, !knows_container));
        }
        let mut asked = !knows_container;
        let target = match knows_container
            .then(|| known.image_target(&image_name))
            .flatten()
        {
            Some(target) => target,
            None => {
                asked = true;
                let epoch = known.epoch();
                let image = client
                    .images()
                    .get(request(
                        GetImageRequest {
                            name: image_name.clone(),
                        },
                        namespace,
                    )?)
                    .await
                    .map_err(call("Images.Get"))?
                    .into_inner()
                    .image;
                let Some(target) = image.and_then(|i| i.target) else {
                    return Ok((None, true));
                };
                known.remember_image(&image_name, &target, epoch);
                target
            }
        };
        if let Some(meta) = cache_get(&target.digest, &image_name) {
            return Ok((Some(meta), asked));
        }

        let (manifest, config) = resolve(client, namespace, &image_name, &target).await?;
        let meta = image_meta(image_name, &manifest, &config);
        cache_put(&target.digest, &meta);
        Ok((Some(meta), true))
    }
}

fn image_meta(name: String, manifest: &Manifest, config: &Config) -> ImageMeta {
    ImageMeta {
        name,
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        config_labels: config
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default(),
        manifest_annotations: manifest.annotations.clone(),
        wasm_layers: manifest
            .layers
            .iter()
            .filter(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
            .map(|l| LayerInfo {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
            })
            .collect(),
    }
}

/// The manifest (for this node: `wasm` first, then the host's arch) and
/// config of an image whose target descriptor is `target`.
async fn resolve(
    client: &Client,
    namespace: &str,
    image_name: &str,
    target: &containerd_client::types::Descriptor,
) -> Result<(Manifest, Config), ImageError> {
    let read = |digest: String| {
        let client = &client;
        async move { read_content(client, namespace, &digest).await }
    };
    let parse = |what: &'static str, digest: &str| {
        let digest = digest.to_string();
        move |source| ImageError::Parse {
            what,
            digest,
            source,
        }
    };

    let mut manifest_digest = target.digest.clone();
    let mut bytes = read(manifest_digest.clone()).await?;
    if target.media_type.contains("index") || target.media_type.contains("manifest.list") {
        let index: Index =
            serde_json::from_slice(&bytes).map_err(parse("index", &target.digest))?;
        let arch = host_arch();
        let chosen = index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.architecture == WASM_ARCH)
            })
            .or_else(|| {
                index
                    .manifests
                    .iter()
                    .find(|d| d.platform.as_ref().is_some_and(|p| p.architecture == arch))
            })
            .or_else(|| index.manifests.first())
            .ok_or(ImageError::NoManifest {
                image: image_name.to_string(),
                arch,
            })?;
        manifest_digest = chosen.digest.clone();
        bytes = read(manifest_digest.clone()).await?;
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(parse("manifest", &manifest_digest))?;
    let config_bytes = read(manifest.config.digest.clone()).await?;
    let config: Config = serde_json::from_slice(&config_bytes)
        .map_err(parse("image config", &manifest.config.digest))?;
    Ok((manifest, config))
}

/// What `wasmhybrid cache warm` needs of an image.
#[derive(Debug, Clone)]
pub struct ImageDetail {
    pub meta: ImageMeta,
    /// Filesystem layers, in order: `(media type, digest)`.
    pub fs_layers: Vec<(String, String)>,
    /// The image's default process args (Entrypoint then Cmd).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

/// Describes images in `namespace`: those named, or all of them.
pub async fn describe_images(
    address: &str,
    namespace: &str,
    names: &[String],
) -> Result<Vec<(String, Result<ImageDetail, ImageError>)>, ImageError> {
    let client = connect(address).await?;
    let call = |call: &'static str| {
        move |status| ImageError::Call {
            call,
            status: Box::new(status),
        }
    };
    let images = if names.is_empty() {
        let mut all = client
            .images()
            .list(request(ListImagesRequest { filters: vec![] }, namespace)?)
            .await
            .map_err(call("Images.List"))?
            .into_inner()
            .images;
        // One entry per image: the CRI plugin adds a bare `sha256:<id>`
        // name beside every repository name; keep a repository name.
        all.sort_by_key(|i| i.name.starts_with("sha256:"));
        let mut seen = std::collections::HashSet::new();
        all.retain(|i| {
            let digest = i.target.as_ref().map(|t| t.digest.clone());
            digest.is_none() || seen.insert(digest)
        });
        all
    } else {
        let mut out = Vec::new();
        for name in names {
            let image = client
                .images()
                .get(request(GetImageRequest { name: name.clone() }, namespace)?)
                .await
                .map_err(call("Images.Get"))?
                .into_inner()
                .image;
            out.extend(image);
        }
        out
    };
    let mut out = Vec::new();
    for image in images {
        let name = image.name.clone();
        let detail = async {
            let target = image.target.ok_or(ImageError::NoManifest {
                image: name.clone(),
                arch: host_arch(),
            })?;
            let (manifest, config) = resolve(&client, namespace, &name, &target).await?;
            let inner = config.config.as_ref();
            let mut args = inner.and_then(|c| c.entrypoint.clone()).unwrap_or_default();
            args.extend(inner.and_then(|c| c.cmd.clone()).unwrap_or_default());
            Ok(ImageDetail {
                meta: image_meta(name.clone(), &manifest, &config),
                fs_layers: manifest
                    .layers
                    .iter()
                    .filter(|l| l.media_type.contains("tar"))
                    .map(|l| (l.media_type.clone(), l.digest.clone()))
                    .collect(),
                args,
                env: inner.and_then(|c| c.env.clone()).unwrap_or_default(),
                working_dir: inner
                    .and_then(|c| c.working_dir.clone())
                    .unwrap_or_default(),
            })
        }
        .await;
        out.push((name, detail));
    }
    Ok(out)
}

/// Names of all images in `namespace`.
pub async fn image_names(address: &str, namespace: &str) -> Result<Vec<String>, ImageError> {
    let client = connect(address).await?;
    Ok(client
        .images()
        .list(request(ListImagesRequest { filters: vec![] }, namespace)?)
        .await
        .map_err(|status| ImageError::Call {
            call: "Images.List",
            status: Box::new(status),
        })?
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.name)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_well_formed_digests_name_cache_files() {
        let hex = "a".repeat(64);
        assert!(super::cache_path(&format!("sha256:{hex}")).is_some());
        assert!(super::cache_path("sha256:../../etc/passwd").is_none());
        assert!(super::cache_path(&format!("sha512:{hex}")).is_none());
        assert!(super::cache_path("sha256:abc").is_none());
    }
}

//! Reads a container's image metadata from containerd at shim `start`:
//! platform, config labels and manifest annotations, for [`crate::dispatch`].
//!
//! One short-lived gRPC connection on containerd's socket; every call is in
//! this module. What is read from the content store (index, manifest,
//! config) is addressed by digest and so never changes: it is cached per
//! image target digest in [`CACHE_DIR`] (root-only tmpfs), so that a start
//! costs two calls (`Containers.Get`, `Images.Get`) once an image was seen.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::Client;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
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
    let client = connect(address).await?;
    let call = |call: &'static str| {
        move |status| ImageError::Call {
            call,
            status: Box::new(status),
        }
    };

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
    let Some(image_name) = container.map(|c| c.image).filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
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
        return Ok(None);
    };
    if let Some(meta) = cache_get(&target.digest, &image_name) {
        return Ok(Some(meta));
    }

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
                image: image_name.clone(),
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
    let meta = ImageMeta {
        name: image_name,
        os: config.os,
        architecture: config.architecture,
        config_labels: config.config.and_then(|c| c.labels).unwrap_or_default(),
        manifest_annotations: manifest.annotations,
        wasm_layers: manifest
            .layers
            .into_iter()
            .filter(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
            .map(|l| LayerInfo {
                media_type: l.media_type,
                digest: l.digest,
            })
            .collect(),
    };
    cache_put(&target.digest, &meta);
    Ok(Some(meta))
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

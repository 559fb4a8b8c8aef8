//! Reads a container's image metadata from containerd at shim `start`:
//! platform, config labels and manifest annotations, for [`crate::dispatch`].
//!
//! One short-lived gRPC connection on containerd's socket; every call is in
//! this module.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::Client;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::Request;
use serde::Deserialize;

use crate::dispatch::{ImageMeta, WASM_ARCH};

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
    annotations: HashMap<String, String>,
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

async fn lookup_async(
    address: &str,
    namespace: &str,
    id: &str,
) -> Result<Option<ImageMeta>, ImageError> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let channel = containerd_client::connect(Path::new(path))
        .await
        .map_err(|source| ImageError::Connect {
            address: address.to_string(),
            source,
        })?;
    let client = Client::from(channel);
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

    let read = |digest: String| {
        let client = &client;
        async move {
            let req = request(
                ReadContentRequest {
                    digest,
                    offset: 0,
                    size: 0,
                },
                namespace,
            )?;
            let mut stream = client
                .content()
                .read(req)
                .await
                .map_err(call("Content.Read"))?
                .into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(call("Content.Read"))? {
                data.extend_from_slice(&chunk.data);
            }
            Ok::<_, ImageError>(data)
        }
    };
    let parse = |what: &'static str, digest: &str, bytes: &[u8]| ImageError::Parse {
        what,
        digest: digest.to_string(),
        source: match serde_json::from_slice::<serde_json::Value>(bytes) {
            Err(e) => e,
            Ok(_) => serde_json::Error::io(std::io::Error::other("unexpected shape")),
        },
    };

    let mut manifest_digest = target.digest.clone();
    let mut bytes = read(manifest_digest.clone()).await?;
    if target.media_type.contains("index") || target.media_type.contains("manifest.list") {
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|_| parse("index", &target.digest, &bytes))?;
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
        serde_json::from_slice(&bytes).map_err(|_| parse("manifest", &manifest_digest, &bytes))?;
    let config_bytes = read(manifest.config.digest.clone()).await?;
    let config: Config = serde_json::from_slice(&config_bytes)
        .map_err(|_| parse("image config", &manifest.config.digest, &config_bytes))?;
    Ok(Some(ImageMeta {
        name: image_name,
        os: config.os,
        architecture: config.architecture,
        config_labels: config.config.and_then(|c| c.labels).unwrap_or_default(),
        manifest_annotations: manifest.annotations,
    }))
}

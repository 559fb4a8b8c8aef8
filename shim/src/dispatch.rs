//! Pure decisions about what a container runs, made once and logged once.
//!
//! Two decisions, both plain functions of data:
//! - [`route`], at shim `start`: Wasmtime or runc, from the OCI spec's
//!   annotations and the image's metadata ([`ImageMeta`]), with the reason;
//! - [`choose_source`] / [`decide`], in the Wasm container: which Wasm
//!   binary to run (an OCI layer or a rootfs file) and in which form.
//!
//! Nothing here touches the file system, containerd or Wasmtime, so it is
//! unit-tested on plain fixtures.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// The heavy-I/O tag: this key with [`HEAVY_IO_VALUE`], as an image config
/// label, an image manifest annotation, or a container/pod annotation.
pub const WORKLOAD_KEY: &str = "wasmhybrid.io/workload";
/// The only value [`WORKLOAD_KEY`] takes.
pub const HEAVY_IO_VALUE: &str = "heavy-io";
/// CRI annotation naming a container's pod sandbox (the shim grouping key).
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// CRI annotation saying whether a container is the pod sandbox itself.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The value of [`CONTAINER_TYPE_ANNOTATION`] for the pod sandbox (pause).
const SANDBOX_CONTAINER_TYPE: &str = "sandbox";
/// The OCI architecture of Wasm images.
pub const WASM_ARCH: &str = "wasm";

/// What containerd knows about a container's image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageMeta {
    pub name: String,
    pub os: String,
    pub architecture: String,
    pub config_labels: HashMap<String, String>,
    pub manifest_annotations: HashMap<String, String>,
    /// The manifest's layers of a Wasm media type (OCI Wasm artifacts).
    pub wasm_layers: Vec<LayerInfo>,
}

impl ImageMeta {
    fn platform(&self) -> String {
        format!("{}/{}", self.os, self.architecture)
    }
}

/// Which runtime runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Wasmtime, in this shim.
    Wasm,
    /// runc, through containerd's own `containerd-shim-runc-v2`.
    Runc,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Wasm => "wasm",
            Runtime::Runc => "runc",
        })
    }
}

/// A routing decision and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub runtime: Runtime,
    pub reason: String,
}

/// Where the heavy-I/O tag was found.
fn heavy_io_tag(
    annotations: &HashMap<String, String>,
    image: Option<&ImageMeta>,
) -> Result<Option<&'static str>, DispatchError> {
    let sources: [(&'static str, Option<&HashMap<String, String>>); 3] = [
        ("container/pod annotation", Some(annotations)),
        (
            "image manifest annotation",
            image.map(|i| &i.manifest_annotations),
        ),
        ("image config label", image.map(|i| &i.config_labels)),
    ];
    for (source, map) in sources {
        match map.and_then(|m| m.get(WORKLOAD_KEY)) {
            None => {}
            Some(v) if v == HEAVY_IO_VALUE => return Ok(Some(source)),
            Some(v) => {
                return Err(DispatchError::BadWorkloadValue {
                    origin: source,
                    value: v.clone(),
                });
            }
        }
    }
    Ok(None)
}

/// Whether the container is a pod's sandbox (pause) container: it always
/// runs under runc, so its route needs no image lookup.
pub fn is_pod_sandbox(annotations: &HashMap<String, String>) -> bool {
    annotations
        .get(CONTAINER_TYPE_ANNOTATION)
        .map(String::as_str)
        == Some(SANDBOX_CONTAINER_TYPE)
}

/// Decides, at shim start, whether Wasmtime or runc runs a container.
///
/// `image` is `None` when the container has no image in containerd (then
/// only the annotations count, and the Wasm path gets it).
pub fn route(
    annotations: &HashMap<String, String>,
    image: Option<&ImageMeta>,
) -> Result<Route, DispatchError> {
    let runc = |reason: String| Route {
        runtime: Runtime::Runc,
        reason,
    };
    if is_pod_sandbox(annotations) {
        return Ok(runc("pod sandbox container".into()));
    }
    let is_wasm = image.map(|i| i.architecture == WASM_ARCH);
    if let Some(source) = heavy_io_tag(annotations, image)? {
        if is_wasm == Some(true) {
            let image = image.map(|i| i.name.clone()).unwrap_or_default();
            return Err(DispatchError::TaggedWasmImage {
                image,
                origin: source,
            });
        }
        return Ok(runc(format!(
            "tagged {WORKLOAD_KEY}={HEAVY_IO_VALUE} ({source})"
        )));
    }
    match image {
        Some(i) if i.architecture != WASM_ARCH => {
            Ok(runc(format!("native image {} ({})", i.name, i.platform())))
        }
        Some(i) => Ok(Route {
            runtime: Runtime::Wasm,
            reason: format!("Wasm image {} ({})", i.name, i.platform()),
        }),
        None => Ok(Route {
            runtime: Runtime::Wasm,
            reason: "no image metadata in containerd; trying the Wasm path".into(),
        }),
    }
}

/// OCI layer media types that carry a Wasm binary (OCI Wasm artifacts).
pub const WASM_LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/wasm",
];

/// Separator between the module path and the export to call, as in runwasi:
/// `/app.wasm#init` calls the core module export `init`.
pub const FUNC_SEPARATOR: char = '#';

/// The export a WASI command calls by default.
pub const DEFAULT_FUNC: &str = "_start";

/// The two binary forms of WebAssembly, told apart by their preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmForm {
    /// A core module (WASI preview 1).
    CoreModule,
    /// A component (WASI preview 2: `wasi:cli/run` or `wasi:http/proxy`).
    Component,
}

impl fmt::Display for WasmForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WasmForm::CoreModule => "core module",
            WasmForm::Component => "component",
        })
    }
}

/// Where the Wasm binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmSource {
    /// A file in the container's rootfs (a `wasi/wasm` image).
    Rootfs(PathBuf),
    /// The single Wasm layer of an OCI Wasm artifact.
    OciLayer { media_type: String, digest: String },
}

impl fmt::Display for WasmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WasmSource::Rootfs(p) => write!(f, "rootfs file {}", p.display()),
            WasmSource::OciLayer { media_type, digest } => {
                write!(f, "OCI layer {digest} ({media_type})")
            }
        }
    }
}

/// A Wasm layer of the image, as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    pub media_type: String,
    pub digest: String,
}

/// The entrypoint named by the process args: `path[#func]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub path: String,
    pub func: String,
}

/// Splits `args[0]` into the module path and the export to call.
pub fn parse_entrypoint(arg0: &str) -> Entrypoint {
    let (path, func) = arg0
        .split_once(FUNC_SEPARATOR)
        .unwrap_or((arg0, DEFAULT_FUNC));
    let func = if func.is_empty() { DEFAULT_FUNC } else { func };
    Entrypoint {
        path: path.to_string(),
        func: func.to_string(),
    }
}

/// Chooses the Wasm source: an OCI Wasm layer when the image has one,
/// otherwise the entrypoint file in the rootfs.
pub fn choose_source(args: &[String], layers: &[LayerInfo]) -> Result<WasmSource, DispatchError> {
    match layers {
        [layer] => Ok(WasmSource::OciLayer {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
        }),
        [] => {
            let arg0 = args.first().map(String::as_str).unwrap_or("");
            let entry = parse_entrypoint(arg0);
            if entry.path.is_empty() {
                return Err(DispatchError::NoEntrypoint);
            }
            Ok(WasmSource::Rootfs(PathBuf::from(entry.path)))
        }
        many => Err(DispatchError::MultipleLayers {
            count: many.len(),
            digests: many.iter().map(|l| l.digest.clone()).collect(),
        }),
    }
}

/// Tells a core module from a component by the 8-byte preamble.
pub fn sniff(header: &[u8]) -> Result<WasmForm, DispatchError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    const MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
    const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 0x01, 0];
    if header.len() < 8 || &header[..4] != MAGIC {
        return Err(DispatchError::NotWasm {
            found: describe_header(header),
        });
    }
    let version: [u8; 4] = [header[4], header[5], header[6], header[7]];
    match version {
        MODULE_VERSION => Ok(WasmForm::CoreModule),
        COMPONENT_VERSION => Ok(WasmForm::Component),
        other => Err(DispatchError::UnsupportedWasmVersion { version: other }),
    }
}

/// What a container will run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub source: WasmSource,
    pub form: WasmForm,
    pub func: String,
}

impl Decision {
    /// One line for the shim log.
    pub fn reason(&self) -> String {
        format!(
            "Wasm {} from {}, calling {}",
            self.form, self.source, self.func
        )
    }
}

/// Combines the source choice and the sniffed form into a decision.
pub fn decide(
    args: &[String],
    source: WasmSource,
    header: &[u8],
) -> Result<Decision, DispatchError> {
    let form = sniff(header)?;
    let func = args
        .first()
        .map(|a| parse_entrypoint(a).func)
        .unwrap_or_else(|| DEFAULT_FUNC.to_string());
    if form == WasmForm::Component && func != DEFAULT_FUNC {
        return Err(DispatchError::FuncOnComponent { func });
    }
    Ok(Decision { source, form, func })
}

/// Why a container has nothing the shim can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error(
        "image {image} is tagged {WORKLOAD_KEY}={HEAVY_IO_VALUE} ({origin}) but is a Wasm image: \
         runc has nothing to run; remove the tag or use a native image"
    )]
    TaggedWasmImage { image: String, origin: &'static str },
    #[error("{WORKLOAD_KEY}={value:?} ({origin}): the only accepted value is {HEAVY_IO_VALUE:?}")]
    BadWorkloadValue { origin: &'static str, value: String },
    #[error("no entrypoint: the process args are empty and the image has no Wasm layer")]
    NoEntrypoint,
    #[error(
        "the image has {count} Wasm layers ({}); wasmhybrid runs images with exactly one",
        digests.join(", ")
    )]
    MultipleLayers { count: usize, digests: Vec<String> },
    #[error("not a WebAssembly binary (starts with {found})")]
    NotWasm { found: String },
    #[error("unsupported WebAssembly binary version {version:02x?}")]
    UnsupportedWasmVersion { version: [u8; 4] },
    #[error(
        "entrypoint export #{func} was given for a component; components run wasi:cli/run or \
         wasi:http/proxy, `#export` selects a core module export only"
    )]
    FuncOnComponent { func: String },
}

fn describe_header(header: &[u8]) -> String {
    if header.is_empty() {
        return "nothing: the file is empty".to_string();
    }
    let shown = &header[..header.len().min(8)];
    if shown.starts_with(b"\x7fELF") {
        return "an ELF header: a native executable".to_string();
    }
    if shown.starts_with(b"#!") {
        return "#!: a script".to_string();
    }
    format!("bytes {shown:02x?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn entrypoint_splits_func() {
        assert_eq!(
            parse_entrypoint("/app/app.wasm#init"),
            Entrypoint {
                path: "/app/app.wasm".into(),
                func: "init".into()
            }
        );
        assert_eq!(parse_entrypoint("app.wasm").func, "_start");
        assert_eq!(parse_entrypoint("app.wasm#").func, "_start");
    }

    #[test]
    fn rootfs_image_uses_arg0() {
        let src = choose_source(&args(&["/wh-cmd.wasm", "hello"]), &[]).expect("source");
        assert_eq!(src, WasmSource::Rootfs("/wh-cmd.wasm".into()));
    }

    #[test]
    fn oci_artifact_uses_its_layer_whatever_the_args() {
        let layer = LayerInfo {
            media_type: WASM_LAYER_MEDIA_TYPES[1].into(),
            digest: "sha256:ab".into(),
        };
        let src =
            choose_source(&args(&["anything"]), std::slice::from_ref(&layer)).expect("source");
        assert!(matches!(src, WasmSource::OciLayer { ref digest, .. } if digest == "sha256:ab"));
    }

    #[test]
    fn nothing_runnable_is_an_error() {
        assert_eq!(choose_source(&[], &[]), Err(DispatchError::NoEntrypoint));
        assert_eq!(
            choose_source(&args(&["#main"]), &[]),
            Err(DispatchError::NoEntrypoint)
        );
        let l = LayerInfo {
            media_type: "application/wasm".into(),
            digest: "sha256:1".into(),
        };
        let err = choose_source(&[], &[l.clone(), l]).unwrap_err();
        assert!(matches!(
            err,
            DispatchError::MultipleLayers { count: 2, .. }
        ));
    }

    #[test]
    fn sniff_tells_module_from_component() {
        assert_eq!(sniff(MODULE), Ok(WasmForm::CoreModule));
        assert_eq!(sniff(COMPONENT), Ok(WasmForm::Component));
    }

    #[test]
    fn sniff_rejects_non_wasm_with_a_useful_message() {
        let err = sniff(b"\x7fELF\x02\x01\x01\0").unwrap_err();
        assert!(err.to_string().contains("native executable"), "{err}");
        let err = sniff(b"#!/bin/sh\n").unwrap_err();
        assert!(err.to_string().contains("script"), "{err}");
        let err = sniff(b"").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = sniff(b"hello world").unwrap_err();
        assert!(
            err.to_string().contains("not a WebAssembly binary"),
            "{err}"
        );
        assert!(matches!(
            sniff(b"\0asm\x02\0\0\0"),
            Err(DispatchError::UnsupportedWasmVersion { .. })
        ));
    }

    #[test]
    fn decision_carries_func_and_reason() {
        let a = args(&["/m.wasm#run", "x"]);
        let d = decide(&a, WasmSource::Rootfs("/m.wasm".into()), MODULE).expect("decision");
        assert_eq!(d.func, "run");
        assert_eq!(
            d.reason(),
            "Wasm core module from rootfs file /m.wasm, calling run"
        );
    }

    #[test]
    fn func_on_component_is_rejected() {
        let a = args(&["/c.wasm#run"]);
        let err = decide(&a, WasmSource::Rootfs("/c.wasm".into()), COMPONENT).unwrap_err();
        assert!(matches!(err, DispatchError::FuncOnComponent { .. }));
    }

    fn meta(arch: &str) -> ImageMeta {
        ImageMeta {
            name: "img".into(),
            os: if arch == WASM_ARCH {
                "wasi".into()
            } else {
                "linux".into()
            },
            architecture: arch.into(),
            ..Default::default()
        }
    }

    fn tagged() -> HashMap<String, String> {
        HashMap::from([(WORKLOAD_KEY.to_string(), HEAVY_IO_VALUE.to_string())])
    }

    #[test]
    fn native_images_go_to_runc_and_wasm_images_to_wasmtime() {
        let none = HashMap::new();
        let r = route(&none, Some(&meta("amd64"))).expect("route");
        assert_eq!(r.runtime, Runtime::Runc);
        assert_eq!(r.reason, "native image img (linux/amd64)");
        let r = route(&none, Some(&meta(WASM_ARCH))).expect("route");
        assert_eq!(r.runtime, Runtime::Wasm);
        assert_eq!(route(&none, None).expect("route").runtime, Runtime::Wasm);
    }

    #[test]
    fn the_pod_sandbox_goes_to_runc() {
        let a = HashMap::from([(CONTAINER_TYPE_ANNOTATION.to_string(), "sandbox".to_string())]);
        assert_eq!(route(&a, None).expect("route").runtime, Runtime::Runc);
    }

    #[test]
    fn heavy_io_tag_is_honoured_from_each_source() {
        let none = HashMap::new();
        let r = route(&tagged(), Some(&meta("amd64"))).expect("route");
        assert_eq!(r.runtime, Runtime::Runc);
        assert!(
            r.reason.contains("container/pod annotation"),
            "{}",
            r.reason
        );

        let mut m = meta("arm64");
        m.manifest_annotations = tagged();
        assert!(
            route(&none, Some(&m))
                .expect("route")
                .reason
                .contains("manifest annotation")
        );

        let mut m = meta("amd64");
        m.config_labels = tagged();
        assert!(
            route(&none, Some(&m))
                .expect("route")
                .reason
                .contains("config label")
        );
    }

    #[test]
    fn tagged_wasm_image_is_an_error_not_a_wasm_run() {
        let mut m = meta(WASM_ARCH);
        m.config_labels = tagged();
        let err = route(&HashMap::new(), Some(&m)).unwrap_err();
        assert!(matches!(err, DispatchError::TaggedWasmImage { .. }));
        assert!(err.to_string().contains("runc has nothing to run"), "{err}");
        assert!(route(&tagged(), Some(&meta(WASM_ARCH))).is_err());
    }

    #[test]
    fn a_misspelt_tag_value_is_reported() {
        let a = HashMap::from([(WORKLOAD_KEY.to_string(), "heavy_io".to_string())]);
        let err = route(&a, Some(&meta("amd64"))).unwrap_err();
        assert!(err.to_string().contains("\"heavy_io\""), "{err}");
    }

    #[test]
    fn decides_from_fixture_config_json() {
        // A config.json as containerd writes it for `ctr run` of a wasi/wasm image.
        let spec: oci_spec::runtime::Spec =
            serde_json::from_str(include_str!("../tests/data/config-rootfs.json")).expect("spec");
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        let src = choose_source(&args, &[]).expect("source");
        let d = decide(&args, src, MODULE).expect("decision");
        assert_eq!(d.source, WasmSource::Rootfs("/wh-cmd.wasm".into()));
        assert_eq!(d.form, WasmForm::CoreModule);
    }
}

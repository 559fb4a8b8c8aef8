//! Pure decisions about what a container runs, made once and logged once.
//!
//! Inputs are plain data taken from the OCI spec (the process args) and the
//! image (its Wasm layers, or the first bytes of the entrypoint file); the
//! output is a [`Decision`] with a human-readable reason, or a
//! [`DispatchError`] that says exactly why the container cannot run. Nothing
//! here touches the file system, containerd or Wasmtime, so it is unit-tested
//! on plain fixtures.

use std::fmt;
use std::path::PathBuf;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

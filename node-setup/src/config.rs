//! Pure edits of a containerd config: register the `wasmhybrid` CRI handler
//! (runtime type `io.containerd.wasmhybrid.v1`) and let the `wasmhybrid.io/*`
//! annotations through to the runtime, or remove that registration.
//!
//! The edit is format-preserving (`toml_edit`): comments, order and every
//! other table stay as they were, and editing an already-edited config
//! returns it unchanged.

use toml_edit::{Array, DocumentMut, Item, Table, value};

/// The CRI handler, RuntimeClass handler and runtime table name.
pub const HANDLER: &str = "wasmhybrid";
/// The containerd runtime type of the shim.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmhybrid.v1";
/// Annotations passed through to the runtime (the heavy-I/O tag).
pub const ANNOTATIONS: &str = "wasmhybrid.io/*";
/// containerd's default runtime, which must stay declared.
const RUNC: &str = "runc";
const RUNC_TYPE: &str = "io.containerd.runc.v2";

/// containerd config versions this installer handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `version = 2`: containerd 1.6 and 1.7, CRI plugin `io.containerd.grpc.v1.cri`.
    V2,
    /// `version = 3`: containerd 2.x, CRI runtime plugin `io.containerd.cri.v1.runtime`.
    V3,
}

impl Version {
    /// The table holding `containerd.runtimes` and `default_runtime_name`.
    fn cri_plugin(self) -> &'static str {
        match self {
            Version::V2 => "io.containerd.grpc.v1.cri",
            Version::V3 => "io.containerd.cri.v1.runtime",
        }
    }
}

/// Why a config cannot be edited. Nothing is changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the containerd config is not valid TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    #[error(
        "the containerd config has no `version`; it is a version 1 config, which this installer \
         does not edit: migrate it with `containerd config migrate` first"
    )]
    NoVersion,
    #[error(
        "unsupported containerd config version {0} (supported: 2 for containerd 1.6/1.7, 3 for 2.x)"
    )]
    UnsupportedVersion(String),
    #[error("`{path}` in the containerd config is not a table")]
    NotATable { path: String },
}

/// Reads the config's version.
pub fn version(doc: &DocumentMut) -> Result<Version, EditError> {
    match doc.get("version") {
        None => Err(EditError::NoVersion),
        Some(v) => match v.as_integer() {
            Some(2) => Ok(Version::V2),
            Some(3) => Ok(Version::V3),
            _ => Err(EditError::UnsupportedVersion(
                v.to_string().trim().to_string(),
            )),
        },
    }
}

/// Descends into `path`, creating implicit tables as needed.
fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> Result<&'a mut Table, EditError> {
    let mut t = root;
    for (i, key) in path.iter().enumerate() {
        let entry = t.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        t = entry.as_table_mut().ok_or_else(|| EditError::NotATable {
            path: path[..=i].join("."),
        })?;
    }
    Ok(t)
}

fn annotations_array() -> Array {
    let mut a = Array::new();
    a.push(ANNOTATIONS);
    a
}

/// Sets `key` to `new` only when it differs, so unchanged files stay
/// byte-identical.
fn set_if_changed(t: &mut Table, key: &str, new: Item) {
    let same = match (t.get(key), &new) {
        (Some(old), Item::Value(n)) => {
            old.as_value()
                .map(|o| o.to_string().trim() == n.to_string().trim())
                == Some(true)
        }
        _ => false,
    };
    if !same {
        t.insert(key, new);
    }
}

/// Registers the shim. Returns the new text (equal to `text` when the
/// config already has the registration).
pub fn install(text: &str) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse()?;
    let version = version(&doc)?;
    let plugin = version.cri_plugin();
    let containerd = table_at(doc.as_table_mut(), &["plugins", plugin, "containerd"])?;
    let default_runtime = containerd
        .get("default_runtime_name")
        .and_then(|v| v.as_str())
        .unwrap_or(RUNC)
        .to_string();
    let had_runtimes = containerd.contains_key("runtimes");
    let runtimes = table_at(containerd, &["runtimes"])?;
    // A `runtimes` table replaces containerd's built-in one, so a config that
    // had none must now declare the default runtime too, or the CRI plugin
    // fails to load ("no corresponding runtime configured").
    if !had_runtimes && default_runtime == RUNC && !runtimes.contains_key(RUNC) {
        let mut runc = Table::new();
        runc.insert("runtime_type", value(RUNC_TYPE));
        runtimes.insert(RUNC, Item::Table(runc));
    }
    let ours = table_at(runtimes, &[HANDLER])?;
    ours.set_implicit(false);
    set_if_changed(ours, "runtime_type", value(RUNTIME_TYPE));
    set_if_changed(ours, "pod_annotations", value(annotations_array()));
    set_if_changed(ours, "container_annotations", value(annotations_array()));
    Ok(doc.to_string())
}

/// Removes the shim's registration (used when no backup of the original
/// exists). Returns the new text.
pub fn remove(text: &str) -> Result<String, EditError> {
    let mut doc: DocumentMut = text.parse()?;
    let version = version(&doc)?;
    let runtimes = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut(version.cri_plugin()))
        .and_then(|p| p.get_mut("containerd"))
        .and_then(|c| c.get_mut("runtimes"))
        .and_then(|r| r.as_table_mut());
    if let Some(runtimes) = runtimes {
        runtimes.remove(HANDLER);
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_DEFAULT: &str = include_str!("../tests/fixtures/v2-containerd-1.6.20-default.toml");
    const V3: &str = include_str!("../tests/fixtures/v3-containerd-2.x.toml");

    fn runtime<'a>(doc: &'a DocumentMut, plugin: &str, name: &str) -> Option<&'a Item> {
        doc.get("plugins")?
            .get(plugin)?
            .get("containerd")?
            .get("runtimes")?
            .get(name)
    }

    #[test]
    fn v2_default_config_gains_the_handler_and_keeps_everything_else() {
        let out = install(V2_DEFAULT).expect("install");
        let doc: DocumentMut = out.parse().expect("valid TOML");
        let ours = runtime(&doc, "io.containerd.grpc.v1.cri", HANDLER).expect("wasmhybrid runtime");
        assert_eq!(ours["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(
            ours["pod_annotations"].to_string().trim(),
            r#"["wasmhybrid.io/*"]"#
        );
        assert_eq!(
            ours["container_annotations"].to_string().trim(),
            r#"["wasmhybrid.io/*"]"#
        );
        assert!(runtime(&doc, "io.containerd.grpc.v1.cri", "runc").is_some());
        // Only lines were added.
        for line in V2_DEFAULT.lines() {
            assert!(out.contains(line), "lost line {line:?}");
        }
    }

    #[test]
    fn v3_config_uses_the_cri_runtime_plugin() {
        let out = install(V3).expect("install");
        let doc: DocumentMut = out.parse().expect("valid TOML");
        let ours =
            runtime(&doc, "io.containerd.cri.v1.runtime", HANDLER).expect("wasmhybrid runtime");
        assert_eq!(ours["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert!(out.contains("# containerd 2.x"), "comments are preserved");
    }

    #[test]
    fn a_second_install_changes_nothing() {
        for original in [V2_DEFAULT, V3, "version = 2\n"] {
            let once = install(original).expect("install");
            assert_ne!(once, original);
            assert_eq!(install(&once).expect("install"), once);
        }
    }

    #[test]
    fn a_config_without_runtimes_keeps_runc_declared() {
        let out = install("version = 2\n").expect("install");
        let doc: DocumentMut = out.parse().expect("valid TOML");
        let runc = runtime(&doc, "io.containerd.grpc.v1.cri", "runc").expect("runc declared");
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    }

    #[test]
    fn stale_values_are_corrected_and_other_keys_kept() {
        let stale = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmhybrid]\n  runtime_type = \"io.containerd.old.v1\"\n  privileged_without_host_devices = true\n";
        let out = install(stale).expect("install");
        assert!(
            out.contains(r#"runtime_type = "io.containerd.wasmhybrid.v1""#),
            "{out}"
        );
        assert!(
            out.contains("privileged_without_host_devices = true"),
            "{out}"
        );
    }

    #[test]
    fn remove_undoes_install() {
        for original in [V2_DEFAULT, V3] {
            let removed = remove(&install(original).expect("install")).expect("remove");
            let doc: DocumentMut = removed.parse().expect("valid");
            let plugin = version(&doc).expect("version").cri_plugin();
            assert!(runtime(&doc, plugin, HANDLER).is_none());
        }
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        assert!(matches!(
            install("version = 2\n[plugins\n"),
            Err(EditError::Parse(_))
        ));
        let err = install("[plugins]\n").unwrap_err();
        assert!(
            err.to_string().contains("containerd config migrate"),
            "{err}"
        );
        let err = install("version = 4\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported containerd config version 4"),
            "{err}"
        );
        let err = install("version = 2\nplugins = 1\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("`plugins` in the containerd config is not a table"),
            "{err}"
        );
    }
}

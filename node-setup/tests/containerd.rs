//! The installer against a real containerd: install into containerd
//! 1.6.20's own default config, start containerd with it (CRI plugin on) and
//! check the `wasmhybrid` handler is registered; a second install changes
//! nothing; uninstall restores the original byte for byte.

use wasmhybrid_harness::daemon::{DaemonOptions, PrivateContainerd};
use wasmhybrid_node_setup::files::{self, Outcome};

#[test]
fn install_start_containerd_with_cri_and_uninstall() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root to run containerd (scripts/test.sh)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let original = std::process::Command::new("containerd")
        .args(["config", "default"])
        .output()
        .expect("containerd config default")
        .stdout;
    std::fs::write(&config, &original).expect("write config");

    let dry = files::install(&config, true).expect("dry run");
    assert!(
        matches!(dry, Outcome::Changed { ref diff } if diff.contains("+runtime_type = \"io.containerd.wasmhybrid.v1\"")),
        "{dry:?}"
    );
    assert_eq!(
        std::fs::read(&config).expect("read"),
        original,
        "dry run changed the file"
    );

    assert!(matches!(
        files::install(&config, false).expect("install"),
        Outcome::Changed { .. }
    ));
    let installed = std::fs::read_to_string(&config).expect("read");
    assert_eq!(
        files::install(&config, false).expect("second install"),
        Outcome::Unchanged
    );
    assert_eq!(
        std::fs::read(files::backup_path(&config)).expect("backup"),
        original
    );

    let daemon = PrivateContainerd::start(DaemonOptions {
        with_cri: true,
        config_override: Some(installed),
        ..Default::default()
    })
    .expect("containerd starts with the installed config");
    let plugins = daemon
        .ctr("default", &["plugins", "ls"])
        .expect("ctr plugins ls");
    let plugins = String::from_utf8_lossy(&plugins.stdout);
    let cri = plugins
        .lines()
        .find(|l| l.contains(" cri "))
        .expect("cri plugin listed");
    assert!(
        cri.trim_end().ends_with("ok"),
        "CRI plugin did not load: {cri}\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("wasmhybrid:{Type:io.containerd.wasmhybrid.v1")
            && log.contains("PodAnnotations:[wasmhybrid.io/*]"),
        "handler not registered:\n{log}"
    );
    drop(daemon);

    assert!(matches!(
        files::uninstall(&config, false).expect("uninstall"),
        Outcome::Changed { .. }
    ));
    assert_eq!(
        std::fs::read(&config).expect("read"),
        original,
        "not restored byte for byte"
    );
    assert!(!files::backup_path(&config).exists());
    assert_eq!(
        files::uninstall(&config, false).expect("second uninstall"),
        Outcome::Unchanged
    );
}

#[test]
fn bad_or_missing_configs_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let err = files::install(&missing, false).unwrap_err();
    assert!(
        err.to_string().contains("containerd config default >"),
        "{err}"
    );
    assert!(!missing.exists());

    for (text, message) in [
        ("version = 2\n[plugins\n", "not valid TOML"),
        ("[plugins]\n", "version 1 config"),
        ("version = 7\n", "unsupported"),
    ] {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).expect("write");
        let err = files::install(&config, false).unwrap_err();
        assert!(err.to_string().contains(message), "{text:?}: {err}");
        assert_eq!(std::fs::read_to_string(&config).expect("read"), text);
        assert!(!files::backup_path(&config).exists());
    }
}

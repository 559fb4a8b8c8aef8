//! The installer's whole run on fake node roots (the layout a DaemonSet
//! sees under /host): shim binary, config, restart, label; a second run
//! changes nothing; uninstall restores everything; bad nodes change nothing.
//! The restart is a recorded shell command and kubectl a recording script;
//! the run against a real containerd is in `shim/tests/containerd/cri.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct FakeNode {
    dir: tempfile::TempDir,
}

impl FakeNode {
    fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, bytes) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, bytes).expect("write");
        }
        // A fake shim (launcher and daemon binary, side by side) and a
        // kubectl that records its arguments.
        std::fs::write(dir.path().join("shim"), b"\x7fELF fake shim").expect("write");
        std::fs::write(dir.path().join("wasmhybrid"), b"\x7fELF fake daemon").expect("write");
        let kubectl = dir.path().join("kubectl");
        std::fs::write(
            &kubectl,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}/kubectl.log\necho \"node/$3 labeled\"\n",
                dir.path().display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Runs the installer; the socket path gets a listener so that the
    /// wait after the restart is satisfied.
    fn run(&self, verb: &str, extra: &[&str]) -> (i32, String, String) {
        let socket = self.path("run/containerd/containerd.sock");
        std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let restart = format!("echo restarted >> {}/restarts.log", self.root().display());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmhybrid-node-setup"))
            .arg(verb)
            .arg("--host-root")
            .arg(self.root())
            .arg("--shim")
            .arg(self.path("shim"))
            .arg("--socket")
            .arg(&socket)
            .args(["--restart", &restart, "--no-warm", "--node-name", "node-1"])
            .arg("--kubectl")
            .arg(self.path("kubectl"))
            .args(extra)
            .env_remove("NODE_NAME")
            .output()
            .expect("run the installer");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

const CONFIG: &str = "etc/containerd/config.toml";
const V2: &[u8] = include_bytes!("fixtures/v2-containerd-1.6.20-default.toml");

#[test]
fn install_twice_then_uninstall_on_a_containerd_node() {
    let node = FakeNode::new(&[(CONFIG, V2)]);

    let (code, out, err) = node.run("install", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("node: Containerd containerd"), "{out}");
    let shim = node.path("usr/local/bin/containerd-shim-wasmhybrid-v1");
    assert_eq!(std::fs::read(&shim).expect("shim"), b"\x7fELF fake shim");
    assert_eq!(
        std::fs::metadata(&shim).expect("meta").permissions().mode() & 0o777,
        0o755
    );
    let tool = node.path("usr/local/bin/wasmhybrid");
    assert_eq!(std::fs::read(&tool).expect("tool"), b"\x7fELF fake daemon");
    assert_eq!(
        std::fs::metadata(&tool).expect("meta").permissions().mode() & 0o777,
        0o755
    );
    assert!(node.read(CONFIG).contains("io.containerd.wasmhybrid.v1"));
    assert_eq!(node.read("restarts.log"), "restarted\n");
    assert_eq!(
        node.read("kubectl.log"),
        "label node node-1 wasmhybrid.io/ready=true --overwrite\n"
    );
    let installed = node.read(CONFIG);

    // A second run: same files, no restart; the label is re-asserted.
    let (code, out, _) = node.run("install", &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("already up to date") && out.contains("already registers"),
        "{out}"
    );
    assert_eq!(node.read(CONFIG), installed);
    assert_eq!(
        node.read("restarts.log"),
        "restarted\n",
        "no second restart"
    );

    let (code, out, err) = node.run("uninstall", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        std::fs::read(node.path(CONFIG)).expect("config"),
        V2,
        "byte for byte"
    );
    assert!(
        !shim.exists()
            && node
                .path("usr/local/bin/wasmhybrid")
                .symlink_metadata()
                .is_err()
    );
    assert!(
        node.read("kubectl.log")
            .ends_with("label node node-1 wasmhybrid.io/ready-\n")
    );
    assert_eq!(node.read("restarts.log"), "restarted\nrestarted\n");
    assert!(
        !node
            .path("etc/containerd/config.toml.wasmhybrid-backup")
            .exists()
    );
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let node = FakeNode::new(&[(CONFIG, V2)]);
    let (code, out, err) = node.run("install", &["--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("+runtime_type = \"io.containerd.wasmhybrid.v1\""),
        "{out}"
    );
    assert!(
        out.contains("(dry run) restart: would run `sh -c echo restarted"),
        "{out}"
    );
    assert!(out.contains("(dry run) label: would run"), "{out}");
    assert_eq!(std::fs::read(node.path(CONFIG)).expect("config"), V2);
    assert!(!node.path("usr/local/bin").exists());
    assert!(!node.path("restarts.log").exists() && !node.path("kubectl.log").exists());
}

#[test]
fn an_upgrade_replaces_the_old_tool_symlink_with_the_daemon_binary() {
    // Releases before the launcher installed `wasmhybrid` as a symlink to
    // the shim.
    let node = FakeNode::new(&[(CONFIG, V2)]);
    let bin = node.path("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::write(
        bin.join("containerd-shim-wasmhybrid-v1"),
        b"\x7fELF old shim",
    )
    .expect("old");
    std::os::unix::fs::symlink("containerd-shim-wasmhybrid-v1", bin.join("wasmhybrid"))
        .expect("old link");
    let (code, out, err) = node.run("install", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let tool = bin.join("wasmhybrid");
    assert!(tool.symlink_metadata().expect("tool").file_type().is_file());
    assert_eq!(std::fs::read(&tool).expect("tool"), b"\x7fELF fake daemon");
    assert_eq!(
        std::fs::read(bin.join("containerd-shim-wasmhybrid-v1")).expect("shim"),
        b"\x7fELF fake shim"
    );
}

#[test]
fn a_shim_without_its_daemon_binary_beside_it_is_refused() {
    let node = FakeNode::new(&[(CONFIG, V2)]);
    std::fs::remove_file(node.path("wasmhybrid")).expect("remove");
    let (code, out, err) = node.run("install", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("wasmhybrid") && err.contains("one directory"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(node.path(CONFIG)).expect("config"),
        V2,
        "nothing changed"
    );
    assert!(!node.path("usr/local/bin").exists(), "nothing installed");
}

#[test]
fn k3s_gets_a_template_that_uninstall_removes() {
    let generated = b"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    let dir = "var/lib/rancher/k3s/agent/etc/containerd";
    let node = FakeNode::new(&[(&format!("{dir}/config.toml"), generated)]);
    let (code, out, err) = node.run("install", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("node: K3s"), "{out}");
    let template = node.read(&format!("{dir}/config.toml.tmpl"));
    assert!(template.starts_with("version = 2\n[plugins"), "{template}");
    assert!(
        template.contains("io.containerd.wasmhybrid.v1"),
        "{template}"
    );
    assert_eq!(
        std::fs::read(node.path(&format!("{dir}/config.toml"))).expect("generated"),
        generated,
        "k3s's generated file is left to k3s"
    );
    let (code, out, err) = node.run("uninstall", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!node.path(&format!("{dir}/config.toml.tmpl")).exists());
    assert!(
        !node
            .path(&format!("{dir}/config.toml.tmpl.wasmhybrid-created"))
            .exists()
    );
}

#[test]
fn a_node_without_containerd_or_with_a_bad_config_is_left_alone() {
    let node = FakeNode::new(&[]);
    let (code, _, err) = node.run("install", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no containerd found"), "{err}");
    assert!(!node.path("usr/local/bin").exists());

    for (text, message) in [
        ("version = 2\n[plugins\n", "not valid TOML"),
        ("version = 9\n", "unsupported containerd config version 9"),
    ] {
        let node = FakeNode::new(&[(CONFIG, text.as_bytes())]);
        let (code, _, err) = node.run("install", &[]);
        assert_eq!(code, 1);
        assert!(err.contains(message), "{err}");
        assert_eq!(node.read(CONFIG), text);
        assert!(!node.path("usr/local/bin").exists(), "no shim installed");
        assert!(!node.path("kubectl.log").exists(), "no label");
    }

    // containerd installed but no config: asks for one.
    let node = FakeNode::new(&[("usr/bin/containerd", b"")]);
    let (code, _, err) = node.run("install", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("containerd config default >"), "{err}");
}

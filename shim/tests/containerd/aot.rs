//! The AOT cache under containerd: warm starts map code for both image
//! shapes, damaged entries are rebuilt, concurrent starts compile once,
//! precompiled bytes from an image are never loaded, and an unusable cache
//! only costs a compile; bundles for other architectures import only when
//! verified.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::{APPLICATION_WASM, ImageSpec};
use wasmhybrid_shim::cache::{Record, WasmDigest};
use wasmhybrid_shim::dispatch::WasmForm;
use wasmhybrid_shim::engine::{TARGET, WasmEngine};

use crate::common::{P1_ROOTFS, TestEnv, bytes};

/// The directory of this node's entries: `<aot>/<triple>/<engine key>`.
fn entry_dir(env: &TestEnv) -> PathBuf {
    let key = WasmEngine::new().expect("engine").cache_key();
    env.daemon.aot_cache_dir().join(TARGET).join(key)
}

fn code_path(env: &TestEnv, d: &WasmDigest) -> PathBuf {
    entry_dir(env).join(format!("{}.cwasm", d.hex()))
}

fn record_path(env: &TestEnv, d: &WasmDigest) -> PathBuf {
    entry_dir(env).join(format!("{}.json", d.hex()))
}

fn count(env: &TestEnv, needle: &str) -> usize {
    env.daemon.log().matches(needle).count()
}

/// Runs `wh-cmd hello` from `image` and checks its output.
async fn hello(env: &TestEnv, id: &str, image: &str, arg0: &str) {
    let done = env
        .ctrd
        .run(&env.opts(id, image, &[arg0, "hello"]))
        .await
        .expect("run");
    assert_eq!(done.exit_code, 0, "{id}: {done:?}");
    assert_eq!(done.stdout.trim(), "hello from wasm", "{id}: {done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_starts_map_cached_code_for_both_image_shapes() {
    let env = TestEnv::new("aot-warm").await;
    env.import_cmd_images();
    let wasm = bytes(Fixture::CmdP1);
    let digest = WasmDigest::of(&wasm);
    env.import(&ImageSpec::artifact(
        "localhost/wh/aot:artifact",
        APPLICATION_WASM,
        wasm,
    ));
    let miss = format!("AOT cache miss: {digest} compiled");
    let hit = format!("AOT cache hit: {digest}");

    hello(&env, "rootfs-cold", P1_ROOTFS, "wh-cmd.wasm").await;
    assert_eq!(count(&env, &miss), 1, "first start compiles");
    assert_eq!(count(&env, &hit), 0);

    hello(&env, "rootfs-warm", P1_ROOTFS, "wh-cmd.wasm").await;
    // The same module as an OCI artifact: same digest, same entry.
    hello(
        &env,
        "artifact-warm",
        "localhost/wh/aot:artifact",
        "/main.wasm",
    )
    .await;
    assert_eq!(count(&env, &miss), 1, "no second compile");
    assert_eq!(count(&env, &hit), 2, "both shapes hit");

    // Layout and permissions: root-only, under the target triple.
    let code = code_path(&env, &digest);
    let record: Record =
        serde_json::from_slice(&std::fs::read(record_path(&env, &digest)).expect("record"))
            .expect("parse record");
    assert_eq!(record.target, TARGET);
    assert_eq!(record.wasm_digest, digest.to_string());
    assert!(
        record.images.iter().any(|i| i.ends_with(P1_ROOTFS))
            && record.images.iter().any(|i| i.ends_with("aot:artifact")),
        "{:?}",
        record.images
    );
    let meta = std::fs::metadata(&code).expect("code file");
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    for dir in [
        env.daemon.aot_cache_dir(),
        env.daemon.aot_cache_dir().join(TARGET),
        entry_dir(&env),
    ] {
        let m = std::fs::metadata(&dir).expect("dir");
        assert_eq!(m.mode() & 0o777, 0o700, "{}", dir.display());
    }
    env.assert_no_panic_logged();
}

type Damage = fn(&Path, &Path);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_entries_are_removed_rebuilt_and_never_run() {
    let env = TestEnv::new("aot-damage").await;
    env.import_cmd_images();
    let digest = WasmDigest::of(&bytes(Fixture::CmdP1));
    hello(&env, "seed", P1_ROOTFS, "wh-cmd.wasm").await;

    fn rewrite_record(record: &Path, f: impl FnOnce(&mut Record)) {
        let mut r: Record =
            serde_json::from_slice(&std::fs::read(record).expect("read")).expect("parse");
        f(&mut r);
        std::fs::write(record, serde_json::to_vec(&r).expect("json")).expect("write");
    }
    let cases: [(&str, Damage, &str); 6] = [
        (
            "truncated",
            |code, _| {
                let b = std::fs::read(code).expect("read");
                std::fs::write(code, &b[..b.len() / 2]).expect("write");
            },
            "truncated?",
        ),
        (
            "corrupted",
            |code, _| {
                let mut b = std::fs::read(code).expect("read");
                let mid = b.len() / 2;
                b[mid] ^= 0x5a;
                std::fs::write(code, &b).expect("write");
            },
            "corrupted",
        ),
        (
            "garbage record",
            |_, record| std::fs::write(record, b"\0\0\0").expect("write"),
            "unreadable record",
        ),
        (
            "other architecture",
            |_, record| rewrite_record(record, |r| r.target = "aarch64-unknown-linux-gnu".into()),
            "built for aarch64-unknown-linux-gnu",
        ),
        (
            "other shim or Wasmtime version",
            |_, record| rewrite_record(record, |r| r.engine = "0.0.1-0000000000000000".into()),
            "built for",
        ),
        (
            // Consistent with its record, so only Wasmtime can tell: code
            // that is not Wasmtime's (as from another Wasmtime release).
            "foreign code with a matching record",
            |code, record| {
                let fake = b"\x7fELF not code Wasmtime would ever load".to_vec();
                std::fs::write(code, &fake).expect("write");
                rewrite_record(record, |r| {
                    r.code_size = fake.len() as u64;
                    r.code_sha256 = wasmhybrid_shim::cache::sha256_hex(&fake);
                });
            },
            "Wasmtime rejected precompiled code",
        ),
    ];
    for (i, (what, damage, logged)) in cases.into_iter().enumerate() {
        let before = count(&env, logged);
        let compiled_before = count(&env, "compiled (");
        damage(&code_path(&env, &digest), &record_path(&env, &digest));
        hello(&env, &format!("damaged-{i}"), P1_ROOTFS, "wh-cmd.wasm").await;
        assert!(
            count(&env, logged) > before,
            "{what}: not logged as {logged:?}"
        );
        assert_eq!(
            count(&env, "compiled ("),
            compiled_before + 1,
            "{what}: rebuilt once"
        );
        let hits = count(&env, "AOT cache hit");
        hello(&env, &format!("repaired-{i}"), P1_ROOTFS, "wh-cmd.wasm").await;
        assert_eq!(count(&env, "AOT cache hit"), hits + 1, "{what}: good again");
    }
    env.assert_no_panic_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_starts_of_a_new_module_compile_once() {
    let env = TestEnv::new("aot-fifty").await;
    let wasm = bytes(Fixture::HelloWat);
    let digest = WasmDigest::of(&wasm);
    env.import(&ImageSpec::rootfs(
        "localhost/wh/aot:fifty",
        "hello.wasm",
        wasm,
    ));
    let runs = (0..50).map(|i| {
        let opts = env.opts(
            &format!("fifty-{i}"),
            "localhost/wh/aot:fifty",
            &["hello.wasm"],
        );
        let ctrd = &env.ctrd;
        async move { (i, ctrd.run(&opts).await) }
    });
    for (i, done) in futures::future::join_all(runs).await {
        let done = done.unwrap_or_else(|e| panic!("fifty-{i}: {e:#}"));
        assert_eq!(done.exit_code, 0, "fifty-{i}: {done:?}");
        assert_eq!(done.stdout.trim(), "hello from wat", "fifty-{i}: {done:?}");
    }
    let compiled = count(&env, &format!("AOT cache miss: {digest} compiled ("));
    assert_eq!(compiled, 1, "one compile for fifty starts");
    let served = count(&env, &format!("AOT cache hit: {digest}"))
        + count(
            &env,
            &format!("AOT cache miss: {digest} compiled by a concurrent start"),
        );
    assert_eq!(served, 49, "the other 49 used that entry");
    env.assert_no_panic_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompiled_code_shipped_in_an_image_is_refused() {
    let env = TestEnv::new("aot-shipped").await;
    let (_, cwasm) = WasmEngine::new()
        .expect("engine")
        .precompile(&bytes(Fixture::HelloWat), WasmForm::CoreModule)
        .expect("precompile");
    env.import(&ImageSpec::rootfs(
        "localhost/wh/aot:cwasm-rootfs",
        "app.wasm",
        cwasm.clone(),
    ));
    env.import(&ImageSpec::artifact(
        "localhost/wh/aot:cwasm-artifact",
        APPLICATION_WASM,
        cwasm,
    ));
    for (id, image, arg0) in [
        ("rootfs", "localhost/wh/aot:cwasm-rootfs", "app.wasm"),
        ("artifact", "localhost/wh/aot:cwasm-artifact", "/main.wasm"),
    ] {
        let done = env
            .ctrd
            .run(&env.opts(id, image, &[arg0]))
            .await
            .expect("run");
        assert_eq!(done.exit_code, 126, "{id}: {done:?}");
        assert!(
            done.stderr.contains("not a WebAssembly binary"),
            "{id}: {done:?}"
        );
        assert!(done.stdout.is_empty(), "{id}: nothing ran: {done:?}");
    }
    assert_eq!(count(&env, "AOT cache hit"), 0);
    assert_eq!(count(&env, "compiled ("), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_cache_only_costs_a_compile() {
    let env = TestEnv::new("aot-unusable").await;
    env.import_cmd_images();
    // Someone else's directory: the shim must not load code from it.
    let dir = env.daemon.aot_cache_dir();
    std::fs::create_dir_all(&dir).expect("mkdir");
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    hello(&env, "uncached-1", P1_ROOTFS, "wh-cmd.wasm").await;
    hello(&env, "uncached-2", P1_ROOTFS, "wh-cmd.wasm").await;
    assert_eq!(
        count(&env, "AOT cache unavailable"),
        2,
        "{}",
        env.daemon.log()
    );
    assert!(count(&env, "owned by uid 65534") >= 2);
    assert_eq!(count(&env, "AOT cache hit"), 0);
    assert!(
        std::fs::read_dir(&dir).expect("dir").next().is_none(),
        "nothing written"
    );
    env.assert_no_panic_logged();
}

/// Runs `containerd-shim-wasmhybrid-v1 cache ...` against `env`.
fn tool(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_containerd-shim-wasmhybrid-v1"))
        .arg("cache")
        .args(args)
        .env("WASMHYBRID_CACHE_DIR", env.daemon.aot_cache_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the cache tool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_tool_warms_lists_and_prunes() {
    let env = TestEnv::new("aot-tool").await;
    env.import_cmd_images();
    env.import(&ImageSpec::artifact(
        "localhost/wh/aot:http",
        APPLICATION_WASM,
        bytes(Fixture::Http),
    ));
    env.import(&ImageSpec::busybox("localhost/wh/aot:busybox").expect("busybox image"));
    let address = env.daemon.address().display().to_string();
    let ctrd_args = [
        "--address",
        address.as_str(),
        "--namespace",
        env.ns.as_str(),
    ];

    // Warm every image of the namespace: three Wasm modules, one native.
    let (code, out, err) = tool(&env, &[&["warm"][..], &ctrd_args].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("compiled    ").count(), 3, "{out}");
    assert!(
        out.contains("skipped") && out.contains("runs under runc"),
        "{out}"
    );
    // A second warm finds everything cached.
    let (code, out, _) = tool(&env, &[&["warm"][..], &ctrd_args].concat());
    assert_eq!(code, 0);
    assert_eq!(out.matches("cached      ").count(), 3, "{out}");

    // Containers now start from the cache: no compile at start.
    hello(&env, "after-warm-p1", P1_ROOTFS, "wh-cmd.wasm").await;
    let done = env
        .ctrd
        .run(&env.opts(
            "after-warm-p2",
            crate::common::P2_ROOTFS,
            &["wh-cmd.wasm", "hello"],
        ))
        .await
        .expect("run");
    assert_eq!(done.exit_code, 0, "{done:?}");
    assert_eq!(count(&env, "AOT cache hit"), 2);
    assert_eq!(count(&env, "compiled ("), 0, "nothing compiled at start");

    // list: three entries of this node's target.
    let (code, out, _) = tool(&env, &["list", "--json"]);
    assert_eq!(code, 0);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.len(), 3, "{out}");
    assert!(listed.iter().all(|e| e["target"] == TARGET), "{out}");
    let (code, out, _) = tool(&env, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("3 entries") && out.contains(TARGET), "{out}");

    // --stale: an entry of another engine version goes, ours stay.
    let stale = env
        .daemon
        .aot_cache_dir()
        .join(TARGET)
        .join("0.0.1-0000000000000000");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join(format!("{}.cwasm", "ab".repeat(32))), b"old").expect("write");
    let (code, out, _) = tool(&env, &["prune", "--stale"]);
    assert_eq!(
        (code, out.contains("removed 1 entries")),
        (0, true),
        "{out}"
    );

    // --unreferenced: remove the HTTP image from containerd, prune.
    let rm = env
        .daemon
        .ctr(&env.ns, &["images", "rm", "localhost/wh/aot:http"])
        .expect("ctr");
    assert!(rm.status.success(), "{rm:?}");
    let (code, out, err) = tool(
        &env,
        &[&["prune", "--unreferenced"][..], &ctrd_args].concat(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("removed 1 entries") && out.contains("aot:http"),
        "{out}"
    );
    let (_, out, _) = tool(&env, &["list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.len(), 2, "{out}");

    // --max-size 0 empties it; bad arguments are clear errors.
    let (code, out, _) = tool(&env, &["prune", "--max-size", "0"]);
    assert_eq!(
        (code, out.contains("removed 2 entries")),
        (0, true),
        "{out}"
    );
    let (code, _, err) = tool(&env, &["prune"]);
    assert_eq!(code, 1);
    assert!(err.contains("say what to prune"), "{err}");
    let (code, _, err) = tool(&env, &["prune", "--max-size", "lots"]);
    assert_eq!(code, 1);
    assert!(err.contains("--max-size"), "{err}");
}

/// Reads a bundle tar into (name, bytes) members.
fn tar_members(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open bundle"));
    let mut out = Vec::new();
    for m in archive.entries().expect("entries") {
        let mut m = m.expect("member");
        let name = m.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        m.read_to_end(&mut bytes).expect("read");
        out.push((name, bytes));
    }
    out
}

fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).expect("create"));
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        tar.append_data(&mut h, name, bytes.as_slice())
            .expect("append");
    }
    tar.finish().expect("finish");
}

fn listed(env: &TestEnv) -> Vec<serde_json::Value> {
    let (code, out, err) = tool(env, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_compile_for_any_architecture_and_import_only_when_verified() {
    let env = TestEnv::new("aot-bundle").await;
    env.import_cmd_images();
    let work = tempfile::tempdir().expect("tempdir");
    let http = work.path().join("http.wasm");
    std::fs::write(&http, bytes(Fixture::Http)).expect("write");
    let address = env.daemon.address().display().to_string();
    let ctrd = [
        "--address",
        address.as_str(),
        "--namespace",
        env.ns.as_str(),
    ];
    let path = |n: &str| work.path().join(n).display().to_string();

    // A bundle for AArch64, built on this machine: both images and a file.
    let other = if TARGET.starts_with("x86_64") {
        "aarch64-unknown-linux-gnu"
    } else {
        "x86_64-unknown-linux-gnu"
    };
    let (code, out, err) = tool(
        &env,
        &[
            &["bundle", "--target", other, "-o", &path("other.tar")][..],
            &["--wasm", &http.display().to_string()],
            &ctrd,
            &[P1_ROOTFS, crate::common::P2_ROOTFS],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("compiled    ").count(), 3, "{out}");
    let members = tar_members(Path::new(&path("other.tar")));
    assert_eq!(members[0].0, "manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(&members[0].1).expect("manifest");
    assert_eq!(manifest["target"], other);
    let mut kinds: Vec<String> = manifest["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["command", "http-proxy", "module"]);
    let machine = if other.starts_with("aarch64") {
        183
    } else {
        62
    };
    for (name, code) in &members[1..] {
        assert_eq!(&code[..4], b"\x7fELF", "{name}");
        assert_eq!(u16::from_le_bytes([code[18], code[19]]), machine, "{name}");
    }
    // This node refuses it: wrong architecture.
    let (code, _, err) = tool(&env, &["import", &path("other.tar")]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("is for {other}, but this node is {TARGET}")),
        "{err}"
    );
    assert!(listed(&env).is_empty());

    // A bundle for this node's architecture, from the images.
    let (code, out, err) = tool(
        &env,
        &[&["bundle", "-o", &path("node.tar")][..], &ctrd].concat(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let sha = out
        .split("manifest sha256:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("manifest digest printed")
        .to_string();
    let members = tar_members(Path::new(&path("node.tar")));
    assert_eq!(members.len(), 3, "manifest and two modules");

    // Refused, with nothing imported: a manifest other than the one
    // vouched for, altered code, an altered engine key.
    let (code, _, err) = tool(
        &env,
        &[
            "import",
            "--manifest-sha256",
            &"0".repeat(64),
            &path("node.tar"),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("manifest's digest"), "{err}");
    let mut altered = members.clone();
    let last = altered.len() - 1;
    let mid = altered[last].1.len() / 2;
    altered[last].1[mid] ^= 0x40;
    write_tar(Path::new(&path("altered.tar")), &altered);
    let (code, _, err) = tool(&env, &["import", &path("altered.tar")]);
    assert_eq!(code, 1);
    assert!(err.contains("SHA-256 does not match the manifest"), "{err}");
    let mut rekeyed = members.clone();
    let mut m: serde_json::Value = serde_json::from_slice(&rekeyed[0].1).expect("manifest");
    m["engine"] = "0.0.1-0000000000000000".into();
    rekeyed[0].1 = serde_json::to_vec(&m).expect("json");
    write_tar(Path::new(&path("rekeyed.tar")), &rekeyed);
    let (code, _, err) = tool(&env, &["import", &path("rekeyed.tar")]);
    assert_eq!(code, 1);
    assert!(err.contains("engine key 0.0.1-0000000000000000"), "{err}");
    assert!(listed(&env).is_empty(), "nothing imported");

    // The vouched-for bundle imports; containers start from it.
    let (code, out, err) = tool(
        &env,
        &["import", "--manifest-sha256", &sha, &path("node.tar")],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 imported, 0 already cached"), "{out}");
    let entries = listed(&env);
    assert_eq!(entries.len(), 2);
    let origin = format!("bundle sha256:{sha}");
    assert!(
        entries.iter().all(|e| e["origin"] == origin.as_str()),
        "{entries:?}"
    );
    hello(&env, "from-bundle-p1", P1_ROOTFS, "wh-cmd.wasm").await;
    hello(
        &env,
        "from-bundle-p2",
        crate::common::P2_ROOTFS,
        "wh-cmd.wasm",
    )
    .await;
    assert_eq!(count(&env, "AOT cache hit"), 2);
    assert_eq!(count(&env, "compiled ("), 0, "nothing compiled at start");
    let (code, out, _) = tool(&env, &["import", &path("node.tar")]);
    assert_eq!(code, 0);
    assert!(out.contains("0 imported, 2 already cached"), "{out}");
    env.assert_no_panic_logged();
}

//! `wasi:http/proxy` components answer real HTTP requests inside the
//! container's network namespace.

use std::net::SocketAddr;
use std::time::Duration;

use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::{ImageSpec, WASM_COMPONENT_LAYER};
use wasmhybrid_harness::netns::{NetNs, http_get};

use crate::common::{HTTP_ARTIFACT, TestEnv, bytes, stop};

const HTTP_ROOTFS: &str = "localhost/wh/http:rootfs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_component_serves_on_default_and_configured_addresses() {
    let env = TestEnv::new("http").await;
    env.import(&ImageSpec::artifact(
        HTTP_ARTIFACT,
        WASM_COMPONENT_LAYER,
        bytes(Fixture::Http),
    ));
    env.import(&ImageSpec::rootfs(
        HTTP_ROOTFS,
        "http.wasm",
        bytes(Fixture::Http),
    ));

    // (image, extra env, address to reach it on)
    let cases = [
        (HTTP_ARTIFACT, vec![], "127.0.0.1:8080"),
        (
            HTTP_ROOTFS,
            vec![
                "WASMHYBRID_HTTP_ADDR=127.0.0.1:9090",
                "WH_GREETING=configured",
            ],
            "127.0.0.1:9090",
        ),
    ];
    for (i, (image, extra_env, addr)) in cases.into_iter().enumerate() {
        let netns = NetNs::new().expect("netns");
        let mut opts = env.opts(&format!("http-{i}"), image, &[]).env(&extra_env);
        opts.args = None;
        opts.netns = Some(netns.path());
        let mut running = env.ctrd.start(&opts).await.expect("start");
        let addr: SocketAddr = addr.parse().expect("addr");

        let resp =
            http_get(netns.path(), addr, "/hello?x=1", Duration::from_secs(20)).expect("GET");
        assert_eq!(resp.status, 200, "{image}: {resp:?}");
        assert!(
            resp.body.starts_with("hello from wasi:http GET /hello?x=1"),
            "{image}: {resp:?}"
        );
        if extra_env.len() > 1 {
            assert!(
                resp.body.contains("greeting=configured"),
                "{image}: env not passed: {resp:?}"
            );
        }
        let resp = http_get(netns.path(), addr, "/missing", Duration::from_secs(5)).expect("GET");
        assert_eq!(resp.status, 404, "{resp:?}");

        // Concurrent requests each get a fresh instance.
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let ns = netns.path();
                std::thread::spawn(move || {
                    http_get(ns, addr, &format!("/c{n}"), Duration::from_secs(5))
                })
            })
            .collect();
        for (n, h) in handles.into_iter().enumerate() {
            let resp = h.join().expect("thread").expect("GET");
            assert_eq!(resp.status, 200);
            assert!(resp.body.contains(&format!("/c{n}")), "{resp:?}");
        }

        let code = stop(&mut running, 15).await;
        assert_eq!(code, 143, "{image}: SIGTERM exit code");
        running.delete().await.expect("delete");
        assert!(env.leftovers(&format!("http-{i}")).is_empty());
    }
    let log = env.daemon.log();
    assert!(log.contains("serving wasi:http on 0.0.0.0:8080"), "{log}");
    assert!(log.contains("serving wasi:http on 127.0.0.1:9090"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_in_use_is_a_clear_error_for_that_container_only() {
    let env = TestEnv::new("http-inuse").await;
    env.import(&ImageSpec::artifact(
        HTTP_ARTIFACT,
        WASM_COMPONENT_LAYER,
        bytes(Fixture::Http),
    ));
    let netns = NetNs::new().expect("netns");
    let mut first = env.opts("first", HTTP_ARTIFACT, &[]);
    first.args = None;
    first.netns = Some(netns.path());
    let mut running = env.ctrd.start(&first).await.expect("start first");
    let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    assert_eq!(
        http_get(netns.path(), addr, "/", Duration::from_secs(20))
            .expect("GET")
            .status,
        200
    );

    let mut second = first.clone();
    second.id = "second".into();
    let done = env.ctrd.run(&second).await.expect("run second");
    assert_eq!(done.exit_code, 126, "{done:?}");
    assert!(
        done.stderr.contains("failed to bind 0.0.0.0:8080"),
        "{done:?}"
    );

    // The first one is unaffected.
    assert_eq!(
        http_get(netns.path(), addr, "/", Duration::from_secs(5))
            .expect("GET")
            .status,
        200
    );
    running.kill(9).await.expect("kill");
    assert_eq!(running.wait().await.expect("wait"), 137);
    running.delete().await.expect("delete");
}

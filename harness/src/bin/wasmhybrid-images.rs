//! Writes the example workloads' images (`runtimeclass/examples/`) as OCI
//! archives, for clusters without a registry (`kind load image-archive`,
//! `ctr images import`): `wh-cmd.tar` (the command module in a `wasi/wasm`
//! rootfs image) and `wh-http.tar` (the `wasi:http/proxy` component as an
//! OCI Wasm artifact). Build the fixtures first (scripts/build-fixtures.sh).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::{ImageSpec, WASM_COMPONENT_LAYER, write_oci_archive};

/// The names the kind test substitutes into the examples.
pub const CMD_IMAGE: &str = "localhost/wasmhybrid/wh-cmd:dev";
pub const HTTP_IMAGE: &str = "localhost/wasmhybrid/wh-http:dev";

#[derive(Parser)]
#[command(about = "Write the example workloads' images as OCI archives")]
struct Args {
    /// Directory to write wh-cmd.tar and wh-http.tar into.
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let images = [
        (
            "wh-cmd.tar",
            ImageSpec::rootfs(CMD_IMAGE, "wh-cmd.wasm", Fixture::CmdP1.bytes()?),
        ),
        (
            "wh-http.tar",
            ImageSpec::artifact(HTTP_IMAGE, WASM_COMPONENT_LAYER, Fixture::Http.bytes()?),
        ),
    ];
    for (file, spec) in images {
        let path = args.out.join(file);
        write_oci_archive(&spec, &path)?;
        println!("{} ({})", path.display(), spec.name);
    }
    Ok(())
}

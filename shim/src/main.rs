//! `containerd-shim-wasmhybrid-v1`: the binary containerd starts for the
//! runtime type `io.containerd.wasmhybrid.v1`.

fn main() {
    wasmhybrid_shim::cli::main();
}

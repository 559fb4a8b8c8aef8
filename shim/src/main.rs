//! `containerd-shim-wasmhybrid-v1`: the binary containerd runs for the
//! runtime type `io.containerd.wasmhybrid.v1` ([`wasmhybrid_shim::launcher`]).

fn main() {
    wasmhybrid_shim::launcher::main();
}

//! Rebuild the eBPF object when the `bpf-linker` binary changes.
//!
//! The crate has an undeclared dependency on `bpf-linker`; tracking its mtime
//! is the cheapest cache key. It misses a different `bpf-linker` appearing
//! earlier on `PATH`, which `cargo xtask` never does.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask build`")
        }
    }
}

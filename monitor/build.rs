//! Compiles `monitor-ebpf` for the bpf target (nightly + bpf-linker, which
//! `cargo xtask` installs) and leaves the object in `OUT_DIR/monitor`, where
//! `kernel/mod.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "monitor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

//! `cargo xtask bench WHICH`.

use anyhow::bail;

pub fn bench(which: &str, _args: Vec<String>) -> anyhow::Result<()> {
    bail!("unknown benchmark `{which}`")
}

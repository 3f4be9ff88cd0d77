//! `cargo xtask bench WHICH`: benchmarks that need the real kernel or the
//! built agent. `overhead` is here; the model and sink benchmarks are
//! `cargo bench` targets of the agent crate, which this command runs too.

mod overhead;

use anyhow::bail;

pub fn bench(which: &str, args: Vec<String>) -> anyhow::Result<()> {
    match which {
        "overhead" => overhead::run(&args),
        "model" | "sinks" => {
            crate::prepare::build()?;
            let mut cmd = crate::prepare::cargo();
            cmd.args(["bench", "--package", "monitor", "--bench", which])
                .current_dir(crate::prepare::root())
                .env("PATH", crate::prepare::path_with_cargo_bin());
            if !args.is_empty() {
                cmd.arg("--").args(&args);
            }
            crate::prepare::run_cmd(&mut cmd)
        }
        other => bail!("unknown benchmark `{other}`; choose overhead, model or sinks"),
    }
}

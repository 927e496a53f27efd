//! Running the `ebb` CLI against a host, as an operator would.

use std::process::{Command, Stdio};

/// Runs `ebb args…` (the binary at `bin`) against `api` with `token`: whether it
/// succeeded, its stdout and its stderr.
pub fn run(
    bin: &str,
    api: &str,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(bin)
        .args(args)
        .env("EBB_API", api)
        .env("EBB_TOKEN", token)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// [`run`] with `--json`, which must succeed; its output parsed.
pub fn json(bin: &str, api: &str, token: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = run(bin, api, token, &all)?;
    anyhow::ensure!(ok, "ebb {args:?} failed: {err}");
    serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("ebb {args:?}: {e}: {out}"))
}

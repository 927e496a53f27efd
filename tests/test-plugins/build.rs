//! Builds every crate of `plugins/` to a wasm32-wasip2 component, once per test
//! build, and writes one `pub const <NAME>: &str = "<path>.wasm";` per plugin.
//!
//! The nested cargo uses its own target folder under OUT_DIR, so it never waits on
//! the outer build's lock, and drops the outer RUSTFLAGS (meant for the host target).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../..").canonicalize()?;
    let plugins = root.join("plugins");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let members = plugin_members(&plugins)?;
    for dir in [
        "wit",
        "sdk/src",
        "sdk/Cargo.toml",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for member in &members {
        println!(
            "cargo:rerun-if-changed={}",
            plugins.join(member).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            plugins.join(member).join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=EBB_PLUGINS_DENY_WARNINGS");

    let target_dir = out.join("plugins-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--workspace",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    if env::var_os("EBB_PLUGINS_DENY_WARNINGS").is_some() {
        cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Dwarnings");
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("building plugins/ failed: {status}").into());
    }

    let mut consts = String::new();
    for member in &members {
        let wasm = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", member.replace('-', "_")));
        if !wasm.exists() {
            return Err(format!("{} was not built", wasm.display()).into());
        }
        consts.push_str(&format!(
            "/// The `{member}` component.\npub const {}: &str = {:?};\n",
            member.to_uppercase().replace('-', "_"),
            wasm.display().to_string()
        ));
    }
    consts.push_str(&format!(
        "/// Every plugin, by crate name.\npub const ALL: &[(&str, &str)] = &[{}];\n",
        members
            .iter()
            .map(|m| format!("({m:?}, {})", m.to_uppercase().replace('-', "_")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    fs::write(out.join("plugins.rs"), consts)?;
    Ok(())
}

/// The folders under `plugins/` that hold a crate.
fn plugin_members(plugins: &Path) -> std::io::Result<Vec<String>> {
    let mut members = Vec::new();
    for entry in fs::read_dir(plugins)? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").exists() && entry.path().join("src").exists() {
            members.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    members.sort();
    Ok(members)
}

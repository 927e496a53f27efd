//! Instance files in the plugins folder: reading, parsing, writing them
//! atomically, and the bodies the admin API sends.

use super::*;

/// The `*.toml` files of the plugins folder, by instance name.
pub(super) async fn instance_files(dir: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if is_instance_name(stem) {
            files.insert(stem.to_owned(), path);
        } else if !stem.starts_with('.') {
            tracing::warn!(file = %path.display(), "ignored: not a valid instance name");
        }
    }
    Ok(files)
}

/// `component` as a path inside `dir`: relative, without `..`.
pub(super) fn inside(dir: &Path, component: &str) -> Result<PathBuf, LoadError> {
    let path = Path::new(component);
    if component.is_empty()
        || !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(LoadError::Invalid(format!(
            "component `{component}` must be a path inside the plugins folder (relative, \
             without `..`)"
        )));
    }
    Ok(dir.join(path))
}

/// An API request body as the TOML table it will be stored as.
pub(super) fn api_table(body: serde_json::Value) -> Result<toml::Table, LoadError> {
    let body = strip_nulls(body);
    if !body.is_object() {
        return Err(LoadError::Invalid(
            "the body must be a JSON object with the keys of a [connectors.<name>] table".into(),
        ));
    }
    // Secrets never go through the API (nor into the folder): name a variable instead.
    for (table, field, what, env) in [
        ("/sql", "dsn", "sql connection", "dsn-env"),
        ("/redis", "url", "redis connection", "url-env"),
        (
            "/http/basic-auth",
            "password",
            "basic-auth for",
            "password-env",
        ),
        ("/secrets", "value", "secret", "env"),
    ] {
        if let Some(entries) = body.pointer(table).and_then(|t| t.as_object())
            && let Some((key, _)) = entries.iter().find(|(_, e)| e.get(field).is_some())
        {
            return Err(LoadError::Invalid(format!(
                "{what} `{key}`: the API does not take a `{field}` (it holds a secret); \
                 use `{env}` with the name of an environment variable of the host"
            )));
        }
    }
    let table: toml::Table = serde_json::from_value(body)
        .map_err(|e| LoadError::Invalid(format!("the body is not a connector table: {e}")))?;
    Ok(table)
}

pub(super) fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

pub(super) fn table_str<'a>(table: &'a toml::Table, key: &str) -> Result<&'a str, LoadError> {
    table
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| LoadError::Invalid(format!("`{key}` must be a string")))
}

pub(super) fn parse_instance(
    table: &toml::Table,
    dir: &Path,
) -> Result<ConnectorConfig, LoadError> {
    let text = toml::to_string(table).map_err(|e| LoadError::Invalid(e.to_string()))?;
    ConnectorConfig::parse_toml(&text, dir).map_err(|e| LoadError::Invalid(format!("{e:#}")))
}

/// `<dir>/<name>.toml` as read: its bytes (for the fingerprint) and its table.
pub(super) async fn read_instance(
    dir: &Path,
    name: &str,
) -> Result<(Vec<u8>, toml::Table), LoadError> {
    let file = dir.join(format!("{name}.toml"));
    let bytes = tokio::fs::read(&file)
        .await
        .map_err(|e| LoadError::Invalid(format!("reading {}: {e}", file.display())))?;
    let table = std::str::from_utf8(&bytes)
        .map_err(|e| LoadError::Invalid(format!("{}: {e}", file.display())))
        .and_then(|text| {
            toml::from_str(text).map_err(|e| LoadError::Invalid(format!("{}: {e}", file.display())))
        })?;
    Ok((bytes, table))
}

pub(super) async fn read_component(config: &ConnectorConfig) -> Result<Vec<u8>, LoadError> {
    tokio::fs::read(&config.component).await.map_err(|e| {
        LoadError::Invalid(format!(
            "reading component {}: {e}",
            config.component.display()
        ))
    })
}

/// Writes `<dir>/<name>.toml` atomically (temporary file, fsync, rename) and
/// returns its fingerprint.
pub(super) async fn write_instance(
    dir: &Path,
    name: &str,
    table: &toml::Table,
    digest: &str,
) -> Result<String, LoadError> {
    let text = format!(
        "# Written by ebb (admin API). Edits here are picked up while it runs.\n{}",
        toml::to_string(table).map_err(|e| LoadError::Internal(e.to_string()))?
    );
    let file = dir.join(format!("{name}.toml"));
    let tmp = dir.join(format!(".{name}.toml.tmp"));
    let io = |source| LoadError::Io {
        what: "writing",
        path: file.clone(),
        source,
    };
    {
        use tokio::io::AsyncWriteExt as _;
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        f.write_all(text.as_bytes()).await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
    }
    tokio::fs::rename(&tmp, &file).await.map_err(io)?;
    Ok(fingerprint(text.as_bytes(), digest))
}

pub(super) fn fingerprint(file: &[u8], component_digest: &str) -> String {
    format!("{}:{component_digest}", Digest::of(file))
}

//! A run's files over HTTP: listed relative to its results folder, served
//! streamed (requests.csv and results.sqlite can be large), never outside
//! the folder.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_util::io::ReaderStream;

use super::error::ApiError;

/// Every file below `dir`, as relative paths with `/`, sorted.
pub async fn list(dir: &Path) -> Vec<String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        walk(&dir, &dir, &mut out);
        out.sort();
        out
    })
    .await
    .unwrap_or_default()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(root, &path, out),
            Ok(t) if t.is_file() => {
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
            _ => {}
        }
    }
}

/// `rel` below `dir`, or None when it would leave it (`..`, an absolute
/// path).
fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(rel))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("csv") => "text/csv; charset=utf-8",
        Some("sqlite") => "application/vnd.sqlite3",
        Some("txt" | "toml" | "hlog" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file `rel` of the results folder `dir`.
pub async fn serve(dir: &Path, rel: &str) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("no file {rel:?} in this run's results"));
    let path = inside(dir, rel).ok_or_else(missing)?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    let meta = file.metadata().await.map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    let disposition = match path.extension().and_then(|e| e.to_str()) {
        Some("html" | "json" | "txt" | "toml") => format!("inline; filename=\"{name}\""),
        _ => format!("attachment; filename=\"{name}\""),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&path).to_owned()),
            (header::CONTENT_LENGTH, meta.len().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        let dir = Path::new("/data/runs/r1");
        assert_eq!(
            inside(dir, "step-01/report.html"),
            Some(dir.join("step-01/report.html"))
        );
        assert_eq!(inside(dir, "../r2/report.html"), None);
        assert_eq!(inside(dir, "/etc/passwd"), None);
        assert_eq!(inside(dir, "a/./../../x"), None);
    }
}

//! The `dir:` source: one file per key, as a mounted Kubernetes Secret or ConfigMap lays it
//! out. Dotfiles and kubelet's `..data` / `..2026_…` entries are skipped; symlinks followed.

use std::io;
use std::path::Path;

/// Read every regular file of `dir` (following symlinks) as `name -> bytes`, sorted by name.
pub fn read(dir: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(dir = %dir.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => continue,
            // A dangling symlink mid-swap: the next event will reload.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        out.push((name, std::fs::read(&path)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_kubernetes_layout() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("..2026_01_01_00_00_00.1");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("USER"), "admin").unwrap();
        std::fs::write(data.join("tls.crt"), "CERT").unwrap();
        symlink("..2026_01_01_00_00_00.1", d.path().join("..data")).unwrap();
        symlink("..data/USER", d.path().join("USER")).unwrap();
        symlink("..data/tls.crt", d.path().join("tls.crt")).unwrap();
        std::fs::write(d.path().join(".hidden"), "x").unwrap();
        std::fs::create_dir(d.path().join("subdir")).unwrap();
        let got = read(d.path()).unwrap();
        assert_eq!(
            got,
            vec![
                ("USER".into(), b"admin".to_vec()),
                ("tls.crt".into(), b"CERT".to_vec())
            ]
        );
    }
}

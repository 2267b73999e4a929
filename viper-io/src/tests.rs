use std::time::{Duration, Instant};

use super::*;

/// A FIFO at `path` (through `mkfifo(3)`).
#[cfg(unix)]
pub(crate) fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

#[test]
fn reads_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{}").unwrap();
    assert_eq!(read_capped_to_string(&path, 2).unwrap(), "{}");
    assert_eq!(open_regular(&path).unwrap().1, 2);
}

#[test]
fn larger_than_the_cap_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{ }").unwrap();
    let err = read_capped(&path, 2).unwrap_err();
    assert!(matches!(err, FileError::TooLarge { size: 3, cap: 2, .. }), "{err}");
    assert!(err.to_string().contains("limit of 2 bytes") && err.to_string().contains("config.json"), "{err}");
    // A sparse file claiming a terabyte is refused from its metadata, without reading.
    let sparse = dir.path().join("sparse.json");
    File::create(&sparse).unwrap().set_len(1 << 40).unwrap();
    assert!(matches!(read_capped(&sparse, MAX_CONFIG_BYTES), Err(FileError::TooLarge { size, .. }) if size == 1 << 40));
}

#[test]
fn directories_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_capped(dir.path(), 10).unwrap_err();
    assert!(matches!(err, FileError::NotAFile { kind: FileKind::Directory, .. }), "{err}");
    let err = read_capped(&dir.path().join("missing"), 10).unwrap_err();
    assert!(matches!(&err, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
    assert_eq!(err.path(), dir.path().join("missing"));
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("tokenizer.json");
    mkfifo(&fifo);
    let start = Instant::now();
    let err = read_capped(&fifo, MAX_TOKENIZER_BYTES).unwrap_err();
    assert!(matches!(err, FileError::NotAFile { kind: FileKind::Fifo, .. }), "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    // Behind a symlink too.
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    assert!(matches!(open_regular(&link), Err(FileError::NotAFile { kind: FileKind::Fifo, .. })));
    // An endless stream.
    let err = read_capped(Path::new("/dev/zero"), MAX_CONFIG_BYTES).unwrap_err();
    assert!(matches!(err, FileError::NotAFile { kind: FileKind::CharDevice, .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn invalid_utf8_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jinja");
    std::fs::write(&path, b"\xff\xfe").unwrap();
    let err = read_capped_to_string(&path, 10).unwrap_err();
    assert!(matches!(&err, FileError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData), "{err}");
}

#[test]
fn atomic_writes_replace_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    check_output_file(&path).unwrap();
    write_atomic(&path, b"old").unwrap();
    check_output_file(&path).unwrap();
    // A write that fails half-way leaves the old content and no temporary file.
    let err = write_atomic_with(&path, |f| {
        f.write_all(b"half")?;
        Err(io::Error::other("killed"))
    })
    .unwrap_err();
    assert!(matches!(err, FileError::Write { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    write_atomic(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn unusable_output_paths_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let err = check_output_file(dir.path()).unwrap_err();
    assert!(matches!(err, FileError::NotAFile { kind: FileKind::Directory, .. }), "{err}");
    assert!(matches!(write_atomic(dir.path(), b"x"), Err(FileError::NotAFile { .. })));
    let err = check_output_file(&dir.path().join("missing/out.json")).unwrap_err();
    assert!(matches!(&err, FileError::Write { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let err = check_output_file(&file.join("out.json")).unwrap_err();
    assert!(matches!(err, FileError::Write { .. }), "{err}");
}

//! Files the agent writes (records, text logs, the spool, dead-letter and quarantine files,
//! captures) are private: created 0600 in directories 0700, or 0640/0750 for the group an
//! operator names (`--file-group`), never through a symbolic link, temporary files with
//! `create_new`. Every writer in the agent creates files through these helpers.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::OnceLock,
};

/// The group that may read what the agent writes (set once at start), if any.
static GROUP: OnceLock<Option<u32>> = OnceLock::new();

/// Names the group that may read the agent's files (`None`: nobody but root).
pub fn set_group(gid: Option<u32>) {
    let _ = GROUP.set(gid);
}

fn group() -> Option<u32> {
    GROUP.get().copied().flatten()
}

fn file_mode() -> u32 {
    if group().is_some() { 0o640 } else { 0o600 }
}

fn dir_mode() -> u32 {
    if group().is_some() { 0o750 } else { 0o700 }
}

/// Gives a file or directory the agent created to the readers' group, if one is named.
fn chown_group(path: &Path) -> io::Result<()> {
    if let Some(gid) = group() {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents, private (existing ones are left as they are).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(dir_mode()).create(dir) {
        Ok(()) => {
            // The mode passed through the umask: set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode()))?;
            chown_group(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(file_mode()).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Opens `path` for appending, creating it private; never follows a symbolic link.
pub fn open_append(path: &Path) -> io::Result<File> {
    append(path, options())
}

/// Opens an output the operator named by its full path (`--output`) for appending: a link
/// there is the operator's choice (`/dev/stdout`, a pipe) and is followed; a new file is
/// private.
pub fn open_output(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.mode(file_mode());
    append(path, o)
}

fn append(path: &Path, mut o: OpenOptions) -> io::Result<File> {
    let existed = path.exists();
    let f = o.create(true).append(true).open(path)?;
    if !existed {
        f.set_permissions(fs::Permissions::from_mode(file_mode()))?;
        chown_group(path)?;
    }
    Ok(f)
}

/// Creates `path`, which must not exist yet (temporary and new files), private.
pub fn create_new(path: &Path) -> io::Result<File> {
    let f = options().write(true).create_new(true).open(path)?;
    f.set_permissions(fs::Permissions::from_mode(file_mode()))?;
    chown_group(path)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn files_and_directories_are_private_and_links_are_not_followed() {
        let root = std::env::temp_dir().join(format!("devourer-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let f = dir.join("records.jsonl");
        drop(open_append(&f).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert!(
            create_new(&f).is_err(),
            "create_new refuses an existing file"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(
            open_append(&link).is_err(),
            "a planted link is not followed"
        );
        assert!(create_new(&link).is_err());
        let _ = fs::remove_dir_all(&root);
    }
}

//! Load a stream key (`--key FILE`): exactly 32 bytes from a regular file that only its owner
//! can read, checked the way ssh checks a private key file.
//!
//! Make one with `head -c 32 /dev/urandom > key; chmod 600 key`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use blkpipe_format::seal::{SealKey, KEY_LEN};
use zeroize::Zeroize;

use crate::OpError;

/// Read the key in `path`. Refused (exit 5), each with its own message: a file that is not a
/// regular file, one that group or others may read or write (mode & 077, like ssh), one owned
/// by another user than us or root, and one that does not hold exactly 32 bytes.
pub fn load_key(path: &Path) -> Result<SealKey, OpError> {
    let shown = path.display();
    let refuse = |why: String| OpError::Refused(format!("--key {shown}: {why}"));
    // O_NOFOLLOW would refuse a symlink to a key; a symlink is fine, what it names is checked
    // through the open descriptor (no window between check and read). A FIFO does not hang
    // the open before it is refused.
    let mut file = blkpipe_dev::guard::open_read(path, 0)
        .map_err(|e| refuse(format!("cannot open the key file: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot stat the key file: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "permissions {mode:04o} are too open: a key must be readable by its owner only (chmod 600 {shown})"
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refuse(format!(
            "owned by uid {}, not by this user (uid {me}) or root",
            meta.uid()
        )));
    }
    let mut buf = [0u8; KEY_LEN + 1];
    let got = blkpipe_format::read_full(&mut file, &mut buf);
    let key = match got {
        Ok(n) if n == KEY_LEN => SealKey::from_slice(&buf[..KEY_LEN]),
        Ok(n) => {
            buf.zeroize();
            let n = if n > KEY_LEN {
                format!("more than {KEY_LEN}")
            } else {
                n.to_string()
            };
            return Err(refuse(format!(
                "holds {n} bytes, a key is exactly {KEY_LEN} random bytes (make one: head -c 32 /dev/urandom > key; chmod 600 key)"
            )));
        }
        Err(e) => {
            buf.zeroize();
            return Err(refuse(format!("cannot read the key file: {e}")));
        }
    };
    buf.zeroize();
    key.ok_or_else(|| refuse("internal error: key length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(bytes: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn loads_a_private_32_byte_key() {
        let f = key_file(&[7u8; 32], 0o600);
        let k = load_key(f.path()).unwrap();
        assert_eq!(k.id(), SealKey::from_slice(&[7u8; 32]).unwrap().id());
        let f = key_file(&[7u8; 32], 0o400);
        load_key(f.path()).unwrap();
    }

    #[test]
    fn refuses_bad_keys_with_clear_messages() {
        for (bytes, mode, want) in [
            (&[1u8; 31][..], 0o600, "holds 31 bytes"),
            (&[1u8; 33][..], 0o600, "holds more than 32 bytes"),
            (&[][..], 0o600, "holds 0 bytes"),
            (&[1u8; 32][..], 0o640, "permissions 0640 are too open"),
            (&[1u8; 32][..], 0o604, "permissions 0604 are too open"),
        ] {
            let f = key_file(bytes, mode);
            let e = load_key(f.path()).unwrap_err();
            assert!(matches!(e, OpError::Refused(_)), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let e = load_key(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = load_key(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open"), "{e}");
    }
}

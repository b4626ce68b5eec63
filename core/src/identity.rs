//! Ed25519 identities of nodes and the gateway, stored as ordinary OpenSSH key files.
//!
//! The private key file is the unencrypted `openssh-key-v1` format that `ssh-keygen -t ed25519` writes,
//! so `ssh-keygen -lf`, `ssh -i` and libssh2 all read it, and the agent authenticates to sshd with the
//! very key that signs its protocol handshakes. Files are created 0600 and refused when others can read
//! them. Public keys print as OpenSSH lines and `SHA256:` fingerprints exactly as `ssh-keygen -l` does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::atomic_file;
use crate::error::{Error, Result};

const KEY_TYPE: &str = "ssh-ed25519";
const PEM_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const MAGIC: &[u8] = b"openssh-key-v1\0";

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

/// An Ed25519 key pair: a node's or the gateway's identity.
#[derive(Clone)]
pub struct Identity {
    pair: ed25519_compact::KeyPair,
    comment: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public().fingerprint())
    }
}

impl PublicKey {
    /// Wraps 32 raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    /// The raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The SSH wire blob: `string "ssh-ed25519" || string key`.
    pub fn ssh_blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(51);
        put_string(&mut blob, KEY_TYPE.as_bytes());
        put_string(&mut blob, &self.0);
        blob
    }

    /// Parses an SSH wire blob of an Ed25519 key.
    pub fn from_ssh_blob(blob: &[u8]) -> Result<PublicKey> {
        let mut r = Reader(blob);
        let kind = r.string()?;
        if kind != KEY_TYPE.as_bytes() {
            return Err(Error::InvalidKey(format!(
                "key type {:?} is not ssh-ed25519",
                String::from_utf8_lossy(kind)
            )));
        }
        let key = r.string()?;
        key.try_into()
            .map(PublicKey)
            .map_err(|_| Error::InvalidKey("ed25519 key is not 32 bytes".into()))
    }

    /// The key as an `authorized_keys` line body: `ssh-ed25519 AAAA...` (no comment).
    pub fn openssh(&self) -> String {
        format!("{KEY_TYPE} {}", STANDARD.encode(self.ssh_blob()))
    }

    /// Parses `ssh-ed25519 AAAA... [comment]`.
    pub fn from_openssh(line: &str) -> Result<PublicKey> {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(KEY_TYPE), Some(b64)) => {
                let blob = STANDARD
                    .decode(b64)
                    .map_err(|e| Error::InvalidKey(format!("bad base64: {e}")))?;
                PublicKey::from_ssh_blob(&blob)
            }
            _ => Err(Error::InvalidKey(format!(
                "expected `ssh-ed25519 <base64>`, got {line:?}"
            ))),
        }
    }

    /// The fingerprint exactly as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64.
    pub fn fingerprint(&self) -> String {
        fingerprint_of_blob(&self.ssh_blob())
    }

    /// Checks `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let sig = ed25519_compact::Signature::from_slice(signature)
            .map_err(|_| Error::BadSignature("malformed signature"))?;
        ed25519_compact::PublicKey::new(self.0)
            .verify(message, &sig)
            .map_err(|_| Error::BadSignature("signature does not match the key"))
    }

    /// Standard base64 of the raw key, as carried in JSON.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses [`PublicKey::to_base64`] output.
    pub fn from_base64(text: &str) -> Result<PublicKey> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| Error::InvalidKey(format!("bad base64: {e}")))?;
        bytes
            .try_into()
            .map(PublicKey)
            .map_err(|_| Error::InvalidKey("ed25519 key is not 32 bytes".into()))
    }
}

/// `SHA256:` fingerprint of any SSH public key blob (used for sshd host keys of any type).
pub fn fingerprint_of_blob(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

impl Identity {
    /// A fresh random key pair.
    pub fn generate(comment: &str) -> Identity {
        Identity {
            pair: ed25519_compact::KeyPair::generate(),
            comment: comment.to_string(),
        }
    }

    /// A key pair derived from a 32-byte seed (used for per-join-token enrollment keys).
    pub fn from_seed(seed: [u8; 32], comment: &str) -> Identity {
        Identity {
            pair: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed)),
            comment: comment.to_string(),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.pair.pk)
    }

    /// The 64-byte secret key (seed || public key), as `jwt-simple` takes it.
    pub fn secret_bytes(&self) -> [u8; 64] {
        *self.pair.sk
    }

    /// The key's comment (shown after the key in OpenSSH lines).
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// Signs `message` (deterministic Ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        *self.pair.sk.sign(message, None)
    }

    /// The public key line with comment, as in `id_ed25519.pub`.
    pub fn public_line(&self) -> String {
        format!("{} {}", self.public().openssh(), self.comment)
    }

    /// The private key in OpenSSH's `openssh-key-v1` PEM format (unencrypted).
    pub fn to_openssh_pem(&self) -> String {
        let public_blob = self.public().ssh_blob();
        let mut private = Vec::new();
        // The two check integers only detect a wrong passphrase; unencrypted keys just repeat a value.
        let check = u32::from_be_bytes(self.pair.pk[..4].try_into().expect("4 bytes"));
        private.extend_from_slice(&check.to_be_bytes());
        private.extend_from_slice(&check.to_be_bytes());
        put_string(&mut private, KEY_TYPE.as_bytes());
        put_string(&mut private, &self.pair.pk[..]);
        put_string(&mut private, &self.pair.sk[..]);
        put_string(&mut private, self.comment.as_bytes());
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut body = MAGIC.to_vec();
        put_string(&mut body, b"none");
        put_string(&mut body, b"none");
        put_string(&mut body, b"");
        body.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut body, &public_blob);
        put_string(&mut body, &private);
        let b64 = STANDARD.encode(body);
        let mut pem = String::from(PEM_BEGIN);
        pem.push('\n');
        for chunk in b64.as_bytes().chunks(70) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
            pem.push('\n');
        }
        pem.push_str(PEM_END);
        pem.push('\n');
        pem
    }

    /// Parses an unencrypted Ed25519 `openssh-key-v1` PEM.
    pub fn from_openssh_pem(pem: &str) -> Result<Identity> {
        let inner = pem
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|s| s.strip_suffix(PEM_END))
            .ok_or_else(|| Error::InvalidKey("not an OpenSSH private key".into()))?;
        let b64: String = inner.split_whitespace().collect();
        let body = STANDARD
            .decode(b64)
            .map_err(|e| Error::InvalidKey(format!("bad base64: {e}")))?;
        let rest = body
            .strip_prefix(MAGIC)
            .ok_or_else(|| Error::InvalidKey("missing openssh-key-v1 magic".into()))?;
        let mut r = Reader(rest);
        let (cipher, kdf, _kdf_opts) = (r.string()?, r.string()?, r.string()?);
        if cipher != b"none" || kdf != b"none" {
            return Err(Error::InvalidKey(
                "encrypted keys are not supported; the key must have no passphrase".into(),
            ));
        }
        if r.u32()? != 1 {
            return Err(Error::InvalidKey("expected exactly one key".into()));
        }
        let public = PublicKey::from_ssh_blob(r.string()?)?;
        let mut p = Reader(r.string()?);
        if p.u32()? != p.u32()? {
            return Err(Error::InvalidKey(
                "check integers differ (corrupt key)".into(),
            ));
        }
        if p.string()? != KEY_TYPE.as_bytes() {
            return Err(Error::InvalidKey("not an ssh-ed25519 key".into()));
        }
        let pk = p.string()?;
        let sk = p.string()?;
        let comment = String::from_utf8_lossy(p.string()?).into_owned();
        if pk != public.as_bytes() || sk.len() != 64 || &sk[32..] != public.as_bytes() {
            return Err(Error::InvalidKey(
                "public and private halves disagree".into(),
            ));
        }
        let seed: [u8; 32] = sk[..32].try_into().expect("checked length");
        let identity = Identity::from_seed(seed, &comment);
        if identity.public() != public {
            return Err(Error::InvalidKey(
                "private key does not derive its public key".into(),
            ));
        }
        Ok(identity)
    }

    /// Loads a key file, refusing one that other users can access.
    pub fn load(path: &Path) -> Result<Identity> {
        let shown = path.display().to_string();
        let meta = fs::metadata(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::InsecurePermissions { path: shown, mode });
        }
        let pem = fs::read_to_string(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
        Identity::from_openssh_pem(&pem).map_err(|e| Error::InvalidKey(format!("{shown}: {e}")))
    }

    /// Loads the key at `path`, or creates it (0600, crash-safe) when the file does not exist.
    /// Also writes `<path>.pub`. Returns the identity and whether it was created.
    pub fn load_or_generate(path: &Path, comment: &str) -> Result<(Identity, bool)> {
        if path.exists() {
            return Ok((Identity::load(path)?, false));
        }
        let identity = Identity::generate(comment);
        identity.save(path)?;
        Ok((identity, true))
    }

    /// Writes the key to `path` (0600) and the public line to `<path>.pub` (0644).
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic_file::write(path, self.to_openssh_pem().as_bytes(), 0o600)?;
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        atomic_file::write(
            Path::new(&pub_path),
            format!("{}\n", self.public_line()).as_bytes(),
            0o644,
        )
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads SSH wire strings and integers from a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32> {
        if self.0.len() < 4 {
            return Err(Error::InvalidKey("truncated key data".into()));
        }
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes(head.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return Err(Error::InvalidKey("truncated key data".into()));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let id = Identity::generate("node@test");
        let back = Identity::from_openssh_pem(&id.to_openssh_pem()).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.comment(), "node@test");
        let sig = back.sign(b"hello");
        id.public().verify(b"hello", &sig).unwrap();
        assert!(id.public().verify(b"hellO", &sig).is_err());
    }

    #[test]
    fn openssh_line_round_trips() {
        let id = Identity::generate("x");
        assert_eq!(
            PublicKey::from_openssh(&id.public_line()).unwrap(),
            id.public()
        );
        assert!(PublicKey::from_openssh("ssh-rsa AAAA").is_err());
    }

    #[test]
    fn refuses_world_readable_key() {
        let dir = std::env::temp_dir().join(format!("burrow-id-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let (id, created) = Identity::load_or_generate(&path, "t").unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = Identity::load_or_generate(&path, "t").unwrap();
        assert!(!created);
        assert_eq!(again.public(), id.public());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The fingerprint and the key file must be what OpenSSH itself reads and prints.
    #[test]
    fn matches_ssh_keygen() {
        let Ok(out) = std::process::Command::new("ssh-keygen").arg("-?").output() else {
            eprintln!("ssh-keygen not installed; skipping");
            return;
        };
        drop(out);
        let dir = std::env::temp_dir().join(format!("burrow-keygen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("id");
        let id = Identity::generate("fp@test");
        id.save(&path).unwrap();
        // -l on the private key file makes ssh-keygen parse our PEM, not just the .pub line.
        let out = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ssh-keygen failed: {text}");
        assert_eq!(
            text.split_whitespace().nth(1),
            Some(id.public().fingerprint().as_str())
        );
        // -y derives the public key from the private file: proves the PEM is valid for OpenSSH.
        let out = std::process::Command::new("ssh-keygen")
            .args(["-y", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        assert_eq!(PublicKey::from_openssh(line.trim()).unwrap(), id.public());
        fs::remove_dir_all(&dir).unwrap();
    }
}

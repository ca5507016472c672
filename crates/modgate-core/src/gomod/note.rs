//! Signed notes and the checksum database's tree and record texts (golang.org/x/mod/sumdb/note
//! and sumdb/tlog's note.go): verifier keys in the GOSUMDB form, Ed25519 signature checks,
//! `go.sum database tree` notes and lookup records. Pure.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::tlog::{HASH_SIZE, Hash, Tree};

/// The public checksum database's verifier key (as in GOSUMDB).
pub const SUM_GOLANG_ORG_KEY: &str =
    "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

/// A checksum-database key or signed note that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("invalid checksum-database key {0:?}")]
    BadKey(String),
    #[error("checksum database answer has no signed note")]
    Unsigned,
    #[error("checksum database signature by {0} does not verify")]
    BadSignature(String),
    #[error("checksum database note is not signed by {0}")]
    NotSignedBy(String),
}

/// A checksum-database verifier key: name, key hash and Ed25519 public key.
#[derive(Debug, Clone)]
pub struct VerifierKey {
    pub name: String,
    hash: [u8; 4],
    key: Vec<u8>,
}

impl VerifierKey {
    /// Parses `name+hash+base64key` (the GOSUMDB form). The hash must be the key's own
    /// (`note.NewVerifier`): the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ key).
    pub fn parse(vkey: &str) -> Result<VerifierKey, NoteError> {
        let bad = || NoteError::BadKey(vkey.to_string());
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let hash = u32::from_str_radix(hash, 16).map_err(|_| bad())?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| bad())?;
        if key.len() != 33 || key[0] != 1 || !valid_name(name) {
            return Err(bad());
        }
        if key_hash(name, &key) != hash.to_be_bytes() {
            return Err(bad());
        }
        Ok(VerifierKey {
            name: name.to_string(),
            hash: hash.to_be_bytes(),
            key: key[1..].to_vec(),
        })
    }

    /// Verifies a signed note; returns its text.
    pub fn verify_note<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let Some(split) = note.find("\n\n") else {
            return Err(NoteError::Unsigned);
        };
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                continue;
            };
            let Some((name, sig)) = rest.split_once(' ') else {
                continue;
            };
            if name != self.name {
                continue;
            }
            let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
                continue;
            };
            if sig.len() != 68 || sig[..4] != self.hash {
                continue;
            }
            let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key);
            return key
                .verify(text.as_bytes(), &sig[4..])
                .map(|_| text)
                .map_err(|_| NoteError::BadSignature(name.to_string()));
        }
        Err(NoteError::NotSignedBy(self.name.clone()))
    }
}

/// `keyHash`: the first 4 bytes of SHA-256(name ‖ "\n" ‖ key), key with its algorithm byte.
fn key_hash(name: &str, key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(key);
    h.finalize()[..4].try_into().expect("4 bytes")
}

/// `isValidName`: non-empty, no whitespace, no `+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

/// A checksum-database signing key (`note.NewSigner`): Ed25519, kept in Go's signer-key form
/// `PRIVATE+KEY+name+hash+base64(0x01 ‖ seed)`.
pub struct Signer {
    name: String,
    hash: [u8; 4],
    seed: [u8; 32],
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("name", &self.name).finish()
    }
}

impl Signer {
    /// A signer named `name` from a 32-byte Ed25519 seed (`note.GenerateKey` with the seed
    /// drawn by the caller).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Signer, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKey(name.to_string()));
        }
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| NoteError::BadKey(name.to_string()))?;
        let mut public = vec![1u8];
        public.extend_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
        Ok(Signer {
            name: name.to_string(),
            hash: key_hash(name, &public),
            seed,
            pair,
        })
    }

    /// Parses Go's signer-key form; the hash must be the public key's.
    pub fn parse(skey: &str) -> Result<Signer, NoteError> {
        let bad = || NoteError::BadKey("PRIVATE+KEY+...".to_string());
        let rest = skey.trim().strip_prefix("PRIVATE+KEY+").ok_or_else(bad)?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let hash = (hash.len() == 8)
            .then(|| u32::from_str_radix(hash, 16).ok())
            .flatten()
            .ok_or_else(bad)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| bad())?;
        if key.len() != 33 || key[0] != 1 {
            return Err(bad());
        }
        let signer = Signer::from_seed(name, key[1..].try_into().expect("32 bytes"))?;
        if signer.hash != hash.to_be_bytes() {
            return Err(bad());
        }
        Ok(signer)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signer-key form, for the key file.
    pub fn to_skey(&self) -> String {
        let mut key = vec![1u8];
        key.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(&self.hash),
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// The verifier key, as an agent writes it in GOSUMDB.
    pub fn vkey(&self) -> String {
        let mut key = vec![1u8];
        key.extend_from_slice(ring::signature::KeyPair::public_key(&self.pair).as_ref());
        format!(
            "{}+{}+{}",
            self.name,
            hex4(&self.hash),
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// `note.Sign` with this one signature: the text (ending in a newline), a blank line and
    /// the signature line.
    pub fn sign(&self, text: &str) -> String {
        debug_assert!(text.ends_with('\n'));
        let mut sig = self.hash.to_vec();
        sig.extend_from_slice(self.pair.sign(text.as_bytes()).as_ref());
        format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            base64::engine::general_purpose::STANDARD.encode(sig)
        )
    }
}

fn hex4(b: &[u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(*b))
}

/// `tlog.FormatTree`: the text of a tree note.
pub fn format_tree(tree: &Tree) -> String {
    format!(
        "go.sum database tree\n{}\n{}\n",
        tree.n,
        base64::engine::general_purpose::STANDARD.encode(tree.hash)
    )
}

/// A tree note or lookup record that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("malformed tree note")]
    Tree,
    #[error("malformed record data")]
    Record,
}

/// `tlog.ParseTree`: `go.sum database tree`, the size, the base64 root hash; later lines are
/// ignored.
pub fn parse_tree(text: &str) -> Result<Tree, FormatError> {
    let rest = text
        .strip_prefix("go.sum database tree\n")
        .ok_or(FormatError::Tree)?;
    if text.matches('\n').count() < 3 || text.len() > 1_000_000 {
        return Err(FormatError::Tree);
    }
    let mut lines = rest.splitn(3, '\n');
    let (Some(n), Some(h)) = (lines.next(), lines.next()) else {
        return Err(FormatError::Tree);
    };
    let size: u64 = n.parse().map_err(|_| FormatError::Tree)?;
    if size.to_string() != n {
        return Err(FormatError::Tree);
    }
    let hash = base64::engine::general_purpose::STANDARD
        .decode(h)
        .ok()
        .filter(|b| b.len() == HASH_SIZE)
        .ok_or(FormatError::Tree)?;
    Ok(Tree {
        n: size,
        hash: Hash::try_from(hash.as_slice()).expect("32 bytes"),
    })
}

/// `tlog.ParseRecord`: the record id, the record text (the go.sum lines, each ending in a
/// newline) and the rest (in a lookup answer, the signed tree note).
pub fn parse_record(msg: &str) -> Result<(u64, &str, &str), FormatError> {
    let (id, rest) = msg.split_once('\n').ok_or(FormatError::Record)?;
    let id: u64 = id.parse().map_err(|_| FormatError::Record)?;
    let end = rest.find("\n\n").ok_or(FormatError::Record)?;
    let (text, rest) = (&rest[..end + 1], &rest[end + 2..]);
    let valid = text.chars().all(|c| c == '\n' || (c as u32) >= 0x20) && text.ends_with('\n');
    if !valid {
        return Err(FormatError::Record);
    }
    Ok((id, text, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_key_parses_and_a_wrong_hash_is_refused() {
        let k = VerifierKey::parse(SUM_GOLANG_ORG_KEY).unwrap();
        assert_eq!(k.name, "sum.golang.org");
        assert!(VerifierKey::parse("sum.golang.org+zz+AAAA").is_err());
        // The same key under another hash, or another name.
        let other_hash = SUM_GOLANG_ORG_KEY.replace("033de0ae", "033de0af");
        assert!(VerifierKey::parse(&other_hash).is_err());
        let other_name = SUM_GOLANG_ORG_KEY.replace("sum.golang.org", "sum.example.org");
        assert!(VerifierKey::parse(&other_name).is_err());
    }

    #[test]
    fn signing_matches_the_go_implementation() {
        // x/mod/sumdb/note's TestSign vector.
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let signer = Signer::parse(skey).unwrap();
        assert_eq!(
            signer.vkey(),
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        );
        assert_eq!(signer.to_skey(), skey);
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        let note = signer.sign(text);
        assert_eq!(
            note,
            format!(
                "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            )
        );
        let v = VerifierKey::parse(&signer.vkey()).unwrap();
        assert_eq!(v.verify_note(&note).unwrap(), text);
        // A wrong hash, another name with the same hash, or a foreign algorithm are refused.
        assert!(Signer::parse(&skey.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(Signer::parse(&skey.replace("PeterNeumann", "PeterNeumanm")).is_err());
        assert!(Signer::parse(&skey.replace("+AYEK", "+AZEK")).is_err());
        assert!(Signer::from_seed("bad name", [7; 32]).is_err());
        assert!(Signer::from_seed("a+b", [7; 32]).is_err());
        let fresh = Signer::from_seed("sum.corp.example", [7; 32]).unwrap();
        assert_eq!(
            Signer::parse(&fresh.to_skey()).unwrap().vkey(),
            fresh.vkey()
        );
        let tree = Tree {
            n: 3,
            hash: [9; 32],
        };
        assert_eq!(parse_tree(&format_tree(&tree)).unwrap(), tree);
    }

    #[test]
    fn trees_and_records() {
        let t = parse_tree(
            "go.sum database tree\n2\nnND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=\nextra\n",
        )
        .unwrap();
        assert_eq!(t.n, 2);
        for bad in [
            "go.sum database tree\n02\nnND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=\n",
            "go.sum database tree\n2\nshort\n",
            "go.sum database tree\n2\n",
            "other\n2\nnND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=\n",
        ] {
            assert_eq!(parse_tree(bad), Err(FormatError::Tree), "{bad:?}");
        }
        let msg = "7\nexample.com/m v1.0.0 h1:x\nexample.com/m v1.0.0/go.mod h1:y\n\ngo.sum database tree\n";
        let (id, text, rest) = parse_record(msg).unwrap();
        assert_eq!(id, 7);
        assert_eq!(
            text,
            "example.com/m v1.0.0 h1:x\nexample.com/m v1.0.0/go.mod h1:y\n"
        );
        assert_eq!(rest, "go.sum database tree\n");
        assert!(parse_record("x\na\n\n").is_err());
        assert!(parse_record("1\na\tb\n\n").is_err());
    }
}

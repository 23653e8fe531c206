//! The certificate cache in upstream's layout (x/crypto autocert `DirCache`), so certificates
//! obtained by the Go binary are reused and ours are readable by it.
//!
//! `<root>/<sha256-hex of the ACME directory option>/` holds `<domain>` (private key PEM then the
//! certificate chain) and `acme_account+key`. Upstream writes SEC1 `EC PRIVATE KEY` blocks; we
//! write the same and read SEC1 or PKCS#8.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls_acme::{AccountCache, CertCache};

use crate::der;

/// The file holding the ACME account key.
const ACCOUNT_FILE: &str = "acme_account+key";

/// The cache directory for one ACME directory option (empty = Let's Encrypt production).
pub fn cache_dir(cache_root: &Path, directory_option: &str) -> PathBuf {
    let digest = ring::digest::digest(&ring::digest::SHA256, directory_option.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    cache_root.join(hex)
}

/// Whether the cache holds a certificate entry for `host` (the on-demand shortcut, §10.6.2).
pub fn has_certificate(dir: &Path, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    dir.join(host).is_file() || dir.join(format!("{host}+rsa")).is_file()
}

/// rustls-acme's cache interface over upstream's layout.
#[derive(Debug, Clone)]
pub struct UpstreamDirCache {
    dir: PathBuf,
}

impl UpstreamDirCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        UpstreamDirCache { dir }
    }

    fn write(&self, name: &str, contents: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))
    }

    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.dir.join(name)) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Every PEM section of `data`, whatever its kind.
fn sections(data: &[u8]) -> rustls::pki_types::pem::SliceIter<'_, (SectionKind, Vec<u8>)> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(data)
}

/// A private key block in PKCS#8 DER, from either PKCS#8 or SEC1 P-256 PEM.
fn pkcs8_of(kind: SectionKind, der: Vec<u8>) -> Option<Vec<u8>> {
    match kind {
        SectionKind::PrivateKey => Some(der),
        SectionKind::EcPrivateKey => Some(der::sec1_p256_to_pkcs8(&der)),
        _ => None,
    }
}

/// Converts a cached entry (upstream's or ours) to what rustls-acme parses: a PKCS#8 key block
/// then the chain. `None` for entries it cannot use (RSA keys, no chain, expired certificates),
/// which then count as missing, as upstream treats them.
fn entry_for_rustls_acme(data: &[u8]) -> Option<Vec<u8>> {
    let mut sections = sections(data);
    let (kind, key) = sections.next()?.ok()?;
    let key = pkcs8_of(kind, key)?;
    let mut out = der::pem("PRIVATE KEY", &key);
    let mut leaf_checked = false;
    for section in sections {
        let (kind, cert) = section.ok()?;
        if kind != SectionKind::Certificate {
            continue;
        }
        if !leaf_checked {
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).ok()?;
            if !parsed.validity().is_valid() {
                return None;
            }
            leaf_checked = true;
        }
        out.push_str(&der::pem("CERTIFICATE", &cert));
    }
    leaf_checked.then(|| out.into_bytes())
}

/// What we write for a new certificate: rustls-acme hands a PKCS#8 key then the chain;
/// upstream's layout wants the key as SEC1.
fn entry_for_upstream(pem: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for (i, section) in sections(pem).enumerate() {
        let Ok((kind, der)) = section else {
            // Not parseable by us: store it verbatim rather than lose the certificate.
            return pem.to_vec();
        };
        match (i, kind) {
            (0, SectionKind::PrivateKey) => match der::pkcs8_to_sec1_p256(&der) {
                Some(sec1) => out.push_str(&der::pem("EC PRIVATE KEY", &sec1)),
                None => out.push_str(&der::pem("PRIVATE KEY", &der)),
            },
            (_, SectionKind::Certificate) => out.push_str(&der::pem("CERTIFICATE", &der)),
            _ => {}
        }
    }
    out.into_bytes()
}

/// The cache key of a certificate: the (single) domain, lower-case, without trailing dot.
fn cert_key(domains: &[String]) -> std::io::Result<String> {
    let domain = domains
        .first()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    match domain {
        Some(d) if !d.is_empty() && !d.contains('/') && !d.starts_with('.') => Ok(d),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "invalid certificate cache key",
        )),
    }
}

#[async_trait::async_trait]
impl CertCache for UpstreamDirCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        _directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let key = cert_key(domains)?;
        let data = self.read(&key)?;
        Ok(data.and_then(|d| {
            let entry = entry_for_rustls_acme(&d);
            if entry.is_none() {
                tracing::info!(domain = %key, "ACME: cached certificate unusable; obtaining a new one");
            }
            entry
        }))
    }

    async fn store_cert(
        &self,
        domains: &[String],
        _directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        let key = cert_key(domains)?;
        self.write(&key, &entry_for_upstream(cert))
    }
}

#[async_trait::async_trait]
impl AccountCache for UpstreamDirCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        _contact: &[String],
        _directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        let Some(data) = self.read(ACCOUNT_FILE)? else {
            return Ok(None);
        };
        let key = sections(&data)
            .filter_map(Result::ok)
            .find_map(|(kind, der)| pkcs8_of(kind, der));
        Ok(key)
    }

    async fn store_account(
        &self,
        _contact: &[String],
        _directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        let pem = match der::pkcs8_to_sec1_p256(account) {
            Some(sec1) => der::pem("EC PRIVATE KEY", &sec1),
            None => der::pem("PRIVATE KEY", account),
        };
        self.write(ACCOUNT_FILE, pem.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dirs_match_upstream() {
        let root = Path::new("/c");
        assert_eq!(
            cache_dir(root, ""),
            root.join("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(
            cache_dir(
                root,
                "https://acme-staging-v02.api.letsencrypt.org/directory"
            ),
            root.join("67f2750652314251daad76f012141d33c9f7290f4f8ebb0a006a7f02d394a904")
        );
    }

    fn upstream_entry(host: &str) -> (Vec<u8>, rcgen::CertifiedKey) {
        let issued = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
        let sec1 = der::pkcs8_to_sec1_p256(&issued.key_pair.serialize_der()).unwrap();
        let entry = format!("{}{}", der::pem("EC PRIVATE KEY", &sec1), issued.cert.pem());
        (entry.into_bytes(), issued)
    }

    #[tokio::test]
    async fn reads_upstream_entries_and_writes_them_back_in_the_same_form() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UpstreamDirCache::new(dir.path().join("sub"));
        let (entry, issued) = upstream_entry("a.test");
        cache.write("a.test", &entry).unwrap();
        let domains = vec!["A.test.".to_owned()];
        let loaded = cache.load_cert(&domains, "").await.unwrap().unwrap();
        let text = String::from_utf8(loaded.clone()).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        // The converted key is the same key: rustls pairs it with the certificate.
        assert!(
            crate::static_pem::certified_key_from_pem(issued.cert.pem().as_bytes(), &loaded)
                .is_ok()
        );

        cache
            .store_cert(&["b.test".to_owned()], "", &loaded)
            .await
            .unwrap();
        let written = std::fs::read_to_string(dir.path().join("sub/b.test")).unwrap();
        assert!(
            written.starts_with("-----BEGIN EC PRIVATE KEY-----"),
            "{written}"
        );
        assert!(written.contains("-----BEGIN CERTIFICATE-----"));
        assert!(has_certificate(&dir.path().join("sub"), "b.test."));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("sub/b.test"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn unusable_entries_count_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UpstreamDirCache::new(dir.path().to_owned());
        cache.write("bad.test", b"garbage").unwrap();
        assert!(cache
            .load_cert(&["bad.test".into()], "")
            .await
            .unwrap()
            .is_none());
        assert!(cache
            .load_cert(&["none.test".into()], "")
            .await
            .unwrap()
            .is_none());
        assert!(cache.load_cert(&["../x".into()], "").await.is_err());
    }

    #[tokio::test]
    async fn account_keys_round_trip_as_sec1() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UpstreamDirCache::new(dir.path().to_owned());
        assert!(cache.load_account(&[], "").await.unwrap().is_none());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        cache
            .store_account(&[], "", &key.serialize_der())
            .await
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join(ACCOUNT_FILE)).unwrap();
        assert!(text.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let back = cache.load_account(&[], "").await.unwrap().unwrap();
        let rng = ring::rand::SystemRandom::new();
        assert!(ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &back,
            &rng
        )
        .is_ok());
    }
}

//! TLS for the TLS scenarios: one self-signed ECDSA P-256 certificate made with the `openssl`
//! command at the start of a run (xtask has no dependencies), shared by kamal-proxy and nginx,
//! and a one-request check of each TLS setup with `curl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::procs;

/// The name the TLS service is deployed on; SNI and `Host` of every TLS request. Clients are
/// pointed at 127.0.0.1 explicitly, so it never needs to resolve.
pub const TLS_HOST: &str = "tls.bench";

/// A certificate and its private key, in PEM files.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// `cert.pem`.
    pub cert: PathBuf,
    /// `key.pem` (PKCS#8).
    pub key: PathBuf,
}

/// The `openssl req` arguments for a self-signed P-256 certificate for [`TLS_HOST`], valid
/// for a week, written to `cert` and `key`.
fn request_args(cert: &Path, key: &Path) -> Vec<String> {
    [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "7",
        "-subj",
        &format!("/CN={TLS_HOST}"),
        "-addext",
        &format!("subjectAltName=DNS:{TLS_HOST}"),
        "-keyout",
        &key.display().to_string(),
        "-out",
        &cert.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Makes the certificate in `dir` with `openssl`.
pub fn make_certificate(openssl: &Path, dir: &Path) -> Result<Certificate, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let certificate = Certificate {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let output = procs::run_bounded(
        Command::new(openssl).args(request_args(&certificate.cert, &certificate.key)),
        Duration::from_secs(30),
    )?;
    if !output.status.success() || !certificate.cert.is_file() || !certificate.key.is_file() {
        return Err(format!(
            "openssl could not make a certificate: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(certificate)
}

/// One `GET` of `https://TLS_HOST:port<path>` on 127.0.0.1 with curl, over HTTP/2 or
/// HTTP/1.1 (certificate not verified: it is self-signed); returns the status and the body
/// length, like [`procs::http_check`], and fails when the protocol was not the one asked for.
pub fn check(curl: &Path, port: u16, path: &str, h2: bool) -> Result<(u16, usize), String> {
    let output = procs::run_bounded(
        Command::new(curl).args(check_args(port, path, h2)),
        Duration::from_secs(15),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "curl https://{TLS_HOST}:{port}{path} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let (status, len, version) =
        parse_check(&stdout).ok_or_else(|| format!("curl printed {stdout:?}"))?;
    let wanted = if h2 { "2" } else { "1.1" };
    if version != wanted {
        return Err(format!(
            "127.0.0.1:{port} answered over HTTP/{version}, expected HTTP/{wanted}"
        ));
    }
    Ok((status, len))
}

fn check_args(port: u16, path: &str, h2: bool) -> Vec<String> {
    vec![
        "--silent".into(),
        "--show-error".into(),
        "--insecure".into(),
        "--max-time".into(),
        "10".into(),
        // The name resolves to loopback for this request only.
        "--resolve".into(),
        format!("{TLS_HOST}:{port}:127.0.0.1"),
        if h2 { "--http2" } else { "--http1.1" }.into(),
        "--output".into(),
        "/dev/null".into(),
        "--write-out".into(),
        "%{http_code} %{size_download} %{http_version}".into(),
        format!("https://{TLS_HOST}:{port}{path}"),
    ]
}

/// `200 13 2` → (200, 13, "2").
fn parse_check(out: &str) -> Option<(u16, usize, &str)> {
    let mut parts = out.split_whitespace();
    let status = parts.next()?.parse().ok()?;
    let len = parts.next()?.parse().ok()?;
    Some((status, len, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_request_is_p256_for_the_bench_name() {
        let args = request_args(Path::new("/d/cert.pem"), Path::new("/d/key.pem")).join(" ");
        assert!(args.contains("-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"));
        assert!(args.contains("subjectAltName=DNS:tls.bench"));
        assert!(args.ends_with("-keyout /d/key.pem -out /d/cert.pem"));
    }

    #[test]
    fn makes_a_certificate_when_openssl_is_installed() {
        let Some(openssl) = procs::which("openssl") else {
            eprintln!("openssl not installed; skipped");
            return;
        };
        let dir = std::env::temp_dir().join(format!("xtask-tls-test-{}", std::process::id()));
        let made = make_certificate(&openssl, &dir);
        let cert = made
            .as_ref()
            .map(|c| std::fs::read_to_string(&c.cert).unwrap_or_default());
        let key = made
            .as_ref()
            .map(|c| std::fs::read_to_string(&c.key).unwrap_or_default());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(cert.unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.unwrap().contains("PRIVATE KEY-----"));
    }

    #[test]
    fn check_goes_to_loopback_and_reads_curls_summary() {
        let args = check_args(8443, "/", true).join(" ");
        assert!(args.contains("--resolve tls.bench:8443:127.0.0.1 --http2"));
        assert!(args.ends_with("https://tls.bench:8443/"));
        assert!(check_args(1, "/", false).contains(&"--http1.1".to_string()));
        assert_eq!(parse_check("200 13 2"), Some((200, 13, "2")));
        assert_eq!(parse_check("200 13"), None);
    }
}

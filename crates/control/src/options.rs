//! Service and target options: one shape for the control protocol and the state file
//! (field names of Appendix A), upstream defaults, normalisation and validation (§2.3.1).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::GoDuration;
use crate::error::{OnDemandUrlError, OptionsError};
use crate::go_url;

/// The path every service without `--path-prefix` serves.
pub const ROOT_PATH: &str = "/";
/// Default `--health-check-path`.
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/up";
/// Default `--health-check-interval`.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: GoDuration = GoDuration(1_000_000_000);
/// Default `--health-check-timeout`.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: GoDuration = GoDuration(5_000_000_000);
/// Default `--target-timeout`.
pub const DEFAULT_TARGET_TIMEOUT: GoDuration = GoDuration(30_000_000_000);
/// Default `--writer-affinity-timeout`.
pub const DEFAULT_WRITER_AFFINITY_TIMEOUT: GoDuration = GoDuration(1_000_000_000);
/// Default `--deploy-timeout`.
pub const DEFAULT_DEPLOY_TIMEOUT: GoDuration = GoDuration(30_000_000_000);
/// Default `--drain-timeout` (deploy, rollout deploy, pause, stop).
pub const DEFAULT_DRAIN_TIMEOUT: GoDuration = GoDuration(30_000_000_000);
/// Default `pause --max-pause`.
pub const DEFAULT_PAUSE_TIMEOUT: GoDuration = GoDuration(30_000_000_000);
/// Default `--buffer-memory` in bytes.
pub const DEFAULT_MAX_MEMORY_BUFFER_SIZE: i64 = 1_048_576;
/// The ACME directory `--tls-staging` selects.
pub const ACME_STAGING_DIRECTORY: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Per-service settings of a deploy (`options` in the state file).
///
/// Deserialising fills absent fields with zero values, as upstream's decoder does;
/// `Default` gives the CLI's defaults instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOptions {
    /// `--host` values; empty means the default (wildcard) host.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub hosts: Vec<String>,
    /// `--path-prefix` values; empty means `/`.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub path_prefixes: Vec<String>,
    /// `--tls`.
    #[serde(default)]
    pub tls_enabled: bool,
    /// `--tls-certificate-path`.
    #[serde(default)]
    pub tls_certificate_path: String,
    /// `--tls-private-key-path`.
    #[serde(default)]
    pub tls_private_key_path: String,
    /// `--tls-on-demand-url`.
    #[serde(default)]
    pub tls_on_demand_url: String,
    /// `--tls-redirect`.
    #[serde(default)]
    pub tls_redirect: bool,
    /// `--canonical-host`.
    #[serde(default)]
    pub canonical_host: String,
    /// ACME directory URL; empty means Let's Encrypt production.
    #[serde(default)]
    pub acme_directory: String,
    /// `--tls-acme-cache-path`.
    #[serde(default)]
    pub acme_cache_path: String,
    /// `--error-pages`.
    #[serde(default)]
    pub error_page_path: String,
    /// `--strip-path-prefix`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// `--writer-affinity-timeout`.
    #[serde(default)]
    pub writer_affinity_timeout: GoDuration,
    /// `--read-target-websockets`.
    #[serde(default)]
    pub read_targets_accept_websockets: bool,
    /// `--exclude-metrics-path` values.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub exclude_metrics_paths: Vec<String>,
    /// `--client-ip-header`.
    #[serde(default)]
    pub client_ip_header: String,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            hosts: Vec::new(),
            path_prefixes: Vec::new(),
            tls_enabled: false,
            tls_certificate_path: String::new(),
            tls_private_key_path: String::new(),
            tls_on_demand_url: String::new(),
            tls_redirect: true,
            canonical_host: String::new(),
            acme_directory: String::new(),
            acme_cache_path: String::new(),
            error_page_path: String::new(),
            strip_prefix: true,
            writer_affinity_timeout: DEFAULT_WRITER_AFFINITY_TIMEOUT,
            read_targets_accept_websockets: false,
            exclude_metrics_paths: Vec::new(),
            client_ip_header: String::new(),
        }
    }
}

/// Normalises one path prefix (§3.3): `"/"` + the value without leading/trailing slashes.
pub fn normalize_path_prefix(prefix: &str) -> String {
    let mut normalized = String::with_capacity(prefix.len() + 1);
    normalized.push('/');
    normalized.push_str(prefix.trim_matches('/'));
    normalized
}

impl ServiceOptions {
    /// The hosts as routed: an empty list becomes `[""]` (the default host).
    pub fn normalized_hosts(&self) -> Vec<String> {
        if self.hosts.is_empty() {
            vec![String::new()]
        } else {
            self.hosts.clone()
        }
    }

    /// The path prefixes as routed: each normalised, an empty list becomes `["/"]`.
    pub fn normalized_path_prefixes(&self) -> Vec<String> {
        if self.path_prefixes.is_empty() {
            vec![ROOT_PATH.to_owned()]
        } else {
            self.path_prefixes
                .iter()
                .map(|p| normalize_path_prefix(p))
                .collect()
        }
    }

    /// Replaces hosts and path prefixes by their normalised forms (as stored in the state file).
    pub fn normalize(&mut self) {
        self.hosts = self.normalized_hosts();
        self.path_prefixes = self.normalized_path_prefixes();
    }

    /// True when at least one host is configured and none is empty.
    pub fn has_configured_hosts(&self) -> bool {
        let hosts = self.normalized_hosts();
        !hosts.is_empty() && hosts.iter().all(|h| !h.is_empty())
    }

    /// True when the (normalised) path prefixes include `/`.
    pub fn serves_root_path(&self) -> bool {
        self.normalized_path_prefixes()
            .iter()
            .any(|p| p == ROOT_PATH)
    }

    /// Validates the options exactly as upstream does, on a normalised copy (§2.3.1).
    pub fn validate(&self) -> Result<(), OptionsError> {
        let hosts = self.normalized_hosts();
        let has_configured_hosts = hosts.iter().all(|h| !h.is_empty());

        if !self.tls_on_demand_url.is_empty() && !self.tls_enabled {
            return Err(OptionsError::OnDemandRequiresTls);
        }

        if self.tls_enabled {
            if !self.tls_on_demand_url.is_empty() {
                if has_configured_hosts {
                    return Err(OptionsError::OnDemandWithHosts);
                }
                if !self.tls_certificate_path.is_empty() || !self.tls_private_key_path.is_empty() {
                    return Err(OptionsError::OnDemandWithCustomCertificate);
                }
                if !self.canonical_host.is_empty() {
                    return Err(OptionsError::OnDemandWithCanonicalHost);
                }
                parse_on_demand_url(&self.tls_on_demand_url)?;
            } else if !has_configured_hosts {
                return Err(OptionsError::TlsRequiresHost);
            }

            if !self.serves_root_path() {
                return Err(OptionsError::TlsRequiresRootPath);
            }
        }

        if !self.canonical_host.is_empty()
            && !hosts[0].is_empty()
            && !hosts.contains(&self.canonical_host)
        {
            return Err(OptionsError::CanonicalHostNotInHosts {
                canonical_host: self.canonical_host.clone(),
                hosts,
            });
        }

        Ok(())
    }
}

/// How an on-demand TLS approval URL is reached (§10.6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDemandUrl {
    /// A path (with optional query) routed through the service itself, with the checked host
    /// as `Host`.
    Local {
        /// The path and query, as given.
        path_and_query: String,
    },
    /// An absolute `http`/`https` URL on another server.
    External {
        /// The URL, as given.
        url: String,
    },
}

/// Classifies and checks a `--tls-on-demand-url` value with upstream's rules and messages.
pub fn parse_on_demand_url(url: &str) -> Result<OnDemandUrl, OnDemandUrlError> {
    if url.starts_with("//") {
        return Err(OnDemandUrlError::NotPathOrAbsoluteUrl);
    }
    if url.starts_with('/') {
        go_url::parse(url).map_err(|message| OnDemandUrlError::Unparsable { message })?;
        return Ok(OnDemandUrl::Local {
            path_and_query: url.to_owned(),
        });
    }
    let parsed = go_url::parse_request_uri(url)
        .map_err(|message| OnDemandUrlError::Unparsable { message })?;
    if parsed.scheme != "http" && parsed.scheme != "https" {
        return Err(OnDemandUrlError::UnsupportedScheme {
            scheme: parsed.scheme,
        });
    }
    if parsed.host.is_empty() {
        return Err(OnDemandUrlError::MissingHost);
    }
    Ok(OnDemandUrl::External {
        url: url.to_owned(),
    })
}

/// Health-check settings of a service's targets (`health_check_config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckConfig {
    /// `--health-check-path`.
    #[serde(default)]
    pub path: String,
    /// `--health-check-port`; 0 means the target's own port.
    #[serde(default)]
    pub port: u16,
    /// `--health-check-interval`.
    #[serde(default)]
    pub interval: GoDuration,
    /// `--health-check-timeout`.
    #[serde(default)]
    pub timeout: GoDuration,
    /// `--health-check-host`; empty means the target address.
    #[serde(default)]
    pub host: String,
}

impl HealthCheckConfig {
    /// All-zero settings, what upstream's decoder yields for an absent object.
    pub fn zero() -> HealthCheckConfig {
        HealthCheckConfig {
            path: String::new(),
            port: 0,
            interval: GoDuration::ZERO,
            timeout: GoDuration::ZERO,
            host: String::new(),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: DEFAULT_HEALTH_CHECK_PATH.to_owned(),
            port: 0,
            interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            timeout: DEFAULT_HEALTH_CHECK_TIMEOUT,
            host: String::new(),
        }
    }
}

/// Per-target settings of a deploy (`target_options` in the state file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOptions {
    /// Health-check settings.
    #[serde(default = "HealthCheckConfig::zero")]
    pub health_check_config: HealthCheckConfig,
    /// `--target-timeout`: how long to wait for response headers.
    #[serde(default)]
    pub response_timeout: GoDuration,
    /// `--buffer-requests`.
    #[serde(default)]
    pub buffer_requests: bool,
    /// `--buffer-responses`.
    #[serde(default)]
    pub buffer_responses: bool,
    /// `--buffer-memory`.
    #[serde(default)]
    pub max_memory_buffer_size: i64,
    /// `--max-request-body` (0 = unlimited).
    #[serde(default)]
    pub max_request_body_size: i64,
    /// `--max-response-body` (0 = unlimited).
    #[serde(default)]
    pub max_response_body_size: i64,
    /// `--log-request-header` values, canonicalised.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub log_request_headers: Vec<String>,
    /// `--log-response-header` values, canonicalised.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub log_response_headers: Vec<String>,
    /// `--forward-headers`.
    #[serde(default)]
    pub forward_headers: bool,
    /// `--scope-cookie-paths`.
    #[serde(default)]
    pub scope_cookie_paths: bool,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            health_check_config: HealthCheckConfig::default(),
            response_timeout: DEFAULT_TARGET_TIMEOUT,
            buffer_requests: false,
            buffer_responses: false,
            max_memory_buffer_size: DEFAULT_MAX_MEMORY_BUFFER_SIZE,
            max_request_body_size: 0,
            max_response_body_size: 0,
            log_request_headers: Vec::new(),
            log_response_headers: Vec::new(),
            forward_headers: true,
            scope_cookie_paths: false,
        }
    }
}

impl TargetOptions {
    /// Canonicalises the log header names like Go's `http.CanonicalHeaderKey` (`x-custom` →
    /// `X-Custom`), which is how upstream stores them.
    pub fn canonicalize_log_headers(&mut self) {
        for name in self
            .log_request_headers
            .iter_mut()
            .chain(self.log_response_headers.iter_mut())
        {
            *name = canonical_header_key(name);
        }
    }
}

/// Go's `http.CanonicalHeaderKey`: upper-case the first letter and every letter after a `-`,
/// lower-case the rest; names containing a space or a non-token byte are returned unchanged.
pub fn canonical_header_key(name: &str) -> String {
    let valid = name.bytes().all(is_token_byte);
    if !valid {
        return name.to_owned();
    }
    let mut upper = true;
    name.bytes()
        .map(|b| {
            let c = if upper {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            upper = b == b'-';
            char::from(c)
        })
        .collect()
}

/// RFC 7230 token characters, the set Go accepts before canonicalising a header key.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads `null` (or an absent field, via `default`) as an empty list.
pub(crate) fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Writes an empty list as `null`, the shape Go's encoder gives a nil slice.
pub(crate) fn empty_as_null<S, T>(list: &[T], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Serialize,
{
    if list.is_empty() {
        serializer.serialize_none()
    } else {
        list.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_options(hosts: &[&str]) -> ServiceOptions {
        ServiceOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls_enabled: true,
            ..ServiceOptions::default()
        }
    }

    fn message(options: &ServiceOptions) -> String {
        options.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_upstream() {
        let service = ServiceOptions::default();
        assert!(service.strip_prefix);
        assert!(service.tls_redirect);
        assert!(!service.tls_enabled);
        assert_eq!(service.writer_affinity_timeout.to_string(), "1s");
        let target = TargetOptions::default();
        assert_eq!(target.health_check_config.path, "/up");
        assert_eq!(target.health_check_config.port, 0);
        assert_eq!(target.health_check_config.interval.to_string(), "1s");
        assert_eq!(target.health_check_config.timeout.to_string(), "5s");
        assert_eq!(target.response_timeout.to_string(), "30s");
        assert_eq!(target.max_memory_buffer_size, 1_048_576);
        assert_eq!(target.max_request_body_size, 0);
        assert!(target.forward_headers);
        assert!(!target.scope_cookie_paths);
    }

    #[test]
    fn path_prefixes_normalise() {
        for (input, want) in [
            ("api", "/api"),
            ("/api", "/api"),
            ("/api/", "/api"),
            ("//api//", "/api"),
            ("a/b/", "/a/b"),
            ("", "/"),
            ("/", "/"),
            ("///", "/"),
            ("/A//b", "/A//b"),
        ] {
            assert_eq!(normalize_path_prefix(input), want, "{input:?}");
        }
        let mut options = ServiceOptions::default();
        assert_eq!(options.normalized_path_prefixes(), vec!["/"]);
        assert_eq!(options.normalized_hosts(), vec![""]);
        options.path_prefixes = vec!["api/".into(), "/app".into(), "api".into()];
        assert_eq!(
            options.normalized_path_prefixes(),
            vec!["/api", "/app", "/api"],
            "no de-duplication, as upstream"
        );
        options.normalize();
        assert_eq!(options.hosts, vec![""]);
    }

    #[test]
    fn valid_options_pass() {
        assert_eq!(ServiceOptions::default().validate(), Ok(()));
        assert_eq!(tls_options(&["a.test"]).validate(), Ok(()));
        let mut on_demand = tls_options(&[]);
        on_demand.tls_on_demand_url = "https://example.com/allow-host".into();
        assert_eq!(on_demand.validate(), Ok(()));
        on_demand.tls_on_demand_url = "/allow?x=1".into();
        assert_eq!(on_demand.validate(), Ok(()));
        // An empty host among others means "not configured", which on-demand accepts.
        let mut mixed = tls_options(&["a.test", ""]);
        mixed.tls_on_demand_url = "http://check.test/".into();
        assert_eq!(mixed.validate(), Ok(()));
        let canonical = ServiceOptions {
            hosts: vec!["a.test".into(), "b.test".into()],
            canonical_host: "b.test".into(),
            ..ServiceOptions::default()
        };
        assert_eq!(canonical.validate(), Ok(()));
        let canonical_without_hosts = ServiceOptions {
            canonical_host: "c.test".into(),
            ..ServiceOptions::default()
        };
        assert_eq!(canonical_without_hosts.validate(), Ok(()));
    }

    #[test]
    fn validation_messages_match_upstream() {
        let mut o = ServiceOptions {
            tls_on_demand_url: "/allow".into(),
            ..ServiceOptions::default()
        };
        assert_eq!(
            message(&o),
            "service options invalid: TLS must be enabled to use a TLS on-demand URL"
        );

        o = tls_options(&["a.test"]);
        o.tls_on_demand_url = "/allow".into();
        assert_eq!(
            message(&o),
            "service options invalid: cannot set hosts when using a TLS on-demand URL"
        );

        o = tls_options(&[]);
        o.tls_on_demand_url = "/allow".into();
        o.tls_private_key_path = "/k.pem".into();
        assert_eq!(
            message(&o),
            "service options invalid: cannot use a custom TLS certificate with a TLS on-demand URL"
        );

        o = tls_options(&[]);
        o.tls_on_demand_url = "/allow".into();
        o.canonical_host = "a.test".into();
        assert_eq!(
            message(&o),
            "service options invalid: cannot set a canonical host when using a TLS on-demand URL"
        );

        for (url, want) in [
            (
                "//x.test/allow",
                "tls-on-demand-url must be a path or an absolute http(s) URL",
            ),
            (
                "allow",
                "unable to parse tls-on-demand-url: parse \"allow\": invalid URI for request",
            ),
            (
                "://bad",
                "unable to parse tls-on-demand-url: parse \"://bad\": missing protocol scheme",
            ),
            (
                "ftp://example.com/allow-host",
                "unsupported scheme \"ftp\" in tls-on-demand-url",
            ),
            ("http:///allow", "missing host in tls-on-demand-url"),
            ("http:allow", "missing host in tls-on-demand-url"),
            (
                "/al%zzow",
                "unable to parse tls-on-demand-url: parse \"/al%zzow\": invalid URL escape \"%zz\"",
            ),
        ] {
            o = tls_options(&[]);
            o.tls_on_demand_url = url.into();
            assert_eq!(
                message(&o),
                format!("service options invalid: {want}"),
                "{url}"
            );
        }

        assert_eq!(
            message(&tls_options(&[])),
            "service options invalid: host must be set when using TLS"
        );
        assert_eq!(
            message(&tls_options(&["a.test", ""])),
            "service options invalid: host must be set when using TLS"
        );

        o = tls_options(&["a.test"]);
        o.path_prefixes = vec!["/api".into()];
        assert_eq!(
            message(&o),
            "service options invalid: TLS settings must be specified on the root path service"
        );
        o.path_prefixes = vec!["/api".into(), "//".into()];
        assert_eq!(o.validate(), Ok(()), "`//` normalises to the root path");

        o = ServiceOptions {
            hosts: vec!["a.test".into(), "b.test".into()],
            canonical_host: "c.test".into(),
            ..ServiceOptions::default()
        };
        assert_eq!(
            message(&o),
            "service options invalid: canonical-host 'c.test' must be present in the hosts list: [a.test b.test]"
        );
    }

    #[test]
    fn on_demand_url_forms() {
        assert_eq!(
            parse_on_demand_url("/check?host=x"),
            Ok(OnDemandUrl::Local {
                path_and_query: "/check?host=x".into()
            })
        );
        assert_eq!(
            parse_on_demand_url("HTTPS://check.test:8443/ok"),
            Ok(OnDemandUrl::External {
                url: "HTTPS://check.test:8443/ok".into()
            })
        );
        assert!(parse_on_demand_url("http://check.test:port/").is_err());
    }

    #[test]
    fn log_headers_are_canonicalised() {
        let mut target = TargetOptions {
            log_request_headers: vec!["x-custom".into(), "CACHE-control".into()],
            log_response_headers: vec!["user agent".into(), "etag".into()],
            ..TargetOptions::default()
        };
        target.canonicalize_log_headers();
        assert_eq!(
            target.log_request_headers,
            vec!["X-Custom", "Cache-Control"]
        );
        assert_eq!(target.log_response_headers, vec!["user agent", "Etag"]);
    }

    #[test]
    fn serde_shape_matches_state_file() {
        let json = serde_json::to_value(ServiceOptions::default()).unwrap();
        assert_eq!(json["hosts"], serde_json::Value::Null);
        assert_eq!(json["exclude_metrics_paths"], serde_json::Value::Null);
        assert_eq!(json["writer_affinity_timeout"], 1_000_000_000);
        let back: ServiceOptions =
            serde_json::from_str(r#"{"hosts":null,"path_prefixes":["/"],"strip_prefix":true}"#)
                .unwrap();
        assert!(back.hosts.is_empty());
        assert_eq!(back.path_prefixes, vec!["/"]);
        // Absent fields take zero values, as in upstream's decoder.
        assert!(!back.tls_redirect);
        assert_eq!(back.writer_affinity_timeout, GoDuration::ZERO);
        let target: TargetOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(target.health_check_config.path, "");
        assert!(target.log_request_headers.is_empty());
        let round: TargetOptions =
            serde_json::from_value(serde_json::to_value(TargetOptions::default()).unwrap())
                .unwrap();
        assert_eq!(round, TargetOptions::default());
    }
}

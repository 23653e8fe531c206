//! Messages exchanged over the control socket: one request frame from the CLI, one response
//! frame from the server. Each frame is an envelope carrying the protocol version.

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::options::{null_as_empty, ServiceOptions, TargetOptions};

/// The protocol version this build speaks; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// A command sent by the CLI.
// One request per connection: boxing the deploy variant would buy nothing and make the
// shape the CLI and server are written against more awkward.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `deploy <service>`.
    Deploy(DeployRequest),
    /// `remove <service>`.
    Remove {
        /// Service name.
        service: String,
    },
    /// `pause <service>`.
    Pause {
        /// Service name.
        service: String,
        /// `--drain-timeout`.
        drain_timeout: GoDuration,
        /// `--max-pause`.
        pause_timeout: GoDuration,
    },
    /// `stop <service>`.
    Stop {
        /// Service name.
        service: String,
        /// `--drain-timeout`.
        drain_timeout: GoDuration,
        /// `--message`.
        #[serde(default)]
        message: String,
    },
    /// `resume <service>`.
    Resume {
        /// Service name.
        service: String,
    },
    /// `list`.
    List,
    /// `rollout deploy <service>`.
    RolloutDeploy(RolloutDeployRequest),
    /// `rollout set <service>`.
    RolloutSet {
        /// Service name.
        service: String,
        /// `--percent`.
        #[serde(default)]
        percentage: i64,
        /// `--list`.
        #[serde(default, deserialize_with = "null_as_empty")]
        allowlist: Vec<String>,
    },
    /// `rollout stop <service>`.
    RolloutStop {
        /// Service name.
        service: String,
    },
}

impl Request {
    /// The command's name as the CLI spells it (`deploy`, `rollout set`, …), for logs.
    pub fn command_name(&self) -> &'static str {
        match self {
            Request::Deploy(_) => "deploy",
            Request::Remove { .. } => "remove",
            Request::Pause { .. } => "pause",
            Request::Stop { .. } => "stop",
            Request::Resume { .. } => "resume",
            Request::List => "list",
            Request::RolloutDeploy(_) => "rollout deploy",
            Request::RolloutSet { .. } => "rollout set",
            Request::RolloutStop { .. } => "rollout stop",
        }
    }

    /// The service the command is about (`None` for `list`).
    pub fn service(&self) -> Option<&str> {
        match self {
            Request::Deploy(d) => Some(&d.service),
            Request::RolloutDeploy(d) => Some(&d.service),
            Request::Remove { service }
            | Request::Pause { service, .. }
            | Request::Stop { service, .. }
            | Request::Resume { service }
            | Request::RolloutSet { service, .. }
            | Request::RolloutStop { service } => Some(service),
            Request::List => None,
        }
    }
}

/// Everything a `deploy` carries; every option is resolved by the client (defaults included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Service name.
    pub service: String,
    /// `--target` values (writers).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub target_urls: Vec<String>,
    /// `--read-target` values.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub reader_urls: Vec<String>,
    /// `--deploy-timeout`.
    pub deploy_timeout: GoDuration,
    /// `--drain-timeout`.
    pub drain_timeout: GoDuration,
    /// `--force`.
    #[serde(default)]
    pub force: bool,
    /// Service options.
    pub service_options: ServiceOptions,
    /// Target options.
    pub target_options: TargetOptions,
}

/// Everything a `rollout deploy` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDeployRequest {
    /// Service name.
    pub service: String,
    /// `--target` values (writers).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub target_urls: Vec<String>,
    /// `--read-target` values.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub reader_urls: Vec<String>,
    /// `--deploy-timeout`.
    pub deploy_timeout: GoDuration,
    /// `--drain-timeout`.
    pub drain_timeout: GoDuration,
}

/// The server's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The command succeeded.
    Ok,
    /// The command failed; the CLI prints `Error: <message>` and exits 1.
    Error {
        /// Upstream's error text.
        message: String,
    },
    /// The answer to `list`.
    List {
        /// Every service, in no particular order (the CLI sorts).
        #[serde(default, deserialize_with = "null_as_empty")]
        services: Vec<ServiceDescription>,
    },
}

impl Response {
    /// An error response with the given message.
    pub fn error(message: impl std::fmt::Display) -> Response {
        Response::Error {
            message: message.to_string(),
        }
    }
}

/// One service as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceDescription {
    /// Service name.
    pub name: String,
    /// Configured hosts (empty for the default host).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub hosts: Vec<String>,
    /// Normalised path prefixes.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub paths: Vec<String>,
    /// Active writer targets, in deploy order.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub targets: Vec<TargetDescription>,
    /// Active reader targets, in deploy order.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub readers: Vec<TargetDescription>,
    /// Rollout writer targets.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub rollout_targets: Vec<TargetDescription>,
    /// Rollout reader targets.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub rollout_readers: Vec<TargetDescription>,
    /// `running`, `paused` or `stopped`.
    #[serde(default)]
    pub state: String,
    /// The effective TLS flag.
    #[serde(default)]
    pub tls: bool,
    /// The stop message, when stopped.
    #[serde(default)]
    pub stop_message: String,
}

/// One target as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetDescription {
    /// `host:port` as given at deploy.
    pub address: String,
    /// `adding`, `healthy`, `unhealthy` or `draining`.
    #[serde(default)]
    pub state: String,
}

/// A request frame: the version envelope around a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The command.
    pub request: Request,
}

/// A response frame: the version envelope around a [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The answer.
    pub response: Response,
}

impl RequestFrame {
    /// Wraps a request in a frame of this build's version.
    pub fn new(request: Request) -> RequestFrame {
        RequestFrame {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

impl ResponseFrame {
    /// Wraps a response in a frame of this build's version.
    pub fn new(response: Response) -> ResponseFrame {
        ResponseFrame {
            version: PROTOCOL_VERSION,
            response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request) {
        let json = serde_json::to_string(&RequestFrame::new(request.clone())).unwrap();
        let back: RequestFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back.version, PROTOCOL_VERSION);
        assert_eq!(back.request, request, "{json}");
    }

    #[test]
    fn every_request_round_trips() {
        let service = "app".to_owned();
        round_trip(Request::Deploy(DeployRequest {
            service: service.clone(),
            target_urls: vec!["web:3000".into()],
            reader_urls: vec![],
            deploy_timeout: GoDuration::from_secs(30),
            drain_timeout: GoDuration::from_secs(30),
            force: true,
            service_options: ServiceOptions::default(),
            target_options: TargetOptions::default(),
        }));
        round_trip(Request::Remove {
            service: service.clone(),
        });
        round_trip(Request::Pause {
            service: service.clone(),
            drain_timeout: GoDuration::from_secs(1),
            pause_timeout: GoDuration::from_secs(2),
        });
        round_trip(Request::Stop {
            service: service.clone(),
            drain_timeout: GoDuration::from_secs(1),
            message: "<back soon>".into(),
        });
        round_trip(Request::Resume {
            service: service.clone(),
        });
        round_trip(Request::List);
        round_trip(Request::RolloutDeploy(RolloutDeployRequest {
            service: service.clone(),
            target_urls: vec!["new:3000".into()],
            reader_urls: vec!["ro:3000".into()],
            deploy_timeout: GoDuration::from_millis(1500),
            drain_timeout: GoDuration::ZERO,
        }));
        round_trip(Request::RolloutSet {
            service: service.clone(),
            percentage: 50,
            allowlist: vec!["vip".into()],
        });
        round_trip(Request::RolloutStop { service });
    }

    #[test]
    fn wire_shape_is_documented_shape() {
        let json = serde_json::to_value(RequestFrame::new(Request::Resume {
            service: "app".into(),
        }))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "request": {"command": "resume", "service": "app"}})
        );
        let list = serde_json::to_value(RequestFrame::new(Request::List)).unwrap();
        assert_eq!(
            list,
            serde_json::json!({"version": 1, "request": {"command": "list"}})
        );
        let error =
            serde_json::to_value(ResponseFrame::new(Response::error("service not found"))).unwrap();
        assert_eq!(
            error,
            serde_json::json!({"version": 1, "response": {"result": "error", "message": "service not found"}})
        );
        let ok = serde_json::to_value(ResponseFrame::new(Response::Ok)).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"version": 1, "response": {"result": "ok"}})
        );
    }

    #[test]
    fn list_response_round_trips() {
        let response = Response::List {
            services: vec![ServiceDescription {
                name: "app".into(),
                hosts: vec!["a.test".into()],
                paths: vec!["/".into()],
                targets: vec![TargetDescription {
                    address: "web:3000".into(),
                    state: "healthy".into(),
                }],
                state: "running".into(),
                tls: true,
                ..ServiceDescription::default()
            }],
        };
        let json = serde_json::to_string(&ResponseFrame::new(response.clone())).unwrap();
        let back: ResponseFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back.response, response);
    }

    #[test]
    fn accessors() {
        assert_eq!(Request::List.command_name(), "list");
        assert_eq!(Request::List.service(), None);
        let set = Request::RolloutSet {
            service: "s".into(),
            percentage: 1,
            allowlist: vec![],
        };
        assert_eq!(set.command_name(), "rollout set");
        assert_eq!(set.service(), Some("s"));
    }
}

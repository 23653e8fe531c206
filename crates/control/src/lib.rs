//! The kamal-proxy control plane: the protocol between the CLI and the running server over a
//! unix socket, and the persisted state file. No HTTP here.
//!
//! * [`duration`]: Go's duration syntax ([`GoDuration`]), used by every timeout flag.
//! * [`options`]: service and target options shared by the protocol and the state file, with
//!   upstream's defaults and validation messages.
//! * [`protocol`]: the request and response messages; [`codec`]: their length-delimited JSON
//!   frames (see `docs/control-protocol.md`).
//! * [`client`]: the blocking call the CLI makes; [`server`]: the owner-only socket listener
//!   the proxy serves with a [`Handler`].
//! * [`paths`]: socket, data directory and state file locations; [`state`]: the state file.
//!
//! ```
//! use std::sync::Arc;
//! use kamal_control::{ControlListener, GoDuration, Handler, Request, Response};
//!
//! struct Proxy;
//!
//! impl Handler for Proxy {
//!     async fn handle(&self, req: Request) -> Response {
//!         match req {
//!             Request::List => Response::List { services: vec![] },
//!             other => Response::error(format!("{} is not supported here", other.command_name())),
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let socket = dir.path().join("kamal-proxy.sock");
//! let listener = ControlListener::bind(&socket)?;
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = runtime.spawn(listener.serve(Arc::new(Proxy), async move {
//!     let _ = stopped.await;
//! }));
//!
//! // The CLI side is blocking; the runtime's worker threads serve meanwhile.
//! let answer = kamal_control::call(&socket, &Request::List)?;
//! assert_eq!(answer, Response::List { services: vec![] });
//!
//! let _ = stop.send(());
//! runtime.block_on(server)??;
//! assert_eq!(GoDuration::parse("1m30s")?.to_string(), "1m30s");
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod codec;
pub mod duration;
pub mod error;
mod go_url;
pub mod options;
pub mod paths;
pub mod protocol;
pub mod quote;
pub mod server;
pub mod state;

pub use client::call;
pub use duration::GoDuration;
pub use error::{
    ClientError, CodecError, ControlError, DurationError, OnDemandUrlError, OptionsError,
    StateError,
};
pub use options::{
    normalize_path_prefix, parse_on_demand_url, HealthCheckConfig, OnDemandUrl, ServiceOptions,
    TargetOptions,
};
pub use protocol::{
    DeployRequest, Request, RequestFrame, Response, ResponseFrame, RolloutDeployRequest,
    ServiceDescription, TargetDescription, PROTOCOL_VERSION,
};
pub use server::{ControlListener, Handler};
pub use state::{
    LoadedState, OrderedWriter, PauseState, RolloutState, SavedService, SkippedService,
    WriteOutcome,
};

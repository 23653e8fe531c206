//! The server side of the control socket: a unix listener created owner-only (0600), one task
//! per connection, each request answered by a [`Handler`].

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::codec::{decode, read_payload, write_frame, MAX_FRAME_SIZE, MAX_RESPONSE_FRAME_SIZE};
use crate::error::{CodecError, ControlError};
use crate::protocol::{Request, Response, ResponseFrame, PROTOCOL_VERSION};

/// How long a connection may take to deliver a complete request (or sit idle between
/// requests). The CLI writes its request at once, so this only sheds abandoned connections.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Executes control commands; implemented by the proxy server.
pub trait Handler: Send + Sync + 'static {
    /// Performs one command and returns its answer. May take as long as the command needs.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// A bound control socket, ready to [`serve`](ControlListener::serve).
///
/// The socket file is removed when the listener is served to completion or dropped, unless
/// another process has replaced it in the meantime.
#[derive(Debug)]
pub struct ControlListener {
    listener: StdUnixListener,
    socket: SocketFile,
}

/// The socket file we created, identified by type, device, inode and change time so that we
/// never delete a file someone else put at the same path (inode numbers are reused at once).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    identity: FileIdentity,
}

#[derive(Debug, PartialEq, Eq)]
struct FileIdentity {
    is_socket: bool,
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            is_socket: meta.file_type().is_socket(),
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if FileIdentity::of(&meta) == self.identity {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "Unable to remove control socket");
                }
            }
        }
    }
}

impl ControlListener {
    /// Creates the control socket at `path` with mode 0600.
    ///
    /// A stale socket file (nobody accepting) or any other non-directory file at `path` is
    /// replaced; a socket that accepts connections means another kamal-proxy is running and
    /// binding fails with [`ControlError::AlreadyRunning`].
    pub fn bind(path: impl AsRef<Path>) -> Result<ControlListener, ControlError> {
        let path = path.as_ref();
        if StdUnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        let bind_error = |source: io::Error| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };

        // Bind inside a private (0700) directory next to the final path, tighten the socket's
        // mode, then rename it into place: nobody else can connect before the mode is 0600,
        // whatever the umask, and the rename replaces a stale socket atomically.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = PrivateDir::create(&parent).map_err(bind_error)?;
        let staged = staging.path.join("s");
        let listener = StdUnixListener::bind(&staged).map_err(bind_error)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        std::fs::rename(&staged, path).map_err(bind_error)?;
        drop(staging);

        let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
        Ok(ControlListener {
            listener,
            socket: SocketFile {
                path: path.to_path_buf(),
                identity: FileIdentity::of(&meta),
            },
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Accepts connections until `shutdown` completes, handling each connection in its own
    /// task and each request with `handler`. On return the socket file has been removed and
    /// open connections have been closed (commands already running in `handler` are not
    /// cancelled; their clients see the connection close).
    pub async fn serve<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ControlError> {
        let ControlListener { listener, socket } = self;
        let listen_error = |source: io::Error| ControlError::Listen {
            path: socket.path.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(listen_error)?;
        let listener = UnixListener::from_std(listener).map_err(listen_error)?;

        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve_connection(stream, Arc::clone(&handler)));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Control socket accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
                // Reap finished connection tasks so the set does not grow without bound.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        drop(socket);
        connections.shutdown().await;
        Ok(())
    }
}

/// A freshly created 0700 directory, removed (with anything left in it) on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<PrivateDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // A few attempts cover a leftover directory from a crashed process with a reused pid.
        let mut last_error = None;
        for _ in 0..8 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!(".kamal-proxy-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("unable to create a staging directory")))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Only the version, so a frame from another protocol version gets a clear answer even when
/// its request would not decode.
#[derive(Deserialize)]
struct Envelope {
    version: u32,
    request: serde_json::Value,
}

async fn serve_connection<H: Handler>(mut stream: UnixStream, handler: Arc<H>) {
    loop {
        let read = tokio::time::timeout(
            REQUEST_READ_TIMEOUT,
            read_payload(&mut stream, MAX_FRAME_SIZE),
        )
        .await;
        let payload = match read {
            Ok(Ok(payload)) => payload,
            Ok(Err(CodecError::Closed)) => return,
            Ok(Err(error @ CodecError::FrameTooLarge { .. })) => {
                // The rest of the frame is never read, so the stream cannot be resynchronised:
                // answer, then close.
                tracing::debug!(%error, "Rejecting control request");
                let answer =
                    ResponseFrame::new(Response::error(format!("invalid request: {error}")));
                let _ = write_frame(&mut stream, &answer, MAX_RESPONSE_FRAME_SIZE).await;
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "Control connection failed");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!("Control connection timed out waiting for a request");
                return;
            }
        };

        let response = match decode_request(&payload) {
            Ok(request) => run_handler(&handler, request).await,
            Err(response) => response,
        };
        let answer = ResponseFrame::new(response);
        if let Err(error) = write_frame(&mut stream, &answer, MAX_RESPONSE_FRAME_SIZE).await {
            tracing::debug!(%error, "Unable to answer control request");
            return;
        }
    }
}

fn decode_request(payload: &[u8]) -> Result<Request, Response> {
    let envelope: Envelope =
        decode(payload).map_err(|error| Response::error(format!("invalid request: {error}")))?;
    if envelope.version != PROTOCOL_VERSION {
        return Err(Response::error(format!(
            "unsupported control protocol version {} (this kamal-proxy speaks version {PROTOCOL_VERSION})",
            envelope.version
        )));
    }
    Request::deserialize(envelope.request)
        .map_err(|error| Response::error(format!("invalid request: {error}")))
}

/// Runs the handler in its own task so that a panic becomes an error answer instead of a
/// silently dropped connection.
async fn run_handler<H: Handler>(handler: &Arc<H>, request: Request) -> Response {
    let command = request.command_name();
    let handler = Arc::clone(handler);
    match tokio::spawn(async move { handler.handle(request).await }).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(command, %error, "Control command failed unexpectedly");
            Response::error(format!("internal error while running {command}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::call;
    use crate::codec::{read_frame, HEADER_LEN};
    use crate::protocol::RequestFrame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{oneshot, Notify};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Answers `resume slow` only once released; panics on `remove boom`; echoes otherwise.
    struct TestHandler {
        release: Notify,
        slow_started: Notify,
    }

    impl Handler for TestHandler {
        async fn handle(&self, req: Request) -> Response {
            match req.service() {
                Some("slow") => {
                    self.slow_started.notify_one();
                    self.release.notified().await;
                    Response::Ok
                }
                Some("boom") => panic!("handler exploded"),
                _ => Response::error(format!("handled {}", req.command_name())),
            }
        }
    }

    struct Running {
        _dir: tempfile::TempDir,
        path: PathBuf,
        handler: Arc<TestHandler>,
        stop: Option<oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<Result<(), ControlError>>,
    }

    impl Running {
        async fn start() -> Running {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kamal-proxy.sock");
            let listener = ControlListener::bind(&path).unwrap();
            let handler = Arc::new(TestHandler {
                release: Notify::new(),
                slow_started: Notify::new(),
            });
            let (stop, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(listener.serve(Arc::clone(&handler), async move {
                let _ = stopped.await;
            }));
            Running {
                _dir: dir,
                path,
                handler,
                stop: Some(stop),
                server,
            }
        }

        /// Stops the server; the temporary directory lives on with `self`.
        async fn stop(&mut self) -> PathBuf {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(DEADLINE, &mut self.server)
                .await
                .expect("serve stops")
                .unwrap()
                .unwrap();
            self.path.clone()
        }
    }

    fn frame_of(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    async fn answer(stream: &mut UnixStream) -> Response {
        let frame: ResponseFrame =
            tokio::time::timeout(DEADLINE, read_frame(stream, MAX_RESPONSE_FRAME_SIZE))
                .await
                .expect("answer in time")
                .unwrap();
        frame.response
    }

    async fn expect_closed(stream: &mut UnixStream) {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "connection should be closed");
    }

    fn error_message(response: Response) -> String {
        match response {
            Response::Error { message } => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_frames_do_not_disturb_a_slow_request() {
        let mut running = Running::start().await;

        // A slow command on its own connection, through the real blocking client.
        let path = running.path.clone();
        let slow = tokio::task::spawn_blocking(move || {
            call(
                &path,
                &Request::Resume {
                    service: "slow".into(),
                },
            )
        });
        tokio::time::timeout(DEADLINE, running.handler.slow_started.notified())
            .await
            .expect("slow command started");

        // Garbage JSON inside a valid frame: an error answer, and the connection stays usable.
        let mut garbage = UnixStream::connect(&running.path).await.unwrap();
        garbage.write_all(&frame_of(b"{nonsense")).await.unwrap();
        assert!(error_message(answer(&mut garbage).await).starts_with("invalid request: "));
        garbage
            .write_all(&frame_of(
                br#"{"version":1,"request":{"command":"explode"}}"#,
            ))
            .await
            .unwrap();
        assert!(error_message(answer(&mut garbage).await).starts_with("invalid request: "));
        let list = crate::codec::encode(&RequestFrame::new(Request::List), MAX_FRAME_SIZE).unwrap();
        garbage.write_all(&list).await.unwrap();
        assert_eq!(error_message(answer(&mut garbage).await), "handled list");

        // Another protocol version.
        let mut future = UnixStream::connect(&running.path).await.unwrap();
        future
            .write_all(&frame_of(
                br#"{"version":2,"request":{"command":"teleport"}}"#,
            ))
            .await
            .unwrap();
        assert_eq!(
            error_message(answer(&mut future).await),
            "unsupported control protocol version 2 (this kamal-proxy speaks version 1)"
        );

        // Oversized: answered, then closed without reading the body.
        let mut oversized = UnixStream::connect(&running.path).await.unwrap();
        oversized
            .write_all(&((MAX_FRAME_SIZE as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        let message = error_message(answer(&mut oversized).await);
        assert!(message.contains("exceeds"), "{message}");
        expect_closed(&mut oversized).await;

        // Plain text is not a frame either (its first bytes announce a huge length).
        let mut text = UnixStream::connect(&running.path).await.unwrap();
        text.write_all(b"hello, proxy\n").await.unwrap();
        assert!(error_message(answer(&mut text).await).contains("exceeds"));

        // Truncated: the connection is closed without an answer.
        let mut truncated = UnixStream::connect(&running.path).await.unwrap();
        truncated.write_all(&[0, 0]).await.unwrap();
        truncated.shutdown().await.unwrap();
        expect_closed(&mut truncated).await;
        let mut half = UnixStream::connect(&running.path).await.unwrap();
        let mut partial = frame_of(br#"{"version":1,"request":{"command":"list"}}"#);
        partial.truncate(HEADER_LEN + 5);
        half.write_all(&partial).await.unwrap();
        half.shutdown().await.unwrap();
        expect_closed(&mut half).await;

        // A panicking command becomes an error answer.
        let mut boom = UnixStream::connect(&running.path).await.unwrap();
        let remove = crate::codec::encode(
            &RequestFrame::new(Request::Remove {
                service: "boom".into(),
            }),
            MAX_FRAME_SIZE,
        )
        .unwrap();
        boom.write_all(&remove).await.unwrap();
        assert_eq!(
            error_message(answer(&mut boom).await),
            "internal error while running remove"
        );

        // The slow command was not disturbed by any of it.
        assert!(!slow.is_finished());
        running.handler.release.notify_one();
        let response = tokio::time::timeout(DEADLINE, slow)
            .await
            .expect("slow command answered")
            .unwrap()
            .unwrap();
        assert_eq!(response, Response::Ok);

        assert!(running.path.exists());
        let path = running.stop().await;
        assert!(!path.exists(), "socket file removed on shutdown");
        assert!(path.parent().unwrap().exists());
    }

    #[tokio::test]
    async fn live_socket_is_detected() {
        let mut running = Running::start().await;
        match ControlListener::bind(&running.path) {
            Err(error @ ControlError::AlreadyRunning { .. }) => {
                assert!(error
                    .to_string()
                    .contains("another kamal-proxy is already running"));
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        // The running server is unaffected.
        let path = running.path.clone();
        let response = tokio::task::spawn_blocking(move || call(&path, &Request::List))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response, Response::error("handled list"));
        running.stop().await;
    }

    #[test]
    fn stale_socket_is_replaced_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.sock");
        drop(StdUnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a stale socket file remains");

        let listener = ControlListener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            StdUnixStream::connect(&path).is_ok(),
            "the new socket accepts"
        );
        // No staging directory is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            vec![std::ffi::OsString::from("kamal-proxy.sock")]
        );
        drop(listener);
        assert!(
            !path.exists(),
            "dropping an unserved listener removes the file"
        );
    }

    #[test]
    fn a_regular_file_at_the_path_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.sock");
        std::fs::write(&path, b"junk").unwrap();
        let _listener = ControlListener::bind(&path).unwrap();
        assert!(StdUnixStream::connect(&path).is_ok());
    }

    #[test]
    fn missing_directory_is_a_bind_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("kamal-proxy.sock");
        assert!(matches!(
            ControlListener::bind(&path),
            Err(ControlError::Bind { .. })
        ));
    }

    #[tokio::test]
    async fn a_replaced_socket_file_is_left_alone() {
        let mut running = Running::start().await;
        // Someone else takes the path over while we run.
        std::fs::remove_file(&running.path).unwrap();
        std::fs::write(&running.path, b"not ours").unwrap();
        let path = running.stop().await;
        assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
    }
}

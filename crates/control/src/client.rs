//! The blocking CLI side: connect, send one request, wait (without a timeout) for the answer.

use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::codec::{
    read_frame_blocking, write_frame_blocking, MAX_FRAME_SIZE, MAX_RESPONSE_FRAME_SIZE,
};
use crate::error::{ClientError, CodecError};
use crate::protocol::{Request, RequestFrame, Response, ResponseFrame};

/// Sends `request` to the server listening on `socket` and returns its answer.
///
/// Blocks for as long as the operation takes (a deploy waits for health checks and draining).
/// A server-side failure is `Ok(Response::Error { .. })`; `Err` means the exchange itself
/// failed. A server that closes the connection without answering yields an error whose
/// Display is `unexpected EOF`, as upstream's client reports it.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let frame = RequestFrame::new(request.clone());
    write_frame_blocking(&mut stream, &frame, MAX_FRAME_SIZE)?;
    let answer: ResponseFrame = match read_frame_blocking(&mut stream, MAX_RESPONSE_FRAME_SIZE) {
        Ok(answer) => answer,
        // The server went away before answering; say it the way upstream's client does.
        Err(CodecError::Closed) => return Err(ClientError::Exchange(CodecError::Truncated)),
        Err(error) => return Err(error.into()),
    };
    Ok(answer.response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_socket_reads_like_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.sock");
        let error = call(&path, &Request::List).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "dial unix {}: connect: no such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn stale_socket_reads_like_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.sock");
        drop(UnixListener::bind(&path).unwrap());
        let error = call(&path, &Request::List).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("dial unix {}: connect: connection refused", path.display())
        );
    }

    #[test]
    fn over_long_path_reads_like_go() {
        let path = std::path::PathBuf::from(format!("/tmp/{}.sock", "x".repeat(200)));
        let error = call(&path, &Request::List).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("dial unix {}: connect: invalid argument", path.display())
        );
    }

    #[test]
    fn server_hanging_up_is_unexpected_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _: RequestFrame = read_frame_blocking(&mut stream, MAX_FRAME_SIZE).unwrap();
            // Drop without answering.
        });
        let error = call(&path, &Request::List).unwrap_err();
        assert_eq!(error.to_string(), "unexpected EOF");
        server.join().unwrap();
    }

    #[test]
    fn answers_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamal-proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let frame: RequestFrame = read_frame_blocking(&mut stream, MAX_FRAME_SIZE).unwrap();
            let answer = ResponseFrame::new(Response::error(format!(
                "no {}",
                frame.request.command_name()
            )));
            write_frame_blocking(&mut stream, &answer, MAX_FRAME_SIZE).unwrap();
        });
        let response = call(&path, &Request::List).unwrap();
        assert_eq!(response, Response::error("no list"));
        server.join().unwrap();
    }
}

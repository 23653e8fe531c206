//! Length-delimited JSON frames: a 4-byte big-endian payload length, then that many bytes of
//! JSON. The length is checked against a limit before anything is allocated for the payload.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::CodecError;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Largest request payload the server accepts (requests are a few KiB at most).
pub const MAX_FRAME_SIZE: usize = 1024 * 1024;
/// Largest response payload the client accepts: a `list` of thousands of services still fits.
pub const MAX_RESPONSE_FRAME_SIZE: usize = 64 * 1024 * 1024;

/// Serialises `message` into a complete frame (header included) in one buffer, so it can be
/// written with a single call.
pub fn encode<T: Serialize>(message: &T, max_len: usize) -> Result<Vec<u8>, CodecError> {
    let mut frame = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut frame, message).map_err(CodecError::Encode)?;
    let len = frame.len() - HEADER_LEN;
    let announced =
        u32::try_from(len)
            .ok()
            .filter(|_| len <= max_len)
            .ok_or(CodecError::FrameTooLarge {
                len: len as u64,
                max: max_len,
            })?;
    frame[..HEADER_LEN].copy_from_slice(&announced.to_be_bytes());
    Ok(frame)
}

/// Parses a payload (without header) as `T`.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(payload).map_err(CodecError::MalformedMessage)
}

fn check_len(header: [u8; HEADER_LEN], max_len: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(len) if len <= max_len => Ok(len),
        _ => Err(CodecError::FrameTooLarge {
            len: u64::from(len),
            max: max_len,
        }),
    }
}

/// Maps an EOF inside a frame to [`CodecError::Truncated`].
fn eof_is_truncation(error: io::Error) -> CodecError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        CodecError::Truncated
    } else {
        CodecError::Io(error)
    }
}

/// Reads one frame's payload. A clean end of stream before the first header byte is
/// [`CodecError::Closed`]; an end anywhere later is [`CodecError::Truncated`].
pub async fn read_payload<R>(reader: &mut R, max_len: usize) -> Result<Vec<u8>, CodecError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let first = reader.read(&mut header).await?;
    if first == 0 {
        return Err(CodecError::Closed);
    }
    reader
        .read_exact(&mut header[first..])
        .await
        .map_err(eof_is_truncation)?;
    let len = check_len(header, max_len)?;
    let mut payload = vec![0u8; len];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(eof_is_truncation)?;
    Ok(payload)
}

/// Reads and decodes one frame.
pub async fn read_frame<R, T>(reader: &mut R, max_len: usize) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    decode(&read_payload(reader, max_len).await?)
}

/// Encodes and writes one frame, then flushes.
pub async fn write_frame<W, T>(
    writer: &mut W,
    message: &T,
    max_len: usize,
) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode(message, max_len)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Blocking [`read_payload`].
pub fn read_payload_blocking<R: Read>(
    reader: &mut R,
    max_len: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut header = [0u8; HEADER_LEN];
    let first = loop {
        match reader.read(&mut header) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CodecError::Io(e)),
        }
    };
    if first == 0 {
        return Err(CodecError::Closed);
    }
    reader
        .read_exact(&mut header[first..])
        .map_err(eof_is_truncation)?;
    let len = check_len(header, max_len)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).map_err(eof_is_truncation)?;
    Ok(payload)
}

/// Blocking [`read_frame`].
pub fn read_frame_blocking<R: Read, T: DeserializeOwned>(
    reader: &mut R,
    max_len: usize,
) -> Result<T, CodecError> {
    decode(&read_payload_blocking(reader, max_len)?)
}

/// Blocking [`write_frame`].
pub fn write_frame_blocking<W: Write, T: Serialize>(
    writer: &mut W,
    message: &T,
    max_len: usize,
) -> Result<(), CodecError> {
    let frame = encode(message, max_len)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, RequestFrame};

    fn frame_of(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn blocking_round_trip() {
        let mut buffer = Vec::new();
        let message = RequestFrame::new(Request::List);
        write_frame_blocking(&mut buffer, &message, MAX_FRAME_SIZE).unwrap();
        assert_eq!(
            u32::from_be_bytes(buffer[..4].try_into().unwrap()) as usize,
            buffer.len() - 4
        );
        let mut reader = buffer.as_slice();
        let back: RequestFrame = read_frame_blocking(&mut reader, MAX_FRAME_SIZE).unwrap();
        assert_eq!(back, message);
        assert!(matches!(
            read_frame_blocking::<_, RequestFrame>(&mut reader, MAX_FRAME_SIZE),
            Err(CodecError::Closed)
        ));
    }

    #[tokio::test]
    async fn async_round_trip_of_several_frames() {
        let mut buffer = Vec::new();
        for service in ["a", "b"] {
            let message = RequestFrame::new(Request::Resume {
                service: service.into(),
            });
            write_frame(&mut buffer, &message, MAX_FRAME_SIZE)
                .await
                .unwrap();
        }
        let mut reader = buffer.as_slice();
        for service in ["a", "b"] {
            let back: RequestFrame = read_frame(&mut reader, MAX_FRAME_SIZE).await.unwrap();
            assert_eq!(back.request.service(), Some(service));
        }
        assert!(matches!(
            read_payload(&mut reader, MAX_FRAME_SIZE).await,
            Err(CodecError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_frame_is_rejected_before_allocation() {
        // Announces 4 GiB - 1 but carries nothing: the error must come from the header alone.
        let frame = [0xff, 0xff, 0xff, 0xff];
        let mut reader = &frame[..];
        match read_payload(&mut reader, MAX_FRAME_SIZE).await {
            Err(CodecError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, MAX_FRAME_SIZE);
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut reader = &frame[..];
        assert!(matches!(
            read_payload_blocking(&mut reader, 16),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_frames_are_typed() {
        let full = frame_of(br#"{"version":1}"#);
        for cut in [1, 3, 4, 6, full.len() - 1] {
            let mut reader = &full[..cut];
            assert!(
                matches!(
                    read_payload(&mut reader, MAX_FRAME_SIZE).await,
                    Err(CodecError::Truncated)
                ),
                "cut at {cut}"
            );
            let mut reader = &full[..cut];
            assert!(matches!(
                read_payload_blocking(&mut reader, MAX_FRAME_SIZE),
                Err(CodecError::Truncated)
            ));
        }
    }

    #[tokio::test]
    async fn garbage_payload_is_malformed() {
        let frame = frame_of(b"not json");
        let mut reader = frame.as_slice();
        assert!(matches!(
            read_frame::<_, RequestFrame>(&mut reader, MAX_FRAME_SIZE).await,
            Err(CodecError::MalformedMessage(_))
        ));
        let frame = frame_of(br#"{"version":1,"request":{"command":"explode"}}"#);
        let mut reader = frame.as_slice();
        assert!(matches!(
            read_frame::<_, RequestFrame>(&mut reader, MAX_FRAME_SIZE).await,
            Err(CodecError::MalformedMessage(_))
        ));
    }

    #[test]
    fn encoding_respects_the_limit() {
        let message = RequestFrame::new(Request::Remove {
            service: "x".repeat(100),
        });
        assert!(matches!(
            encode(&message, 50),
            Err(CodecError::FrameTooLarge { max: 50, .. })
        ));
        assert!(encode(&message, MAX_FRAME_SIZE).is_ok());
    }
}

//! Reading a whole body into memory, then into an anonymous spill file, and replaying it.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::error::{BoxError, BufferError};
use crate::limits::Limits;

/// Largest chunk read back from a spill file at once.
const READ_CHUNK: usize = 64 * 1024;

/// An open spill file. The file has no name (`O_TMPFILE`, or unlinked right after creation
/// where that is unsupported), so the kernel frees it when the descriptor closes, even if the
/// process dies.
struct SpillFile {
    file: tokio::fs::File,
    dir: PathBuf,
}

impl SpillFile {
    async fn create(dir: PathBuf) -> Result<Self, BufferError> {
        let create_in = dir.clone();
        let created = tokio::task::spawn_blocking(move || tempfile::tempfile_in(create_in))
            .await
            .map_err(|e| BufferError::CreateSpill {
                source: std::io::Error::other(e),
            })?;
        match created {
            Ok(file) => {
                tracing::debug!(file = %dir.display(), "Buffer: spilling to disk");
                Ok(Self {
                    file: tokio::fs::File::from_std(file),
                    dir,
                })
            }
            Err(source) => {
                tracing::error!(error = %source, "Buffer: failed to create spill file");
                Err(BufferError::CreateSpill { source })
            }
        }
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        tracing::debug!(file = %self.dir.display(), "Buffer: removing spill");
    }
}

/// The bytes of a body as they are buffered: memory first, then the spill file.
struct Spool<'a> {
    limits: &'a Limits,
    memory: VecDeque<Bytes>,
    memory_len: usize,
    spill: Option<SpillFile>,
    spilled_len: u64,
}

impl<'a> Spool<'a> {
    fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            memory: VecDeque::new(),
            memory_len: 0,
            spill: None,
            spilled_len: 0,
        }
    }

    fn len(&self) -> u64 {
        self.memory_len as u64 + self.spilled_len
    }

    /// Frees everything after a failure. A write may still be running on the blocking pool and
    /// keep the file open until it ends; waiting for it here means the spill file is closed
    /// (and gone) by the time the caller sees the error.
    async fn release(mut self) {
        if let Some(spill) = self.spill.as_mut() {
            let _ = spill.file.flush().await;
        }
    }

    /// Appends one chunk. Memory is filled exactly up to its limit; the rest of the chunk and
    /// every later byte go to the spill file.
    async fn push(&mut self, mut chunk: Bytes) -> Result<(), BufferError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.limits.check(self.len() + chunk.len() as u64)?;
        if self.spill.is_none() {
            let room = self.limits.memory_bytes() - self.memory_len;
            if chunk.len() <= room {
                self.memory_len += chunk.len();
                self.memory.push_back(chunk);
                return Ok(());
            }
            if room > 0 {
                self.memory_len += room;
                self.memory.push_back(chunk.split_to(room));
            }
            self.spill = Some(SpillFile::create(self.limits.spill_dir_path()).await?);
        }
        if let Some(spill) = self.spill.as_mut() {
            spill
                .file
                .write_all(&chunk)
                .await
                .map_err(|source| BufferError::SpillIo { source })?;
            self.spilled_len += chunk.len() as u64;
        }
        Ok(())
    }

    async fn finish(
        self,
        trailers: Option<HeaderMap>,
        exact: bool,
    ) -> Result<Buffered, BufferError> {
        let spill = match self.spill {
            Some(mut spill) => {
                let io = |source| BufferError::SpillIo { source };
                spill.file.flush().await.map_err(io)?;
                spill.file.seek(SeekFrom::Start(0)).await.map_err(io)?;
                Some(spill)
            }
            None => None,
        };
        Ok(Buffered {
            memory: self.memory,
            spill,
            spill_remaining: self.spilled_len,
            total: self.memory_len as u64 + self.spilled_len,
            remaining: self.memory_len as u64 + self.spilled_len,
            trailers,
            exact,
        })
    }
}

/// Reads `body` to its end, keeping up to `limits` memory bytes in memory and the rest in an
/// anonymous spill file, and returns it ready to replay.
///
/// Fails with [`BufferError::TooLarge`] as soon as the body would exceed the size limit
/// (exactly the limit is allowed), with [`BufferError::Body`] if the body itself fails. On any
/// failure the bytes read so far, spill file included, are released at once.
///
/// The replayed body announces an exact size only if `body` did, so a message framed with
/// `Content-Length` keeps it and a chunked one stays chunked.
pub async fn buffer_body<B>(body: B, limits: &Limits) -> Result<Buffered, BufferError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let exact = body.size_hint().exact().is_some();
    let mut body = std::pin::pin!(body);
    let mut spool = Spool::new(limits);
    let mut trailers: Option<HeaderMap> = None;
    loop {
        // Errors and data are converted before the next await, so the future is `Send`
        // whenever the body and its data are, whatever the body's error type.
        let next = std::future::poll_fn(|cx| {
            body.as_mut().poll_frame(cx).map(|frame| {
                frame.map(|r| {
                    r.map(|frame| match frame.into_data() {
                        Ok(mut data) => Ok(data.copy_to_bytes(data.remaining())),
                        Err(frame) => Err(frame.into_trailers().ok()),
                    })
                    .map_err(|e| BufferError::Body { source: e.into() })
                })
            })
        })
        .await;
        let pushed = match next {
            None => break,
            Some(Err(e)) => Err(e),
            Some(Ok(Ok(bytes))) => spool.push(bytes).await,
            Some(Ok(Err(Some(more)))) => {
                match trailers.as_mut() {
                    Some(existing) => existing.extend(more),
                    None => trailers = Some(more),
                }
                Ok(())
            }
            Some(Ok(Err(None))) => Ok(()),
        };
        if let Err(e) = pushed {
            spool.release().await;
            return Err(e);
        }
    }
    spool.finish(trailers, exact).await
}

/// A completely buffered body, replayed as an [`http_body::Body`]: the in-memory part first,
/// then the spill file in 64 KiB chunks, then the trailers if the original had any.
///
/// Dropping it closes (and so deletes) the spill file.
pub struct Buffered {
    memory: VecDeque<Bytes>,
    spill: Option<SpillFile>,
    spill_remaining: u64,
    total: u64,
    remaining: u64,
    trailers: Option<HeaderMap>,
    exact: bool,
}

impl std::fmt::Debug for Buffered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffered")
            .field("len", &self.total)
            .field("remaining", &self.remaining)
            .field("spilled", &self.spill.is_some())
            .finish()
    }
}

impl Buffered {
    /// A body of `bytes`, held in memory.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let len = bytes.len() as u64;
        let mut memory = VecDeque::new();
        if !bytes.is_empty() {
            memory.push_back(bytes);
        }
        Self {
            memory,
            spill: None,
            spill_remaining: 0,
            total: len,
            remaining: len,
            trailers: None,
            exact: true,
        }
    }

    /// Total length of the body in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the body has no data bytes.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether part of the body is (still) held in a spill file.
    pub fn is_spilled(&self) -> bool {
        self.spill.is_some()
    }

    fn poll_spill(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BufferError>>> {
        let Some(spill) = self.spill.as_mut() else {
            return Poll::Ready(None);
        };
        let want = self.spill_remaining.min(READ_CHUNK as u64) as usize;
        let mut buf = BytesMut::with_capacity(want);
        let read = match tokio_util::io::poll_read_buf(Pin::new(&mut spill.file), cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(read) => read,
        };
        let result = match read {
            Ok(0) => Err(BufferError::SpillIo {
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(n) => {
                self.spill_remaining -= n as u64;
                Ok(buf.freeze())
            }
            Err(source) => Err(BufferError::SpillIo { source }),
        };
        if result.is_err() || self.spill_remaining == 0 {
            // Read back completely (or broken): free the file now, not when the body drops.
            self.spill = None;
        }
        Poll::Ready(Some(result))
    }
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = BufferError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BufferError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.memory.pop_front() {
            this.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.poll_spill(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.remaining -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(Some(Err(e))) => {
                this.remaining = 0;
                this.trailers = None;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {}
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(self.remaining);
            hint
        }
    }
}

//! Reading whole packets from an async stream, bounded by the packet limit.

use super::*;

/// Error from reading frames off a byte stream.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads whole frames from a stream. `next` is cancel-safe: partial data
/// stays in the buffer, so it can sit in a `select!`.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_packet: usize,
    /// A socket to acknowledge at once after every read (see
    /// [`FrameReader::acknowledge_at_once`]).
    quickack: Option<std::os::fd::RawFd>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_packet: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max_packet,
            quickack: None,
        }
    }

    /// Acknowledges data on `socket` as soon as it is read. rumqttd does not
    /// disable Nagle's algorithm on its sockets, so when it writes a packet
    /// in pieces the later pieces wait for the acknowledgement of the
    /// first, which Linux delays by up to 40 ms: measured, 120 ms of a
    /// 150 ms round trip through the demo. Quick acknowledgements remove the
    /// wait. The flag does not stick, so it is set again after every read.
    pub fn acknowledge_at_once(mut self, socket: std::os::fd::RawFd) -> Self {
        self.quickack = Some(socket);
        self
    }

    // No safe wrapper sets a socket option on a descriptor the reader does
    // not own (it only has the raw fd of a socket that outlives it).
    #[allow(unsafe_code)]
    pub(super) fn quickack(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.quickack {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads `on` for its size; a stale or
            // non-TCP descriptor only makes it fail, which is harmless.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&on as *const libc::c_int).cast(),
                    // 4: cannot truncate.
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t
                    },
                );
            }
        }
    }

    /// Is a whole frame already buffered (so `next` will not wait)?
    pub fn has_frame(&self) -> bool {
        matches!(fixed_header(&self.buf), Ok(Some((_, h, r))) if self.buf.len() >= h + r)
    }

    /// The next frame, or `None` when the peer closed between packets.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf, self.max_packet)? {
                return Ok(Some(frame));
            }
            // Grow towards the announced size in bounded steps so that a
            // peer announcing a large packet cannot make us allocate it all
            // before sending it.
            let want = missing(&self.buf).clamp(8 * 1024, 1024 * 1024);
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            let read = self.inner.read_buf(&mut self.buf).await?;
            self.quickack();
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(CodecError::TruncatedStream.into())
                };
            }
        }
    }
}

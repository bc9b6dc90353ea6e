//! The gRPC load generator's HTTP/2 connection over cleartext: what a unary call needs of RFC 9113
//! and nothing more. A call writes one HEADERS frame (a header block encoded once per connection)
//! and its DATA, and waits for the answer's status; the connection's reader answers SETTINGS and
//! PING, keeps both directions' flow-control windows, and decodes every header block in order
//! (`hpack`, so the server's dynamic table stays in step).
//!
//! Written here, not taken from h2, because the generator shares the machine with the server it
//! measures: h2's client cost about 31k instructions a call on this host (h2 itself 17k: its
//! stream state machine, `http` header maps, HPACK's Huffman on every request) and held
//! `loadtest --protocol grpc` to 0.80 of h2load against the same gateway. Figures for this one in
//! `benches/grpc.sh`'s history (benches/README.md).

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::hpack;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// RST_STREAM's error code for a call given up on.
const CANCEL: u32 = 0x8;

/// The largest window and stream id.
const MAX: u32 = (1 << 31) - 1;
/// Every window's size until SETTINGS or WINDOW_UPDATE say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
/// The largest frame either side sends until the peer allows more; this side never allows more.
const DEFAULT_MAX_FRAME: usize = 16_384;
/// A header block (HEADERS and its CONTINUATIONs) larger than this ends the connection.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// A call's outcome as the report counts it: `Err` holds the error's kind.
pub(super) type Outcome = Result<(), String>;

/// One HTTP/2 connection carrying unary gRPC calls to one method.
pub(super) struct Connection {
    shared: Arc<Shared>,
    /// Every call's header block: method, scheme, path, authority, content type, `te`,
    /// `grpc-timeout` and `authorization`, never indexed, so it is the same for every call.
    headers: Vec<u8>,
    tasks: [JoinHandle<()>; 2],
}

/// What the callers, the reader and the writer share.
struct Shared {
    state: Mutex<State>,
    /// Bytes were queued in `State::out`.
    write: Notify,
    /// A stream ended (room for another) or the connection closed.
    slots: Notify,
}

struct State {
    /// Frames to write, in order.
    out: Vec<u8>,
    next_id: u32,
    /// The streams in flight (at most the concurrency the generator keeps: a scan is cheap).
    streams: Vec<Stream>,
    /// Request bodies waiting for flow-control window, in the order sent.
    sends: VecDeque<(u32, Bytes)>,
    /// The connection's send window, and the peer's initial window for a new stream.
    send_window: i64,
    initial_window: i64,
    max_frame: usize,
    max_streams: usize,
    /// DATA received since the connection's receive window was last topped up.
    received: u32,
    /// Why no call can start any more.
    closed: Option<&'static str>,
}

struct Stream {
    id: u32,
    /// What may still be sent on it.
    window: i64,
    /// Its answer's headers came (the next block is its trailers).
    answered: bool,
    /// Taken when the call's outcome is known, which may be before the stream ends.
    done: Option<oneshot::Sender<Outcome>>,
}

impl Connection {
    /// Connects to `address` and opens HTTP/2 with prior knowledge. `authority`, `path`,
    /// `grpc_timeout` and `authorization` go into every call's headers.
    pub(super) async fn connect(
        address: &str,
        authority: &str,
        path: &str,
        grpc_timeout: &str,
        authorization: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
        tcp.set_nodelay(true)?;
        let (read, mut write) = tcp.into_split();
        // Push off, and the largest windows: an answer's DATA never waits for this side.
        let mut hello = PREFACE.to_vec();
        frame_head(&mut hello, 12, SETTINGS, 0, 0);
        for (id, value) in [(0x2u16, 0u32), (0x4, MAX)] {
            hello.extend_from_slice(&id.to_be_bytes());
            hello.extend_from_slice(&value.to_be_bytes());
        }
        window_update(&mut hello, 0, MAX - DEFAULT_WINDOW as u32);
        write.write_all(&hello).await.with_context(|| format!("HTTP/2 preface to {address}"))?;

        let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http (static table 3 and 6)
        hpack::literal(&mut headers, 0x00, 4, b"", path.as_bytes()); // :path
        hpack::literal(&mut headers, 0x00, 1, b"", authority.as_bytes()); // :authority
        hpack::literal(&mut headers, 0x00, 31, b"", b"application/grpc"); // content-type
        hpack::literal(&mut headers, 0x00, 0, b"te", b"trailers");
        hpack::literal(&mut headers, 0x00, 0, b"grpc-timeout", grpc_timeout.as_bytes());
        if let Some(value) = authorization {
            hpack::literal(&mut headers, 0x10, 23, b"", value); // authorization, never indexed
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Vec::with_capacity(16 * 1024),
                next_id: 1,
                streams: Vec::new(),
                sends: VecDeque::new(),
                send_window: DEFAULT_WINDOW,
                initial_window: DEFAULT_WINDOW,
                max_frame: DEFAULT_MAX_FRAME,
                max_streams: usize::MAX,
                received: 0,
                closed: None,
            }),
            write: Notify::new(),
            slots: Notify::new(),
        });
        let tasks =
            [tokio::spawn(read_loop(read, Arc::clone(&shared))), tokio::spawn(write_loop(write, Arc::clone(&shared)))];
        Ok(Self { shared, headers, tasks })
    }

    /// One unary call of `message` (a framed gRPC message): its outcome from the answer's
    /// `:status` and `grpc-status` (in its headers when it has no body, else in its trailers).
    pub(super) async fn call(&self, message: Bytes) -> Outcome {
        let (done, answer) = oneshot::channel();
        let mut call = Some((done, message));
        let mut id = None;
        while let Some((done, message)) = call.take() {
            // Made before the check, so an end of stream between the two still wakes it.
            let slot = self.shared.slots.notified();
            {
                let mut state = self.shared.state.lock();
                if let Some(reason) = state.closed {
                    return Err(reason.to_owned());
                }
                if state.streams.len() < state.max_streams {
                    id = state.open(&self.headers, message, done);
                } else {
                    call = Some((done, message));
                }
            }
            if call.is_some() {
                slot.await;
            }
        }
        self.shared.write.notify_one();
        let mut guard = Cancel { shared: &self.shared, id };
        let outcome = answer.await.unwrap_or_else(|_| Err("read".to_owned()));
        guard.id = None;
        outcome
    }
}

/// A call given up on before its answer (the generator's timeout drops it): its stream is reset,
/// so that a server that never answers does not keep it, nor its room among the streams.
struct Cancel<'a> {
    shared: &'a Shared,
    id: Option<u32>,
}

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut state = self.shared.state.lock();
        let Some(i) = state.streams.iter().position(|s| s.id == id) else { return };
        state.streams.swap_remove(i);
        frame_head(&mut state.out, 4, RST_STREAM, 0, id);
        state.out.extend_from_slice(&CANCEL.to_be_bytes());
        drop(state);
        self.shared.write.notify_one();
        self.shared.slots.notify_waiters();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl State {
    /// Starts a stream: its HEADERS, then as much of its DATA as the windows allow.
    fn open(&mut self, headers: &[u8], message: Bytes, done: oneshot::Sender<Outcome>) -> Option<u32> {
        let id = self.next_id;
        if id > MAX {
            let _ = done.send(Err("stream ids used up".to_owned()));
            return None;
        }
        self.next_id += 2;
        frame_head(&mut self.out, headers.len(), HEADERS, END_HEADERS, id);
        self.out.extend_from_slice(headers);
        self.streams.push(Stream { id, window: self.initial_window, answered: false, done: Some(done) });
        self.sends.push_back((id, message));
        self.send_data();
        Some(id)
    }

    /// Writes queued request bodies while the windows allow, oldest first; the last frame of
    /// each ends its stream.
    fn send_data(&mut self) {
        while let Some((id, data)) = self.sends.front_mut() {
            let Some(stream) = self.streams.iter_mut().find(|s| s.id == *id) else {
                // Reset or failed before it was sent: nothing to send.
                self.sends.pop_front();
                continue;
            };
            let n = data.len().min(self.max_frame).min(self.send_window.min(stream.window).max(0) as usize);
            if n == 0 && !data.is_empty() {
                break;
            }
            let last = n == data.len();
            frame_head(&mut self.out, n, DATA, if last { END_STREAM } else { 0 }, *id);
            self.out.extend_from_slice(&data[..n]);
            data.advance(n);
            self.send_window -= n as i64;
            stream.window -= n as i64;
            if last {
                self.sends.pop_front();
            }
        }
    }

    /// Ends stream `index`: its call gets `outcome` unless it already has one.
    fn end(&mut self, index: usize, outcome: impl FnOnce() -> Outcome) {
        let stream = self.streams.swap_remove(index);
        if let Some(done) = stream.done {
            let _ = done.send(outcome());
        }
    }

    /// Every call in flight fails with `reason`, and no new one starts.
    fn close(&mut self, reason: &'static str) {
        self.closed.get_or_insert(reason);
        for stream in self.streams.drain(..) {
            if let Some(done) = stream.done {
                let _ = done.send(Err(reason.to_owned()));
            }
        }
        self.sends.clear();
    }

    /// One frame read; `Ok(true)` when a stream ended. `Err` ends the connection.
    fn on_frame(&mut self, frame: Frame<'_>, reader: &mut Reader) -> Result<bool, &'static str> {
        let Frame { kind, flags, id, payload } = frame;
        if reader.block_stream != 0 && kind != CONTINUATION {
            return Err("protocol");
        }
        match kind {
            DATA => {
                self.received += payload.len() as u32;
                if self.received >= MAX / 2 {
                    window_update(&mut self.out, 0, self.received);
                    self.received = 0;
                }
                match self.streams.iter().position(|s| s.id == id) {
                    Some(i) if flags & END_STREAM != 0 => {
                        self.end(i, || Err("grpc no status".to_owned()));
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            HEADERS => {
                let mut block = unpad(payload, flags)?;
                if flags & PRIORITY != 0 {
                    block = block.get(5..).ok_or("protocol")?;
                }
                if flags & END_HEADERS != 0 {
                    return self.on_headers(id, block, flags & END_STREAM != 0, &mut reader.decoder);
                }
                reader.block.clear();
                reader.block.extend_from_slice(block);
                reader.block_stream = id;
                reader.block_ends_stream = flags & END_STREAM != 0;
                Ok(false)
            }
            CONTINUATION => {
                if id != reader.block_stream || reader.block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err("protocol");
                }
                reader.block.extend_from_slice(payload);
                if flags & END_HEADERS == 0 {
                    return Ok(false);
                }
                reader.block_stream = 0;
                let block = std::mem::take(&mut reader.block);
                let ended = self.on_headers(id, &block, reader.block_ends_stream, &mut reader.decoder);
                reader.block = block;
                ended
            }
            RST_STREAM => match self.streams.iter().position(|s| s.id == id) {
                Some(i) => {
                    self.end(i, || Err("reset".to_owned()));
                    Ok(true)
                }
                None => Ok(false),
            },
            SETTINGS if flags & ACK == 0 => {
                if payload.len() % 6 != 0 {
                    return Err("protocol");
                }
                for setting in payload.chunks_exact(6) {
                    let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    match u16::from_be_bytes([setting[0], setting[1]]) {
                        0x3 => self.max_streams = value as usize,
                        0x4 => {
                            if value > MAX {
                                return Err("protocol");
                            }
                            let delta = i64::from(value) - self.initial_window;
                            self.initial_window = i64::from(value);
                            for stream in &mut self.streams {
                                stream.window += delta;
                            }
                        }
                        0x5 => self.max_frame = (value as usize).clamp(DEFAULT_MAX_FRAME, (1 << 24) - 1),
                        // The header table size binds only an encoder that indexes, and this
                        // one never does; the rest concern a server.
                        _ => {}
                    }
                }
                frame_head(&mut self.out, 0, SETTINGS, ACK, 0);
                self.send_data();
                Ok(false)
            }
            PING if flags & ACK == 0 => {
                frame_head(&mut self.out, payload.len(), PING, ACK, 0);
                self.out.extend_from_slice(payload);
                Ok(false)
            }
            GOAWAY => {
                let last = payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & MAX);
                // Streams after the last the server took were never seen: they fail now; the
                // others still finish.
                let mut ended = false;
                while let Some(i) = self.streams.iter().position(|s| s.id > last) {
                    self.end(i, || Err("goaway".to_owned()));
                    ended = true;
                }
                self.closed.get_or_insert("goaway");
                Ok(ended)
            }
            WINDOW_UPDATE => {
                let increment = payload.get(..4).ok_or("protocol")?;
                let increment = i64::from(u32::from_be_bytes(increment.try_into().expect("4 bytes")) & MAX);
                if id == 0 {
                    self.send_window += increment;
                } else if let Some(stream) = self.streams.iter_mut().find(|s| s.id == id) {
                    stream.window += increment;
                }
                self.send_data();
                Ok(false)
            }
            // Push was turned off in this side's SETTINGS.
            PUSH_PROMISE => Err("protocol"),
            // PRIORITY, acknowledgements, and types this side does not know: nothing to do.
            _ => Ok(false),
        }
    }

    /// A stream's header block: its answer's headers, or its trailers. Decoded whatever the
    /// stream, so the decoder's table stays the server's.
    fn on_headers(
        &mut self,
        id: u32,
        block: &[u8],
        end_stream: bool,
        decoder: &mut hpack::Decoder,
    ) -> Result<bool, &'static str> {
        let (mut status, mut grpc_status) = (None::<u16>, None::<tonic::Code>);
        let wanted = |name: &[u8]| name == b":status" || name == b"grpc-status";
        decoder.decode(block, wanted, |name, value| match name {
            b":status" => status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            _ => grpc_status = Some(tonic::Code::from_bytes(value)),
        })?;
        let Some(i) = self.streams.iter().position(|s| s.id == id) else { return Ok(false) };
        let stream = &mut self.streams[i];
        let outcome = if stream.answered {
            Some(grpc_status.map_or_else(|| Err("grpc no status".to_owned()), outcome))
        } else {
            stream.answered = true;
            match status {
                Some(200) => grpc_status.map(outcome),
                Some(other) => Some(Err(other.to_string())),
                None => Some(Err("read".to_owned())),
            }
        };
        if let Some(outcome) = outcome
            && let Some(done) = stream.done.take()
        {
            let _ = done.send(outcome);
        }
        if end_stream {
            self.end(i, || Err("grpc no status".to_owned()));
            return Ok(true);
        }
        Ok(false)
    }
}

/// A gRPC status as the report counts it.
pub(super) fn outcome(code: tonic::Code) -> Outcome {
    match code {
        tonic::Code::Ok => Ok(()),
        tonic::Code::DeadlineExceeded => Err("timeout".to_owned()),
        code => Err(format!("grpc {code:?}")),
    }
}

struct Frame<'a> {
    kind: u8,
    flags: u8,
    id: u32,
    payload: &'a [u8],
}

/// The reader's own state: the HPACK decoder and a header block still missing CONTINUATIONs.
struct Reader {
    decoder: hpack::Decoder,
    block: Vec<u8>,
    /// The stream whose header block is incomplete; 0 when none is.
    block_stream: u32,
    block_ends_stream: bool,
}

/// Reads frames as they come and hands them to the state, a read's worth under one lock; a read
/// error, the end of the stream or a protocol error fails every call in flight.
async fn read_loop(mut read: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let mut reader =
        Reader { decoder: hpack::Decoder::new(), block: Vec::new(), block_stream: 0, block_ends_stream: false };
    let reason = loop {
        match read.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break "read",
            Ok(_) => {}
        }
        let (mut ended, mut failed) = (false, None);
        {
            let mut state = shared.state.lock();
            while buffer.len() >= 9 {
                let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
                if length > DEFAULT_MAX_FRAME {
                    failed = Some("protocol");
                    break;
                }
                if buffer.len() < 9 + length {
                    buffer.reserve(9 + length - buffer.len());
                    break;
                }
                let frame = Frame {
                    kind: buffer[3],
                    flags: buffer[4],
                    id: u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & MAX,
                    payload: &buffer[9..9 + length],
                };
                match state.on_frame(frame, &mut reader) {
                    Ok(end) => ended |= end,
                    Err(reason) => {
                        failed = Some(reason);
                        break;
                    }
                }
                buffer.advance(9 + length);
            }
            if let Some(reason) = failed {
                state.close(reason);
            }
            if !state.out.is_empty() {
                shared.write.notify_one();
            }
        }
        if ended || failed.is_some() {
            shared.slots.notify_waiters();
        }
        if let Some(reason) = failed {
            break reason;
        }
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(64 * 1024);
        }
    };
    shared.state.lock().close(reason);
    shared.slots.notify_waiters();
    shared.write.notify_one();
}

/// Writes what the callers and the reader queued, everything queued at once.
async fn write_loop(mut write: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut buffer = Vec::with_capacity(16 * 1024);
    loop {
        shared.write.notified().await;
        // Behind every task ready now: the calls that the answers just read wake queue their
        // frames first, and one write carries them all (woken last, this task would otherwise
        // run first, from tokio's LIFO slot, and write one call at a time).
        tokio::task::yield_now().await;
        {
            let mut state = shared.state.lock();
            if state.closed.is_some() && state.streams.is_empty() && state.out.is_empty() {
                return;
            }
            std::mem::swap(&mut state.out, &mut buffer);
        }
        if buffer.is_empty() {
            continue;
        }
        if write.write_all(&buffer).await.is_err() {
            shared.state.lock().close("write");
            shared.slots.notify_waiters();
            return;
        }
        buffer.clear();
    }
}

/// A frame's 9-byte head.
fn frame_head(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, id: u32) {
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&id.to_be_bytes());
}

fn window_update(out: &mut Vec<u8>, id: u32, increment: u32) {
    frame_head(out, 4, WINDOW_UPDATE, 0, id);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// A padded frame's payload without its padding.
fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], &'static str> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or("protocol")?;
    rest.len().checked_sub(pad as usize).map(|end| &rest[..end]).ok_or("protocol")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_checked() {
        assert_eq!(unpad(&[2, 7, 0, 0], PADDED), Ok(&[7][..]));
        assert_eq!(unpad(&[3, 7, 0], PADDED), Err("protocol"));
        assert_eq!(unpad(&[], PADDED), Err("protocol"));
        assert_eq!(unpad(&[1, 2], 0), Ok(&[1, 2][..]));
    }
}

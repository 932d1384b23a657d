//! Where one HTTP/1 request ends and the next begins, followed in the bytes a
//! connection reads: what tells a keep-alive connection between requests from
//! one receiving a request, and where the drain may add a header to the next
//! request head. For HTTP/2, [`FirstStream`] tells whether the client has
//! opened a stream at all.
//!
//! It follows the message framing of RFC 9112: a head ends at its blank line
//! (§2.1); the body that follows is as long as `Content-Length` says, or
//! chunked when `Transfer-Encoding` is present (§6.3, §7.1), or empty. A
//! request that may switch protocols (`Upgrade`, `CONNECT`), and anything it
//! cannot follow, ends the tracking: the connection is then treated as it
//! would be without it.

/// Where the reading of a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// Between two requests: every byte read so far belongs to a whole request.
    Between,
    /// Inside a request head.
    Head,
    /// Inside a request body.
    Body,
    /// Past what can be followed (an upgrade, `CONNECT`, framing it does not
    /// know): no more boundaries.
    Lost,
}

/// Follows request boundaries across reads.
#[derive(Debug)]
pub(crate) struct Framing {
    part: Part,
    /// How many request heads have ended.
    heads: u64,
}

#[derive(Debug)]
enum Part {
    Head(Head),
    /// A body of known length: bytes left.
    Body(u64),
    Chunked(Chunk),
    Lost,
}

/// Longest header line start kept across reads: enough for the names it
/// looks for and any sane `Content-Length` value. A longer line of one of
/// those names ends the tracking.
const KEEP: usize = 48;

#[derive(Debug)]
struct Head {
    /// Whether the line being read is the request line.
    request_line: bool,
    /// How long the line being read is so far, and its first byte.
    line_len: usize,
    first: u8,
    /// Whether the line may matter (`CONNECT`, or a header named as the
    /// ones looked for start), and then its start.
    keep_line: bool,
    line: [u8; KEEP],
    length: Option<u64>,
    chunked: bool,
    upgrade: bool,
}

/// How a head's line ended.
enum LineEnd {
    /// An empty line before the request line, which does not count (RFC
    /// 9112 §2.2).
    Skipped,
    /// A line of the head: a header line may follow it.
    Line,
    /// The blank line that ends the head.
    Blank,
    /// A line that cannot be followed (conflicting lengths).
    Lost,
}

/// What reading head bytes came to.
enum HeadEnd {
    /// The head ended; the bytes after it belong to what follows.
    Ended,
    Lost,
}

impl Head {
    fn new() -> Self {
        Self {
            request_line: true,
            line_len: 0,
            first: 0,
            keep_line: false,
            line: [0; KEEP],
            length: None,
            chunked: false,
            upgrade: false,
        }
    }

    /// Ready for the next request's head, reusing the line buffer.
    fn reset(&mut self) {
        self.request_line = true;
        self.line_len = 0;
        self.length = None;
        self.chunked = false;
        self.upgrade = false;
    }

    /// Whether nothing of this head has been read yet.
    fn is_unstarted(&self) -> bool {
        self.request_line && self.line_len == 0
    }

    /// Takes head bytes until the head ends or the bytes do. Returns how
    /// many it took, where (with `insert`) a header line may go: after the
    /// first line end that is not the head's last, and how it ended.
    fn read(&mut self, bytes: &[u8], insert: bool) -> (usize, Option<usize>, Option<HeadEnd>) {
        let mut start = 0;
        // At the start of a header line (the head's lines so far all ended
        // in earlier reads), a header line may go first.
        let mut insert_at = (insert && self.line_len == 0 && !self.request_line).then_some(0);
        while let Some(end) = find_line_end(bytes, start) {
            let line = &bytes[start..end];
            start = end + 1;
            let ended = if self.line_len == 0 && line.len() > 1 && !self.may_matter(line[0]) {
                // The common case, a whole line that does not matter.
                self.request_line = false;
                LineEnd::Line
            } else if self.line_len == 0 && !self.request_line && matches!(line, b"" | b"\r") {
                LineEnd::Blank
            } else {
                self.take(line);
                self.line_ended()
            };
            match ended {
                LineEnd::Skipped => {}
                LineEnd::Line => {
                    if insert && insert_at.is_none() {
                        insert_at = Some(start);
                    }
                }
                LineEnd::Blank => return (start, insert_at, Some(HeadEnd::Ended)),
                LineEnd::Lost => return (start, None, Some(HeadEnd::Lost)),
            }
        }
        self.take(&bytes[start..]);
        (bytes.len(), insert_at, None)
    }

    /// Takes part of a line (without its `\n`).
    #[inline]
    fn take(&mut self, part: &[u8]) {
        let Some(&first) = part.first() else {
            return;
        };
        if self.line_len == 0 {
            self.first = first;
            self.keep_line = self.may_matter(first);
        }
        if self.keep_line && self.line_len < KEEP {
            let keep = (KEEP - self.line_len).min(part.len());
            self.line[self.line_len..self.line_len + keep].copy_from_slice(&part[..keep]);
        }
        self.line_len += part.len();
    }

    /// Whether a line starting with `first` may matter: a `CONNECT`
    /// request line, or a header named as the ones looked for start.
    #[inline]
    fn may_matter(&self, first: u8) -> bool {
        if self.request_line {
            first == b'C'
        } else {
            matches!(first, b'c' | b'C' | b't' | b'T' | b'u' | b'U')
        }
    }

    /// The line being read ended.
    fn line_ended(&mut self) -> LineEnd {
        let len = std::mem::take(&mut self.line_len);
        let blank = len == 0 || len == 1 && self.first == b'\r';
        if !self.keep_line || blank {
            return match (blank, std::mem::take(&mut self.request_line)) {
                (true, true) => {
                    self.request_line = true;
                    LineEnd::Skipped
                }
                (true, false) => LineEnd::Blank,
                (false, _) => LineEnd::Line,
            };
        }
        self.keep_line = false;
        let kept = &self.line[..len.min(KEEP)];
        if std::mem::take(&mut self.request_line) {
            self.upgrade |= kept.starts_with(b"CONNECT ");
            return LineEnd::Line;
        }
        let Some(colon) = kept.iter().position(|&b| b == b':') else {
            // A name longer than any looked for.
            return LineEnd::Line;
        };
        let name = &kept[..colon];
        let value = trim(&kept[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_length(value).filter(|_| len <= KEEP);
            match (length, self.length) {
                (Some(new), None) => self.length = Some(new),
                (Some(new), Some(old)) if new == old => {}
                _ => return LineEnd::Lost,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        LineEnd::Line
    }

    /// What follows the blank line: `None` for the next request's head,
    /// which this head becomes.
    fn next(&mut self) -> Option<Part> {
        let next = match (self.upgrade, self.chunked, self.length) {
            (true, ..) | (false, true, Some(_)) => Part::Lost,
            (false, true, None) => Part::Chunked(Chunk::Size(0)),
            (false, false, Some(length)) if length > 0 => Part::Body(length),
            _ => {
                self.reset();
                return None;
            }
        };
        Some(next)
    }
}

/// The position of the first `\n` in `bytes` at or after `from`, found
/// eight bytes at a time: a head's lines are short, and a search routine's
/// set-up would cost more than the search.
#[inline]
fn find_line_end(bytes: &[u8], from: usize) -> Option<usize> {
    const LOW: u64 = u64::from_ne_bytes([0x7f; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut at = from;
    while let Some(word) = bytes.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes")) ^ NEWLINES;
        // The high bit of every byte of `x` that is zero, exactly: adding
        // 0x7f to a byte's low seven bits never carries into the next.
        let zero = !((x & LOW).wrapping_add(LOW) | x | LOW);
        if zero != 0 {
            return Some(at + zero.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter().position(|&b| b == b'\n').map(|i| at + i)
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = bytes {
        bytes = rest;
    }
    bytes
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A chunked body (RFC 9112 §7.1).
#[derive(Debug)]
enum Chunk {
    /// The hexadecimal size so far.
    Size(u64),
    /// Past the size, up to the end of its line (extensions): the size.
    SizeLine(u64),
    /// Chunk data: bytes left.
    Data(u64),
    /// The line end after chunk data.
    DataEnd,
    /// The trailer section; whether the line being read is empty so far.
    Trailers(bool),
}

impl Framing {
    pub(crate) fn new() -> Self {
        Self {
            part: Part::Head(Head::new()),
            heads: 0,
        }
    }

    /// How many request heads have ended on this connection.
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    pub(crate) fn position(&self) -> Position {
        match &self.part {
            Part::Head(head) if head.is_unstarted() => Position::Between,
            Part::Head(_) => Position::Head,
            Part::Body(_) | Part::Chunked(_) => Position::Body,
            Part::Lost => Position::Lost,
        }
    }

    /// Follows `bytes`, read after everything before. With `insert`, says
    /// where in them a header line can go into a request head: at the first
    /// start of a header line, which is just after the first line end inside
    /// a head that is not the head's last, or at the start of `bytes` when
    /// the head's lines so far ended before them.
    pub(crate) fn read(&mut self, mut bytes: &[u8], insert: bool) -> Option<usize> {
        let mut insert_at = None;
        let mut offset = 0;
        while !bytes.is_empty() {
            let taken = match &mut self.part {
                Part::Lost => break,
                Part::Head(head) => {
                    let (taken, at, end) = head.read(bytes, insert && insert_at.is_none());
                    insert_at = insert_at.or(at.map(|at| offset + at));
                    match end {
                        Some(HeadEnd::Ended) => {
                            self.heads += 1;
                            if let Some(next) = head.next() {
                                self.part = next;
                            }
                        }
                        Some(HeadEnd::Lost) => self.part = Part::Lost,
                        None => {}
                    }
                    taken
                }
                Part::Body(left) => {
                    let taken = (*left).min(bytes.len() as u64);
                    *left -= taken;
                    if *left == 0 {
                        self.part = Part::Head(Head::new());
                    }
                    taken as usize
                }
                Part::Chunked(chunk) => {
                    let (taken, done) = chunk.read(bytes);
                    match done {
                        Some(true) => self.part = Part::Head(Head::new()),
                        Some(false) => self.part = Part::Lost,
                        None => {}
                    }
                    taken
                }
            };
            offset += taken;
            bytes = &bytes[taken..];
        }
        insert_at
    }
}

impl Chunk {
    /// Reads chunked-body bytes; returns how many it took, and whether the
    /// body ended there (`Some(true)`) or cannot be followed (`Some(false)`).
    fn read(&mut self, bytes: &[u8]) -> (usize, Option<bool>) {
        for (i, &byte) in bytes.iter().enumerate() {
            *self = match (&*self, byte) {
                (Chunk::Data(left), _) => {
                    let taken = (*left).min((bytes.len() - i) as u64);
                    let left = left - taken;
                    *self = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return (i + taken as usize, None);
                }
                (Chunk::Size(size), b'\n') | (Chunk::SizeLine(size), b'\n') => match size {
                    0 => Chunk::Trailers(true),
                    size => Chunk::Data(*size),
                },
                (Chunk::Size(size), _) => match (byte as char).to_digit(16) {
                    Some(digit) => match size.checked_mul(16) {
                        Some(size) => Chunk::Size(size + u64::from(digit)),
                        None => return (i, Some(false)),
                    },
                    None => Chunk::SizeLine(*size),
                },
                (Chunk::SizeLine(size), _) => Chunk::SizeLine(*size),
                (Chunk::DataEnd, b'\n') => Chunk::Size(0),
                (Chunk::DataEnd, _) => Chunk::DataEnd,
                (Chunk::Trailers(true), b'\n') => return (i + 1, Some(true)),
                (Chunk::Trailers(_), b'\n') => Chunk::Trailers(true),
                (Chunk::Trailers(empty), b'\r') => Chunk::Trailers(*empty),
                (Chunk::Trailers(_), _) => Chunk::Trailers(false),
            };
        }
        (bytes.len(), None)
    }
}

/// Whether an HTTP/2 client has opened a stream, followed in the frames it
/// sends after the connection preface (RFC 9113 §4.1: a 9-byte header
/// whose first three bytes are the payload length and fourth the type): its
/// first HEADERS frame opens one.
#[derive(Debug, Default)]
pub(crate) struct FirstStream {
    /// The frame header read so far.
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame left to skip.
    skip: usize,
}

/// The HEADERS frame type (RFC 9113 §6.2).
const HEADERS: u8 = 0x1;

impl FirstStream {
    /// Follows `bytes`, read after everything before; whether a stream has
    /// been opened.
    pub(crate) fn read(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let skipped = self.skip.min(bytes.len());
                self.skip -= skipped;
                bytes = &bytes[skipped..];
                continue;
            }
            let taken = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + taken].copy_from_slice(&bytes[..taken]);
            self.have += taken;
            bytes = &bytes[taken..];
            if self.have == 9 {
                if self.header[3] == HEADERS {
                    return true;
                }
                let [a, b, c, ..] = self.header;
                self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                self.have = 0;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `size` bytes; the positions after each.
    fn positions(input: &[u8], size: usize) -> Vec<Position> {
        let mut framing = Framing::new();
        input
            .chunks(size)
            .map(|piece| {
                framing.read(piece, false);
                framing.position()
            })
            .collect()
    }

    fn ends_between(input: &[u8]) {
        for size in 1..=input.len() {
            assert_eq!(
                positions(input, size).last(),
                Some(&Position::Between),
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn follows_bodies_of_every_kind_in_pieces_of_any_size() {
        ends_between(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        ends_between(b"\r\nGET / HTTP/1.1\nhost: a\n\n");
        ends_between(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n");
        ends_between(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n",
        );
        ends_between(b"POST / HTTP/1.1\r\nContent-Length:  0 \r\n\r\n");
    }

    #[test]
    fn line_ends_are_found_wherever_they_are() {
        let text = b"GET /a-longer-path?q=1 HTTP/1.1\r\nHost: example\r\nx\n\n\r\n\xff\x8a\n";
        for from in 0..=text.len() {
            for end in from..=text.len() {
                let bytes = &text[..end];
                let expected = bytes[from..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|i| from + i);
                assert_eq!(find_line_end(bytes, from), expected, "{from}..{end}");
            }
        }
    }

    #[test]
    fn the_first_headers_frame_opens_a_stream_in_pieces_of_any_size() {
        // SETTINGS (6 bytes of payload), WINDOW_UPDATE (4), then HEADERS.
        let frames = [
            &[0, 0, 6, 4, 0, 0, 0, 0, 0][..],
            &[0, 3, 0, 0, 0, 100],
            &[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0, 0, 1, HEADERS, 4, 0, 0, 0, 1, 0x82],
        ]
        .concat();
        let headers_at = frames.len() - 10;
        for size in 1..=frames.len() {
            let mut first = FirstStream::default();
            let opened_at = frames
                .chunks(size)
                .enumerate()
                .find(|(_, piece)| first.read(piece))
                .map(|(i, _)| i);
            assert_eq!(opened_at, Some((headers_at + 8) / size), "pieces of {size}");
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_a_body() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut framing = Framing::new();
        let head_end = input.len() - 18;
        framing.read(&input[..head_end], true);
        assert_eq!(framing.position(), Position::Body);
        assert_eq!(framing.read(&input[head_end..], true), None);
        assert_eq!(framing.position(), Position::Between);
    }

    #[test]
    fn upgrades_connect_and_conflicting_lengths_end_the_tracking() {
        for input in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"[..],
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(positions(input, input.len()), [Position::Lost]);
        }
    }

    #[test]
    fn a_header_goes_after_the_first_line_end_inside_a_head() {
        let mut framing = Framing::new();
        assert_eq!(
            framing.read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /", true),
            Some(16)
        );
        // The second head's first line is not complete yet.
        let step = framing.read(b"b HTTP/1.1\r\n\r\n", true);
        assert_eq!(step, Some(12));
        assert_eq!(framing.position(), Position::Between);
        // Before the blank line of a head whose other lines came earlier;
        // never after the blank line that ends a head.
        let mut framing = Framing::new();
        framing.read(b"GET / HTTP/1.1\r\n", false);
        assert_eq!(framing.read(b"\r\nGET / HTTP/1.1", true), Some(0));
        assert_eq!(framing.read(b"\r\n\r\n", true), Some(2));
    }
}
